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
pub use crate::cache::Effect;
use crate::cache::{self, QueryCache, Snapshot};
use crate::sql::{Analysis, Kind};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;

/// How long a departed client's unfinished statements are waited for in the
/// background before their invalidations are recorded for the last time.
pub const LINGER_LIMIT: Duration = Duration::from_secs(3600);

/// The tag of a CommandComplete message (without its terminator).
fn command_tag(msg: &[u8]) -> &[u8] {
    let body = msg.get(5..).unwrap_or_default();
    body.strip_suffix(b"\0").unwrap_or(body)
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
        // a trigger, rule or cascading foreign key may write other tables:
        // then (or while that is unknown) the whole database is invalidated
        let contained = facts.is_some_and(|f| {
            !a.writes
                .iter()
                .any(|t| f.side_effects.contains(&cache::table_name(t)))
        });
        return Some(if contained {
            Effect::Tables {
                tables: a.writes.clone(),
                schema: facts.and_then(|f| f.schema_epoch),
            }
        } else {
            Effect::Database
        });
    }
    // (any kind of statement: COPY (SELECT f()) TO, EXPLAIN ANALYZE run
    // their functions too)
    if !a.functions.is_empty()
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
    snapshot: Snapshot,
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
    /// the upstream database, as [`Pool::cache_identity`] names it
    ///
    /// [`Pool::cache_identity`]: crate::backend::Pool::cache_identity
    pub db: Arc<str>,
    /// the upstream role the session's statements run as
    pub role: Arc<str>,
    /// the client-facing database (metric labels)
    pub label: Arc<str>,
    pending: Vec<Effect>,
    /// effects of ended transactions whose invalidation is still to be
    /// recorded (backends that take a round trip): the ReadyForQuery that
    /// acknowledges them waits until [`SessionCache::record`] has run
    unrecorded: Vec<Effect>,
    capture: Option<Capture>,
    /// the current transaction asked for REPEATABLE READ or SERIALIZABLE
    pub strict_isolation: bool,
    invalidations: prometheus::IntCounter,
}

impl SessionCache {
    /// A session's cache state.
    pub fn new(
        cache: Arc<QueryCache>,
        (db, role): (Arc<str>, Arc<str>),
        label: Arc<str>,
        invalidations: prometheus::IntCounter,
    ) -> SessionCache {
        SessionCache {
            invalidations,
            cache,
            db,
            role,
            label,
            pending: Vec::new(),
            unrecorded: Vec::new(),
            capture: None,
            strict_isolation: false,
        }
    }

    /// True when the current transaction has written (its reads must see
    /// its own writes, which no cache entry has).
    pub fn wrote_in_transaction(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Starts capturing the reply to a miss, with the versions read before
    /// it is forwarded.
    pub fn begin_capture(
        &mut self,
        key: u128,
        snapshot: Snapshot,
        ttl: Duration,
        limit: usize,
        flight: Option<cache::Flight>,
    ) {
        self.capture = Some(Capture {
            key,
            snapshot,
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

    /// Bytes on their way to the client (after pgsift's own bookkeeping):
    /// what a miss stores is exactly what the client received.
    pub fn client_bound(&mut self, bytes: &[u8]) {
        if self.capture.is_none() {
            return;
        }
        let _ = crate::protocol::frame::scan(bytes, usize::MAX >> 1, |tag, msg| {
            self.capture_message(tag, msg)
        });
    }

    fn capture_message(&mut self, tag: u8, msg: &[u8]) {
        if let Some(c) = self.capture.as_mut() {
            match tag {
                b'1' | b'2' | b'T' | b'n' | b'D' | b'C' => {
                    if c.buf.len() + msg.len() > c.limit {
                        c.failed = true;
                    } else if !c.failed {
                        c.buf.extend_from_slice(msg);
                    }
                }
                b'E' | b'G' | b'H' | b'I' | b's' | b'W' | b't' | b'3' => c.failed = true,
                b'Z' => {
                    if let Some(mut c) = self.capture.take() {
                        if !c.failed && !c.buf.is_empty() {
                            let flight = c.flight.take();
                            self.cache
                                .put(c.key, c.buf.freeze(), c.snapshot, c.ttl, flight);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// A server message on its way to the client (called before it is
    /// passed on): records invalidations when a transaction ends.
    /// `last`: no other ReadyForQuery is owed after this message's (a
    /// strict isolation level the client asked for in a later batch still
    /// holds when an earlier batch's transaction ends).
    pub fn server_message(&mut self, tag: u8, msg: &[u8], last: bool) {
        match tag {
            b'Z' if msg.get(5) == Some(&b'I') => {
                if last {
                    self.strict_isolation = false;
                }
                self.flush_pending();
            }
            // a COMMIT that does not end the session's transaction (COMMIT
            // AND CHAIN; a COMMIT followed by BEGIN in one Query): its
            // writes took effect all the same
            b'C' if command_tag(msg) == b"COMMIT" => self.flush_pending(),
            // a prepared transaction's writes take effect here, in a
            // session that may never have seen them
            b'C' if command_tag(msg) == b"COMMIT PREPARED" => {
                self.pending.push(Effect::Database);
                self.flush_pending();
            }
            _ => {}
        }
    }

    /// The transaction ended: its writes took effect (or were rolled
    /// back); either way their invalidation is recorded now — at once in
    /// process, or by [`SessionCache::record`] before the client is told.
    fn commit(&mut self) {
        self.strict_isolation = false;
        self.flush_pending();
    }

    /// Writes took effect: their invalidation is recorded now (see
    /// [`Self::commit`]).
    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.invalidations.inc_by(self.pending.len() as u64);
        if self.cache.records_at_once() {
            self.cache.invalidate_now(&self.db, &self.pending);
            self.pending.clear();
        } else {
            self.unrecorded.append(&mut self.pending);
        }
    }

    /// True when ended transactions wait for their invalidation to be
    /// recorded: nothing may reach the client before [`Self::record`].
    pub fn must_record(&self) -> bool {
        !self.unrecorded.is_empty()
    }

    /// Records the invalidations of ended transactions.
    pub async fn record(&mut self) {
        if self.unrecorded.is_empty() {
            return;
        }
        let effects = std::mem::take(&mut self.unrecorded);
        // boxed: the Redis path's future would otherwise size every
        // session's task
        Box::pin(self.cache.invalidate(&self.db, &effects)).await;
    }

    /// The session ends: whatever is pending is recorded.
    pub async fn finish(&mut self) {
        self.capture = None; // an unfinished miss lands its flight
        self.commit();
        self.record().await;
    }

    /// The session ends with statements in flight, which may still commit
    /// after it: everything pending is recorded now, as [`Self::finish`]
    /// does, and returned to be recorded once more when the server is known
    /// to be done ([`Self::record_again`]). A read that missed in between,
    /// before the commit, would otherwise keep its result.
    pub async fn finish_in_doubt(&mut self) -> Vec<Effect> {
        self.capture = None;
        let mut doubt = self.pending.clone();
        doubt.extend(self.unrecorded.iter().cloned());
        self.commit();
        self.record().await;
        doubt
    }

    /// Records `effects` again (see [`Self::finish_in_doubt`]); they were
    /// counted then.
    pub async fn record_again(&mut self, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        Box::pin(self.cache.invalidate(&self.db, &effects)).await;
    }

    /// Records `effects` again once `done` has finished (see
    /// [`Self::finish_in_doubt`]), waiting in the background for at most
    /// [`LINGER_LIMIT`]: what a departed client left running (a commit
    /// waiting for a synchronous standby, say) may take effect long after
    /// its session has ended. `done` ends when that work has ended: its
    /// backend closed the connection, or its multiplexed batch was answered.
    pub fn record_when_done<F>(&self, done: F, effects: Vec<Effect>)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (cache, db) = (self.cache.clone(), self.db.clone());
        tokio::spawn(async move {
            if crate::timer::timeout(LINGER_LIMIT, done).await.is_err() {
                tracing::warn!(
                    "a departed client's statement was still running after {} s; \
                     pgsift stops waiting for it",
                    LINGER_LIMIT.as_secs()
                );
            }
            if !effects.is_empty() {
                cache.invalidate(&db, &effects).await;
            }
        });
    }

    /// The reply to a hit: the stored messages and ReadyForQuery.
    pub fn hit_reply(bytes: Bytes, tx: u8) -> [Bytes; 2] {
        let mut z = BytesMut::with_capacity(6);
        crate::protocol::messages::ready_for_query(&mut z, tx);
        [bytes, z.freeze()]
    }
}

/// Whether a statement's text may ask for an isolation level above READ
/// COMMITTED: it has the word `repeatable` or `serializable` anywhere, in
/// any case, whatever spaces or comments surround it. A false alarm (a
/// literal, a name) only keeps that transaction's reads from the cache.
pub fn strict_isolation(sql: &[u8]) -> bool {
    const WORDS: [&[u8]; 2] = [b"repeatable", b"serializable"];
    let mut at = 0;
    while let Some(i) = sql[at..]
        .iter()
        .position(|&c| matches!(c | 0x20, b'r' | b's'))
    {
        let rest = &sql[at + i..];
        if WORDS
            .iter()
            .any(|w| rest.len() >= w.len() && rest[..w.len()].eq_ignore_ascii_case(w))
        {
            return true;
        }
        at += i + 1;
    }
    false
}

/// The cache key of a query: its text, and for the extended protocol the
/// shape of the batch, the parameter types, values and formats, and the
/// result formats (`extra`).
pub fn key(db: &str, user: &str, sql: &[u8], extra: &[u8], settings: &[(String, String)]) -> u128 {
    let mut material = Vec::with_capacity(sql.len() + extra.len() + 1);
    material.extend_from_slice(sql);
    material.push(0xff);
    material.extend_from_slice(extra);
    cache::key(db, user, &material, settings)
}

/// An extended-protocol batch that may be answered from the cache:
/// `[Parse] Bind [Describe portal] Execute Sync` on the unnamed portal, with
/// no row limit.
pub struct ExtendedRead {
    /// the statement's name in the batch's Parse or Bind
    pub statement: Vec<u8>,
    /// the Parse message, when the batch has one
    pub parse: Option<Bytes>,
    /// the query text as sent (in the client's encoding), when the batch
    /// has a Parse
    pub text: Option<Vec<u8>>,
    /// key material: message types, parameter types, the Bind's parameters
    /// and formats
    pub extra: Vec<u8>,
}

/// Recognises a cacheable extended-protocol batch.
pub fn extended_read(chunk: &Bytes) -> Option<ExtendedRead> {
    use crate::protocol::extended as ext;
    let mut pos = 0;
    let mut tags = Vec::new();
    let mut out = ExtendedRead {
        statement: Vec::new(),
        parse: None,
        text: None,
        extra: Vec::new(),
    };
    let mut tail = Vec::new();
    while let Ok(Some((tag, total))) =
        crate::protocol::frame::peek_frame(&chunk[pos..], usize::MAX >> 1)
    {
        let msg = &chunk[pos..pos + total];
        let expected = match tags.as_slice() {
            [] => matches!(tag, b'P' | b'B'),
            [b'P'] => tag == b'B',
            [.., b'B'] => matches!(tag, b'D' | b'E'),
            [.., b'D'] => tag == b'E',
            [.., b'E'] => tag == b'S',
            _ => false,
        };
        if !expected {
            return None;
        }
        match tag {
            b'P' => {
                let p = ext::parse_parse(msg)?;
                out.statement = p.name.to_vec();
                out.text = Some(p.query.to_vec());
                tail.extend_from_slice(p.param_types);
                out.parse = Some(chunk.slice(pos..pos + total));
            }
            b'B' => {
                let (stmt, after) = ext::bind_statement(msg)?;
                if msg.get(5) != Some(&0) {
                    return None; // a named portal
                }
                if out.parse.is_some() && stmt != out.statement.as_slice() {
                    return None;
                }
                out.statement = stmt.to_vec();
                tail.push(0xfe);
                tail.extend_from_slice(&msg[after..]);
            }
            b'D' if ext::target(msg)? != (b'P', &b""[..]) => return None,
            // unnamed portal, no row limit: never a partial result
            b'E' if msg.len() != 10 || msg[5] != 0 || msg[6..10] != [0, 0, 0, 0] => return None,
            _ => {}
        }
        tags.push(tag);
        pos += total;
    }
    if pos != chunk.len() || tags.last() != Some(&b'S') {
        return None;
    }
    out.extra = tags;
    out.extra.extend_from_slice(&tail);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Analyzer;

    #[test]
    fn writes_and_unknown_effects_are_classified() {
        let a = Analyzer::new(100);
        let mut known = DatabaseFacts::default();
        known.side_effects.insert("users".into());
        for f in ["lower", "now"] {
            known.not_volatile.insert(f.into());
        }
        let e = |sql: &str, loaded: Option<bool>| {
            let facts = loaded.map(|_| &known);
            effect_of(&a.analyze(sql).analysis, facts)
        };
        assert_eq!(
            e("UPDATE posts SET title = 'x'", Some(true)),
            Some(Effect::Tables {
                tables: vec!["posts".into()],
                schema: None
            })
        );
        assert_eq!(
            e(
                "INSERT INTO c (a) VALUES (1) ON CONFLICT DO NOTHING",
                Some(true)
            ),
            Some(Effect::Tables {
                tables: vec!["c".into()],
                schema: None
            })
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
        assert_eq!(
            e("DELETE FROM users WHERE id = 1", Some(true)),
            Some(Effect::Database),
            "cascades"
        );
        assert_eq!(
            e("UPDATE posts SET title = 'x'", None),
            Some(Effect::Database),
            "facts unknown"
        );
        assert_eq!(e("CALL proc()", Some(true)), Some(Effect::Database));
        assert_eq!(e("SELEC garbage", Some(true)), Some(Effect::Database));
        assert_eq!(e("BEGIN", Some(true)), None);
        assert_eq!(e("SET TimeZone = 'UTC'", Some(true)), None);
        assert_eq!(
            e("COPY (SELECT my_func(1)) TO STDOUT", Some(true)),
            Some(Effect::Database),
            "a COPY runs its query's functions"
        );
        assert_eq!(
            e("EXPLAIN ANALYZE SELECT my_func(1)", Some(true)),
            Some(Effect::Database)
        );
        assert_eq!(e("COPY (SELECT now()) TO STDOUT", Some(true)), None);
    }

    #[test]
    fn isolation_levels_above_read_committed_are_seen_in_any_spelling() {
        for sql in [
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "BEGIN ISOLATION LEVEL REPEATABLE  READ",
            "begin isolation level repeatable\n\tread",
            "BEGIN ISOLATION /* a comment */ LEVEL Repeatable -- and another\n READ",
            "START TRANSACTION READ ONLY, DEFERRABLE, ISOLATION LEVEL SERIALIZABLE",
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        ] {
            assert!(strict_isolation(sql.as_bytes()), "{sql}");
        }
        let long = format!(
            "BEGIN /* {} */ ISOLATION LEVEL SERIALIZABLE",
            "x".repeat(500)
        );
        assert!(strict_isolation(long.as_bytes()), "past 200 bytes");
        for sql in [
            "BEGIN",
            "BEGIN ISOLATION LEVEL READ COMMITTED",
            "SELECT 1",
            "",
            "r",
            "s",
        ] {
            assert!(!strict_isolation(sql.as_bytes()), "{sql}");
        }
        // a multi-byte character before the word
        assert!(strict_isolation(
            "BEGIN /* é */ ISOLATION LEVEL SERIALIZABLE".as_bytes()
        ));
    }
}
