//! Query templates: a session's recent simple-query texts with their
//! literals cut out.
//!
//! An ORM in a loop sends one text again and again with only its literal
//! values changed (so does `pgbench -S -M simple`). Rather than scan each
//! such text again, a session compares it with the texts it scanned last:
//! byte for byte outside the literals, and across each literal by the
//! scanner's own rule for where that literal ends. A text that matches has
//! the template's shape, so the template's analysis; its literal values are
//! hashed exactly as the scanner hashes them.
//!
//! Why a match means the same shape: the scanner's decisions inside a fixed
//! piece look at most one byte into the literals around it (the literal's
//! first byte, which must be of the template's kind, and its last byte,
//! which must be a word byte when the template's was, and not when it was
//! not); every token that starts in a fixed piece ends in it (the template's
//! own scan found a literal start right after it). Only numbers and closed
//! plain `'...'` strings are cut; a text with another kind of literal gets
//! no template, and neither does a string preceded by `E` or `e`, which the
//! statement splitter reads with backslash escapes, nor a number followed by
//! `-` or `'` (a new number ending in `e-` or `e` would make the splitter
//! read a comment or an escape string there), nor a text with a `$` (the
//! splitter reads dollar quotes where the scanner sees a word, and looks
//! for their end in the literals).

use super::shape::{ends_word, number_end, string_end, values_hash, LiteralKind, LiteralSpans};
use super::Analysis;
use smallvec::SmallVec;
use std::ops::Range;
use std::sync::Arc;

/// Longest text kept as a template (a session keeps [`Templates::MAX`]).
pub const MAX_TEXT: usize = 2048;

/// One literal cut out of a template's text.
#[derive(Debug, Clone, Copy)]
struct Cut {
    start: u32,
    end: u32,
    number: bool,
    /// the literal's last byte makes a following digit, `$` or `E'` part
    /// of a word
    word_end: bool,
}

/// A query text with its literals cut out, and its one statement's analysis.
#[derive(Debug)]
pub struct Template {
    text: Box<[u8]>,
    cuts: SmallVec<[Cut; 4]>,
    /// the statement within the text: blanks and a final `;` lie outside
    lead: usize,
    trail: usize,
    analysis: Arc<Analysis>,
}

/// A text that matched a template.
#[derive(Debug, Clone)]
pub struct Recalled {
    /// the statement's analysis
    pub analysis: Arc<Analysis>,
    /// hash of its literal values, as [`super::shape::scan`] gives it (0
    /// when it has none)
    pub values: u64,
    /// where the statement lies in the text
    pub statement: Range<usize>,
}

impl Template {
    /// A template of `text`, whose one statement is `text[statement]` and
    /// has `literals` (spans relative to the statement). `None` when a
    /// literal is of a kind templates do not cut, or the text is too long.
    pub fn new(
        text: &[u8],
        statement: Range<usize>,
        literals: &LiteralSpans,
        analysis: Arc<Analysis>,
    ) -> Option<Template> {
        if text.len() > MAX_TEXT || statement.end > text.len() || statement.start > statement.end {
            return None;
        }
        // The statement splitter takes a `$` after a `$` for a dollar quote
        // even inside a word (the scanner does not), and its search for the
        // closing tag can run into a new text's literals: no template for
        // a text with a `$` (simple queries seldom have one).
        if memchr::memchr(b'$', text).is_some() {
            return None;
        }
        let mut cuts = SmallVec::new();
        for &(start, end, kind) in literals {
            let (start, end) = (statement.start + start, statement.start + end);
            let number = match kind {
                // the statement splitter reads `--` and `E'` across a
                // number's end, where a new text's number may end in `-`
                // or `e`: no template when one of those could form
                LiteralKind::Number if !matches!(text.get(end), Some(b'-' | b'\'')) => true,
                LiteralKind::String if start == 0 || !matches!(text[start - 1], b'E' | b'e') => {
                    false
                }
                _ => return None,
            };
            cuts.push(Cut {
                start: start as u32,
                end: end as u32,
                number,
                word_end: ends_word(text[end - 1]),
            });
        }
        Some(Template {
            text: text.into(),
            cuts,
            lead: statement.start,
            trail: text.len() - statement.end,
            analysis,
        })
    }

    /// Whether `text` is this template with other literal values; if so,
    /// the analysis and the values' hash.
    pub fn matches(&self, text: &[u8]) -> Option<Recalled> {
        let mut values = 0;
        let mut at = 0;
        let mut from = 0;
        for cut in &self.cuts {
            let fixed = &self.text[from..cut.start as usize];
            if text.get(at..at + fixed.len())? != fixed {
                return None;
            }
            at += fixed.len();
            let first = *text.get(at)?;
            let end = if cut.number {
                if !first.is_ascii_digit() {
                    return None;
                }
                number_end(text, at)
            } else {
                if first != b'\'' {
                    return None;
                }
                let (end, closed) = string_end(text, at, false);
                // the session reads text as UTF-8: a literal that is not
                // takes the scanning path, which repairs it
                if !closed || std::str::from_utf8(&text[at..end]).is_err() {
                    return None;
                }
                end
            };
            if ends_word(text[end - 1]) != cut.word_end {
                return None;
            }
            values = values_hash(values, &text[at..end]);
            at = end;
            from = cut.end as usize;
        }
        if text[at..] != self.text[from..] {
            return None;
        }
        Some(Recalled {
            analysis: self.analysis.clone(),
            values,
            statement: self.lead..text.len() - self.trail,
        })
    }
}

/// One session's most recent templates, the last matched first.
#[derive(Debug, Default)]
pub struct Templates(SmallVec<[Template; 4]>);

impl Templates {
    /// Templates kept per session.
    pub const MAX: usize = 4;

    /// The first template `text` matches (it moves to the front).
    pub fn recall(&mut self, text: &[u8]) -> Option<Recalled> {
        let (i, hit) = self
            .0
            .iter()
            .enumerate()
            .find_map(|(i, t)| t.matches(text).map(|r| (i, r)))?;
        if i > 0 {
            self.0[..=i].rotate_right(1);
        }
        Some(hit)
    }

    /// Keeps `template` in front, dropping the least recently matched one
    /// when full.
    pub fn learn(&mut self, template: Template) {
        if self.0.len() == Self::MAX {
            self.0.pop();
        }
        self.0.insert(0, template);
    }
}

/// Checks templates against the scanning path (for the tests and the fuzz
/// target): learns `text` as a session does, then makes a new text from it
/// with each literal replaced (a digit and the replacement for numbers, the
/// replacement in quotes for strings, taking the replacements in turn) and,
/// when that text matches the template, checks that splitting and scanning
/// it give what the template does. Panics on a disagreement; returns
/// whether the new text matched.
#[doc(hidden)]
pub fn check_template(text: &str, replacements: &[&[u8]]) -> bool {
    use super::shape::{scan, scan_literals, split_statements};
    let stmts = split_statements(text);
    let [stmt] = stmts.as_slice() else {
        return false;
    };
    let start = stmt.as_ptr() as usize - text.as_ptr() as usize;
    let mut spans = LiteralSpans::new();
    let shape = scan_literals(stmt.as_bytes(), &mut spans);
    let analysis = Arc::new(Analysis {
        fingerprint: shape.hash,
        normalized: String::new(),
        kind: super::Kind::Utility,
        reads: vec![],
        writes: vec![],
        parsed: false,
        functions: vec![],
        read_only: false,
        opaque: false,
        tally: Default::default(),
    });
    let range = start..start + stmt.len();
    let Some(t) = Template::new(text.as_bytes(), range.clone(), &spans, analysis) else {
        return false;
    };
    let own = t
        .matches(text.as_bytes())
        .expect("a text matches its own template");
    assert_eq!((own.statement, own.values), (range, shape.values));

    let mut other = text.as_bytes()[..start].to_vec();
    let mut from = start;
    for (i, &(s, e, kind)) in spans.iter().enumerate() {
        other.extend_from_slice(&text.as_bytes()[from..start + s]);
        let piece = replacements.get(i % replacements.len().max(1)).copied();
        match (kind, piece) {
            (_, None) => other.extend_from_slice(&stmt.as_bytes()[s..e]),
            (LiteralKind::Number, Some(p)) => {
                other.push(b'0' + p.first().map_or(0, |b| b % 10));
                other.extend_from_slice(p.get(1..).unwrap_or_default());
            }
            (_, Some(p)) => {
                other.push(b'\'');
                other.extend_from_slice(p);
                other.push(b'\'');
            }
        }
        from = start + e;
    }
    other.extend_from_slice(&text.as_bytes()[from..]);
    let Some(r) = t.matches(&other) else {
        return false;
    };
    let other_text = std::str::from_utf8(&other).expect("a matching text is UTF-8");
    let stmts = split_statements(other_text);
    assert_eq!(
        stmts.as_slice(),
        &[&other_text[r.statement.clone()]],
        "{text:?} / {other_text:?}"
    );
    let s = scan(stmts[0].as_bytes(), None);
    assert_eq!(
        (s.hash, s.literals, s.values),
        (shape.hash, shape.literals, r.values),
        "{text:?} / {other_text:?}"
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::shape::{scan, scan_literals, split_statements};
    use crate::sql::Analyzer;

    /// A template of `text` (one statement), as a session learns it.
    fn template(text: &str) -> Option<Template> {
        let stmts = split_statements(text);
        let [stmt] = stmts.as_slice() else {
            return None;
        };
        let start = stmt.as_ptr() as usize - text.as_ptr() as usize;
        let mut spans = LiteralSpans::new();
        scan_literals(stmt.as_bytes(), &mut spans);
        let analysis = Analyzer::new(10).analyze(stmt).analysis;
        let stmt = *stmt;
        Template::new(text.as_bytes(), start..start + stmt.len(), &spans, analysis)
    }

    /// What the scanning path says of `text`: its statement and the
    /// statement's shape.
    fn scanned(text: &str) -> (Range<usize>, super::super::shape::Shape) {
        let stmts = split_statements(text);
        assert_eq!(stmts.len(), 1, "{text}");
        let start = stmts[0].as_ptr() as usize - text.as_ptr() as usize;
        (
            start..start + stmts[0].len(),
            scan(stmts[0].as_bytes(), None),
        )
    }

    #[test]
    fn a_text_with_other_literals_matches_with_the_scanners_values() {
        let t = template("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;").unwrap();
        for other in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1.5e-3;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
        ] {
            let r = t.matches(other.as_bytes()).expect(other);
            let (stmt, shape) = scanned(other);
            assert_eq!(r.statement, stmt, "{other}");
            assert_eq!(r.values, shape.values, "{other}");
        }
        let s = template("  select * from t where a = 'x''y' and b = 2 ; ").unwrap();
        let other = "  select * from t where a = 'é;--' and b = 30 ; ";
        let r = s.matches(other.as_bytes()).unwrap();
        let (stmt, shape) = scanned(other);
        assert_eq!((r.statement, r.values), (stmt, shape.values));
        let none = template("SELECT count(*) FROM t").unwrap();
        assert_eq!(none.matches(b"SELECT count(*) FROM t").unwrap().values, 0);
    }

    #[test]
    fn anything_else_does_not_match() {
        let t = template("SELECT * FROM t WHERE id = 5 AND name = 'a'").unwrap();
        for other in [
            "SELECT * FROM t WHERE id = 5 AND name = 'a' ",
            "SELECT * FROM t WHERE id = 5 AND nam = 'a'",
            "SELECT * FROM t WHERE id = 'x' AND name = 'a'",
            "SELECT * FROM t WHERE id = 5 AND name = 5",
            "SELECT * FROM t WHERE id = 5 AND name = 'a",
            "SELECT * FROM t WHERE id = x5 AND name = 'a'",
            "SELECT * FROM t WHERE id = ",
            "",
        ] {
            assert!(t.matches(other.as_bytes()).is_none(), "{other}");
        }
        // text the session reads with replacement characters
        let u = template("SELECT 'a'").unwrap();
        assert!(u.matches(b"SELECT '\xff'").is_none());
    }

    #[test]
    fn literals_templates_do_not_cut_leave_the_text_without_one() {
        assert!(template("SELECT E'a\\'b' FROM t").is_none());
        assert!(template("SELECT $$a$$ FROM t").is_none());
        assert!(template("SELECT 'open").is_none());
        assert!(template("SELECT namE'a'").is_none());
        // `SELECT 1e--1;` would match and split differently
        assert!(template("SELECT 1.-1;").is_none());
        // `SELECT 1e'\\', 2, ';'` would match and split in two
        assert!(template("SELECT 1'\\', 2, ';'").is_none());
        assert!(template("SELECT 1 - 1, 2 '' ;").is_some());
        assert!(template(&format!("SELECT '{}'", "x".repeat(MAX_TEXT))).is_none());
        assert!(template("SELECT $1, \"Q\", 'a' -- 'b'\n").is_none());
        assert!(template("SELECT \"Q\", 'a' -- 'b'\n").is_some());
        // found by fuzzing: `SELECT a$$$, '$$;'` would match and split in two
        assert!(template("SELECT a$$$, 'x'").is_none());
    }

    #[test]
    fn matching_texts_scan_to_the_templates_shape() {
        // random SQL-like texts from pieces that meet at every boundary
        let pieces: &[&str] = &[
            "SELECT", " ", "a", "e", "E", "x1", "_", "$", "$1", "$a$", "$$", "'", "''", "\\", "\"",
            "1", "2.5", "1e", "-", "+", ".", ";", "(", ")", "--", "/*", "*/", "\n", ",", "=", "é",
            "\u{a0}", "'q;'", "'a''b'", "E'x'", "7", "$2", "e-", "e+",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut matched = 0;
        for _ in 0..200_000 {
            let len = 1 + next() % 12;
            let text: String = (0..len)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            let reps: Vec<Vec<u8>> = (0..3)
                .map(|_| {
                    (0..next() % 4)
                        .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                        .collect::<String>()
                        .into_bytes()
                })
                .collect();
            let reps: Vec<&[u8]> = reps.iter().map(Vec::as_slice).collect();
            matched += check_template(&text, &reps) as usize;
        }
        // the generator reaches both outcomes often
        assert!((5_000..150_000).contains(&matched), "{matched}");
    }

    #[test]
    fn the_last_matched_template_is_tried_first() {
        let mut ts = Templates::default();
        for i in 0..5 {
            ts.learn(template(&format!("SELECT c{i} FROM t WHERE id = 1")).unwrap());
        }
        assert!(
            ts.recall(b"SELECT c0 FROM t WHERE id = 2").is_none(),
            "dropped"
        );
        let r = ts.recall(b"SELECT c2 FROM t WHERE id = 2").unwrap();
        assert_eq!(r.analysis.normalized, "SELECT c2 FROM t WHERE id = $1");
        assert_eq!(
            ts.0[0].analysis.normalized,
            "SELECT c2 FROM t WHERE id = $1"
        );
        assert_eq!(ts.0.len(), Templates::MAX);
    }
}
