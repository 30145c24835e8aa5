//! What a session tells the statistics and the N+1 detector: every
//! statement execution with its analysis, duration, rows and outcome.
//!
//! It watches the client's messages (Query, Parse, Bind, Execute, Sync,
//! Close) to know which statement each execution runs with which values, and
//! the server's replies (DataRow, CommandComplete, EmptyQueryResponse,
//! PortalSuspended, ErrorResponse, ReadyForQuery) to know when each ends.
//! Executions complete in the order they were sent, so a queue suffices.

use super::batch_ends::BatchEnds;
use super::caching::{effect_of, Effect};
use crate::cache::volatility::VolatilityTable;
use crate::clock::Mono;
use crate::metrics::Metrics;
use crate::nplus1::store::Origin;
use crate::nplus1::ReportStore;
use crate::nplus1::{Burst, BurstKind, Detector, Execution};
use crate::protocol::extended;
use crate::sql::analysis::ShapeMemo;
use crate::sql::{Analysis, Analyzer, Kind};
use crate::stats::QueryStats;
use prometheus::{Histogram, IntCounter};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// A statement known by name (or the unnamed one) or bound to a portal.
#[derive(Debug, Clone)]
struct Known {
    analysis: Arc<Analysis>,
    /// kept for named statements (the cache looks them up) and for
    /// executions that may open an N+1 burst (its example)
    text: Option<Arc<str>>,
    /// a Parse's query text and parameter types as sent (the message's
    /// bytes after the statement name): the cache keys a batch that binds
    /// the statement by them, and a Parse that repeats them is not analysed
    /// again
    parse: Option<Arc<[u8]>>,
    /// the parameter types the server described for the statement
    /// (ParameterDescription), for examples with binary values
    described: Option<Arc<[u32]>>,
    values: u64,
    /// the server may read the text otherwise than the analysis did
    /// (`standard_conforming_strings` off and a backslash in it): what it
    /// writes is unknown
    misread: bool,
}

#[derive(Debug)]
struct Pending {
    /// `None`: an Execute of a portal the observer does not know (bound to
    /// a statement prepared with SQL `PREPARE`, or forgotten past
    /// [`MAX_NAMED`]); it is counted nowhere, but what it wrote must still
    /// be invalidated
    known: Option<Known>,
    sent: Mono,
    rows: u64,
    /// the client batch it was sent in (see [`Batches`])
    batch: u64,
}

/// Which batch of the client's each execution belongs to. A batch ends
/// with a Query, a Sync or a FunctionCall, and the server answers each end
/// with a ReadyForQuery; executions of a batch the server has ended
/// without completing them were skipped after an error. A client may send
/// later batches before that ReadyForQuery arrives: their executions stay.
#[derive(Debug, Default)]
struct Batches {
    /// batches the client has ended: the next execution is of this one
    sent: u64,
    /// batches the server has ended: its current one
    done: u64,
    /// which client messages end a batch
    ends: BatchEnds,
}

impl Batches {
    /// A client message that may end a batch (Query, Sync, FunctionCall)
    /// or bear on one (Execute, CopyDone, CopyFail).
    #[inline]
    fn end(&mut self, tag: u8) {
        if self.ends.client_sent(tag) {
            self.sent += 1;
        }
    }
}

/// The shared tables a session reports to.
#[derive(Clone)]
pub struct Sinks {
    /// statement analysis
    pub analyzer: Arc<Analyzer>,
    /// per-fingerprint statistics
    pub queries: Arc<QueryStats>,
    /// N+1 reports
    pub reports: Arc<ReportStore>,
    /// metric families
    pub metrics: Arc<Metrics>,
}

/// The observer of one session.
pub struct Observer {
    sinks: Sinks,
    origin: Origin,
    detector: Option<Detector>,
    /// this session's recent statement shapes
    shapes: ShapeMemo,
    statements: Names,
    portals: Names,
    /// statements whose Describe is still to be answered, in order
    describing: VecDeque<Vec<u8>>,
    pending: VecDeque<Pending>,
    batches: Batches,
    last_done: Option<Mono>,
    /// metric handles per statement kind (by `Kind as usize`), resolved on
    /// first use
    kind_metrics: [Option<(IntCounter, Histogram)>; KINDS],
    burst_counter: Option<IntCounter>,
    /// log statements slower than this (zero: never)
    pub slow: Duration,
    /// when the cache is on: where to learn function volatility, and the
    /// database the session writes to
    pub effects_of: Option<(Arc<VolatilityTable>, Arc<str>)>,
    /// effects of completed statements, taken by the session's cache state
    pub effects: Vec<Effect>,
    /// the session's `standard_conforming_strings` is (or may be) off: a
    /// text with a backslash may run otherwise than its analysis says
    pub lax_strings: bool,
}

/// Statement kinds ([`Kind`]'s variants).
const KINDS: usize = Kind::Utility as usize + 1;

/// Most statements kept by name per client (drivers close theirs; this
/// bounds a client that never does).
const MAX_NAMED: usize = 10_000;

/// Statements or portals by name. The unnamed one, which most executions
/// use, has a slot of its own: no hashing, no map entry made and dropped
/// per execution.
#[derive(Default)]
struct Names {
    unnamed: Option<Known>,
    named: FxHashMap<Vec<u8>, Known>,
}

impl Names {
    fn get(&self, name: &[u8]) -> Option<&Known> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    fn insert(&mut self, name: &[u8], known: Known) {
        if name.is_empty() {
            self.unnamed = Some(known);
        } else if let Some(slot) = self.named.get_mut(name) {
            *slot = known;
        } else {
            if self.named.len() >= MAX_NAMED {
                self.named.clear();
            }
            self.named.insert(name.to_vec(), known);
        }
    }

    fn remove(&mut self, name: &[u8]) {
        if name.is_empty() {
            self.unnamed = None;
        } else {
            self.named.remove(name);
        }
    }
}

impl Observer {
    /// An observer; `detector` is `None` when N+1 detection is off.
    pub fn new(sinks: Sinks, origin: Origin, detector: Option<Detector>) -> Observer {
        Observer {
            sinks,
            origin,
            detector,
            shapes: ShapeMemo::default(),
            statements: Names::default(),
            portals: Names::default(),
            describing: VecDeque::new(),
            pending: VecDeque::new(),
            batches: Batches::default(),
            last_done: None,
            kind_metrics: Default::default(),
            burst_counter: None,
            slow: Duration::ZERO,
            effects_of: None,
            effects: Vec::new(),
            lax_strings: false,
        }
    }

    /// The session's application_name changed (the server reported it):
    /// later N+1 reports and burst counts carry the new name.
    pub fn set_application(&mut self, name: &str) {
        if self.origin.application != name {
            self.origin.application = name.to_owned();
            self.burst_counter = None;
        }
    }

    /// The analysis of `sql`; its text is copied when `keep_text` or when
    /// the N+1 detector may want it as an example.
    fn known(&mut self, sql: &str, keep_text: bool, now: Mono) -> Known {
        let a = self
            .sinks
            .analyzer
            .analyze_remembering(sql, &mut self.shapes);
        let keep = keep_text
            || self
                .detector
                .as_ref()
                .is_some_and(|d| d.needs_example(a.analysis.fingerprint, now));
        Known {
            analysis: a.analysis,
            text: keep.then(|| sql.into()),
            parse: None,
            described: None,
            values: a.values,
            misread: self.misreads(sql.as_bytes()),
        }
    }

    /// True when the server may read `text` otherwise than its analysis.
    fn misreads(&self, text: &[u8]) -> bool {
        self.lax_strings && memchr::memchr(b'\\', text).is_some()
    }

    /// A complete client message on its way to the server.
    pub fn client_message(&mut self, tag: u8, msg: &[u8], now: Mono) {
        match tag {
            b'Q' => {
                let body = &msg[5..];
                let text = body.strip_suffix(&[0]).unwrap_or(body);
                let misread = self.misreads(text);
                let Observer {
                    sinks,
                    shapes,
                    detector,
                    pending,
                    batches,
                    ..
                } = self;
                let batch = batches.sent;
                sinks.analyzer.analyze_query(text, shapes, |a, stmt| {
                    // the text is copied only when it may be an N+1 example
                    let keep = detector
                        .as_ref()
                        .is_some_and(|d| d.needs_example(a.analysis.fingerprint, now));
                    let known = Known {
                        analysis: a.analysis,
                        text: keep.then(|| Arc::from(&*String::from_utf8_lossy(stmt))),
                        parse: None,
                        described: None,
                        values: a.values,
                        misread,
                    };
                    pending.push_back(Pending {
                        known: Some(known),
                        sent: now,
                        rows: 0,
                        batch,
                    });
                });
                self.batches.end(tag);
            }
            b'F' | b'S' | b'c' | b'f' => self.batches.end(tag),
            b'P' => {
                if let Some(p) = extended::parse_parse(msg) {
                    // A driver that sends the same text and parameter types
                    // under the same name again (the unnamed statement of
                    // every execution) gets the analysis it had: no scan, no
                    // copy of the text.
                    let sent = &msg[5 + p.name.len() + 1..];
                    if let Some(k) = self.statements.get(p.name) {
                        if k.parse.as_deref() == Some(sent) && k.misread == self.misreads(p.query) {
                            return;
                        }
                        if !p.name.is_empty() {
                            // Postgres refuses a name in use (42P05) and
                            // keeps the statement it has, unless SQL
                            // DEALLOCATE, which is not followed here,
                            // freed it: which of the two the name is now
                            // cannot be known
                            self.statements.remove(p.name);
                            return;
                        }
                    }
                    let mut known = self.known(&String::from_utf8_lossy(p.query), true, now);
                    known.parse = Some(sent.into());
                    self.statements.insert(p.name, known);
                }
            }
            b'B' => {
                let body = &msg[5..];
                let Some(portal_end) = body.iter().position(|&b| b == 0) else {
                    return;
                };
                let portal = &body[..portal_end];
                if let Some((stmt, after)) = extended::bind_statement(msg) {
                    if let Some(k) = self.statements.get(stmt) {
                        let mut known = k.clone();
                        // the values are the text's literals and the bound
                        // parameters together: a loop that writes its value
                        // into the text (no parameters, which hash to 0)
                        // runs with different values at each execution
                        known.values = k.values
                            ^ extended::bind_values_hash(msg, after)
                                .unwrap_or_else(|| xxhash_rust::xxh3::xxh3_64(&msg[after..]));
                        // an execution that may open a burst: its example
                        // is the text with the values bound
                        if let (Some(text), Some(d)) = (k.text.as_deref(), self.detector.as_ref()) {
                            if text.contains('$') && d.needs_example(k.analysis.fingerprint, now) {
                                if let Some(params) =
                                    extended::bind_params(msg, after).filter(|p| !p.is_empty())
                                {
                                    let types =
                                        param_types(k.parse.as_deref(), k.described.as_deref());
                                    known.text = Some(
                                        crate::nplus1::example::with_values(text, &params, &types)
                                            .into(),
                                    );
                                }
                            }
                        }
                        self.portals.insert(portal, known);
                    }
                }
            }
            b'E' => {
                let body = &msg[5..];
                let Some(end) = body.iter().position(|&b| b == 0) else {
                    return;
                };
                let known = self.portals.get(&body[..end]).cloned();
                self.batches.end(tag);
                self.pending.push_back(Pending {
                    known,
                    sent: now,
                    rows: 0,
                    batch: self.batches.sent,
                });
            }
            b'D' if self.detector.is_some() => {
                if let Some((b'S', name)) = extended::target(msg) {
                    if self.describing.len() < MAX_NAMED {
                        self.describing.push_back(name.to_vec());
                    }
                }
            }
            b'C' => {
                if let Some((kind, name)) = extended::target(msg) {
                    if kind == b'S' {
                        self.statements.remove(name);
                    } else {
                        self.portals.remove(name);
                    }
                }
            }
            _ => {}
        }
    }

    /// A server message on its way to the client.
    #[inline(always)]
    pub fn server_message(&mut self, tag: u8, msg: &[u8], now: Mono) {
        match tag {
            b't' => self.described(msg),
            b'D' => {
                if let Some(p) = self.pending.front_mut() {
                    p.rows += 1;
                }
            }
            b'C' => self.complete(now, false, false, true),
            b'I' | b's' => self.complete(now, false, false, false),
            b'E' => {
                self.batches.ends.server_sent(tag);
                self.complete(now, true, false, false)
            }
            b'Z' => {
                self.batches.ends.server_sent(tag);
                self.batch_ended();
                self.portals.remove(b"");
                // a Describe skipped after an error is never answered
                self.describing.clear();
            }
            b'G' => self.copy_in_started(),
            _ => {}
        }
    }

    /// A ParameterDescription: the types of the statement described.
    #[cold]
    fn described(&mut self, msg: &[u8]) {
        let Some(name) = self.describing.pop_front() else {
            return;
        };
        let types: Arc<[u32]> = msg
            .get(7..)
            .unwrap_or_default()
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(k) = self.statements.get(&name) {
            let mut k = k.clone();
            k.described = Some(types);
            self.statements.insert(&name, k);
        }
    }

    /// What the client's Parse of statement `name` sent after the name:
    /// its query text, a zero byte and its parameter types.
    pub fn statement_parse(&self, name: &[u8]) -> Option<Arc<[u8]>> {
        self.statements.get(name).and_then(|k| k.parse.clone())
    }

    /// The execution just sent, the batch's only one, was answered from
    /// the cache with `rows` rows: no ReadyForQuery comes for its batch.
    pub fn served_from_cache(&mut self, now: Mono, rows: u64) {
        if let Some(mut p) = self.pending.pop_back() {
            p.rows = rows;
            self.pending.push_front(p);
            self.complete(now, false, true, false);
        }
        self.batch_ended();
    }

    /// ReadyForQuery: the server's current batch has ended; what of it did
    /// not complete was skipped after an error. Also called when pgsift
    /// answered a batch itself.
    #[inline]
    pub fn batch_ended(&mut self) {
        let done = self.batches.done;
        while self.pending.front().is_some_and(|p| p.batch <= done) {
            self.pending.pop_front();
        }
        // (never past what the client sent: a ReadyForQuery nothing owed
        // is out of step)
        self.batches.done = (done + 1).min(self.batches.sent);
    }

    /// CopyInResponse: until the client ends the copy, the server ignores
    /// Sync; Syncs already sent since the COPY's Execute end no batch. They
    /// are the last ones sent (an Execute after them restarts the count),
    /// so no execution's batch changes.
    #[cold]
    fn copy_in_started(&mut self) {
        let b = &mut self.batches;
        let ignored = b.ends.copy_in_started() as u64;
        b.sent -= ignored.min(b.sent - b.done);
    }

    /// An execution of the oldest batch ended (`done`: with a
    /// CommandComplete).
    #[inline(never)]
    fn complete(&mut self, now: Mono, error: bool, cache_hit: bool, done: bool) {
        let current = self.batches.done;
        let ours = self.pending.front().is_some_and(|p| p.batch <= current);
        let Some(p) = (if ours { self.pending.pop_front() } else { None }) else {
            // a statement of this batch that nothing was waiting for: what
            // it wrote is unknown
            if done {
                self.unknown_write();
            }
            return;
        };
        let Some(known) = p.known else {
            if done {
                self.unknown_write();
            }
            return;
        };
        // pipelined executions run one after the other on the server
        let start = match self.last_done {
            Some(d) if d > p.sent => d,
            _ => p.sent,
        };
        self.last_done = Some(now);
        let duration = now.since(start);
        self.sinks
            .queries
            .record(&known.analysis, duration, p.rows, error, cache_hit);
        if known.misread && !cache_hit {
            // (also after an error: a procedure hidden from the analysis
            // may have committed part of its work)
            self.unknown_write();
        } else if !error && !cache_hit {
            if let Some((volatility, db)) = &self.effects_of {
                if let Some(e) = effect_of(&known.analysis, volatility.get(db).as_deref()) {
                    self.effects.push(e);
                }
            }
        }
        let kind = known.analysis.kind;
        let (sinks, origin) = (&self.sinks, &self.origin);
        // (an index past the array, were a kind added without KINDS, would
        // only cost the cached handles: the metrics are looked up each time)
        let mut uncached = None;
        let slot = match self.kind_metrics.get_mut(kind as usize) {
            Some(slot) => slot,
            None => &mut uncached,
        };
        let (count, hist) = slot.get_or_insert_with(|| {
            (
                sinks.metrics.queries_total.with_label_values(&[
                    &origin.database,
                    &origin.user,
                    kind.as_str(),
                ]),
                sinks
                    .metrics
                    .query_duration_seconds
                    .with_label_values(&[&origin.database, kind.as_str()]),
            )
        });
        count.inc();
        hist.observe(duration.as_secs_f64());
        if !self.slow.is_zero() && duration >= self.slow {
            tracing::warn!(
                fingerprint = %known.analysis.fingerprint_hex(),
                duration_ms = duration.as_secs_f64() * 1000.0,
                query = %known.analysis.normalized,
                "slow statement"
            );
        }
        if error {
            self.sinks.metrics.error("query");
            if known.analysis.opaque {
                // a procedure or DO block may have committed some of its
                // work before it failed
                self.unknown_write();
            }
            return;
        }
        if let Some(d) = self.detector.as_mut() {
            let bursts = d.observe(Execution {
                analysis: known.analysis,
                values: known.values,
                example: known.text,
                start,
                duration,
            });
            for b in &bursts {
                Self::report(&self.sinks, &self.origin, &mut self.burst_counter, b);
            }
        }
    }

    /// The session ends with executions in flight, which may still take
    /// effect on the server after it: with the cache on, their effects
    /// (whatever an unknown one may have written) join the completed ones.
    pub fn in_flight_effects(&mut self) {
        let Some((volatility, db)) = &self.effects_of else {
            return;
        };
        let facts = volatility.get(db);
        for p in self.pending.drain(..) {
            let effect = match &p.known {
                Some(k) if !k.misread => effect_of(&k.analysis, facts.as_deref()),
                _ => Some(Effect::Database),
            };
            self.effects.extend(effect);
        }
    }

    /// A statement completed that the observer could not tell: with the
    /// cache on, it may have written anything in the database.
    #[cold]
    fn unknown_write(&mut self) {
        if self.effects_of.is_some() {
            self.effects.push(Effect::Database);
        }
    }

    fn report(sinks: &Sinks, origin: &Origin, counter: &mut Option<IntCounter>, b: &Burst) {
        if sinks.reports.add(b, origin) && b.kind == BurstKind::NPlusOne {
            counter
                .get_or_insert_with(|| {
                    let app = sinks.metrics.application_label(&origin.application);
                    sinks
                        .metrics
                        .n_plus_one_bursts_total
                        .with_label_values(&[&origin.database, &app])
                })
                .inc();
        }
    }

    /// Applies reloaded settings: N+1 on/off and thresholds, slow-statement
    /// threshold.
    pub fn reconfigure(&mut self, n1: &crate::config::NPlusOneConfig, slow: Duration) {
        self.slow = slow;
        match (&mut self.detector, n1.enabled) {
            (Some(d), true) => d.set_thresholds(n1.min_repeats, n1.max_gap),
            (None, true) => self.detector = Some(Detector::new(n1.min_repeats, n1.max_gap)),
            (_, false) => self.detector = None,
        }
    }

    /// When open bursts end if the client stays quiet.
    pub fn deadline(&self) -> Option<Mono> {
        self.detector.as_ref().and_then(Detector::deadline)
    }

    /// Ends bursts whose gap has passed.
    pub fn tick(&mut self, now: Mono) {
        if let Some(d) = self.detector.as_mut() {
            for b in d.finish_idle(now) {
                Self::report(&self.sinks, &self.origin, &mut self.burst_counter, &b);
            }
        }
    }

    /// The client left: its open bursts end.
    pub fn finish(&mut self) {
        if let Some(d) = self.detector.as_mut() {
            for b in d.finish_all() {
                Self::report(&self.sinks, &self.origin, &mut self.burst_counter, &b);
            }
        }
    }
}

/// The parameter type OIDs in what a Parse sent after its statement name
/// (see [`Known`]'s `parse`), those left unspecified taken from what the
/// server `described`.
fn param_types(sent: Option<&[u8]>, described: Option<&[u32]>) -> Vec<u32> {
    let declared = sent
        .and_then(|s| Some(&s[s.iter().position(|&b| b == 0)? + 1..]))
        .and_then(|s| s.get(2..))
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    let described = described.unwrap_or_default();
    let mut types: Vec<u32> = declared.collect();
    types.resize(types.len().max(described.len()), 0);
    for (t, d) in types.iter_mut().zip(described) {
        if *t == 0 {
            *t = *d;
        }
    }
    types
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observer() -> Observer {
        let sinks = Sinks {
            analyzer: Arc::new(Analyzer::default()),
            queries: Arc::new(QueryStats::new(100)),
            reports: Arc::new(ReportStore::new(Duration::ZERO, None)),
            metrics: Arc::new(Metrics::new()),
        };
        let origin = Origin {
            database: "db".into(),
            user: "u".into(),
            application: String::new(),
            client_addr: String::new(),
        };
        let mut o = Observer::new(sinks, origin, None);
        o.effects_of = Some((Arc::new(VolatilityTable::new(None)), "db".into()));
        o
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn cstr(s: &str) -> Vec<u8> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        b
    }

    fn query(sql: &str) -> Vec<u8> {
        msg(b'Q', &cstr(sql))
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = cstr(name);
        b.extend(cstr(sql));
        b.extend_from_slice(&0u16.to_be_bytes());
        msg(b'P', &b)
    }

    fn bind(statement: &str) -> Vec<u8> {
        let mut b = cstr("");
        b.extend(cstr(statement));
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        msg(b'B', &b)
    }

    fn execute() -> Vec<u8> {
        let mut b = cstr("");
        b.extend_from_slice(&0u32.to_be_bytes());
        msg(b'E', &b)
    }

    /// A one-off statement as drivers send it: unnamed Parse, Bind, Execute,
    /// Sync.
    fn one_off(sql: &str) -> Vec<Vec<u8>> {
        vec![parse("", sql), bind(""), execute(), msg(b'S', b"")]
    }

    /// The client sends `client` (each message seen on its way), then the
    /// server answers with `server` (tags only).
    fn run(o: &mut Observer, client: &[Vec<u8>], server: &[u8]) {
        let now = Mono::now();
        for m in client {
            o.client_message(m[0], m, now);
        }
        for &tag in server {
            o.server_message(tag, &[tag, 0, 0, 0, 4], now);
        }
    }

    #[test]
    fn a_write_sent_before_the_previous_reply_arrived_is_still_invalidated() {
        let mut o = observer();
        run(
            &mut o,
            &[
                query("SELECT * FROM posts"),
                query("UPDATE posts SET n = 1"),
            ],
            b"TDCZ",
        );
        assert!(o.effects.is_empty(), "the SELECT wrote nothing");
        run(&mut o, &[], b"CZ");
        assert_eq!(o.effects.len(), 1, "the UPDATE's effect was lost");
        assert!(o.pending.is_empty());
    }

    #[test]
    fn an_error_skips_only_the_rest_of_its_own_batch() {
        let mut o = observer();
        // batch 1: two executions, the first fails and the server skips the
        // second; batch 2, sent at once, writes
        let batch1 = [
            parse("", "SELECT 1/0"),
            bind(""),
            execute(),
            parse("", "DELETE FROM posts"),
            bind(""),
            execute(),
            msg(b'S', b""),
        ];
        let batch2 = one_off("UPDATE posts SET n = 1");
        run(&mut o, &[&batch1[..], &batch2[..]].concat(), b"12EZ");
        assert!(o.effects.is_empty(), "the skipped DELETE ran nowhere");
        run(&mut o, &[], b"12CZ");
        assert_eq!(o.effects.len(), 1, "the UPDATE's effect was lost");
        assert!(o.pending.is_empty());
    }

    #[test]
    fn an_error_in_a_batch_without_executions_is_not_a_later_batchs() {
        let mut o = observer();
        let batch1 = [parse("s1", "SELEC nonsense"), msg(b'S', b"")];
        let batch2 = one_off("UPDATE posts SET n = 1");
        run(&mut o, &[&batch1[..], &batch2[..]].concat(), b"EZ12CZ");
        assert_eq!(o.effects.len(), 1, "the UPDATE's effect was lost");
    }

    #[test]
    fn a_batch_pgsift_answered_itself_ends_too() {
        let mut o = observer();
        // PQprepare while no server is free: pgsift acknowledges it
        run(
            &mut o,
            &[parse("p1", "UPDATE posts SET n = $1"), msg(b'S', b"")],
            b"",
        );
        o.batch_ended();
        run(&mut o, &[query("UPDATE posts SET n = 1")], b"CZ");
        assert_eq!(o.effects.len(), 1);
        assert_eq!(o.batches.sent, o.batches.done, "in step");
    }

    #[test]
    fn an_execution_of_an_unknown_statement_invalidates_the_database() {
        let mut o = observer();
        // a statement prepared with SQL PREPARE: the observer never saw it
        run(
            &mut o,
            &[bind("from_sql"), execute(), msg(b'S', b"")],
            b"2CZ",
        );
        assert!(matches!(o.effects[..], [Effect::Database]));
    }

    #[test]
    fn a_failed_procedure_may_have_committed_and_invalidates_the_database() {
        let mut o = observer();
        run(
            &mut o,
            &[query("UPDATE posts SET n = 1 WHERE n = 1/0")],
            b"EZ",
        );
        assert!(o.effects.is_empty(), "a failed UPDATE wrote nothing");
        for sql in ["CALL archive_old_posts()", "DO $$ BEGIN COMMIT; END $$"] {
            run(&mut o, &[query(sql)], b"EZ");
            assert!(matches!(o.effects[..], [Effect::Database]), "{sql}");
            o.effects.clear();
        }
    }

    #[test]
    fn a_text_with_a_backslash_invalidates_the_database_while_standard_conforming_strings_is_off() {
        // read with standard_conforming_strings on, this SELECT calls no
        // function; with it off, the server calls the one behind the `--`
        let hidden = "SELECT 'x\\' -- ', (SELECT count(*) FROM bump_and_count())\nFROM posts";
        let mut o = observer();
        run(&mut o, &[query(hidden)], b"TDCZ");
        assert!(o.effects.is_empty(), "read as the parser reads it");
        o.lax_strings = true;
        run(&mut o, &[query(hidden)], b"TDCZ");
        assert!(matches!(o.effects[..], [Effect::Database]));
        o.effects.clear();
        // the extended protocol too, also when the execution fails
        run(&mut o, &one_off(hidden), b"12EZ");
        assert!(matches!(o.effects[..], [Effect::Database]));
        o.effects.clear();
        // a text without one is read as the server reads it
        run(&mut o, &[query("SELECT 'x' FROM posts")], b"TDCZ");
        assert!(o.effects.is_empty());
        // a statement prepared while the setting was on keeps its reading
        o.lax_strings = false;
        run(&mut o, &[parse("s", hidden)], b"1");
        o.lax_strings = true;
        run(&mut o, &[bind("s"), execute(), msg(b'S', b"")], b"2DCZ");
        assert!(o.effects.is_empty());
        // and one prepared again with the same text while it is off is not
        run(
            &mut o,
            &[parse("s", hidden), bind("s"), execute(), msg(b'S', b"")],
            b"12DCZ",
        );
        assert!(matches!(o.effects[..], [Effect::Database]));
        o.effects.clear();
        // and when the client leaves before its reply
        run(&mut o, &[query(hidden)], b"");
        o.in_flight_effects();
        assert!(matches!(o.effects[..], [Effect::Database]));
    }

    #[test]
    fn executions_in_flight_when_the_client_leaves_are_counted_as_writes() {
        let mut o = observer();
        run(
            &mut o,
            &[
                query("SELECT * FROM posts"),
                query("UPDATE posts SET n = 1"),
            ],
            b"",
        );
        run(&mut o, &[bind("from_sql"), execute(), msg(b'S', b"")], b"");
        o.in_flight_effects();
        assert!(
            matches!(&o.effects[..], [Effect::Database, Effect::Database]),
            "the UPDATE (no facts: the database) and the unknown portal: {:?}",
            o.effects
        );
        assert!(o.pending.is_empty());
    }

    #[test]
    fn literals_in_an_extended_protocol_text_are_values_too() {
        let mut o = observer();
        let mut values = Vec::new();
        for sql in [
            "SELECT * FROM users WHERE id = 1",
            "SELECT * FROM users WHERE id = 2",
            "SELECT * FROM users WHERE id = 2",
        ] {
            o.client_message(b'P', &parse("", sql), Mono::now());
            o.client_message(b'B', &bind(""), Mono::now());
            values.push(o.portals.get(b"").unwrap().values);
        }
        assert_ne!(values[0], values[1], "a loop over ids: different values");
        assert_eq!(values[1], values[2], "the same query again: a duplicate");
    }

    #[test]
    fn syncs_a_server_ignores_in_copy_in_mode_owe_no_ready_for_query() {
        let mut o = observer();
        // libpq's extended-protocol COPY: a Sync with the Execute (ignored
        // in copy-in mode), another after CopyDone
        run(&mut o, &one_off("COPY posts FROM STDIN"), b"12G");
        run(
            &mut o,
            &[msg(b'd', b"1\n"), msg(b'c', b""), msg(b'S', b"")],
            b"CZ",
        );
        assert_eq!(o.effects.len(), 1, "COPY FROM writes");
        assert!(o.pending.is_empty(), "{:?}", o.pending);
        assert_eq!(o.batches.sent, o.batches.done, "nothing is owed");
        // the next batch's completions are its own
        run(&mut o, &[query("UPDATE posts SET n = 1")], b"CZ");
        assert_eq!(o.effects.len(), 2);
        assert!(o.pending.is_empty());
    }

    #[test]
    fn a_simple_query_copy_keeps_its_ready_for_query() {
        let mut o = observer();
        run(&mut o, &[query("COPY posts FROM STDIN")], b"G");
        run(&mut o, &[msg(b'd', b"1\n"), msg(b'c', b"")], b"CZ");
        assert_eq!(o.effects.len(), 1);
        assert!(o.pending.is_empty(), "{:?}", o.pending);
        assert_eq!(o.batches.sent, o.batches.done, "nothing is owed");
    }
}
