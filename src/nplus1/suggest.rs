//! The fix a report suggests, in plain words: for a loop of reads, the
//! batched rewrite of the repeated statement and the eager-loading idiom of
//! common ORMs; for a loop of writes, the multi-row statement, COPY and the
//! drivers' batch calls.

use super::BurstKind;
use crate::sql::{Analysis, Kind};

/// The key column of `… WHERE col = $1` (qualified or not), if the
/// statement has that shape (after its WHERE when it has one, so that an
/// UPDATE's `SET col = $1` is not taken for it).
fn lookup_column(normalized: &str) -> Option<&str> {
    let from = normalized
        .to_ascii_lowercase()
        .find(" where ")
        .map_or(0, |p| p + " where ".len());
    let scope = &normalized[from..];
    let at = scope.find(" = $")?;
    let before = scope[..at].trim_end();
    let start = before
        .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || c == '"'))
        .map(|p| p + 1)
        .unwrap_or(0);
    let col = &before[start..];
    (!col.is_empty()).then_some(col)
}

/// The suggestion for a burst of `analysis` after `parent`.
pub fn suggestion(
    kind: BurstKind,
    analysis: &Analysis,
    parent: Option<&Analysis>,
    repeats: usize,
) -> String {
    let after = parent
        .map(|p| {
            format!(
                " after the parent query (`{}`)",
                truncate(&p.normalized, 120)
            )
        })
        .unwrap_or_default();
    match kind {
        BurstKind::Duplicate if is_write(analysis.kind) => format!(
            "The same `{}` with the same parameters ran {repeats} times in a row: the same change each time. \
             Run it once; if the repetition is meant (the same row inserted again, a counter bumped each time), \
             make it one statement (a multi-row `INSERT … VALUES`, `SET n = n + $1`).",
            write_verb(analysis)
        ),
        BurstKind::Duplicate => format!(
            "The same statement with the same parameters ran {repeats} times in a row. Run it once and reuse the result in the application, \
             or let pgsift's cache answer the repeats (a cache rule covering {}).",
            if analysis.reads.is_empty() { "its tables".to_owned() } else { analysis.reads.join(", ") }
        ),
        BurstKind::NPlusOne => {
            let table = analysis.reads.first().map(String::as_str);
            let batched = match lookup_column(&analysis.normalized) {
                Some(col) => {
                    let bare = col.rsplit('.').next().unwrap_or(col);
                    let qualified = table.map_or_else(|| col.to_owned(), |t| format!("{t}.{bare}"));
                    format!(
                        "fetch all rows in one statement with `WHERE {qualified} = ANY($1)` (an array of the {repeats} values) or `WHERE {bare} IN (...)`"
                    )
                }
                None => "fetch all rows in one statement with `= ANY($1)` or `IN (...)` over the values".to_owned(),
            };
            let lookup = table.map_or_else(|| "one lookup".to_owned(), |t| format!("one `{t}` lookup"));
            format!(
                "N+1: {lookup} per row{after}. Batch it: {batched}. In an ORM, eager-load the relation: \
                 SQLAlchemy `selectinload()` / `joinedload()`, Django `select_related()` / `prefetch_related()`, Rails `includes()`."
            )
        }
        BurstKind::BulkWrite => bulk_write(analysis, parent, repeats, &after),
    }
}

fn is_write(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Insert | Kind::Update | Kind::Delete | Kind::Merge
    )
}

/// The table a write changes (its first, when a CTE writes more).
fn written_table(analysis: &Analysis) -> &str {
    analysis
        .writes
        .first()
        .map(String::as_str)
        .unwrap_or("the table")
}

/// `INSERT INTO t`, `UPDATE t`, … as the report names the statement.
fn write_verb(analysis: &Analysis) -> String {
    let t = written_table(analysis);
    match analysis.kind {
        Kind::Insert => format!("INSERT INTO {t}"),
        Kind::Update => format!("UPDATE {t}"),
        Kind::Delete => format!("DELETE FROM {t}"),
        Kind::Merge => format!("MERGE INTO {t}"),
        _ => truncate(&analysis.normalized, 60),
    }
}

/// Rows written one statement at a time: the statement that writes them
/// all, and the drivers' ways to send it.
fn bulk_write(
    analysis: &Analysis,
    parent: Option<&Analysis>,
    repeats: usize,
    after: &str,
) -> String {
    let t = written_table(analysis);
    let key = lookup_column(&analysis.normalized).map(|c| c.rsplit('.').next().unwrap_or(c));
    let head = format!(
        "Row-by-row writes: one `{}` per row ({repeats} in one burst){after}.",
        write_verb(analysis)
    );
    let from_parent = match parent {
        Some(p) if p.kind == Kind::Select => {
            " If the rows come from the parent query, one `INSERT … SELECT` / `UPDATE … FROM (SELECT …)` does it all in the database."
        }
        _ => "",
    };
    let fix = match analysis.kind {
        Kind::Insert => format!(
            "Send the rows together: one multi-row `INSERT INTO {t} (…) VALUES (…), (…), …`, \
             `INSERT INTO {t} (…) SELECT * FROM unnest($1::int[], $2::text[])` with one array per column, \
             or `COPY {t} FROM STDIN` for many rows. In drivers: psycopg2 `execute_values()` (or `execute_batch()` with a `page_size`), \
             psycopg 3 `cursor.copy()` (its `executemany()` pipelines the round trips but still runs one statement per row), \
             asyncpg `copy_records_to_table()`, JDBC `addBatch()` with `reWriteBatchedInserts=true`, \
             SQLAlchemy `session.execute(insert(…), [rows])`."
        ),
        Kind::Update => {
            let k = key.unwrap_or("id");
            format!(
                "Update them in one statement: `UPDATE {t} SET col = v.col FROM unnest($1::int[], $2::text[]) AS v({k}, col) WHERE {t}.{k} = v.{k}` \
                 with one array per column, or `WHERE {k} = ANY($1)` when every row gets the same values. \
                 In drivers: psycopg2 `execute_values()` with `UPDATE … FROM (VALUES %s)`, JDBC `addBatch()`; \
                 `executemany()` in a pipeline (psycopg 3, asyncpg) saves the round trips but still runs one statement per row."
            )
        }
        Kind::Delete => {
            let k = key.unwrap_or("id");
            format!(
                "Delete them in one statement: `DELETE FROM {t} WHERE {k} = ANY($1)` (an array of the {repeats} values), \
                 or `DELETE FROM {t} USING unnest($1::int[], $2::text[]) AS v(…) WHERE …` for a key of several columns."
            )
        }
        _ => format!(
            "Merge them in one statement: `MERGE INTO {t} USING unnest($1::int[], $2::text[]) AS v(…) ON …`, \
             or `INSERT INTO {t} … SELECT * FROM unnest(…) ON CONFLICT … DO UPDATE`."
        ),
    };
    format!("{head} {fix}{from_parent}")
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Analyzer;

    fn analysis(sql: &str) -> std::sync::Arc<Analysis> {
        Analyzer::new(10).analyze(sql).analysis
    }

    #[test]
    fn n_plus_one_suggestion_names_the_batched_rewrite_and_orm_idioms() {
        let a = Analyzer::new(10);
        let x = a
            .analyze("SELECT users.id, users.name FROM users WHERE users.id = 7")
            .analysis;
        let p = a.analyze("SELECT * FROM posts LIMIT 20").analysis;
        let s = suggestion(BurstKind::NPlusOne, &x, Some(&p), 20);
        assert!(s.contains("WHERE users.id = ANY($1)"), "{s}");
        assert!(
            s.contains("selectinload") && s.contains("select_related") && s.contains("includes"),
            "{s}"
        );
    }

    #[test]
    fn a_row_by_row_insert_gets_the_multi_row_insert_copy_and_driver_batching() {
        let x = analysis("INSERT INTO ins (a, b) VALUES ($1, $2)");
        let s = suggestion(BurstKind::BulkWrite, &x, None, 100);
        assert!(
            s.contains("one `INSERT INTO ins` per row (100 in one burst)"),
            "{s}"
        );
        for want in [
            "VALUES (…), (…)",
            "SELECT * FROM unnest($1",
            "COPY ins FROM STDIN",
            "execute_values()",
            "page_size",
            "copy_records_to_table()",
            "reWriteBatchedInserts",
        ] {
            assert!(s.contains(want), "{want}: {s}");
        }
        for wrong in ["lookup", "the table", "ANY($1)", "selectinload"] {
            assert!(!s.contains(wrong), "{wrong}: {s}");
        }
    }

    #[test]
    fn row_by_row_updates_and_deletes_get_their_one_statement_forms_keyed_on_the_where_column() {
        let x = analysis("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2");
        let s = suggestion(BurstKind::BulkWrite, &x, None, 50);
        assert!(
            s.contains("UPDATE pgbench_tellers SET col = v.col FROM unnest(")
                && s.contains("WHERE pgbench_tellers.tid = v.tid"),
            "{s}"
        );
        let x = analysis("UPDATE users SET name = $1 WHERE id = $2");
        let s = suggestion(BurstKind::BulkWrite, &x, None, 50);
        assert!(
            s.contains("WHERE users.id = v.id"),
            "the SET column is no key: {s}"
        );
        let x = analysis("DELETE FROM sessions WHERE token = $1");
        let s = suggestion(BurstKind::BulkWrite, &x, None, 7);
        assert!(
            s.contains("`DELETE FROM sessions WHERE token = ANY($1)` (an array of the 7 values)"),
            "{s}"
        );
        // a loop over a list query's rows: do it in the database
        let p = analysis("SELECT id FROM users WHERE active");
        let s = suggestion(BurstKind::BulkWrite, &x, Some(&p), 7);
        assert!(
            s.contains("after the parent query") && s.contains("INSERT … SELECT"),
            "{s}"
        );
    }

    #[test]
    fn a_repeated_identical_write_is_not_told_to_use_the_cache() {
        let x = analysis("UPDATE counters SET n = n + 1 WHERE id = 1");
        let s = suggestion(BurstKind::Duplicate, &x, None, 9);
        assert!(
            s.contains("`UPDATE counters`") && s.contains("9 times"),
            "{s}"
        );
        assert!(!s.contains("cache"), "{s}");
    }

    #[test]
    fn a_lookup_without_a_table_is_not_called_the_table() {
        let x = analysis("SELECT f($1)");
        let s = suggestion(BurstKind::NPlusOne, &x, None, 9);
        assert!(s.starts_with("N+1: one lookup per row."), "{s}");
    }
}
