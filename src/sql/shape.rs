//! A fast lexical pass over SQL text that runs before any parser call: it
//! folds whitespace, comments and keyword case, replaces literals with typed
//! placeholders, and hashes both the resulting *shape* and the literal
//! values. Statements that differ only in literal values (what an ORM on
//! psycopg2 sends on every iteration of an N+1 loop) share a shape, so the
//! parser runs once per shape, not once per statement. It also splits a
//! simple-query string into its statements.

use xxhash_rust::xxh3::Xxh3;

/// The result of scanning one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// hash of the folded text with placeholders
    pub hash: u64,
    /// hash of the literal values in order (0 when there are none)
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

    /// Appends `bytes` folded to lower case.
    #[inline]
    fn update_lower(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() <= self.buf.len() {
            for (d, s) in self.buf[self.len..self.len + bytes.len()]
                .iter_mut()
                .zip(bytes)
            {
                *d = s.to_ascii_lowercase();
            }
            self.len += bytes.len();
        } else {
            self.update(&bytes.to_ascii_lowercase());
        }
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

/// Scans one statement. `text_out`, when given, receives the folded text.
pub fn scan(sql: &[u8], mut text_out: Option<&mut String>) -> Shape {
    let mut shape = HashBuf::new();
    let mut values = HashBuf::new();
    let mut literals = 0usize;
    let mut last_space = true;
    let mut i = 0;
    let n = sql.len();
    let emit = |bytes: &[u8], shape: &mut HashBuf, out: &mut Option<&mut String>| {
        shape.update(bytes);
        if let Some(o) = out.as_deref_mut() {
            o.push_str(&String::from_utf8_lossy(bytes));
        }
    };
    while i < n {
        let c = sql[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                if !last_space {
                    emit(b" ", &mut shape, &mut text_out);
                    last_space = true;
                }
                i += 1;
                continue;
            }
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                while i < n && sql[i] != b'\n' {
                    i += 1;
                }
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
                i = skip_string(sql, i, false);
                values.update(&sql[start..i]);
                values.update(&[0]);
                literals += 1;
                emit(b"?s", &mut shape, &mut text_out);
            }
            b'E' | b'e' if sql.get(i + 1) == Some(&b'\'') && !prev_is_ident(sql, i) => {
                let start = i;
                i = skip_string(sql, i + 1, true);
                values.update(&sql[start..i]);
                values.update(&[0]);
                literals += 1;
                emit(b"?s", &mut shape, &mut text_out);
            }
            b'$' if sql.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i += 1;
                while i < n && sql[i].is_ascii_digit() {
                    i += 1;
                }
                emit(b"$", &mut shape, &mut text_out);
            }
            b'$' if !prev_is_ident(sql, i) => {
                // dollar-quoted string: $tag$ ... $tag$
                let tag_end = sql[i + 1..]
                    .iter()
                    .position(|&b| b == b'$')
                    .map(|p| i + 1 + p);
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
                        values.update(&sql[i..close]);
                        values.update(&[0]);
                        literals += 1;
                        i = close;
                        emit(b"?s", &mut shape, &mut text_out);
                    }
                    _ => {
                        emit(b"$", &mut shape, &mut text_out);
                        i += 1;
                    }
                }
            }
            b'0'..=b'9' if !prev_is_ident(sql, i) => {
                let start = i;
                while i < n && (sql[i].is_ascii_alphanumeric() || sql[i] == b'.' || sql[i] == b'_')
                {
                    // exponent sign
                    if (sql[i] == b'e' || sql[i] == b'E')
                        && matches!(sql.get(i + 1), Some(b'+') | Some(b'-'))
                    {
                        i += 1;
                    }
                    i += 1;
                }
                values.update(&sql[start..i]);
                values.update(&[0]);
                literals += 1;
                emit(b"?n", &mut shape, &mut text_out);
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
                emit(&sql[start..i], &mut shape, &mut text_out);
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < n
                    && (sql[i].is_ascii_alphanumeric()
                        || sql[i] == b'_'
                        || sql[i] == b'$'
                        || sql[i] >= 0x80)
                {
                    i += 1;
                }
                let w = &sql[start..i];
                shape.update_lower(w);
                if let Some(o) = text_out.as_deref_mut() {
                    o.push_str(&String::from_utf8_lossy(w).to_ascii_lowercase());
                }
            }
            _ => {
                shape.push(c);
                if let Some(o) = text_out.as_deref_mut() {
                    o.push_str(&String::from_utf8_lossy(&sql[i..i + 1]));
                }
                i += 1;
            }
        }
        last_space = false;
    }
    Shape {
        hash: shape.digest(),
        values: if literals == 0 { 0 } else { values.digest() },
        literals,
    }
}

fn prev_is_ident(sql: &[u8], i: usize) -> bool {
    i > 0 && (sql[i - 1].is_ascii_alphanumeric() || sql[i - 1] == b'_' || sql[i - 1] >= 0x80)
}

fn skip_string(sql: &[u8], quote: usize, backslashes: bool) -> usize {
    let mut i = quote + 1;
    while i < sql.len() {
        match sql[i] {
            b'\\' if backslashes => i += 2,
            b'\'' if sql.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    sql.len()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits a simple-query string into statements at top-level semicolons
/// (outside strings, quoted identifiers, comments and dollar quotes).
/// Empty statements are dropped; the pieces keep their original text.
pub fn split_statements(sql: &str) -> Vec<&str> {
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
            Vec::new()
        } else {
            vec![one]
        };
    }
    split_statements_scanning(sql)
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
        let s = split_statements("SELECT ';'; SELECT $$a;b$$ ; -- c;\nSELECT \"x;y\" ; ;");
        assert_eq!(
            s,
            vec!["SELECT ';'", "SELECT $$a;b$$", "-- c;\nSELECT \"x;y\""]
        );
        assert_eq!(split_statements("SELECT 1"), vec!["SELECT 1"]);
        assert_eq!(split_statements("SELECT 1;"), vec!["SELECT 1"]);
        assert_eq!(split_statements("  SELECT 1 ;  \n"), vec!["SELECT 1"]);
        assert_eq!(split_statements(";"), Vec::<&str>::new());
        assert_eq!(split_statements("  "), Vec::<&str>::new());
        assert_eq!(split_statements("SELECT 'a;'"), vec!["SELECT 'a;'"]);
        assert_eq!(split_statements("SELECT (1);"), vec!["SELECT (1)"]);
        assert_eq!(
            split_statements("SELECT 1; SELECT 2"),
            vec!["SELECT 1", "SELECT 2"]
        );
        assert_eq!(split_statements("SELECT 1;;"), vec!["SELECT 1"]);
    }
}
