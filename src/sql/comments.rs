//! Whitespace and comments in SQL text, read as Postgres's lexer reads them.
//!
//! pgsift tells some statements by their leading words (`SET`, `RESET`,
//! `DISCARD`, `LISTEN`, `DEALLOCATE`, `DO`, …). A comment before or between
//! those words (`/* tenant */ SET search_path TO t2`, an ORM's
//! `-- caller: x` line) changes nothing for Postgres, so it must change
//! nothing for pgsift either: these functions skip or blank comments out
//! before the words are read.
//!
//! The rules are the server's: its whitespace is space, tab, newline,
//! carriage return, vertical tab and form feed; a `--` comment ends at a
//! newline *or* a carriage return; `/* */` comments nest; comment marks
//! inside string literals, quoted identifiers and dollar quotes are text.
//! Text is read with `standard_conforming_strings` on (a backslash in a
//! plain literal is an ordinary character); a session that has it off and
//! sends a backslash is not read at all (see
//! [`crate::frontend::settings`]).

use std::borrow::Cow;

/// Postgres's whitespace (`scanner_isspace`).
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

/// The end of the comment that starts at `sql[i]`, if one does. An
/// unterminated `/*` comment runs to the end (Postgres rejects such a
/// text, so nothing after it runs).
fn comment_end(sql: &[u8], i: usize) -> Option<usize> {
    match (sql.get(i), sql.get(i + 1)) {
        (Some(b'-'), Some(b'-')) => Some(
            sql[i..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
                .map_or(sql.len(), |n| i + n + 1),
        ),
        (Some(b'/'), Some(b'*')) => {
            let (mut depth, mut j) = (0usize, i);
            while j < sql.len() {
                if sql[j] == b'/' && sql.get(j + 1) == Some(&b'*') {
                    depth += 1;
                    j += 2;
                } else if sql[j] == b'*' && sql.get(j + 1) == Some(&b'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        return Some(j);
                    }
                } else {
                    j += 1;
                }
            }
            Some(sql.len())
        }
        _ => None,
    }
}

/// `sql` from its first byte that is neither whitespace nor part of a
/// comment (empty when there is none).
pub fn skip_space_and_comments(sql: &[u8]) -> &[u8] {
    let mut i = 0;
    while i < sql.len() {
        if is_space(sql[i]) {
            i += 1;
        } else if let Some(end) = comment_end(sql, i) {
            i = end;
        } else {
            break;
        }
    }
    &sql[i..]
}

/// The first word of `sql` after whitespace and comments, as written: the
/// identifier or keyword there, as far as Postgres reads one (letters,
/// digits, `_`, `$`: `DO$$…` is one word, which Postgres rejects).
pub fn first_word(sql: &[u8]) -> &[u8] {
    let s = skip_space_and_comments(sql);
    let end = s.iter().position(|&b| !is_ident_byte(b)).unwrap_or(s.len());
    &s[..end]
}

/// True when the first word of `sql` is `word` (ASCII, any case).
pub fn starts_with_word(sql: &[u8], word: &str) -> bool {
    first_word(sql).eq_ignore_ascii_case(word.as_bytes())
}

/// The end of the quoted text that starts at `sql[i]` (a string literal,
/// a quoted identifier or a dollar quote), if one does. `escapes`: the
/// literal takes backslash escapes (`E'…'`). Unterminated: the end.
fn quoted_end(sql: &[u8], i: usize, escapes: bool) -> Option<usize> {
    let q = *sql.get(i)?;
    match q {
        b'\'' | b'"' => {
            let mut j = i + 1;
            while j < sql.len() {
                match sql[j] {
                    b'\\' if escapes && q == b'\'' => j += 2,
                    c if c == q => {
                        if sql.get(j + 1) == Some(&q) {
                            j += 2; // doubled: still inside
                        } else {
                            return Some(j + 1);
                        }
                    }
                    _ => j += 1,
                }
            }
            Some(sql.len())
        }
        b'$' => {
            // `$tag$`: a tag is an identifier without `$`, not starting
            // with a digit (`$1` is a parameter)
            let tag_len = sql[i + 1..]
                .iter()
                .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))?;
            let close = i + 1 + tag_len;
            if sql.get(close) != Some(&b'$') || sql.get(i + 1).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            let tag = &sql[i..=close];
            Some(
                memchr::memmem::find(&sql[close + 1..], tag)
                    .map_or(sql.len(), |n| close + 1 + n + tag.len()),
            )
        }
        _ => None,
    }
}

/// May `b` continue an identifier (so that a `$` or a quote after it does
/// not start a dollar quote or an `E'…'` literal)?
pub fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// What starts at a position of SQL text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lexeme {
    /// a comment, ending at this index
    Comment(usize),
    /// a string literal (`'…'`, `E'…'`) or dollar quote, ending here
    Literal(usize),
    /// a quoted identifier (`"…"`), ending here
    QuotedName(usize),
    /// anything else: one byte of a word, a number, an operator, a space
    Other,
}

/// What starts at `sql[i]`.
pub fn lexeme_at(sql: &[u8], i: usize) -> Lexeme {
    if let Some(end) = comment_end(sql, i) {
        return Lexeme::Comment(end);
    }
    let after_ident = i > 0 && is_ident_byte(sql[i - 1]);
    let literal = match sql.get(i) {
        Some(b'"') => return quoted_end(sql, i, false).map_or(Lexeme::Other, Lexeme::QuotedName),
        Some(b'\'') => quoted_end(sql, i, false),
        Some(b'$') if !after_ident => quoted_end(sql, i, false),
        // E'…' (not the end of a name such as `some'…'`)
        Some(b'e' | b'E') if sql.get(i + 1) == Some(&b'\'') && !after_ident => {
            quoted_end(sql, i + 1, true)
        }
        _ => None,
    };
    literal.map_or(Lexeme::Other, Lexeme::Literal)
}

/// `sql` with every comment replaced by one space; string literals, quoted
/// identifiers and dollar quotes are left as they are. Borrowed when there
/// is no comment.
pub fn blank_comments(sql: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0; // sql[..copied] is in `out`
    let mut i = 0;
    while i < sql.len() {
        i = match lexeme_at(sql, i) {
            Lexeme::Comment(end) => {
                let o = out.get_or_insert_with(|| Vec::with_capacity(sql.len()));
                o.extend_from_slice(&sql[copied..i]);
                o.push(b' ');
                copied = end;
                end
            }
            Lexeme::Literal(end) | Lexeme::QuotedName(end) => end,
            Lexeme::Other => i + 1,
        };
    }
    match out {
        Some(mut o) => {
            o.extend_from_slice(&sql[copied..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(sql),
    }
}

/// [`blank_comments`] of a `str` (comment marks are ASCII, so what is left
/// is as valid UTF-8 as `sql`).
pub fn blank_comments_str(sql: &str) -> Cow<'_, str> {
    match blank_comments(sql.as_bytes()) {
        Cow::Borrowed(_) => Cow::Borrowed(sql),
        Cow::Owned(v) => Cow::Owned(
            String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_whitespace_and_comments_of_every_kind_are_skipped() {
        for sql in [
            "SET x = 1",
            "  \t\n\x0b\x0cSET x = 1",
            "/* tenant */ SET x = 1",
            "/* a /* nested */ comment */SET x = 1",
            "-- caller: app\nSET x = 1",
            "-- a line ended by a carriage return\rSET x = 1",
            "--\r\n/**/ -- two\n\t/* three */\nSET x = 1",
        ] {
            assert_eq!(
                skip_space_and_comments(sql.as_bytes()),
                b"SET x = 1",
                "{sql:?}"
            );
            assert_eq!(first_word(sql.as_bytes()), b"SET", "{sql:?}");
            assert!(starts_with_word(sql.as_bytes(), "set"), "{sql:?}");
        }
        // nothing but comments, an unterminated comment
        for sql in [
            "",
            "  ",
            "-- SET x = 1",
            "/* SET x = 1",
            "/* /* */ SET x = 1",
        ] {
            assert_eq!(first_word(sql.as_bytes()), b"", "{sql:?}");
        }
        assert_eq!(first_word(b"settle"), b"settle");
        assert!(!starts_with_word(b"settle", "set"));
        assert_eq!(first_word(b"DO $$BEGIN END$$"), b"DO");
        assert_eq!(first_word(b"set_config"), b"set_config");
        assert_eq!(first_word(b"SET\"x\" = 1"), b"SET");
        // a lone `-` or `/` is no comment
        assert_eq!(skip_space_and_comments(b" -1"), b"-1");
        assert_eq!(skip_space_and_comments(b" /1"), b"/1");
    }

    #[test]
    fn comments_are_blanked_and_quoted_text_is_kept() {
        let b = |sql: &str| String::from_utf8(blank_comments(sql.as_bytes()).into_owned()).unwrap();
        assert_eq!(
            b("SET /* x */ search_path TO s2"),
            "SET   search_path TO s2"
        );
        assert_eq!(
            b("SET search_path TO s2 -- why\n"),
            "SET search_path TO s2  "
        );
        assert_eq!(b("a/* /* */ */b--c\rd"), "a b d");
        for kept in [
            "SET app.x = '-- not a comment'",
            "SET app.x = '/* nor */ this'",
            "SET app.x = 'it''s -- text'",
            "SET app.x = \"-- a name\"",
            "SET app.x = $$ -- dollar $$",
            "SET app.x = $t$ /* $$ */ $t$",
            "SET app.x = E'\\' -- still text'",
            "SELECT $1--x",
        ] {
            let expected = if kept.ends_with("$1--x") {
                "SELECT $1 "
            } else {
                kept
            };
            assert_eq!(b(kept), expected, "{kept}");
        }
        // a name ending in `e` before a literal is no E'' literal; a `$`
        // inside a name starts no dollar quote
        assert_eq!(b("SELECT some'\\' -- x\n"), "SELECT some'\\'  ");
        assert_eq!(b("SELECT a$b$ -- x\n"), "SELECT a$b$  ");
        assert!(matches!(blank_comments(b"SELECT 1"), Cow::Borrowed(_)));
        assert_eq!(blank_comments_str("SET /* é */ x = 'é'"), "SET   x = 'é'");
    }

    #[test]
    fn any_text_is_read_without_a_panic() {
        let text = "/* é /* x */ -- \r $a$ $$ 'x'' E'\\' \"q\"\" é $1 -- ";
        for i in 0..text.len() {
            for j in i..=text.len() {
                let s = &text.as_bytes()[i..j];
                skip_space_and_comments(s);
                first_word(s);
                blank_comments(s);
            }
        }
    }
}
