//! Which SELECTs may be cached: every table a statement reads must be
//! covered by one rule of `cache.rules`, whose TTL the entry gets.

use crate::config::CacheRule;
use std::time::Duration;

/// The TTL of the first rule that covers every table in `reads`.
pub fn covering_ttl(rules: &[CacheRule], reads: &[String]) -> Option<Duration> {
    if reads.is_empty() {
        return None;
    }
    rules
        .iter()
        .find(|r| {
            reads.iter().all(|t| {
                let bare = super::table_name(t);
                r.tables
                    .iter()
                    .any(|rt| super::table_name(rt) == bare || rt.eq_ignore_ascii_case(t))
            })
        })
        .map(|r| r.ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_must_be_covered_by_the_same_rule() {
        let rules = vec![
            CacheRule {
                tables: vec!["posts".into(), "users".into()],
                ttl: Duration::from_secs(30),
            },
            CacheRule {
                tables: vec!["comments".into()],
                ttl: Duration::from_secs(5),
            },
        ];
        assert_eq!(
            covering_ttl(&rules, &["posts".into(), "public.users".into()]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            covering_ttl(&rules, &["comments".into()]),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            covering_ttl(&rules, &["posts".into(), "comments".into()]),
            None
        );
        assert_eq!(covering_ttl(&rules, &["secrets".into()]), None);
        assert_eq!(covering_ttl(&rules, &[]), None);
    }
}
