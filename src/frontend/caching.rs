//! A session's side of the SELECT cache: answering a cacheable simple query
//! from the cache, capturing the server's reply to a miss, and recording the
//! invalidations of the session's writes when they take effect.
//!
//! Writes are known from the statements that completed (the observer's
//! analysis of each execution). They take effect when the server reports
//! ReadyForQuery `I` — the end of the implicit or explicit transaction — and
//! pgsift records their invalidation before that ReadyForQuery is passed on.
//! Writes of a transaction that was rolled back are invalidated as well:
//! wasted entries, never stale ones (ROLLBACK TO SAVEPOINT reports the same
//! tag, so a rollback cannot be told apart safely).

use crate::cache::volatility::DatabaseFacts;
use crate::cache::{self, QueryCache, TableKey};
use crate::sql::{Analysis, Kind};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;

/// What a completed statement did to the database's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// wrote these tables
    Tables(Vec<String>),
    /// may have written anything (CALL, DO, volatile functions, text the
    /// parser rejects)
    Database,
    /// changed the schema (DDL, GRANT, …): anything, and what pgsift knows
    /// about functions and row-level security may be out of date
    Schema,
}

/// The effect of a successfully completed statement, if it wrote anything.
/// `facts` are the database's function volatilities (`None`: not known yet,
/// so any function might be volatile).
pub fn effect_of(a: &Analysis, facts: Option<&DatabaseFacts>) -> Option<Effect> {
    if a.kind == Kind::Ddl {
        return Some(Effect::Schema);
    }
    if a.opaque {
        return Some(Effect::Database);
    }
    if !a.writes.is_empty() {
        return Some(Effect::Tables(a.writes.clone()));
    }
    if matches!(
        a.kind,
        Kind::Select | Kind::Insert | Kind::Update | Kind::Delete | Kind::Merge
    ) && !a.functions.is_empty()
        && !facts.is_some_and(|f| a.functions.iter().all(|n| f.not_volatile.contains(n)))
    {
        // a volatile function may write: what it touched cannot be known
        return Some(Effect::Database);
    }
    None
}

/// A miss being captured.
struct Capture {
    key: u128,
    versions: Vec<(TableKey, u64)>,
    epoch: u64,
    ttl: Duration,
    buf: BytesMut,
    limit: usize,
    failed: bool,
    flight: Option<cache::Flight>,
}

/// The cache state of one session.
pub struct SessionCache {
    /// the shared cache
    pub cache: Arc<QueryCache>,
    /// the client-facing database
    pub db: Arc<str>,
    pending: Vec<Effect>,
    capture: Option<Capture>,
    /// the current transaction asked for REPEATABLE READ or SERIALIZABLE
    pub strict_isolation: bool,
    invalidations: prometheus::IntCounter,
}

impl SessionCache {
    /// A session's cache state.
    pub fn new(
        cache: Arc<QueryCache>,
        db: Arc<str>,
        invalidations: prometheus::IntCounter,
    ) -> SessionCache {
        SessionCache {
            invalidations,
            cache,
            db,
            pending: Vec::new(),
            capture: None,
            strict_isolation: false,
        }
    }

    /// True when the current transaction has written (its reads must see
    /// its own writes, which no cache entry has).
    pub fn wrote_in_transaction(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Starts capturing the reply to a miss, with the versions read now.
    pub fn begin_capture(
        &mut self,
        key: u128,
        tables: &[String],
        ttl: Duration,
        limit: usize,
        flight: Option<cache::Flight>,
    ) {
        let (versions, epoch) = self.cache.snapshot(&self.db, tables);
        self.capture = Some(Capture {
            key,
            versions,
            epoch,
            ttl,
            buf: BytesMut::new(),
            limit,
            failed: false,
            flight,
        });
    }

    /// Takes the effects of statements that completed.
    pub fn take_effects(&mut self, effects: &mut Vec<Effect>) {
        self.pending.append(effects);
    }

    /// A server message on its way to the client (called before it is
    /// passed on).
    pub fn server_message(&mut self, tag: u8, msg: &[u8]) {
        if let Some(c) = self.capture.as_mut() {
            match tag {
                b'T' | b'D' | b'C' => {
                    if c.buf.len() + msg.len() > c.limit {
                        c.failed = true;
                    } else if !c.failed {
                        c.buf.extend_from_slice(msg);
                    }
                }
                b'E' | b'G' | b'H' | b'I' => c.failed = true,
                b'Z' => {
                    if let Some(mut c) = self.capture.take() {
                        let flight = c.flight.take();
                        if !c.failed && !c.buf.is_empty() {
                            self.cache
                                .put(c.key, c.buf.freeze(), c.versions, c.epoch, c.ttl);
                        }
                        if let Some(f) = flight {
                            self.cache.land(f);
                        }
                    }
                }
                _ => {}
            }
        }
        if tag == b'Z' && msg.get(5) == Some(&b'I') {
            self.commit();
        }
    }

    /// The transaction ended: its writes took effect (or were rolled
    /// back); either way their invalidation is recorded now.
    fn commit(&mut self) {
        self.strict_isolation = false;
        for e in self.pending.drain(..) {
            self.invalidations.inc();
            match e {
                Effect::Tables(t) => self.cache.invalidate_tables(&self.db, &t),
                Effect::Database => self.cache.invalidate_database(&self.db),
                Effect::Schema => {
                    self.cache.invalidate_database(&self.db);
                    self.cache.volatility.forget(&self.db);
                }
            }
        }
    }

    /// The session ends: whatever is pending is recorded.
    pub fn finish(&mut self) {
        if let Some(f) = self.capture.take().and_then(|mut c| c.flight.take()) {
            self.cache.land(f);
        }
        self.commit();
    }

    /// The reply to a hit: the stored messages and ReadyForQuery.
    pub fn hit_reply(bytes: Bytes, tx: u8) -> [Bytes; 2] {
        let mut z = BytesMut::with_capacity(6);
        crate::protocol::messages::ready_for_query(&mut z, tx);
        [bytes, z.freeze()]
    }
}

/// Whether a statement's text asks for an isolation level above READ
/// COMMITTED.
pub fn strict_isolation(sql: &[u8]) -> bool {
    let head = &sql[..sql.len().min(200)];
    let lower = String::from_utf8_lossy(head).to_ascii_lowercase();
    (lower.contains("repeatable read") || lower.contains("serializable"))
        && lower.contains("isolation")
}

/// The cache key of a simple query.
pub fn key(db: &str, user: &str, sql: &[u8], settings: &[(String, String)]) -> u128 {
    cache::key(db, user, sql, settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Analyzer;

    #[test]
    fn writes_and_unknown_effects_are_classified() {
        let a = Analyzer::new(100);
        let mut known = DatabaseFacts::default();
        for f in ["lower", "now"] {
            known.not_volatile.insert(f.into());
        }
        let e = |sql: &str, loaded: Option<bool>| {
            let facts = loaded.map(|_| &known);
            effect_of(&a.analyze(sql).analysis, facts)
        };
        assert_eq!(
            e("UPDATE posts SET title = 'x'", Some(true)),
            Some(Effect::Tables(vec!["posts".into()]))
        );
        assert_eq!(
            e(
                "INSERT INTO c (a) VALUES (1) ON CONFLICT DO NOTHING",
                Some(true)
            ),
            Some(Effect::Tables(vec!["c".into()]))
        );
        assert_eq!(e("TRUNCATE posts", Some(true)), Some(Effect::Schema));
        assert_eq!(
            e("CREATE INDEX i ON posts (id)", Some(true)),
            Some(Effect::Schema)
        );
        assert_eq!(e("SELECT my_func(1)", Some(false)), Some(Effect::Database));
        assert_eq!(
            e("SELECT now()", Some(true)),
            None,
            "stable functions cannot write"
        );
        assert_eq!(e("SELECT my_func(1)", None), Some(Effect::Database));
        assert_eq!(e("SELECT lower(name) FROM users", Some(true)), None);
        assert_eq!(e("SELECT * FROM users", None), None);
        assert_eq!(e("CALL proc()", Some(true)), Some(Effect::Database));
        assert_eq!(e("SELEC garbage", Some(true)), Some(Effect::Database));
        assert_eq!(e("BEGIN", Some(true)), None);
        assert_eq!(e("SET TimeZone = 'UTC'", Some(true)), None);
        assert!(strict_isolation(b"BEGIN ISOLATION LEVEL SERIALIZABLE"));
        assert!(!strict_isolation(b"BEGIN"));
    }
}
