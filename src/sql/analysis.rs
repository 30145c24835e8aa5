//! The analyzer: memoized per exact text and per literal-stripped shape,
//! libpg_query (`pg_query`: normalize, fingerprint, summary) on a miss, and a
//! token-based fallback for text the parser rejects.

use super::shape::{self, LiteralSpans, Shape};
use super::template::{Template, Templates, MAX_TEXT};
use crate::stats::Tally;
use moka::sync::Cache;
use std::borrow::Cow;
use std::sync::Arc;

/// What kind of statement it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// SELECT, VALUES, TABLE
    Select,
    /// INSERT
    Insert,
    /// UPDATE
    Update,
    /// DELETE
    Delete,
    /// MERGE
    Merge,
    /// COPY
    Copy,
    /// CREATE, ALTER, DROP, GRANT, TRUNCATE, …
    Ddl,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, …
    Transaction,
    /// SET, SHOW, EXPLAIN, LISTEN, … and what does not parse
    Utility,
}

impl Kind {
    /// The label value used in metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Select => "select",
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Merge => "merge",
            Kind::Copy => "copy",
            Kind::Ddl => "ddl",
            Kind::Transaction => "transaction",
            Kind::Utility => "utility",
        }
    }
}

/// Everything pgsift knows about one statement text (shared by every text of
/// the same shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// 64-bit fingerprint
    pub fingerprint: u64,
    /// constants replaced by `$n`, as Postgres's own normalizer writes it
    pub normalized: String,
    /// statement kind
    pub kind: Kind,
    /// tables the statement reads
    pub reads: Vec<String>,
    /// tables the statement writes
    pub writes: Vec<String>,
    /// false when the parser rejected the text (token-based fallback)
    pub parsed: bool,
    /// functions called (lower-case, without schema)
    pub functions: Vec<String>,
    /// a single read-only SELECT/VALUES/TABLE: no locking clause, no
    /// data-modifying CTE, no SELECT INTO, no CURRENT_TIMESTAMP-style value
    /// function. Whether its functions are immutable is decided per database.
    pub read_only: bool,
    /// what it writes cannot be known from the text (CALL, DO, EXECUTE,
    /// text the parser rejects): it invalidates the whole database
    pub opaque: bool,
    /// its executions, counted here so that recording one needs no table
    /// lookup (see [`crate::stats::QueryStats`])
    pub tally: Tally,
}

impl Analysis {
    /// The fingerprint as 16 hex digits.
    pub fn fingerprint_hex(&self) -> String {
        format!("{:016x}", self.fingerprint)
    }
}

/// Memoized statement analysis, shared by all sessions.
pub struct Analyzer {
    /// shape (the text with literals, whitespace, comments and case folded
    /// away) → analysis. One lookup per execution: texts with fresh
    /// literals each time (most ORM traffic) would only churn a memo of
    /// exact texts.
    by_shape: Cache<u64, Arc<Analysis>, rustc_hash::FxBuildHasher>,
}

impl Default for Analyzer {
    fn default() -> Self {
        Self::new(50_000)
    }
}

/// The analysis of one execution: the statement's analysis and a hash of its
/// literal values (inlined literals; 0 when there are none).
#[derive(Debug, Clone)]
pub struct Analyzed {
    /// the statement
    pub analysis: Arc<Analysis>,
    /// hash of the literals in the text
    pub values: u64,
}

/// Longest normalized text kept (for reports and statistics): a client
/// sending huge distinct statements must not fill memory with their copies.
pub const MAX_SHOWN: usize = 8 * 1024;

/// `text` cut to at most [`MAX_SHOWN`] bytes (at a character boundary),
/// marked with `…` where it was cut.
pub fn shorten(mut text: String) -> String {
    if text.len() > MAX_SHOWN {
        let mut cut = MAX_SHOWN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl Analysis {
    /// About how much memory the analysis holds, in KiB (at least 1).
    fn weight(&self) -> u32 {
        let names = |v: &[String]| v.iter().map(|s| s.len() + 24).sum::<usize>();
        let bytes = 128
            + self.normalized.len()
            + names(&self.reads)
            + names(&self.writes)
            + names(&self.functions);
        (1 + bytes / 1024).min(u32::MAX as usize) as u32
    }
}

impl Analyzer {
    /// An analyzer remembering up to `capacity` statement shapes of
    /// ordinary size: a shape weighs a unit per KiB its analysis holds.
    pub fn new(capacity: u64) -> Analyzer {
        Analyzer {
            by_shape: Cache::builder()
                .max_capacity(capacity)
                .weigher(|_, a: &Arc<Analysis>| a.weight())
                .build_with_hasher(rustc_hash::FxBuildHasher),
        }
    }

    /// Analyzes one statement. Never fails.
    pub fn analyze(&self, sql: &str) -> Analyzed {
        self.analyze_with(sql, None)
    }

    /// [`Analyzer::analyze`], looking in `memo` (one session's recent
    /// shapes) before the shared table: a session repeating its statements
    /// skips the shared table's bookkeeping. (The shared table then does not
    /// see those repeats; a shape it evicts is parsed again by the next
    /// session that meets it.)
    pub fn analyze_remembering(&self, sql: &str, memo: &mut ShapeMemo) -> Analyzed {
        self.analyze_with(sql, Some(memo))
    }

    fn analyze_with(&self, sql: &str, memo: Option<&mut ShapeMemo>) -> Analyzed {
        let s = shape::scan(sql.as_bytes(), None);
        self.analysis_of(sql, &s, memo)
    }

    /// Analyzes each statement of a simple query's text (a Query message
    /// without its NUL), read as UTF-8 with invalid bytes repaired: `each`
    /// gets each statement's analysis and text, in order. A text with one
    /// statement is kept in `memo` as a template; a text that matches one
    /// of its templates (the same text with other literal values) is
    /// neither split nor scanned.
    pub fn analyze_query(
        &self,
        text: &[u8],
        memo: &mut ShapeMemo,
        mut each: impl FnMut(Analyzed, &[u8]),
    ) {
        if let Some(r) = memo.templates.recall(text) {
            let analyzed = Analyzed {
                analysis: r.analysis,
                values: r.values,
            };
            each(analyzed, &text[r.statement]);
            return;
        }
        let sql = String::from_utf8_lossy(text);
        let statements = shape::split_statements(&sql);
        // a text read with repairs is not the text a template would match
        if statements.len() == 1 && matches!(sql, Cow::Borrowed(_)) && text.len() <= MAX_TEXT {
            let stmt = statements[0];
            let start = stmt.as_ptr() as usize - sql.as_ptr() as usize;
            let mut spans = LiteralSpans::new();
            let s = shape::scan_literals(stmt.as_bytes(), &mut spans);
            let analyzed = self.analysis_of(stmt, &s, Some(memo));
            let statement = start..start + stmt.len();
            if let Some(t) = Template::new(text, statement, &spans, analyzed.analysis.clone()) {
                memo.templates.learn(t);
            }
            each(analyzed, stmt.as_bytes());
            return;
        }
        for stmt in statements {
            each(self.analyze_with(stmt, Some(memo)), stmt.as_bytes());
        }
    }

    /// The analysis of `sql`, scanned as `s`: from `memo`, the shared
    /// table, or the parser.
    fn analysis_of(&self, sql: &str, s: &Shape, memo: Option<&mut ShapeMemo>) -> Analyzed {
        let values = s.values;
        if let Some(a) = memo.as_ref().and_then(|m| m.shapes.get(&s.hash)) {
            return Analyzed {
                analysis: a.clone(),
                values,
            };
        }
        let analysis = match self.by_shape.get(&s.hash) {
            Some(a) => a,
            None => {
                let a = Arc::new(analyze_with_parser(sql));
                self.by_shape.insert(s.hash, a.clone());
                a
            }
        };
        if let Some(memo) = memo {
            if memo.shapes.len() >= ShapeMemo::CAPACITY {
                memo.shapes.clear();
            }
            memo.shapes.insert(s.hash, analysis.clone());
        }
        Analyzed { analysis, values }
    }
}

/// The analyses of one session's most recent statement shapes (an analysis
/// depends on its shape alone, so a copy never goes stale), and its most
/// recent simple-query texts as templates.
#[derive(Default)]
pub struct ShapeMemo {
    shapes: rustc_hash::FxHashMap<u64, Arc<Analysis>>,
    templates: Templates,
}

impl ShapeMemo {
    /// Shapes kept; a session using more starts over (most use a few).
    const CAPACITY: usize = 64;
}

/// The slow path: libpg_query. Fingerprints are taken of the normalized
/// text so that inlined literals and `$n` parameters give the same one.
fn analyze_with_parser(sql: &str) -> Analysis {
    let normalized = pg_query::normalize(sql);
    let Ok(normalized) = normalized else {
        return fallback(sql);
    };
    let fp = pg_query::fingerprint(&normalized, 0, pg_query::FingerprintOptions::FULL_RELNAME);
    let summary = pg_query::summary(&normalized, 0, -1);
    match (fp, summary) {
        (Ok(fp), Ok(summary)) => {
            let kind = summary
                .statement_types()
                .first()
                .map(|t| kind_of(t))
                .unwrap_or(Kind::Utility);
            let mut writes = summary.dml_tables();
            if kind == Kind::Ddl {
                writes.extend(summary.ddl_tables());
            }
            let mut reads = summary.select_tables();
            let statements = summary.statement_types().len();
            if kind == Kind::Copy && has_word(&normalized, "from") {
                writes.extend(summary.tables());
            }
            reads.sort();
            reads.dedup();
            writes.sort();
            writes.dedup();
            let mut functions: Vec<String> = summary
                .functions()
                .into_iter()
                .map(|f| f.rsplit('.').next().unwrap_or(&f).to_ascii_lowercase())
                .collect();
            functions.sort();
            functions.dedup();
            let opaque = summary.statement_types().iter().any(|t| {
                matches!(
                    *t,
                    "CallStmt" | "DoStmt" | "ExecuteStmt" | "CreateFunctionStmt"
                )
            });
            let read_only = kind == Kind::Select
                && statements == 1
                && writes.is_empty()
                && !reads.is_empty()
                && !has_locking_or_value_function(&normalized);
            Analysis {
                fingerprint: fp.value,
                // folded for reading only: `IN ($1, ...)` does not parse
                normalized: shorten(collapse_lists(fold_space_and_comments(&normalized))),
                kind,
                reads,
                writes,
                parsed: true,
                functions,
                read_only,
                opaque,
                tally: Tally::default(),
            }
        }
        _ => fallback(sql),
    }
}

/// The parser's normalized text with comments dropped and each run of
/// whitespace made one space (none at the ends), as SPEC §6 reads it.
/// Quoted identifiers, strings and dollar-quoted bodies stay as written.
pub fn fold_space_and_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    let mut i = 0;
    // copies b[from..to] (whole characters: every cut is at ASCII)
    let copy = |out: &mut String, space: &mut bool, from: usize, to: usize| {
        if *space && !out.is_empty() {
            out.push(' ');
        }
        *space = false;
        out.push_str(&text[from..to]);
    };
    while i < b.len() {
        match b[i] {
            c if c.is_ascii_whitespace() => {
                space = true;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                space = true;
                i = memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |n| i + n + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                space = true;
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            q @ (b'"' | b'\'') => {
                // to the closing quote (a doubled quote stays inside)
                let mut j = i + 1;
                while j < b.len() {
                    if b[j] == q {
                        if b.get(j + 1) == Some(&q) {
                            j += 2;
                            continue;
                        }
                        j += 1;
                        break;
                    }
                    j += 1;
                }
                let end = j.min(b.len());
                copy(&mut out, &mut space, i, end);
                i = end;
            }
            b'$' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                // a dollar quote $tag$...$tag$, or a lone `$`
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
                    .map(|n| i + 1 + n)
                    .filter(|&n| b[n] == b'$');
                let end = match tag_end {
                    Some(t) => {
                        let tag = &text[i..=t];
                        text[t + 1..]
                            .find(tag)
                            .map_or(b.len(), |n| t + 1 + n + tag.len())
                    }
                    None => i + 1,
                };
                copy(&mut out, &mut space, i, end);
                i = end;
            }
            _ => {
                // a run of anything else
                let mut j = i + 1;
                while j < b.len()
                    && !matches!(b[j], b'-' | b'/' | b'"' | b'\'' | b'$')
                    && !b[j].is_ascii_whitespace()
                {
                    j += 1;
                }
                copy(&mut out, &mut space, i, j);
                i = j;
            }
        }
    }
    out
}

/// Collapses each `IN` list and `ARRAY[...]` of placeholders (`$n` from the
/// parser's normalization, `?n`/`?s` from the fallback's folding) to its
/// first element and `...`: `id IN ($1, $2, $3)` and `id IN ($1)` both read
/// `id IN ($1, ...)`, so one text stands for every length. Other lists
/// (VALUES rows, function arguments) stay as they are.
pub fn collapse_lists(text: String) -> String {
    let b = text.as_bytes();
    let mut out: Option<String> = None;
    // the `$n` a collapse took out, so that the rest can be numbered again
    let mut removed: Vec<u32> = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let open = if word_at(b, i, b"in") {
            skip_spaces(b, i + 2).filter(|&j| b.get(j) == Some(&b'('))
        } else if word_at(b, i, b"array") {
            skip_spaces(b, i + 5).filter(|&j| b.get(j) == Some(&b'['))
        } else {
            None
        };
        let Some(open) = open else {
            i += 1;
            continue;
        };
        let close = if b[open] == b'(' { b')' } else { b']' };
        match placeholder_list(b, open + 1, close) {
            Some((first_end, end)) => {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                let first_start = skip_spaces(b, open + 1).unwrap_or(open + 1);
                o.push_str(&text[copied..first_start]);
                o.push_str(&text[first_start..first_end]);
                o.push_str(", ...");
                o.push(close as char);
                removed.extend(dollar_numbers(&b[first_end..end]).map(|(_, _, n)| n));
                copied = end;
                i = end;
            }
            _ => i = open + 1,
        }
    }
    match out {
        Some(mut o) => {
            o.push_str(&text[copied..]);
            renumber(o, removed)
        }
        None => text,
    }
}

/// The `$n` placeholders in `b`: start, end and number of each.
fn dollar_numbers(b: &[u8]) -> impl Iterator<Item = (usize, usize, u32)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            let start = i;
            i += 1;
            let after_ident =
                start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
            if b[start] != b'$' || after_ident {
                continue;
            }
            let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 || digits > 9 {
                i += digits;
                continue;
            }
            let n = std::str::from_utf8(&b[i..i + digits]).ok()?.parse().ok()?;
            i += digits;
            return Some((start, i, n));
        }
        None
    })
}

/// Numbers the `$n` left after collapses without the gaps the numbers in
/// `removed` that no longer appear left:
/// `IN ($1, ...) AND x = $4` reads `IN ($1, ...) AND x = $2`, as it does
/// for a list of any other length.
fn renumber(text: String, mut removed: Vec<u32>) -> String {
    if removed.is_empty() {
        return text;
    }
    // a number the text still shows (the list's first element, a
    // parameter used twice) keeps its place
    let present: Vec<u32> = dollar_numbers(text.as_bytes()).map(|(_, _, n)| n).collect();
    removed.retain(|r| !present.contains(r));
    removed.sort_unstable();
    removed.dedup();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end, n) in dollar_numbers(text.as_bytes()) {
        let gone = removed.partition_point(|&r| r < n) as u32;
        out.push_str(&text[copied..start]);
        out.push('$');
        out.push_str(&n.saturating_sub(gone).to_string());
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Whether `word` (lowercase) starts at `i`, case-insensitively, as a whole word.
fn word_at(b: &[u8], i: usize, word: &[u8]) -> bool {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    b.len() >= i + word.len()
        && b[i..i + word.len()].eq_ignore_ascii_case(word)
        && (i == 0 || !ident(b[i - 1]))
        && b.get(i + word.len()).is_none_or(|&c| !ident(c))
}

/// The index of the first byte at or after `i` that is not a space.
fn skip_spaces(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    (i < b.len()).then_some(i)
}

/// A list of placeholders from `i` up to `close`: the end of the first
/// element and the index after `close`.
fn placeholder_list(b: &[u8], i: usize, close: u8) -> Option<(usize, usize)> {
    let mut i = skip_spaces(b, i)?;
    let mut first_end = 0;
    loop {
        // one placeholder: $digits, ?n or ?s
        let start = i;
        match b.get(i) {
            Some(b'$') => {
                i += 1;
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                if i == start + 1 {
                    return None;
                }
            }
            Some(b'?') if matches!(b.get(i + 1), Some(b'n' | b's')) => i += 2,
            _ => return None,
        }
        if first_end == 0 {
            first_end = i;
        }
        i = skip_spaces(b, i)?;
        match b[i] {
            b',' => i = skip_spaces(b, i + 1)?,
            c if c == close => return Some((first_end, i + 1)),
            _ => return None,
        }
    }
}

/// Text the parser rejects: fingerprint of the shape, kind from the first word.
fn fallback(sql: &str) -> Analysis {
    let mut folded = String::new();
    shape::scan(sql.as_bytes(), Some(&mut folded));
    let first = folded.split_whitespace().next().unwrap_or("");
    let kind = match first {
        "select" | "values" | "table" | "with" => Kind::Select,
        "insert" => Kind::Insert,
        "update" => Kind::Update,
        "delete" => Kind::Delete,
        "merge" => Kind::Merge,
        "copy" => Kind::Copy,
        "create" | "alter" | "drop" | "truncate" | "grant" | "revoke" | "comment" => Kind::Ddl,
        "begin" | "commit" | "rollback" | "savepoint" | "release" | "start" | "end" | "abort" => {
            Kind::Transaction
        }
        _ => Kind::Utility,
    };
    // the fingerprint of the folded text with its lists collapsed, so IN
    // lists of any length share it here too (the shape hash, which keys the
    // analysis memos, counts each constant)
    let folded = collapse_lists(folded);
    Analysis {
        fingerprint: xxhash_rust::xxh3::xxh3_64(folded.as_bytes()),
        normalized: shorten(folded),
        kind,
        reads: vec![],
        writes: vec![],
        parsed: false,
        functions: vec![],
        read_only: false,
        opaque: kind != Kind::Transaction,
        tally: Tally::default(),
    }
}

/// True when `word` appears as a whole word (case-insensitive) outside
/// string literals (normalized text has none).
fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// Locking clauses, SELECT INTO, and the SQL value functions that are not
/// function calls in the parse tree (CURRENT_TIMESTAMP, CURRENT_USER, …):
/// none of these may be cached.
fn has_locking_or_value_function(normalized: &str) -> bool {
    let words: Vec<String> = normalized
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let value_functions = [
        "current_date",
        "current_time",
        "current_timestamp",
        "localtime",
        "localtimestamp",
        "current_user",
        "current_role",
        "session_user",
        "user",
        "current_catalog",
        "current_schema",
    ];
    words
        .iter()
        .any(|w| value_functions.contains(&w.as_str()) || w == "into")
        || words
            .windows(2)
            .any(|p| p[0] == "for" && matches!(p[1].as_str(), "update" | "share" | "no" | "key"))
}

fn kind_of(statement_type: &str) -> Kind {
    match statement_type {
        "SelectStmt" => Kind::Select,
        "InsertStmt" => Kind::Insert,
        "UpdateStmt" => Kind::Update,
        "DeleteStmt" => Kind::Delete,
        "MergeStmt" => Kind::Merge,
        "CopyStmt" => Kind::Copy,
        "TransactionStmt" => Kind::Transaction,
        "TruncateStmt" | "GrantStmt" | "GrantRoleStmt" | "RenameStmt" | "CommentStmt"
        | "IndexStmt" | "ViewStmt" | "CreateTableAsStmt" | "RefreshMatViewStmt"
        // CREATE RULE; CREATE AGGREGATE, OPERATOR, COLLATION, TEXT SEARCH …,
        // base types; CREATE TYPE … AS (…); SECURITY LABEL; REASSIGN OWNED;
        // IMPORT FOREIGN SCHEMA
        | "RuleStmt" | "DefineStmt" | "CompositeTypeStmt" | "SecLabelStmt"
        | "ReassignOwnedStmt" | "ImportForeignSchemaStmt" => Kind::Ddl,
        t if t.starts_with("Create") || t.starts_with("Alter") || t.starts_with("Drop") => {
            Kind::Ddl
        }
        _ => Kind::Utility,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(sql: &str) -> u64 {
        Analyzer::new(100).analyze(sql).analysis.fingerprint
    }

    #[test]
    fn statements_differing_only_in_constants_whitespace_comments_or_case_share_a_fingerprint() {
        let base = fp("SELECT * FROM users WHERE id = 1");
        assert_eq!(base, fp("select *   from users\n where id = 42 -- hi"));
        assert_eq!(base, fp("SELECT /* c */ * FROM Users WHERE ID = 7"));
    }

    #[test]
    fn schema_changes_without_create_alter_or_drop_in_their_node_name_are_ddl() {
        let a = Analyzer::new(100);
        for sql in [
            "CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY t",
            "CREATE OR REPLACE RULE r AS ON UPDATE TO t DO INSTEAD NOTHING",
            "CREATE TYPE pair AS (a int, b text)",
            "CREATE AGGREGATE agg (int) (sfunc = int4pl, stype = int)",
            "CREATE OPERATOR === (leftarg = int, rightarg = int, function = int4eq)",
            "CREATE COLLATION c (locale = 'C')",
            "SECURITY LABEL FOR selinux ON TABLE t IS 'x'",
            "REASSIGN OWNED BY a TO b",
            "IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO public",
            "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
        ] {
            assert_eq!(a.analyze(sql).analysis.kind, Kind::Ddl, "{sql}");
        }
        for sql in ["VACUUM t", "LOCK TABLE t", "SHOW search_path"] {
            assert_eq!(a.analyze(sql).analysis.kind, Kind::Utility, "{sql}");
        }
    }

    #[test]
    fn huge_statements_are_kept_short_and_weigh_by_their_size() {
        let a = Analyzer::new(100);
        let columns: Vec<String> = (0..20_000).map(|i| format!("c{i}")).collect();
        let huge = format!("SELECT {} FROM t WHERE id = 1", columns.join(", "));
        let x = a.analyze(&huge).analysis;
        assert!(x.normalized.len() <= MAX_SHOWN + '…'.len_utf8());
        assert!(x.normalized.ends_with('…'));
        assert_eq!(x.kind, Kind::Select);
        // the fingerprint is of the whole text
        let other = huge.replace("c19999", "d19999");
        assert_ne!(x.fingerprint, a.analyze(&other).analysis.fingerprint);
        assert!(x.weight() >= 8, "{}", x.weight());
        let small = a.analyze("SELECT 1").analysis;
        assert_eq!(small.weight(), 1);
        // a multi-byte character at the cut
        let wide = shorten("é".repeat(MAX_SHOWN));
        assert!(wide.len() <= MAX_SHOWN + '…'.len_utf8() && wide.ends_with('…'));
    }

    #[test]
    fn in_lists_of_any_length_share_a_fingerprint() {
        assert_eq!(
            fp("SELECT * FROM t WHERE id IN (1, 2, 3)"),
            fp("SELECT * FROM t WHERE id IN (4)")
        );
    }

    #[test]
    fn in_lists_and_arrays_of_constants_read_collapsed_in_the_normalized_text() {
        let a = Analyzer::new(100);
        let n = |sql: &str| a.analyze(sql).analysis.normalized.clone();
        assert_eq!(
            n("SELECT * FROM t WHERE id IN (1, 2, 3) AND x = 5"),
            "SELECT * FROM t WHERE id IN ($1, ...) AND x = $2"
        );
        assert_eq!(
            n("select * from t where id in (7,8) or id = any(ARRAY[1, 2, 3])"),
            "select * from t where id in ($1, ...) or id = any(ARRAY[$2, ...])"
        );
        // one element reads as any other length; VALUES rows and function
        // arguments stay
        assert_eq!(
            n("SELECT * FROM t WHERE id IN (1)"),
            "SELECT * FROM t WHERE id IN ($1, ...)"
        );
        assert_eq!(
            n("INSERT INTO t (a, b) VALUES (1, 2)"),
            "INSERT INTO t (a, b) VALUES ($1, $2)"
        );
        assert_eq!(n("SELECT f(1, 2)"), "SELECT f($1, $2)");
        assert_eq!(
            collapse_lists("a IN ($1, $1, $1) AND b = $2 AND c IN ($3, $4)".into()),
            "a IN ($1, ...) AND b = $2 AND c IN ($3, ...)"
        );
        // a subquery is no list of constants
        assert_eq!(
            n("SELECT * FROM t WHERE id IN (SELECT a FROM u)"),
            "SELECT * FROM t WHERE id IN (SELECT a FROM u)"
        );
    }

    #[test]
    fn normalized_text_has_its_comments_dropped_and_its_whitespace_folded() {
        let a = Analyzer::new(100);
        let x = a
            .analyze("SELECT  id,\n  name -- who\nFROM /* the /* nested */ table */ users\n WHERE id = 7  ")
            .analysis;
        assert_eq!(x.normalized, "SELECT id, name FROM users WHERE id = $1");
        // quoted names keep their spaces, dollar-quoted bodies their text
        let y = a.analyze("SELECT \"a  b\"  FROM t WHERE x = $1").analysis;
        assert_eq!(y.normalized, "SELECT \"a  b\" FROM t WHERE x = $1");
        assert_eq!(
            fold_space_and_comments("DO $f$ BEGIN  -- x\n END $f$;\n"),
            "DO $f$ BEGIN  -- x\n END $f$;"
        );
        assert_eq!(fold_space_and_comments("a-b / c"), "a-b / c");
    }

    #[test]
    fn text_the_parser_rejects_shares_a_fingerprint_across_in_list_lengths() {
        let a = Analyzer::new(100);
        let x = a
            .analyze("SELECT * FROM t WHERE id IN (1, 2, 3) AND ((")
            .analysis;
        let y = a.analyze("SELECT * FROM t WHERE id IN (4) AND ((").analysis;
        assert!(!x.parsed && !y.parsed);
        assert_eq!(x.fingerprint, y.fingerprint);
        assert!(x.normalized.contains("in (?n, ...)"), "{}", x.normalized);
        assert_ne!(
            x.fingerprint,
            a.analyze("SELECT * FROM u WHERE id IN (4) AND ((")
                .analysis
                .fingerprint
        );
    }

    #[test]
    fn inlined_literals_and_dollar_parameters_share_a_fingerprint() {
        assert_eq!(
            fp("SELECT * FROM comments WHERE post_id = 17"),
            fp("SELECT * FROM comments WHERE post_id = $1")
        );
        assert_eq!(
            fp("UPDATE users SET name = 'x' WHERE id = 3"),
            fp("UPDATE users SET name = $1 WHERE id = $2")
        );
    }

    #[test]
    fn different_statements_get_different_fingerprints() {
        assert_ne!(
            fp("SELECT * FROM users WHERE id = 1"),
            fp("SELECT * FROM posts WHERE id = 1")
        );
        assert_ne!(
            fp("SELECT * FROM users WHERE id = 1"),
            fp("SELECT * FROM users WHERE name = 'a'")
        );
        assert_ne!(fp("SELECT a FROM t"), fp("SELECT b FROM t"));
    }

    #[test]
    fn kinds_and_tables_are_classified() {
        let a = Analyzer::new(100);
        let s = a
            .analyze("SELECT u.name FROM users u JOIN posts p ON p.user_id = u.id")
            .analysis;
        assert_eq!(s.kind, Kind::Select);
        assert_eq!(s.reads, vec!["posts".to_string(), "users".to_string()]);
        assert!(s.writes.is_empty());
        let w = a.analyze("WITH d AS (DELETE FROM comments WHERE id = 1 RETURNING post_id) UPDATE posts SET n = n - 1 WHERE id IN (SELECT post_id FROM d)").analysis;
        assert!(
            w.writes.contains(&"comments".to_string()) && w.writes.contains(&"posts".to_string()),
            "{w:?}"
        );
        assert_eq!(a.analyze("BEGIN").analysis.kind, Kind::Transaction);
        assert_eq!(a.analyze("CREATE TABLE x (a int)").analysis.kind, Kind::Ddl);
        assert_eq!(
            a.analyze("INSERT INTO users (name) VALUES ('a')")
                .analysis
                .writes,
            vec!["users".to_string()]
        );
        assert_eq!(
            a.analyze("SET search_path TO x").analysis.kind,
            Kind::Utility
        );
    }

    #[test]
    fn read_only_selects_are_told_from_everything_else() {
        let a = Analyzer::new(100);
        let ro = |sql: &str| a.analyze(sql).analysis.read_only;
        assert!(ro("SELECT * FROM posts WHERE id = 1"));
        assert!(ro(
            "SELECT p.id, u.name FROM posts p JOIN users u ON u.id = p.user_id"
        ));
        assert!(!ro("SELECT * FROM posts FOR UPDATE"));
        assert!(!ro("SELECT * FROM posts WHERE id = 1 FOR SHARE"));
        assert!(
            !ro("SELECT now(), * FROM posts")
                || !a
                    .analyze("SELECT now(), * FROM posts")
                    .analysis
                    .functions
                    .is_empty()
        );
        assert!(!ro("SELECT CURRENT_TIMESTAMP, * FROM posts"));
        assert!(!ro("SELECT current_user, * FROM posts"));
        assert!(!ro("SELECT * INTO copy_of_posts FROM posts"));
        assert!(!ro(
            "WITH d AS (DELETE FROM posts RETURNING *) SELECT * FROM d"
        ));
        assert!(!ro("SELECT 1"), "no table: nothing to invalidate it by");
        assert!(!ro("INSERT INTO posts VALUES (1)"));
        assert_eq!(
            a.analyze("SELECT lower(name), count(*) FROM users GROUP BY 1")
                .analysis
                .functions,
            vec!["count".to_string(), "lower".to_string()]
        );
        assert_eq!(
            a.analyze("COPY posts FROM STDIN").analysis.writes,
            vec!["posts".to_string()]
        );
        assert!(a.analyze("COPY posts TO STDOUT").analysis.writes.is_empty());
    }

    #[test]
    fn unparsable_text_still_gets_a_stable_fingerprint() {
        let a = fp("SELEC * FROM nowhere WHERE x = 1");
        assert_eq!(a, fp("selec *  from nowhere where x = 2"));
        assert!(!Analyzer::new(10).analyze("SELEC 1").analysis.parsed);
    }

    #[test]
    fn normalized_text_replaces_constants() {
        let a = Analyzer::new(10)
            .analyze("SELECT * FROM users WHERE id = 5 AND name = 'bob'")
            .analysis;
        assert_eq!(
            a.normalized,
            "SELECT * FROM users WHERE id = $1 AND name = $2"
        );
    }
}
