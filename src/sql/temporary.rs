//! Temporary relations: which statements create one or name the session's
//! temporary schema.
//!
//! A temporary table, view or sequence lives in its session's `pg_temp`
//! schema, which Postgres searches first: it hides the permanent relation
//! of the same name from that session only, and stays on the server
//! connection (for whoever uses it next) until the session ends or
//! `DISCARD ALL`. It comes in many spellings — `CREATE TEMP TABLE`,
//! `CREATE LOCAL TEMPORARY TABLE`, `CREATE TABLE pg_temp.t`,
//! `SELECT … INTO TEMP t`, `CREATE TEMP TABLE t AS …`, `CREATE TEMP VIEW`,
//! `EXPLAIN ANALYZE CREATE TEMP TABLE …`, behind comments — so the parse
//! tree decides, not the first words. (A DO block or a procedure may create
//! one too, out of sight: the caller treats those on their own.)

use super::comments::{is_ident_byte, lexeme_at, Lexeme};

/// What a text says that may concern temporary relations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mention {
    /// a name starting with `pg_temp` (the temporary schema, `pg_temp_3`)
    Schema,
    /// the word TEMP or TEMPORARY (or a column named so)
    Keyword,
}

/// True when `sql` (one statement or several) may create a temporary
/// relation, or names the temporary schema. Most texts are answered by a
/// lexical pass (outside comments and literals: no `TEMP`, `TEMPORARY` or
/// `pg_temp…` word, no temporary relation); the rest are parsed, and one
/// the parser rejects counts as one that does (the server may read it
/// otherwise).
pub fn uses_temporary(sql: &[u8]) -> bool {
    match mention(sql) {
        None => false,
        Some(Mention::Schema) => true,
        Some(Mention::Keyword) => creates_temporary(sql),
    }
}

/// The strongest mention in `sql`, outside comments and literals.
fn mention(sql: &[u8]) -> Option<Mention> {
    // this runs for every statement: most have no `temp` at all, which a
    // search for its `m` tells fast
    let may = memchr::memchr2_iter(b'm', b'M', sql).any(|i| {
        i >= 2
            && sql
                .get(i - 2..i + 2)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"temp"))
    });
    if !may {
        return None;
    }
    let mut found = None;
    let mut i = 0;
    while i < sql.len() {
        match lexeme_at(sql, i) {
            Lexeme::Comment(end) | Lexeme::Literal(end) => {
                i = end;
                continue;
            }
            // (a quoted name is read inside: `"pg_temp".t` is the schema)
            Lexeme::QuotedName(_) | Lexeme::Other => {}
        }
        let word_start = i == 0 || !is_ident_byte(sql[i - 1]);
        if word_start && matches!(sql[i], b'p' | b'P' | b't' | b'T') {
            let rest = &sql[i..];
            let is = |w: &[u8]| rest.len() >= w.len() && rest[..w.len()].eq_ignore_ascii_case(w);
            let ends = |n: usize| rest.get(n).is_none_or(|&c| !is_ident_byte(c));
            if is(b"pg_temp") {
                return Some(Mention::Schema);
            }
            if (is(b"temp") && ends(4)) || (is(b"temporary") && ends(9)) {
                found = Some(Mention::Keyword);
            }
        }
        i += 1;
    }
    found
}

/// Parses `sql`: true when a relation in its tree is temporary (its
/// persistence `t`: `CREATE TEMP …`, `INTO TEMP …`, also inside EXPLAIN) or
/// in a `pg_temp` schema, or when it does not parse.
fn creates_temporary(sql: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(sql) else {
        return true;
    };
    let Ok(parsed) = pg_query::parse(text, pg_query::ParserOptions::DEFAULT) else {
        return true;
    };
    // every node, whatever statement holds it (the tree's own iterator
    // skips some, such as SELECT's INTO clause)
    match serde_json::to_value(&parsed.protobuf) {
        Ok(tree) => names_temporary(&tree),
        Err(_) => true,
    }
}

/// Looks through a parse tree (as JSON) for a temporary relation.
fn names_temporary(node: &serde_json::Value) -> bool {
    use serde_json::Value;
    match node {
        Value::Object(fields) => {
            let temporary = fields
                .get("relpersistence")
                .is_some_and(|p| p.as_str() == Some("t"));
            let in_temp_schema = fields
                .get("schemaname")
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with("pg_temp"));
            temporary || in_temp_schema || fields.values().any(names_temporary)
        }
        Value::Array(items) => items.iter().any(names_temporary),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_temporary_relation_is_seen() {
        for sql in [
            "CREATE TEMP TABLE posts (id int)",
            "create temporary table posts (id int)",
            "CREATE LOCAL TEMP TABLE posts (id int)",
            "CREATE GLOBAL TEMPORARY TABLE posts (id int)",
            "/* c */ CREATE TEMP TABLE posts (id int)",
            "-- c\rCREATE TEMP TABLE posts (id int)",
            "CREATE TABLE pg_temp.posts (id int)",
            "CREATE TABLE PG_TEMP.posts (id int)",
            "CREATE TABLE \"pg_temp\".posts (id int)",
            "INSERT INTO pg_temp_3.posts VALUES (1)",
            "SELECT 1 AS id INTO TEMP posts",
            "SELECT 1 AS id INTO TEMPORARY TABLE posts",
            "CREATE TEMP TABLE posts AS SELECT 1 AS id",
            "CREATE TEMP VIEW posts AS SELECT 1 AS id",
            "CREATE TEMP SEQUENCE posts",
            "EXPLAIN ANALYZE CREATE TEMP TABLE posts AS SELECT 1",
            "SELECT 1; CREATE TEMP TABLE posts (id int)",
            "CREATE TEMP TABLE", // rejected by the parser
        ] {
            assert!(uses_temporary(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "CREATE TABLE posts (id int)",
            "SELECT temp FROM weather",
            "SELECT temperature, tempo, attempt FROM weather",
            "SELECT 'temp', 'pg_temp' FROM weather -- temp\n",
            "SELECT $$ TEMP $$ /* CREATE TEMP TABLE x */",
            "SELECT my_pg_temp FROM t",
            "SELECT 1 AS id INTO posts",
        ] {
            assert!(!uses_temporary(sql.as_bytes()), "{sql}");
        }
    }
}
