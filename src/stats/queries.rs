//! Per-fingerprint statement statistics across all clients: calls, total
//! and mean time, rows, errors, cache hits. Bounded: past the limit the
//! least costly entries are dropped. Fingerprints and SQL never become
//! metric labels; they are served here (`/api/queries`, `SHOW QUERIES`).

use crate::sql::Analysis;
use dashmap::DashMap;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
struct Entry {
    analysis: Arc<Analysis>,
    calls: u64,
    total: Duration,
    rows: u64,
    errors: u64,
    cache_hits: u64,
}

/// One row of the top-statements table.
#[derive(Debug, Clone, Serialize)]
pub struct QueryRow {
    /// fingerprint (hex)
    pub fingerprint: String,
    /// normalized statement
    pub query: String,
    /// statement kind
    pub kind: &'static str,
    /// executions
    pub calls: u64,
    /// total time in ms
    pub total_ms: f64,
    /// mean time in ms
    pub mean_ms: f64,
    /// rows returned or affected
    pub rows: u64,
    /// executions that failed
    pub errors: u64,
    /// executions answered from the cache
    pub cache_hits: u64,
}

/// The statistics table.
pub struct QueryStats {
    entries: DashMap<u64, Entry, rustc_hash::FxBuildHasher>,
    limit: usize,
}

impl QueryStats {
    /// A table keeping at most `limit` fingerprints.
    pub fn new(limit: usize) -> QueryStats {
        QueryStats {
            entries: DashMap::with_hasher(rustc_hash::FxBuildHasher),
            limit,
        }
    }

    /// Records one execution.
    pub fn record(
        &self,
        analysis: &Arc<Analysis>,
        duration: Duration,
        rows: u64,
        error: bool,
        cache_hit: bool,
    ) {
        if let Some(mut e) = self.entries.get_mut(&analysis.fingerprint) {
            e.calls += 1;
            e.total += duration;
            e.rows += rows;
            e.errors += error as u64;
            e.cache_hits += cache_hit as u64;
            return;
        }
        if self.entries.len() >= self.limit {
            self.evict();
        }
        self.entries.insert(
            analysis.fingerprint,
            Entry {
                analysis: analysis.clone(),
                calls: 1,
                total: duration,
                rows,
                errors: error as u64,
                cache_hits: cache_hit as u64,
            },
        );
    }

    /// Drops the cheapest tenth of the table.
    fn evict(&self) {
        let mut costs: Vec<(Duration, u64)> =
            self.entries.iter().map(|e| (e.total, *e.key())).collect();
        costs.sort();
        for (_, k) in costs.into_iter().take((self.limit / 10).max(1)) {
            self.entries.remove(&k);
        }
    }

    /// The `limit` statements with the most total time.
    pub fn top(&self, limit: usize) -> Vec<QueryRow> {
        let mut rows: Vec<QueryRow> = self
            .entries
            .iter()
            .map(|e| {
                let total_ms = e.total.as_secs_f64() * 1000.0;
                QueryRow {
                    fingerprint: e.analysis.fingerprint_hex(),
                    query: e.analysis.normalized.clone(),
                    kind: e.analysis.kind.as_str(),
                    calls: e.calls,
                    total_ms,
                    mean_ms: if e.calls == 0 {
                        0.0
                    } else {
                        total_ms / e.calls as f64
                    },
                    rows: e.rows,
                    errors: e.errors,
                    cache_hits: e.cache_hits,
                }
            })
            .collect();
        rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        rows.truncate(limit);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Analyzer;

    #[test]
    fn executions_aggregate_per_fingerprint_and_the_table_stays_bounded() {
        let a = Analyzer::new(100);
        let s = QueryStats::new(10);
        for i in 0..5 {
            s.record(
                &a.analyze(&format!("SELECT * FROM t WHERE id = {i}"))
                    .analysis,
                Duration::from_millis(2),
                1,
                false,
                false,
            );
        }
        let top = s.top(10);
        assert_eq!(top.len(), 1);
        assert_eq!((top[0].calls, top[0].rows), (5, 5));
        assert!((top[0].mean_ms - 2.0).abs() < 1e-9);
        for i in 0..50 {
            s.record(
                &a.analyze(&format!("SELECT c{i} FROM t")).analysis,
                Duration::from_micros(1),
                0,
                false,
                false,
            );
        }
        assert!(s.entries.len() <= 10);
        assert_eq!(s.top(1)[0].calls, 5, "the costly entry survives eviction");
    }
}
