//! A concrete example of a statement run with bound parameters: its text
//! with each `$n` replaced by the value the client bound, as a literal
//! (SPEC §7: one concrete statement, literals kept).

use std::fmt::Write;

/// Longest value shown whole; longer ones are cut and marked.
const MAX_VALUE: usize = 200;

/// `text` with its parameter placeholders replaced by `params` (format code
/// and bytes, `None` for NULL, as a Bind carries them), rendered as SQL
/// literals; `types` are the parameter type OIDs the Parse gave (0 or
/// missing: unspecified), used to read binary values. Placeholders inside
/// string literals, quoted identifiers and comments are left alone.
pub fn with_values(text: &str, params: &[(u16, Option<&[u8]>)], types: &[u32]) -> String {
    use crate::sql::comments::{is_ident_byte, lexeme_at, Lexeme};
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16 * params.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        match lexeme_at(b, i) {
            Lexeme::Comment(end) | Lexeme::Literal(end) | Lexeme::QuotedName(end) => {
                i = end.max(i + 1);
            }
            Lexeme::Other
                if b[i] == b'$'
                    && b.get(i + 1).is_some_and(u8::is_ascii_digit)
                    && (i == 0 || !is_ident_byte(b[i - 1])) =>
            {
                let start = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let n: usize = text[start + 1..i].parse().unwrap_or(0);
                if let Some(&(format, value)) = n.checked_sub(1).and_then(|k| params.get(k)) {
                    out.push_str(&text[copied..start]);
                    let oid = types.get(n - 1).copied().unwrap_or(0);
                    literal(&mut out, format, value, oid);
                    copied = i;
                }
            }
            Lexeme::Other => i += 1,
        }
    }
    out.push_str(&text[copied.min(text.len())..]);
    out
}

/// One value as an SQL literal.
fn literal(out: &mut String, format: u16, value: Option<&[u8]>, oid: u32) {
    let Some(v) = value else {
        out.push_str("NULL");
        return;
    };
    if format == 0 {
        return quoted(out, &String::from_utf8_lossy(v));
    }
    let int = |v: &[u8]| -> Option<i64> {
        Some(match v.len() {
            2 => i64::from(i16::from_be_bytes(v.try_into().ok()?)),
            4 => i64::from(i32::from_be_bytes(v.try_into().ok()?)),
            8 => i64::from_be_bytes(v.try_into().ok()?),
            _ => return None,
        })
    };
    match (oid, v.len()) {
        (16, 1) => out.push_str(if v[0] != 0 { "true" } else { "false" }),
        (20 | 21 | 23, _) if int(v).is_some() => {
            let _ = write!(out, "{}", int(v).unwrap_or_default());
        }
        (700, 4) => {
            let _ = write!(
                out,
                "{}",
                f32::from_be_bytes(v.try_into().unwrap_or_default())
            );
        }
        (701, 8) => {
            let _ = write!(
                out,
                "{}",
                f64::from_be_bytes(v.try_into().unwrap_or_default())
            );
        }
        (25 | 1043 | 19 | 1042, _) => quoted(out, &String::from_utf8_lossy(v)),
        (2950, 16) => {
            out.push('\'');
            for (k, byte) in v.iter().enumerate() {
                if matches!(k, 4 | 6 | 8 | 10) {
                    out.push('-');
                }
                let _ = write!(out, "{byte:02x}");
            }
            out.push('\'');
        }
        _ => {
            // a binary value of a type not known here: its bytes
            out.push_str("'\\x");
            for byte in v.iter().take(MAX_VALUE / 2) {
                let _ = write!(out, "{byte:02x}");
            }
            if v.len() > MAX_VALUE / 2 {
                out.push('…');
            }
            out.push('\'');
        }
    }
}

fn quoted(out: &mut String, s: &str) {
    out.push('\'');
    let mut end = s.len().min(MAX_VALUE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push_str(&s[..end].replace('\'', "''"));
    if end < s.len() {
        out.push('…');
    }
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_the_bound_values() {
        let text = "SELECT * FROM posts WHERE author_id = $1 AND title <> $2 AND x = $10";
        let mut params: Vec<(u16, Option<&[u8]>)> = vec![(0, Some(b"42")), (0, Some(b"it's"))];
        params.extend((3..=10).map(|_| (0, None)));
        assert_eq!(
            with_values(text, &params, &[]),
            "SELECT * FROM posts WHERE author_id = '42' AND title <> 'it''s' AND x = NULL"
        );
    }

    #[test]
    fn binary_values_are_read_by_their_declared_type() {
        let one: &[u8] = &7i32.to_be_bytes();
        let big: &[u8] = &(-9i64).to_be_bytes();
        let p = [
            (1, Some(one)),
            (1, Some(big)),
            (1, Some(&[1u8][..])),
            (1, Some(one)),
        ];
        assert_eq!(
            with_values("SELECT $1, $2, $3, $4", &p, &[23, 20, 16, 0]),
            "SELECT 7, -9, true, '\\x00000007'"
        );
    }

    #[test]
    fn placeholders_in_strings_comments_and_names_stay() {
        let p = [(0, Some(&b"v"[..]))];
        assert_eq!(
            with_values("SELECT '$1', \"$1\", a$1 /* $1 */ -- $1\n, $1", &p, &[]),
            "SELECT '$1', \"$1\", a$1 /* $1 */ -- $1\n, 'v'"
        );
        // a placeholder beyond the values bound stays
        assert_eq!(with_values("SELECT $2", &p, &[]), "SELECT $2");
    }

    #[test]
    fn long_values_are_cut() {
        let long = "é".repeat(300);
        let p = [(0, Some(long.as_bytes()))];
        let out = with_values("SELECT $1", &p, &[]);
        assert!(out.ends_with("…'"), "{out}");
        assert!(out.len() < 250, "{}", out.len());
    }
}
