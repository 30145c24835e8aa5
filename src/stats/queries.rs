//! Per-fingerprint statement statistics across all clients: calls, total
//! and mean time, rows, errors, cache hits. Bounded: past the limit the
//! least costly entries are dropped. Fingerprints and SQL never become
//! metric labels; they are served here (`/api/queries`, `SHOW QUERIES`).
//!
//! The counts live in each statement's [`Analysis`] (its [`Tally`]), which
//! every execution already holds: recording one is a few atomic additions
//! on memory the session has just touched, with no table lookup or lock.
//! The table only lists the analyses whose counts it shows; an analysis is
//! listed at its first execution. Should another analysis object of the
//! same fingerprint be listed already (two texts of one fingerprint, or an
//! analysis made again after the shared memo dropped it), executions of the
//! unlisted one are counted on the listed one, through the table.

use crate::sql::Analysis;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// The executions of one statement.
#[derive(Default)]
pub struct Tally {
    calls: AtomicU64,
    total_ns: AtomicU64,
    rows: AtomicU64,
    errors: AtomicU64,
    cache_hits: AtomicU64,
    /// the table lists the analysis holding this tally
    listed: AtomicBool,
}

impl Tally {
    fn add(&self, duration: Duration, rows: u64, error: bool, cache_hit: bool) {
        self.calls.fetch_add(1, Relaxed);
        self.total_ns.fetch_add(duration.as_nanos() as u64, Relaxed);
        if rows > 0 {
            self.rows.fetch_add(rows, Relaxed);
        }
        if error {
            self.errors.fetch_add(1, Relaxed);
        }
        if cache_hit {
            self.cache_hits.fetch_add(1, Relaxed);
        }
    }

    fn total(&self) -> Duration {
        Duration::from_nanos(self.total_ns.load(Relaxed))
    }
}

/// A copy of an analysis is another statement object: it starts uncounted
/// and unlisted.
impl Clone for Tally {
    fn clone(&self) -> Tally {
        Tally::default()
    }
}

/// Counts are not part of what a statement is.
impl PartialEq for Tally {
    fn eq(&self, _: &Tally) -> bool {
        true
    }
}

impl Eq for Tally {}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("calls", &self.calls.load(Relaxed))
            .field("listed", &self.listed.load(Relaxed))
            .finish()
    }
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

/// The statistics table: the listed analysis of each fingerprint.
pub struct QueryStats {
    entries: DashMap<u64, Arc<Analysis>, rustc_hash::FxBuildHasher>,
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
    #[inline]
    pub fn record(
        &self,
        analysis: &Arc<Analysis>,
        duration: Duration,
        rows: u64,
        error: bool,
        cache_hit: bool,
    ) {
        let add = |t: &Tally| t.add(duration, rows, error, cache_hit);
        if analysis.tally.listed.load(Relaxed) {
            add(&analysis.tally);
        } else {
            self.record_unlisted(analysis, add);
        }
    }

    /// Records an execution of an analysis the table does not list (yet):
    /// `add` counts it on the tally that is listed for its fingerprint.
    #[cold]
    fn record_unlisted(&self, analysis: &Arc<Analysis>, add: impl Fn(&Tally)) {
        // another object of a listed fingerprint (every execution of it
        // comes here): one shared lookup
        if let Some(listed) = self.entries.get(&analysis.fingerprint) {
            if !Arc::ptr_eq(listed.value(), analysis) {
                add(&listed.tally);
                return;
            }
        }
        if self.entries.len() >= self.limit {
            self.evict();
        }
        match self.entries.entry(analysis.fingerprint) {
            Entry::Occupied(e) => {
                if Arc::ptr_eq(e.get(), analysis) {
                    // listed, but marked otherwise by an eviction that
                    // raced with its listing again
                    analysis.tally.listed.store(true, Relaxed);
                }
                add(&e.get().tally)
            }
            Entry::Vacant(v) => {
                analysis.tally.listed.store(true, Relaxed);
                add(&analysis.tally);
                v.insert(analysis.clone());
            }
        }
    }

    /// Drops the cheapest tenth of the table. (A dropped analysis keeps its
    /// counts; should it run again, it is listed again with them.)
    fn evict(&self) {
        let mut costs: Vec<(Duration, u64)> = self
            .entries
            .iter()
            .map(|e| (e.tally.total(), *e.key()))
            .collect();
        costs.sort();
        for (_, k) in costs.into_iter().take((self.limit / 10).max(1)) {
            if let Some((_, a)) = self.entries.remove(&k) {
                a.tally.listed.store(false, Relaxed);
            }
        }
    }

    /// The `limit` statements with the most total time.
    pub fn top(&self, limit: usize) -> Vec<QueryRow> {
        let mut rows: Vec<QueryRow> = self
            .entries
            .iter()
            .map(|e| {
                let a = e.value();
                let t = &a.tally;
                let calls = t.calls.load(Relaxed);
                let total_ms = t.total().as_secs_f64() * 1000.0;
                QueryRow {
                    fingerprint: a.fingerprint_hex(),
                    query: a.normalized.clone(),
                    kind: a.kind.as_str(),
                    calls,
                    total_ms,
                    mean_ms: if calls == 0 {
                        0.0
                    } else {
                        total_ms / calls as f64
                    },
                    rows: t.rows.load(Relaxed),
                    errors: t.errors.load(Relaxed),
                    cache_hits: t.cache_hits.load(Relaxed),
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

    /// One successful execution of `sql` taking `d`, with no rows.
    fn run(s: &QueryStats, a: &Analyzer, sql: &str, d: Duration) {
        s.record(&a.analyze(sql).analysis, d, 0, false, false);
    }

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
            run(
                &s,
                &a,
                &format!("SELECT c{i} FROM t"),
                Duration::from_micros(1),
            );
        }
        assert!(s.entries.len() <= 10);
        assert_eq!(s.top(1)[0].calls, 5, "the costly entry survives eviction");
    }

    #[test]
    fn another_object_of_a_listed_fingerprint_is_counted_on_the_listed_one() {
        let a = Analyzer::new(100);
        let s = QueryStats::new(10);
        let first = a.analyze("SELECT * FROM t WHERE id = 1").analysis;
        let copy = Arc::new((*first).clone());
        s.record(&first, Duration::from_millis(1), 1, false, false);
        s.record(&copy, Duration::from_millis(1), 1, true, false);
        s.record(&copy, Duration::from_millis(1), 0, false, true);
        s.record(&first, Duration::from_millis(1), 0, false, false);
        let top = s.top(10);
        assert_eq!(top.len(), 1);
        let t = &top[0];
        assert_eq!((t.calls, t.rows, t.errors, t.cache_hits), (4, 2, 1, 1));
        assert!((t.total_ms - 4.0).abs() < 1e-9);
    }

    #[test]
    fn an_evicted_statement_that_runs_again_is_listed_again() {
        let a = Analyzer::new(100);
        let s = QueryStats::new(10);
        let cheap = a.analyze("SELECT cheap FROM t").analysis;
        s.record(&cheap, Duration::from_nanos(1), 0, false, false);
        for i in 0..10 {
            run(
                &s,
                &a,
                &format!("SELECT c{i} FROM t"),
                Duration::from_millis(1),
            );
        }
        assert!(
            s.top(100).iter().all(|r| r.query != cheap.normalized),
            "the cheapest went"
        );
        s.record(&cheap, Duration::from_nanos(1), 0, false, false);
        let row = s.top(100).into_iter().find(|r| r.query == cheap.normalized);
        assert_eq!(row.map(|r| r.calls), Some(2), "back, with its counts");
    }
}
