//! The fix a report suggests, in plain words: the batched rewrite of the
//! repeated statement and the eager-loading idiom of common ORMs.

use super::BurstKind;
use crate::sql::Analysis;

/// The lookup column of `… WHERE col = $1` (qualified or not), if the
/// statement has that shape.
fn lookup_column(normalized: &str) -> Option<&str> {
    let at = normalized.find(" = $")?;
    let before = normalized[..at].trim_end();
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
    match kind {
        BurstKind::Duplicate => format!(
            "The same statement with the same parameters ran {repeats} times in a row. Run it once and reuse the result in the application, \
             or let pgsift's cache answer the repeats (a cache rule covering {}).",
            if analysis.reads.is_empty() { "its tables".to_owned() } else { analysis.reads.join(", ") }
        ),
        BurstKind::NPlusOne => {
            let table = analysis.reads.first().map(String::as_str).unwrap_or("the table");
            let batched = match lookup_column(&analysis.normalized) {
                Some(col) => {
                    let bare = col.rsplit('.').next().unwrap_or(col);
                    format!(
                        "fetch all rows in one statement with `WHERE {table}.{bare} = ANY($1)` (an array of the {repeats} values) or `WHERE {bare} IN (...)`"
                    )
                }
                None => "fetch all rows in one statement with `= ANY($1)` or `IN (...)` over the values".to_owned(),
            };
            let after = parent
                .map(|p| format!(" after the parent query (`{}`)", truncate(&p.normalized, 120)))
                .unwrap_or_default();
            format!(
                "N+1: one `{table}` lookup per row{after}. Batch it: {batched}. In an ORM, eager-load the relation: \
                 SQLAlchemy `selectinload()` / `joinedload()`, Django `select_related()` / `prefetch_related()`, Rails `includes()`."
            )
        }
    }
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
}
