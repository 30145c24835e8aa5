//! The burst detector of one client connection.
//!
//! A burst is a run of executions of one fingerprint, each starting within
//! `max_gap` of the end of the connection's previous statement, possibly
//! interleaved with other statements (an ORM loop alternating author and
//! comments lookups gives two bursts). A burst of a read with different
//! parameter values is N+1; of a write (INSERT, UPDATE, DELETE, MERGE), a
//! bulk write done row by row; one whose executions all had the same values
//! is a duplicate. Its parent is the last statement before the burst began
//! that is not itself a repetition in a burst — usually the list query.
//!
//! A loop of whole transactions is a workload, not an N+1: when each
//! execution of a burst ran in a transaction of its own, every one of those
//! transactions ran the same statements (two or more) in the same order, and
//! nothing ran once before the loop to be its parent — pgbench, a job
//! worker, a load test of one endpoint — the burst is not reported.
//!
//! Memory is bounded (at most [`MAX_BURSTS`] open bursts, [`HISTORY`]
//! remembered statement runs and [`MAX_BURSTS`] statements per transaction)
//! and the work per statement is O(1).

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

/// N+1, bulk write or duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BurstKind {
    /// one lookup (a read) per row of a parent query, with different values
    NPlusOne,
    /// one INSERT, UPDATE, DELETE or MERGE per row, with different values:
    /// rows written one statement at a time (a pgsift addition to SPEC §7's
    /// kinds: the fix is a batched write, not a batched read)
    BulkWrite,
    /// the same statement with the same values, again and again
    Duplicate,
}

impl BurstKind {
    /// As written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            BurstKind::NPlusOne => "n_plus_one",
            BurstKind::BulkWrite => "bulk_write",
            BurstKind::Duplicate => "duplicate",
        }
    }
}

/// A finished burst with at least `min_repeats` executions.
#[derive(Debug, Clone)]
pub struct Burst {
    /// N+1, bulk write or duplicate
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
    /// the transaction of the latest execution (0: none)
    last_txn: u64,
    /// whether the executions are one per transaction of a repeating shape
    cycle: Cycle,
}

/// What the transactions a burst's executions ran in say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cycle {
    /// one execution per transaction so far, none of which has ended
    Unknown,
    /// one execution per transaction, and every one of them that ended ran
    /// the statements whose sequence hashes to this (two or more)
    Shape(u64),
    /// not a loop of transactions: an execution outside an explicit
    /// transaction, two in one, or transactions of different statements
    Broken,
}

#[derive(Debug)]
struct Run {
    fingerprint: u64,
    analysis: Arc<Analysis>,
    first_seq: u64,
    /// an execution of it was part of a burst of two or more: a repetition,
    /// no parent, even once that burst has ended (an idle gap inside a
    /// loop must not make the loop's last statement the next burst's parent)
    repeated: bool,
}

/// The explicit transaction (BEGIN … COMMIT) a connection is in.
#[derive(Debug)]
struct Txn {
    /// numbers the connection's transactions from 1
    id: u64,
    /// hash of the sequence of its statements' fingerprints
    shape: u64,
    /// statements that ran in it
    statements: usize,
    /// the fingerprints of the bursts that ran in it, at most [`MAX_BURSTS`]
    /// (a burst past that is no transaction loop)
    members: Vec<u64>,
}

/// What a transaction-control statement does to the connection's
/// transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    /// BEGIN, START TRANSACTION
    Begin,
    /// COMMIT, END, ROLLBACK, ABORT, PREPARE TRANSACTION
    End,
    /// COMMIT AND CHAIN, ROLLBACK AND CHAIN
    EndAndBegin,
    /// SAVEPOINT, RELEASE, ROLLBACK TO, COMMIT PREPARED, …
    Other,
}

impl Control {
    /// Reads the statement's first words.
    fn of(sql: &str) -> Control {
        let is = |w: &str, k: &str| w.eq_ignore_ascii_case(k);
        let mut words = words(sql);
        let first = words.next().unwrap_or("");
        if is(first, "begin") || is(first, "start") {
            return Control::Begin;
        }
        if is(first, "prepare") {
            return Control::End;
        }
        if !["commit", "end", "rollback", "abort"]
            .iter()
            .any(|k| is(first, k))
        {
            return Control::Other;
        }
        let (mut prev, mut chained) = ("", false);
        for (i, w) in words.take(8).enumerate() {
            if (i == 0 && is(w, "prepared")) || is(w, "to") {
                // a prepared transaction's fate, or a savepoint's
                return Control::Other;
            }
            chained |= is(prev, "and") && is(w, "chain");
            prev = w;
        }
        if chained {
            Control::EndAndBegin
        } else {
            Control::End
        }
    }
}

/// The words of a statement, comments and punctuation skipped.
fn words(sql: &str) -> impl Iterator<Item = &str> {
    let mut rest = sql;
    std::iter::from_fn(move || loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end == 0 {
                // punctuation (`;`) or the end
                let mut chars = rest.chars();
                chars.next()?;
                rest = chars.as_str();
                continue;
            }
            let (word, after) = rest.split_at(end);
            rest = after;
            return Some(word);
        }
    })
}

/// Whether a statement of this kind is counted in bursts, and which kind
/// of burst its repeats with different values make.
fn burst_kind(kind: Kind) -> Option<BurstKind> {
    match kind {
        Kind::Select => Some(BurstKind::NPlusOne),
        Kind::Insert | Kind::Update | Kind::Delete | Kind::Merge => Some(BurstKind::BulkWrite),
        // transaction control and utility statements are never bursts or
        // parents; neither are DDL (migrations, partition maintenance) and
        // COPY (the batched form itself, often sent in chunks)
        Kind::Copy | Kind::Ddl | Kind::Transaction | Kind::Utility => None,
    }
}

/// Adds a statement to a transaction's shape (order matters).
fn extend_shape(shape: u64, fingerprint: u64) -> u64 {
    (shape.rotate_left(5) ^ fingerprint).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
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
    /// the explicit transaction the connection is in
    txn: Option<Txn>,
    /// transactions begun so far
    txns: u64,
    /// the member list of the last transaction, kept for the next one
    spare_members: Vec<u64>,
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
            txn: None,
            txns: 0,
            spare_members: Vec::new(),
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
        if e.analysis.kind == Kind::Transaction {
            self.transaction_control(&e.analysis.normalized);
        }
        if burst_kind(e.analysis.kind).is_none() {
            return done;
        }
        self.seq += 1;
        let fp = e.analysis.fingerprint;
        let now = end;
        // the transaction this execution runs in: a new member of it unless
        // its burst already ran in it
        let txn = match self.txn.as_mut() {
            Some(t) => {
                t.shape = extend_shape(t.shape, fp);
                t.statements += 1;
                t.id
            }
            None => 0,
        };
        // the open burst of this statement, counting this execution; its
        // parent is looked for once, at its second execution (before that
        // execution's run joins the history)
        let mut unresolved = None;
        let mut first_run_repeated = None;
        let member;
        let repeated;
        if let Some(b) = self.open.get_mut(&fp) {
            repeated = true;
            b.count += 1;
            if b.count == 2 {
                self.repeating += 1;
                first_run_repeated = Some(b.first_seq);
            }
            if txn == 0 || b.last_txn == txn {
                b.cycle = Cycle::Broken;
            }
            member = b.cycle != Cycle::Broken;
            b.last_txn = txn;
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
            repeated = false;
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
                    last_txn: txn,
                    cycle: if txn == 0 {
                        Cycle::Broken
                    } else {
                        Cycle::Unknown
                    },
                },
            );
            member = txn != 0;
        }
        if member {
            let full = match self.txn.as_mut() {
                Some(t) if t.members.len() < MAX_BURSTS => {
                    t.members.push(fp);
                    false
                }
                _ => true,
            };
            if full {
                if let Some(b) = self.open.get_mut(&fp) {
                    b.cycle = Cycle::Broken;
                }
            }
        }
        if let Some(first_seq) = first_run_repeated {
            // the burst's first execution was a repetition too
            if let Some(r) = self
                .history
                .iter_mut()
                .rev()
                .find(|r| r.fingerprint == fp && r.first_seq <= first_seq)
            {
                r.repeated = true;
            }
        }
        if let Some(first_seq) = unresolved {
            let parent = self.parent_before(first_seq, fp);
            if let Some(b) = self.open.get_mut(&fp) {
                b.parent = parent;
                b.parent_resolved = true;
            }
        }
        match self.history.back_mut() {
            Some(r) if r.fingerprint == fp => r.repeated |= repeated,
            _ => {
                if self.history.len() == HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back(Run {
                    fingerprint: fp,
                    analysis: e.analysis.clone(),
                    first_seq: self.seq,
                    repeated,
                });
            }
        }
        done
    }

    /// Follows BEGIN and COMMIT. A BEGIN inside a transaction (a no-op for
    /// Postgres) counts as a new one: a COMMIT that failed, and so went
    /// unseen, must not make the rest of the session one transaction.
    fn transaction_control(&mut self, sql: &str) {
        match Control::of(sql) {
            Control::Begin | Control::EndAndBegin => {
                self.end_transaction();
                self.begin_transaction();
            }
            Control::End => self.end_transaction(),
            Control::Other => {}
        }
    }

    fn begin_transaction(&mut self) {
        self.txns += 1;
        self.txn = Some(Txn {
            id: self.txns,
            shape: 0,
            statements: 0,
            members: std::mem::take(&mut self.spare_members),
        });
    }

    /// The transaction ended: each burst that ran in it learns its shape.
    fn end_transaction(&mut self) {
        let Some(mut t) = self.txn.take() else {
            return;
        };
        for fp in t.members.drain(..) {
            let Some(b) = self.open.get_mut(&fp) else {
                continue;
            };
            if b.last_txn != t.id {
                // a burst of the statement that began after an idle gap
                // inside the transaction, and has not run since
                continue;
            }
            b.cycle = match b.cycle {
                _ if t.statements < 2 => Cycle::Broken,
                Cycle::Unknown => Cycle::Shape(t.shape),
                Cycle::Shape(s) if s == t.shape => Cycle::Shape(s),
                _ => Cycle::Broken,
            };
        }
        self.spare_members = t.members;
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
    /// (open, or ended by an idle gap) and not the burst's own statement
    /// `counted` (which ran before an idle gap, say): a statement is not
    /// its own parent.
    fn parent_before(&self, seq: u64, counted: u64) -> Option<Arc<Analysis>> {
        self.history
            .iter()
            .rev()
            .filter(|r| r.first_seq < seq)
            .find(|r| {
                r.fingerprint != counted
                    && !r.repeated
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
        if b.parent.is_none() && matches!(b.cycle, Cycle::Shape(_)) {
            // a loop of identical transactions with nothing before it: a
            // workload (pgbench, a worker), not a loop over a query's rows
            return None;
        }
        let kind = if b.distinct.len() < 2 {
            BurstKind::Duplicate
        } else {
            burst_kind(b.analysis.kind).unwrap_or(BurstKind::NPlusOne)
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

    /// pgbench's TPC-B-like transaction with account `i`.
    fn pgbench_transaction(f: &mut Feed, i: usize) {
        f.run("BEGIN;");
        f.run(&format!(
            "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {i};",
            i % 9
        ));
        f.run(&format!(
            "SELECT abalance FROM pgbench_accounts WHERE aid = {i};"
        ));
        f.run(&format!(
            "UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = {};",
            i % 10
        ));
        f.run("UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1;");
        f.run(&format!(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({}, 1, {i}, 1, CURRENT_TIMESTAMP);",
            i % 10
        ));
        f.run("END;");
    }

    #[test]
    fn a_loop_of_identical_transactions_with_nothing_before_it_is_a_workload_not_a_burst() {
        let mut f = Feed::new();
        for i in 0..50 {
            pgbench_transaction(&mut f, i);
        }
        assert!(f.end().is_empty());

        // an idle gap inside the loop ends its bursts: the statements before
        // the gap were repetitions, so none is the parent of the bursts
        // after it; and the last transaction was cut short
        let mut f = Feed::new();
        for i in 0..50 {
            if i == 3 || i == 30 {
                f.t += Duration::from_millis(500);
            }
            pgbench_transaction(&mut f, i);
        }
        f.run("BEGIN;");
        f.run("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 77;");
        let bursts = f.end();
        assert!(bursts.is_empty(), "{bursts:#?}");
    }

    #[test]
    fn transactions_of_one_statement_or_of_different_statements_are_no_workload_loop() {
        // each lookup in a transaction of its own: the transaction only
        // wraps the lookup
        let mut f = Feed::new();
        for i in 0..6 {
            f.run("BEGIN");
            f.run(&format!("SELECT * FROM users WHERE id = {i}"));
            f.run("COMMIT");
        }
        let b = f.end();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].kind, BurstKind::NPlusOne);

        // the statement runs in transactions that differ
        let mut f = Feed::new();
        for i in 0..6 {
            f.run("BEGIN");
            f.run(&format!("SELECT * FROM users WHERE id = {i}"));
            f.run(&format!("SELECT * FROM t{} WHERE x = 1", i % 2));
            f.run("COMMIT");
        }
        let b = f.end();
        assert_eq!(b.len(), 1, "{b:#?}");
        assert!(b[0].analysis.normalized.contains("users"));
    }

    #[test]
    fn an_n_plus_one_loop_is_reported_in_one_transaction_in_autocommit_and_one_transaction_per_row()
    {
        for style in ["one transaction", "autocommit", "a transaction per row"] {
            let mut f = Feed::new();
            if style == "one transaction" {
                f.run("BEGIN");
            }
            f.run("SELECT * FROM posts ORDER BY created_at DESC LIMIT 20");
            for i in 0..20 {
                if style == "a transaction per row" {
                    f.run("BEGIN");
                }
                f.run(&format!("SELECT * FROM users WHERE id = {}", i % 7));
                f.run(&format!("SELECT * FROM comments WHERE post_id = {i}"));
                if style == "a transaction per row" {
                    f.run("COMMIT");
                }
            }
            if style == "one transaction" {
                f.run("COMMIT");
            }
            let bursts = f.end();
            assert_eq!(bursts.len(), 2, "{style}: {bursts:#?}");
            for b in &bursts {
                assert_eq!(b.kind, BurstKind::NPlusOne, "{style}");
                assert_eq!(b.repeats, 20, "{style}");
                let parent = b.parent.as_ref().expect("a parent");
                assert!(
                    parent.normalized.contains("FROM posts"),
                    "{style}: {parent:?}"
                );
            }
        }
    }

    #[test]
    fn row_by_row_writes_are_bulk_writes_and_a_read_loop_stays_n_plus_one() {
        // executemany(): inside one transaction (psycopg2) or not (asyncpg)
        for in_transaction in [true, false] {
            let mut f = Feed::new();
            if in_transaction {
                f.run("BEGIN");
            }
            for i in 0..100 {
                f.run(&format!("INSERT INTO ins (a, b) VALUES ({i}, 'b{i}')"));
            }
            if in_transaction {
                f.run("COMMIT");
            }
            let b = f.end();
            assert_eq!(b.len(), 1);
            assert_eq!(b[0].kind, BurstKind::BulkWrite);
            assert_eq!(b[0].repeats, 100);
            assert!(b[0].parent.is_none());
        }
        // a loop over a list query's rows that writes and reads
        let mut f = Feed::new();
        f.run("SELECT id FROM orders WHERE state = 'new'");
        for i in 0..8 {
            f.run(&format!("SELECT * FROM customers WHERE id = {i}"));
            f.run(&format!("UPDATE orders SET state = 'seen' WHERE id = {i}"));
            f.run(&format!("DELETE FROM carts WHERE order_id = {i}"));
        }
        let mut bursts = f.end();
        bursts.sort_by_key(|b| b.analysis.normalized.clone());
        let kinds: Vec<_> = bursts.iter().map(|b| b.kind).collect();
        assert_eq!(
            kinds,
            [
                BurstKind::BulkWrite,
                BurstKind::NPlusOne,
                BurstKind::BulkWrite
            ]
        );
        for b in &bursts {
            let parent = b.parent.as_ref().expect("a parent");
            assert!(parent.normalized.contains("FROM orders"), "{parent:?}");
        }
        // the same write again and again is a duplicate
        let mut f = Feed::new();
        for _ in 0..6 {
            f.run("UPDATE counters SET n = n + 1 WHERE id = 1");
        }
        let b = f.end();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].kind, BurstKind::Duplicate);
    }

    #[test]
    fn copy_and_ddl_are_neither_bursts_nor_parents() {
        let mut f = Feed::new();
        f.run("SELECT * FROM posts LIMIT 20");
        for i in 0..6 {
            f.run("COPY items FROM STDIN");
            f.run(&format!("ALTER TABLE items ALTER COLUMN x SET DEFAULT {i}"));
            f.run(&format!("SELECT * FROM users WHERE id = {i}"));
        }
        let b = f.end();
        assert_eq!(b.len(), 1, "{b:#?}");
        assert!(b[0].analysis.normalized.contains("users"));
        let parent = b[0].parent.as_ref().expect("a parent");
        assert!(parent.normalized.contains("FROM posts"), "{parent:?}");
    }

    #[test]
    fn a_begin_after_an_unseen_commit_starts_a_new_transaction() {
        // a COMMIT that failed is not observed: the next BEGIN still ends
        // the transaction it was in, and the loop is told apart
        let mut f = Feed::new();
        for i in 0..8 {
            f.run("BEGIN");
            f.run(&format!("UPDATE a SET x = x + 1 WHERE id = {i}"));
            f.run(&format!("INSERT INTO log (a_id) VALUES ({i})"));
            if i % 3 != 0 {
                f.run("COMMIT");
            }
        }
        assert!(f.end().is_empty());
    }

    #[test]
    fn transaction_control_is_read_from_the_first_words() {
        for (sql, want) in [
            ("BEGIN", Control::Begin),
            ("begin;", Control::Begin),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE", Control::Begin),
            ("START TRANSACTION READ ONLY", Control::Begin),
            ("/* app */ COMMIT", Control::End),
            ("-- tx\nCOMMIT;", Control::End),
            ("END;", Control::End),
            ("ROLLBACK", Control::End),
            ("abort work", Control::End),
            ("COMMIT AND NO CHAIN", Control::End),
            ("PREPARE TRANSACTION 'x'", Control::End),
            ("COMMIT AND CHAIN", Control::EndAndBegin),
            ("ROLLBACK TRANSACTION AND CHAIN", Control::EndAndBegin),
            ("ROLLBACK TO SAVEPOINT a", Control::Other),
            ("ROLLBACK WORK TO a", Control::Other),
            ("SAVEPOINT a", Control::Other),
            ("RELEASE SAVEPOINT a", Control::Other),
            ("COMMIT PREPARED 'x'", Control::Other),
            ("ROLLBACK PREPARED 'x'", Control::Other),
        ] {
            assert_eq!(Control::of(sql), want, "{sql}");
        }
    }
}
