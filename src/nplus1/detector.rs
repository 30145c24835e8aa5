//! The burst detector of one client connection.
//!
//! A burst is a run of executions of one fingerprint, each starting within
//! `max_gap` of the end of the connection's previous statement, possibly
//! interleaved with other statements (an ORM loop alternating author and
//! comments lookups gives two bursts). A burst with different parameter
//! values is N+1; one whose executions all had the same values is a
//! duplicate. Its parent is the last statement before the burst began that
//! is not itself a repetition in another burst — usually the list query.
//!
//! Memory is bounded (at most [`MAX_BURSTS`] open bursts and [`HISTORY`]
//! remembered statement runs) and the work per statement is O(1).

use crate::clock::Mono;
use crate::sql::{Analysis, Kind};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Open bursts kept per connection.
pub const MAX_BURSTS: usize = 64;
/// Runs of statements remembered for finding parents.
pub const HISTORY: usize = 32;
/// Distinct parameter values remembered per burst.
const MAX_DISTINCT: usize = 8;
/// A statement is the parent of a burst that starts after an idle gap only
/// if the gap is shorter than this (a page rendered between a list query
/// and its loop); after a longer one, a pooled connection's last statement
/// most likely belonged to other work.
pub const PARENT_ACROSS_GAP: Duration = Duration::from_secs(2);

/// One finished statement execution.
#[derive(Debug, Clone)]
pub struct Execution {
    /// the statement
    pub analysis: Arc<Analysis>,
    /// hash of its parameter or literal values
    pub values: u64,
    /// the concrete statement text; needed only when the execution opens a
    /// burst (see [`Detector::needs_example`]), the normalized text stands
    /// in when it is missing
    pub example: Option<Arc<str>>,
    /// when it was sent to the server
    pub start: Mono,
    /// how long it took
    pub duration: Duration,
}

/// N+1 or duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BurstKind {
    /// one lookup per row of a parent query, with different values
    NPlusOne,
    /// the same statement with the same values, again and again
    Duplicate,
}

impl BurstKind {
    /// As written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            BurstKind::NPlusOne => "n_plus_one",
            BurstKind::Duplicate => "duplicate",
        }
    }
}

/// A finished burst with at least `min_repeats` executions.
#[derive(Debug, Clone)]
pub struct Burst {
    /// N+1 or duplicate
    pub kind: BurstKind,
    /// the repeated statement
    pub analysis: Arc<Analysis>,
    /// the statement that ran before the burst
    pub parent: Option<Arc<Analysis>>,
    /// one concrete execution
    pub example: Arc<str>,
    /// executions in the burst
    pub repeats: usize,
    /// time the repeated executions spent
    pub total: Duration,
    /// wall clock of the first execution
    pub first_seen: SystemTime,
    /// wall clock of the last execution
    pub last_seen: SystemTime,
}

#[derive(Debug)]
struct Open {
    analysis: Arc<Analysis>,
    example: Arc<str>,
    first_seq: u64,
    count: usize,
    distinct: Vec<u64>,
    parent: Option<Arc<Analysis>>,
    parent_resolved: bool,
    total: Duration,
    /// monotonic times, made wall-clock times when the burst is reported
    /// (one clock read per burst instead of one per execution)
    first_seen: Mono,
    last_seen: Mono,
    last_seq: u64,
}

#[derive(Debug)]
struct Run {
    fingerprint: u64,
    analysis: Arc<Analysis>,
    first_seq: u64,
}

/// The detector of one connection.
#[derive(Debug)]
pub struct Detector {
    min_repeats: usize,
    max_gap: Duration,
    seq: u64,
    last_end: Option<Mono>,
    history: VecDeque<Run>,
    open: rustc_hash::FxHashMap<u64, Open>,
    /// open bursts with two executions or more (those a deadline ends)
    repeating: usize,
}

impl Detector {
    /// A detector with the configured thresholds.
    pub fn new(min_repeats: usize, max_gap: Duration) -> Detector {
        Detector {
            min_repeats,
            max_gap,
            seq: 0,
            last_end: None,
            history: VecDeque::with_capacity(8),
            open: rustc_hash::FxHashMap::default(),
            repeating: 0,
        }
    }

    /// New thresholds (reload); open bursts keep going.
    pub fn set_thresholds(&mut self, min_repeats: usize, max_gap: Duration) {
        self.min_repeats = min_repeats;
        self.max_gap = max_gap;
    }

    /// When the open bursts end if no statement comes.
    pub fn deadline(&self) -> Option<Mono> {
        if self.repeating > 0 {
            self.last_end.map(|t| t + self.max_gap)
        } else {
            None
        }
    }

    /// Feeds one execution; returns the bursts it finished.
    pub fn observe(&mut self, e: Execution) -> Vec<Burst> {
        let mut done = Vec::new();
        if let Some(last) = self.last_end {
            let gap = e.start.since(last);
            if gap > self.max_gap {
                done = self.finish_all();
            }
            if gap > PARENT_ACROSS_GAP {
                // too long ago to have started this work
                self.history.clear();
            }
        }
        let end = e.start + e.duration;
        self.last_end = Some(self.last_end.map_or(end, |l| l.max(end)));
        if matches!(e.analysis.kind, Kind::Transaction | Kind::Utility) {
            return done;
        }
        self.seq += 1;
        let fp = e.analysis.fingerprint;
        let now = end;
        // the open burst of this statement, counting this execution; its
        // parent is looked for once, at its second execution (before that
        // execution's run joins the history)
        let mut unresolved = None;
        if let Some(b) = self.open.get_mut(&fp) {
            b.count += 1;
            if b.count == 2 {
                self.repeating += 1;
            }
            if b.distinct.len() < MAX_DISTINCT && !b.distinct.contains(&e.values) {
                b.distinct.push(e.values);
            }
            b.total += e.duration;
            b.last_seen = now;
            b.last_seq = self.seq;
            if !b.parent_resolved {
                unresolved = Some(b.first_seq);
            }
        } else {
            if self.open.len() >= MAX_BURSTS {
                if let Some((&victim, _)) = self.open.iter().min_by_key(|(_, b)| b.last_seq) {
                    if let Some(b) = self.open.remove(&victim) {
                        if b.count >= 2 {
                            self.repeating -= 1;
                        }
                        done.extend(self.finished(b));
                    }
                }
            }
            self.open.insert(
                fp,
                Open {
                    analysis: e.analysis.clone(),
                    example: e
                        .example
                        .clone()
                        .unwrap_or_else(|| e.analysis.normalized.as_str().into()),
                    first_seq: self.seq,
                    count: 1,
                    distinct: vec![e.values],
                    parent: None,
                    parent_resolved: false,
                    total: e.duration,
                    first_seen: now,
                    last_seen: now,
                    last_seq: self.seq,
                },
            );
        }
        if let Some(first_seq) = unresolved {
            let parent = self.parent_before(first_seq, fp);
            if let Some(b) = self.open.get_mut(&fp) {
                b.parent = parent;
                b.parent_resolved = true;
            }
        }
        match self.history.back() {
            Some(r) if r.fingerprint == fp => {}
            _ => {
                if self.history.len() == HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back(Run {
                    fingerprint: fp,
                    analysis: e.analysis.clone(),
                    first_seq: self.seq,
                });
            }
        }
        done
    }

    /// Whether an execution of `fingerprint` sent at `sent` may open a
    /// burst, and so its text be kept as the burst's example: not while a
    /// burst of it is open and the session has not been idle past the gap
    /// (most repeats), which spares a copy of every repeat's text.
    pub fn needs_example(&self, fingerprint: u64, sent: Mono) -> bool {
        !self.open.contains_key(&fingerprint)
            || self
                .last_end
                .is_some_and(|last| sent.since(last) > self.max_gap)
    }

    /// The last statement before `seq` that is not a repetition in a burst
    /// and not the burst's own statement `counted` (which ran before an
    /// idle gap, say): a statement is not its own parent.
    fn parent_before(&self, seq: u64, counted: u64) -> Option<Arc<Analysis>> {
        self.history
            .iter()
            .rev()
            .filter(|r| r.first_seq < seq)
            .find(|r| {
                r.fingerprint != counted
                    && self.open.get(&r.fingerprint).is_none_or(|b| b.count < 2)
            })
            .map(|r| r.analysis.clone())
    }

    /// Ends every open burst (idle gap, disconnect). The history stays: its
    /// last statement is the parent of a burst that starts after the gap (a
    /// list query, then a pause, then the loop over its rows), unless the
    /// gap is longer than [`PARENT_ACROSS_GAP`].
    pub fn finish_all(&mut self) -> Vec<Burst> {
        let open: Vec<Open> = self.open.drain().map(|(_, b)| b).collect();
        self.repeating = 0;
        open.into_iter().filter_map(|b| self.finished(b)).collect()
    }

    /// Ends the bursts whose gap has passed at `now`.
    pub fn finish_idle(&mut self, now: Mono) -> Vec<Burst> {
        match self.last_end {
            Some(last) if now.since(last) > self.max_gap => self.finish_all(),
            _ => Vec::new(),
        }
    }

    fn finished(&self, b: Open) -> Option<Burst> {
        if b.count < self.min_repeats {
            return None;
        }
        let kind = if b.distinct.len() >= 2 {
            BurstKind::NPlusOne
        } else {
            BurstKind::Duplicate
        };
        Some(Burst {
            kind,
            analysis: b.analysis,
            parent: b.parent,
            example: b.example,
            repeats: b.count,
            total: b.total,
            first_seen: wall_clock(b.first_seen),
            last_seen: wall_clock(b.last_seen),
        })
    }
}

/// The wall-clock time of a monotonic instant in the past.
fn wall_clock(t: Mono) -> SystemTime {
    SystemTime::now() - Mono::now().since(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Analyzer;

    struct Feed {
        a: Analyzer,
        d: Detector,
        t: Mono,
        out: Vec<Burst>,
    }

    impl Feed {
        fn new() -> Feed {
            Feed {
                a: Analyzer::new(100),
                d: Detector::new(5, Duration::from_millis(100)),
                t: Mono::now(),
                out: vec![],
            }
        }
        fn run(&mut self, sql: &str) {
            let x = self.a.analyze(sql);
            self.t += Duration::from_millis(1);
            // as the session's observer does: the text only when it may
            // become a burst's example
            let example = self
                .d
                .needs_example(x.analysis.fingerprint, self.t)
                .then(|| sql.into());
            let e = Execution {
                analysis: x.analysis,
                values: x.values,
                example,
                start: self.t,
                duration: Duration::from_micros(300),
            };
            self.out.extend(self.d.observe(e));
        }
        fn end(&mut self) -> Vec<Burst> {
            self.out.extend(self.d.finish_all());
            std::mem::take(&mut self.out)
        }
    }

    #[test]
    fn interleaved_author_and_comment_lookups_are_two_bursts_with_the_list_query_as_parent() {
        let mut f = Feed::new();
        f.run("SELECT * FROM posts ORDER BY created_at DESC LIMIT 20");
        for i in 0..20 {
            f.run(&format!("SELECT * FROM users WHERE id = {}", i % 7));
            f.run(&format!("SELECT * FROM comments WHERE post_id = {i}"));
        }
        let mut bursts = f.end();
        bursts.sort_by_key(|b| b.analysis.normalized.clone());
        assert_eq!(bursts.len(), 2);
        assert_eq!(
            &*bursts[0].example,
            "SELECT * FROM comments WHERE post_id = 0"
        );
        assert_eq!(&*bursts[1].example, "SELECT * FROM users WHERE id = 0");
        for b in &bursts {
            assert_eq!(b.kind, BurstKind::NPlusOne);
            assert_eq!(b.repeats, 20);
            assert!(
                b.parent.as_ref().unwrap().normalized.contains("FROM posts"),
                "{:?}",
                b.parent
            );
        }
    }

    #[test]
    fn a_burst_after_an_idle_gap_keeps_its_first_text() {
        let mut f = Feed::new();
        // once, then idle past the gap: the lone execution's burst is still
        // open when the loop's first statement is sent
        f.run("SELECT * FROM users WHERE id = 100");
        f.t += Duration::from_secs(1);
        for i in 0..6 {
            f.run(&format!("SELECT * FROM users WHERE id = {i}"));
        }
        let bursts = f.end();
        assert_eq!(bursts.len(), 1);
        assert_eq!(&*bursts[0].example, "SELECT * FROM users WHERE id = 0");
    }

    #[test]
    fn a_loop_that_starts_after_an_idle_gap_has_the_statement_before_the_gap_as_parent() {
        let mut f = Feed::new();
        f.run("SELECT * FROM users WHERE id = 1");
        f.run("SELECT * FROM users WHERE id = 2");
        f.run("SELECT * FROM posts ORDER BY created_at DESC LIMIT 20");
        // the application renders something before its loop
        f.t += Duration::from_secs(1);
        for i in 0..6 {
            f.run(&format!("SELECT * FROM comments WHERE post_id = {i}"));
        }
        let bursts = f.end();
        assert_eq!(bursts.len(), 1);
        let parent = bursts[0].parent.as_ref().expect("a parent");
        assert!(parent.normalized.contains("FROM posts"), "{parent:?}");
    }

    #[test]
    fn a_statement_is_not_the_parent_of_its_own_burst_and_old_work_is_no_parent() {
        let mut f = Feed::new();
        f.run("SELECT * FROM posts ORDER BY created_at DESC LIMIT 20");
        f.run("SELECT * FROM users WHERE id = 1");
        f.t += Duration::from_millis(500);
        for i in 2..8 {
            f.run(&format!("SELECT * FROM users WHERE id = {i}"));
        }
        let bursts = f.end();
        assert_eq!(bursts.len(), 1);
        let parent = bursts[0].parent.as_ref().expect("a parent");
        assert!(parent.normalized.contains("FROM posts"), "{parent:?}");

        // after a gap longer than PARENT_ACROSS_GAP: no parent
        let mut f = Feed::new();
        f.run("SELECT * FROM posts ORDER BY created_at DESC LIMIT 20");
        f.t += PARENT_ACROSS_GAP + Duration::from_secs(1);
        for i in 0..6 {
            f.run(&format!("SELECT * FROM comments WHERE post_id = {i}"));
        }
        let bursts = f.end();
        assert_eq!(bursts.len(), 1);
        assert!(bursts[0].parent.is_none(), "{:?}", bursts[0].parent);
    }

    #[test]
    fn a_burst_opened_without_its_text_shows_the_normalized_statement() {
        let a = Analyzer::new(10);
        let mut d = Detector::new(3, Duration::from_millis(100));
        let mut t = Mono::now();
        for i in 0..4 {
            let x = a.analyze(&format!("SELECT * FROM users WHERE id = {i}"));
            t += Duration::from_millis(1);
            let _ = d.observe(Execution {
                analysis: x.analysis,
                values: x.values,
                example: None,
                start: t,
                duration: Duration::from_micros(300),
            });
        }
        let bursts = d.finish_all();
        assert_eq!(bursts.len(), 1);
        assert_eq!(&*bursts[0].example, bursts[0].analysis.normalized.as_str());
        assert!(bursts[0].example.contains("$1"), "{}", bursts[0].example);
    }

    #[test]
    fn identical_repeats_are_duplicates_not_n_plus_one() {
        let mut f = Feed::new();
        for _ in 0..6 {
            f.run("SELECT * FROM settings WHERE key = 'theme'");
        }
        let b = f.end();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].kind, BurstKind::Duplicate);
    }

    #[test]
    fn unrelated_statements_and_short_runs_report_nothing() {
        let mut f = Feed::new();
        for sql in [
            "SELECT 1",
            "SELECT * FROM a",
            "SELECT * FROM b",
            "UPDATE c SET x = 1",
            "SELECT * FROM d",
        ] {
            f.run(sql);
        }
        for i in 0..4 {
            f.run(&format!("SELECT * FROM users WHERE id = {i}"));
        }
        assert!(f.end().is_empty());
    }

    #[test]
    fn an_idle_gap_ends_a_burst() {
        let mut f = Feed::new();
        for i in 0..3 {
            f.run(&format!("SELECT * FROM users WHERE id = {i}"));
        }
        f.t += Duration::from_millis(500);
        for i in 0..3 {
            f.run(&format!("SELECT * FROM users WHERE id = {i}"));
        }
        assert!(f.end().is_empty(), "two runs of 3 are not one of 6");
    }
}
