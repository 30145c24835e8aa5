//! What a session tells the statistics and the N+1 detector: every
//! statement execution with its analysis, duration, rows and outcome.
//!
//! It watches the client's messages (Query, Parse, Bind, Execute, Sync,
//! Close) to know which statement each execution runs with which values, and
//! the server's replies (DataRow, CommandComplete, EmptyQueryResponse,
//! PortalSuspended, ErrorResponse, ReadyForQuery) to know when each ends.
//! Executions complete in the order they were sent, so a queue suffices.

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
    values: u64,
}

#[derive(Debug)]
struct Pending {
    known: Known,
    sent: Mono,
    rows: u64,
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
    pending: VecDeque<Pending>,
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
            pending: VecDeque::new(),
            last_done: None,
            kind_metrics: Default::default(),
            burst_counter: None,
            slow: Duration::ZERO,
            effects_of: None,
            effects: Vec::new(),
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
            values: a.values,
        }
    }

    /// A complete client message on its way to the server.
    pub fn client_message(&mut self, tag: u8, msg: &[u8], now: Mono) {
        match tag {
            b'Q' => {
                let body = &msg[5..];
                let text = body.strip_suffix(&[0]).unwrap_or(body);
                let Observer {
                    sinks,
                    shapes,
                    detector,
                    pending,
                    ..
                } = self;
                sinks.analyzer.analyze_query(text, shapes, |a, stmt| {
                    // the text is copied only when it may be an N+1 example
                    let keep = detector
                        .as_ref()
                        .is_some_and(|d| d.needs_example(a.analysis.fingerprint, now));
                    let known = Known {
                        analysis: a.analysis,
                        text: keep.then(|| Arc::from(&*String::from_utf8_lossy(stmt))),
                        values: a.values,
                    };
                    pending.push_back(Pending {
                        known,
                        sent: now,
                        rows: 0,
                    });
                });
            }
            b'P' => {
                if let Some(p) = extended::parse_parse(msg) {
                    // A driver that sends the same text under the same name
                    // again (the unnamed statement of every execution) gets
                    // the analysis it had: no scan, no copy of the text.
                    if let Some(k) = self.statements.get(p.name) {
                        if k.text.as_deref().is_some_and(|t| t.as_bytes() == p.query) {
                            return;
                        }
                    }
                    let known = self.known(&String::from_utf8_lossy(p.query), true, now);
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
                        known.values = extended::bind_values_hash(msg, after)
                            .unwrap_or_else(|| xxhash_rust::xxh3::xxh3_64(&msg[after..]));
                        self.portals.insert(portal, known);
                    }
                }
            }
            b'E' => {
                let body = &msg[5..];
                let Some(end) = body.iter().position(|&b| b == 0) else {
                    return;
                };
                if let Some(known) = self.portals.get(&body[..end]).cloned() {
                    self.pending.push_back(Pending {
                        known,
                        sent: now,
                        rows: 0,
                    });
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
    pub fn server_message(&mut self, tag: u8, now: Mono) {
        match tag {
            b'D' => {
                if let Some(p) = self.pending.front_mut() {
                    p.rows += 1;
                }
            }
            b'C' | b'I' | b's' => self.complete(now, false, false),
            b'E' => self.complete(now, true, false),
            b'Z' => {
                // whatever did not complete was skipped after an error
                self.pending.clear();
                self.portals.remove(b"");
            }
            _ => {}
        }
    }

    /// The text of a statement the client prepared under `name`.
    pub fn statement_text(&self, name: &[u8]) -> Option<Arc<str>> {
        self.statements.get(name).and_then(|k| k.text.clone())
    }

    /// The execution just sent was answered from the cache with `rows` rows.
    pub fn served_from_cache(&mut self, now: Mono, rows: u64) {
        if let Some(p) = self.pending.back_mut() {
            p.rows = rows;
        }
        if let Some(p) = self.pending.pop_back() {
            self.pending.push_front(p);
        }
        self.complete(now, false, true);
    }

    #[inline(never)]
    fn complete(&mut self, now: Mono, error: bool, cache_hit: bool) {
        let Some(p) = self.pending.pop_front() else {
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
            .record(&p.known.analysis, duration, p.rows, error, cache_hit);
        if !error && !cache_hit {
            if let Some((volatility, db)) = &self.effects_of {
                if let Some(e) = effect_of(&p.known.analysis, volatility.get(db).as_deref()) {
                    self.effects.push(e);
                }
            }
        }
        let kind = p.known.analysis.kind;
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
                fingerprint = %p.known.analysis.fingerprint_hex(),
                duration_ms = duration.as_secs_f64() * 1000.0,
                query = %p.known.analysis.normalized,
                "slow statement"
            );
        }
        if error {
            self.sinks.metrics.error("query");
            return;
        }
        if let Some(d) = self.detector.as_mut() {
            let bursts = d.observe(Execution {
                analysis: p.known.analysis,
                values: p.known.values,
                example: p.known.text,
                start,
                duration,
            });
            for b in &bursts {
                Self::report(&self.sinks, &self.origin, &mut self.burst_counter, b);
            }
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
