//! A fast lexical pass over SQL text that runs before any parser call: it
//! folds whitespace, comments and keyword case, replaces literals with typed
//! placeholders, and hashes both the resulting *shape* and the literal
//! values. Statements that differ only in literal values (what an ORM on
//! psycopg2 sends on every iteration of an N+1 loop) share a shape, so the
//! parser runs once per shape, not once per statement. It also splits a
//! simple-query string into its statements.

use smallvec::SmallVec;
use xxhash_rust::xxh3::Xxh3;

/// The result of scanning one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// hash of the folded text with placeholders
    pub hash: u64,
    /// hash of the literal values in order (0 when there are none): see
    /// [`values_hash`]
    pub values: u64,
    /// number of literals replaced
    pub literals: usize,
}

/// Bytes on their way into a hash: gathered on the stack and hashed in one
/// call, which costs a fraction of feeding a streaming hasher token by
/// token. Input longer than the buffer goes through the streaming hasher in
/// buffer-sized pieces; the digest is the same either way.
struct HashBuf {
    buf: [u8; 512],
    len: usize,
    spill: Option<Box<Xxh3>>,
}

impl HashBuf {
    fn new() -> HashBuf {
        HashBuf {
            buf: [0; 512],
            len: 0,
            spill: None,
        }
    }

    /// Appends the identifier that starts at `sql[i]`, folded to lower
    /// case, in the same pass that finds its end; returns the end.
    #[inline]
    fn identifier(&mut self, sql: &[u8], mut i: usize) -> usize {
        let src = &sql[i..];
        let mut taken = 0;
        for (d, &c) in self.buf[self.len..].iter_mut().zip(src) {
            if !is(c, IDENT) {
                break;
            }
            *d = LOWER[c as usize];
            taken += 1;
        }
        self.len += taken;
        i += taken;
        if self.len == self.buf.len() && i < sql.len() && is(sql[i], IDENT) {
            // the buffer filled up inside the identifier
            let rest = i;
            while i < sql.len() && is(sql[i], IDENT) {
                i += 1;
            }
            self.update(&sql[rest..i].to_ascii_lowercase());
        }
        i
    }

    #[inline]
    fn push(&mut self, b: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b;
            self.len += 1;
        } else {
            self.update(&[b]);
        }
    }

    #[inline]
    fn update(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() <= self.buf.len() {
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
            return;
        }
        let spill = self.spill.get_or_insert_with(|| Box::new(Xxh3::new()));
        spill.update(&self.buf[..self.len]);
        spill.update(bytes);
        self.len = 0;
    }

    fn digest(&self) -> u64 {
        match &self.spill {
            None => xxhash_rust::xxh3::xxh3_64(&self.buf[..self.len]),
            Some(h) => {
                let mut h = h.clone();
                h.update(&self.buf[..self.len]);
                h.digest()
            }
        }
    }
}

/// Byte classes of the scanner, one table lookup per byte.
const SPACE: u8 = 1;
/// may continue an identifier: letters, digits, `_`, `$`, non-ASCII
const IDENT: u8 = 2;
/// may start an identifier: letters, `_`, non-ASCII
const IDENT_START: u8 = 4;
/// may continue a numeric literal: letters, digits, `.`, `_`
const NUMBER: u8 = 8;
/// precedes a position where a digit or `E'` does not start a literal
const IDENT_PREV: u8 = 16;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let mut k = 0;
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c') {
            k |= SPACE;
        }
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            k |= IDENT_START | IDENT | IDENT_PREV;
        }
        if b.is_ascii_digit() {
            k |= IDENT | NUMBER | IDENT_PREV;
        }
        if b == b'$' {
            k |= IDENT;
        }
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' {
            k |= NUMBER;
        }
        t[c] = k;
        c += 1;
    }
    t
};

/// ASCII lower case of every byte.
static LOWER: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = (c as u8).to_ascii_lowercase();
        c += 1;
    }
    t
};

#[inline(always)]
fn is(b: u8, class: u8) -> bool {
    CLASS[b as usize] & class != 0
}

/// Where the folded text goes: nowhere (the hot path, compiled without a
/// branch per token) or into a `String`.
trait Folded {
    fn emit(&mut self, bytes: &[u8]);
    fn emit_lower(&mut self, bytes: &[u8]);
    /// a literal at `start..end` of the scanned text
    #[inline(always)]
    fn literal(&mut self, _start: usize, _end: usize, _kind: LiteralKind) {}
}

impl Folded for () {
    #[inline(always)]
    fn emit(&mut self, _: &[u8]) {}
    #[inline(always)]
    fn emit_lower(&mut self, _: &[u8]) {}
}

/// What kind of literal the scanner replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteralKind {
    /// a numeric constant
    Number,
    /// a plain `'...'` string, closed
    String,
    /// an unclosed string, an `E'...'` string or a dollar-quoted one
    Other,
}

/// Where the scanner found literals in the text: `(start, end, kind)`.
pub type LiteralSpans = SmallVec<[(usize, usize, LiteralKind); 8]>;

impl Folded for LiteralSpans {
    #[inline(always)]
    fn emit(&mut self, _: &[u8]) {}
    #[inline(always)]
    fn emit_lower(&mut self, _: &[u8]) {}
    #[inline(always)]
    fn literal(&mut self, start: usize, end: usize, kind: LiteralKind) {
        self.push((start, end, kind));
    }
}

impl Folded for String {
    fn emit(&mut self, bytes: &[u8]) {
        self.push_str(&String::from_utf8_lossy(bytes));
    }
    fn emit_lower(&mut self, bytes: &[u8]) {
        self.push_str(&String::from_utf8_lossy(bytes).to_ascii_lowercase());
    }
}

/// Scans one statement. `text_out`, when given, receives the folded text.
pub fn scan(sql: &[u8], text_out: Option<&mut String>) -> Shape {
    match text_out {
        Some(out) => scan_into(sql, out),
        None => scan_into(sql, &mut ()),
    }
}

/// [`scan`], also telling where each literal is.
pub fn scan_literals(sql: &[u8], spans: &mut LiteralSpans) -> Shape {
    scan_into(sql, spans)
}

fn scan_into<F: Folded>(sql: &[u8], out: &mut F) -> Shape {
    let mut shape = HashBuf::new();
    let mut values = 0;
    let mut literals = 0usize;
    let mut last_space = true;
    let mut i = 0;
    let n = sql.len();
    let mut literal =
        |(start, end): (usize, usize), kind: LiteralKind, shape: &mut HashBuf, out: &mut F| {
            values = values_hash(values, &sql[start..end]);
            literals += 1;
            let placeholder = if kind == LiteralKind::Number {
                b"?n"
            } else {
                b"?s"
            };
            shape.update(placeholder);
            out.emit(placeholder);
            out.literal(start, end, kind);
        };
    while i < n {
        let c = sql[i];
        let class = CLASS[c as usize];
        if class & SPACE != 0 {
            if !last_space {
                shape.push(b' ');
                out.emit(b" ");
                last_space = true;
            }
            i += 1;
            continue;
        }
        if class & IDENT_START != 0
            && !((c == b'E' || c == b'e')
                && sql.get(i + 1) == Some(&b'\'')
                && !prev_is_ident(sql, i))
        {
            let start = i;
            i = shape.identifier(sql, i);
            out.emit_lower(&sql[start..i]);
            last_space = false;
            continue;
        }
        match c {
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr(b'\n', &sql[i..]).map_or(n, |p| i + p);
                continue;
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < n {
                    if sql[i] == b'/' && sql.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if sql[i] == b'*' && sql.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'\'' => {
                let start = i;
                let closed;
                (i, closed) = string_end(sql, i, false);
                let kind = if closed {
                    LiteralKind::String
                } else {
                    LiteralKind::Other
                };
                literal((start, i), kind, &mut shape, out);
            }
            b'E' | b'e' => {
                // E'...' (the identifier branch above took every other E)
                let start = i;
                i = skip_string(sql, i + 1, true);
                literal((start, i), LiteralKind::Other, &mut shape, out);
            }
            b'$' if sql.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i += 1;
                while i < n && sql[i].is_ascii_digit() {
                    i += 1;
                }
                shape.push(b'$');
                out.emit(b"$");
            }
            b'$' if !prev_is_ident(sql, i) => {
                // dollar-quoted string: $tag$ ... $tag$
                let tag_end = memchr::memchr(b'$', &sql[i + 1..]).map(|p| i + 1 + p);
                match tag_end {
                    Some(te)
                        if sql[i + 1..te]
                            .iter()
                            .all(|b| b.is_ascii_alphanumeric() || *b == b'_') =>
                    {
                        let tag = &sql[i..=te];
                        let body_start = te + 1;
                        let close = find(&sql[body_start..], tag)
                            .map(|p| body_start + p + tag.len())
                            .unwrap_or(n);
                        literal((i, close), LiteralKind::Other, &mut shape, out);
                        i = close;
                    }
                    _ => {
                        shape.push(b'$');
                        out.emit(b"$");
                        i += 1;
                    }
                }
            }
            b'0'..=b'9' if !prev_is_ident(sql, i) => {
                let start = i;
                i = number_end(sql, i);
                literal((start, i), LiteralKind::Number, &mut shape, out);
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < n {
                    if sql[i] == b'"' {
                        if sql.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
                let w = &sql[start..i];
                shape.update(w);
                out.emit(w);
            }
            _ => {
                shape.push(c);
                out.emit(&sql[i..i + 1]);
                i += 1;
            }
        }
        last_space = false;
    }
    Shape {
        hash: shape.digest(),
        values,
        literals,
    }
}

/// The hash of a statement's literal values so far, `values`, with one
/// more literal: each literal's hash is seeded with the hash of those
/// before it (starting at 0), no gathering of the values needed.
#[inline]
pub fn values_hash(values: u64, literal: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(literal, values)
}

fn prev_is_ident(sql: &[u8], i: usize) -> bool {
    i > 0 && is(sql[i - 1], IDENT_PREV)
}

/// Whether a byte that ends a token makes the next digit, `$` or `E'`
/// part of a word (what [`prev_is_ident`] asks of the byte before).
pub(crate) fn ends_word(b: u8) -> bool {
    is(b, IDENT_PREV)
}

/// The end of the numeric literal that starts (with a digit) at `sql[i]`.
pub(crate) fn number_end(sql: &[u8], mut i: usize) -> usize {
    let n = sql.len();
    while i < n && is(sql[i], NUMBER) {
        // exponent sign
        if (sql[i] == b'e' || sql[i] == b'E') && matches!(sql.get(i + 1), Some(b'+') | Some(b'-')) {
            i += 1;
        }
        i += 1;
    }
    i
}

fn skip_string(sql: &[u8], quote: usize, backslashes: bool) -> usize {
    string_end(sql, quote, backslashes).0
}

/// The end of the string literal whose opening quote is `sql[quote]`, and
/// whether it was closed (an unclosed one runs to the end of the text).
pub(crate) fn string_end(sql: &[u8], quote: usize, backslashes: bool) -> (usize, bool) {
    let mut i = quote + 1;
    while i < sql.len() {
        match sql[i] {
            b'\\' if backslashes => i += 2,
            b'\'' if sql.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return (i + 1, true),
            _ => i += 1,
        }
    }
    (sql.len(), false)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits a simple-query string into statements at top-level semicolons
/// (outside strings, quoted identifiers, comments and dollar quotes).
/// Empty statements are dropped; the pieces keep their original text. One
/// statement (nearly every query) is returned without a heap allocation.
pub fn split_statements(sql: &str) -> SmallVec<[&str; 1]> {
    let b = sql.as_bytes();
    // Fast path (most simple queries): one statement, at most a trailing
    // semicolon, nothing before it that could hide a semicolon or nest.
    let single = match memchr::memchr(b';', b) {
        None => Some(sql),
        Some(p)
            if b[p + 1..].iter().all(u8::is_ascii_whitespace)
                && memchr::memchr3(b'\'', b'"', b'$', &b[..p]).is_none()
                && memchr::memchr3(b'-', b'/', b'(', &b[..p]).is_none() =>
        {
            Some(&sql[..p])
        }
        Some(_) => None,
    };
    if let Some(one) = single {
        let one = one.trim();
        return if one.is_empty() {
            SmallVec::new()
        } else {
            smallvec::smallvec![one]
        };
    }
    SmallVec::from_vec(split_statements_scanning(sql))
}

/// [`split_statements`] without its fast path: the full scan (public for
/// the fuzz target that checks both agree).
#[doc(hidden)]
pub fn split_statements_scanning(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut depth = 0i32;
    while i < b.len() {
        match b[i] {
            b'\'' => i = skip_string(b, i, i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e')),
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut d = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        d += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        d -= 1;
                        i += 2;
                        if d == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' if !prev_is_ident(b, i) && !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&c| c == b'$')
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(te)
                        if b[i + 1..te]
                            .iter()
                            .all(|c| c.is_ascii_alphanumeric() || *c == b'_') =>
                    {
                        let tag = &b[i..=te];
                        i = find(&b[te + 1..], tag)
                            .map(|p| te + 1 + p + tag.len())
                            .unwrap_or(b.len());
                    }
                    _ => i += 1,
                }
            }
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth -= 1;
                i += 1;
            }
            b';' if depth <= 0 => {
                let stmt = sql[start..i].trim();
                if !stmt.is_empty() {
                    out.push(stmt);
                }
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    let tail = sql.get(start..).unwrap_or("").trim();
    if !tail.is_empty() {
        out.push(tail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(sql: &str) -> Vec<&str> {
        split_statements(sql).to_vec()
    }

    fn folded(sql: &str) -> String {
        let mut s = String::new();
        scan(sql.as_bytes(), Some(&mut s));
        s
    }

    #[test]
    fn gathered_hashing_equals_one_shot_hashing_at_any_length() {
        for total in [0usize, 1, 511, 512, 513, 1500, 5000] {
            let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
            let mut h = HashBuf::new();
            for piece in data.chunks(13) {
                h.update(piece);
            }
            assert_eq!(
                h.digest(),
                xxhash_rust::xxh3::xxh3_64(&data),
                "length {total}"
            );
        }
        // a statement longer than the buffer hashes like its folded text
        let long = format!("select {} from t", vec!["col"; 400].join(", "));
        let mut folded = String::new();
        let s = scan(long.as_bytes(), Some(&mut folded));
        assert_eq!(s.hash, xxhash_rust::xxh3::xxh3_64(folded.as_bytes()));
    }

    #[test]
    fn literals_whitespace_comments_and_case_fold_away() {
        let a = scan(b"SELECT * FROM users WHERE id = 42", None);
        let b = scan(
            b"select *\n  from USERS -- comment\n where id = /* x */ 7",
            None,
        );
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.values, b.values);
        assert_eq!(
            folded("SELECT  'a''b', E'x\\'y', $$q$$, 1.5e-3 FROM \"T\""),
            "select ?s, ?s, ?s, ?n from \"T\""
        );
    }

    #[test]
    fn same_values_hash_alike_and_params_are_not_values() {
        let a = scan(b"SELECT * FROM t WHERE a = 1 AND b = 'x'", None);
        let b = scan(b"SELECT * FROM t WHERE a = 1 AND b = 'x'", None);
        assert_eq!(a, b);
        let p = scan(b"SELECT * FROM t WHERE a = $1", None);
        assert_eq!(p.literals, 0);
        assert_eq!(folded("SELECT $1, $22"), "select $, $");
    }

    #[test]
    fn identifiers_with_digits_are_not_numbers() {
        assert_eq!(folded("SELECT col1 FROM t2"), "select col1 from t2");
    }

    #[test]
    fn statements_split_at_top_level_semicolons_only() {
        let s = split("SELECT ';'; SELECT $$a;b$$ ; -- c;\nSELECT \"x;y\" ; ;");
        assert_eq!(
            s,
            vec!["SELECT ';'", "SELECT $$a;b$$", "-- c;\nSELECT \"x;y\""]
        );
        assert_eq!(split("SELECT 1"), vec!["SELECT 1"]);
        assert_eq!(split("SELECT 1;"), vec!["SELECT 1"]);
        assert_eq!(split("  SELECT 1 ;  \n"), vec!["SELECT 1"]);
        assert_eq!(split(";"), Vec::<&str>::new());
        assert_eq!(split("  "), Vec::<&str>::new());
        assert_eq!(split("SELECT 'a;'"), vec!["SELECT 'a;'"]);
        assert_eq!(split("SELECT (1);"), vec!["SELECT (1)"]);
        assert_eq!(split("SELECT 1; SELECT 2"), vec!["SELECT 1", "SELECT 2"]);
        assert_eq!(split("SELECT 1;;"), vec!["SELECT 1"]);
    }
}
