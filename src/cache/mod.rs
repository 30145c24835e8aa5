//! The SELECT cache (SPEC §8): results of cacheable SELECTs stored as the
//! exact server messages, keyed by everything that changes them, and
//! invalidated through per-table versions and a per-database epoch. Two
//! backends: in-process (`memory`) and shared through Redis
//! ([`remote::RedisStore`]).
//!
//! The protocol that keeps it from ever serving a stale read after a write
//! is acknowledged:
//! - a reader takes the versions of the tables it reads (and the epoch)
//!   *before* it forwards its SELECT, and stores them with the result;
//! - a writer bumps the versions of the tables it wrote after the write took
//!   effect (its transaction committed) and *before* the client sees the
//!   ReadyForQuery that acknowledges it;
//! - a hit requires every stored version to be current.
//!
//! A read that races a write can therefore only store an entry under
//! versions that the write's bump has already made stale.

pub mod remote;
pub mod rules;
pub mod volatility;

use bytes::Bytes;
use dashmap::DashMap;
use moka::sync::Cache;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A cached result: the server's RowDescription, DataRows and
/// CommandComplete, and the versions it was read under.
#[derive(Debug)]
pub struct Entry {
    /// exact server messages
    pub bytes: Bytes,
    /// (database-qualified table key, version) read before the query ran
    pub versions: Vec<(TableKey, u64)>,
    /// the database epoch read before the query ran
    pub epoch: u64,
    ttl: Duration,
}

/// A table's version key: database and bare lower-case table name.
pub type TableKey = (Arc<str>, String);

struct PerEntryTtl;

impl moka::Expiry<u128, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &u128,
        value: &Arc<Entry>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Who the cache knows an upstream database by: `dbname@host:port`, so that
/// every name a configuration gives one database shares its versions and
/// invalidations (and instances sharing a Redis meet on it).
pub fn upstream_database(dbname: &str, host: &str, port: u16) -> Arc<str> {
    format!("{dbname}@{host}:{port}").into()
}

/// The bare lower-case name of a (possibly schema-qualified) table. Tables
/// of the same name in different schemas share a version: over-invalidation
/// is safe, a missed one is not.
pub fn table_name(t: &str) -> String {
    t.rsplit('.')
        .next()
        .unwrap_or(t)
        .trim_matches('"')
        .to_ascii_lowercase()
}

/// What a completed statement did to the database's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// wrote these tables (`schema`: with a shared cache, the schema epoch
    /// of the catalog facts that said no trigger, rule or cascade reaches
    /// further; see [`remote::RedisStore::invalidate`])
    Tables {
        /// the tables written
        tables: Vec<String>,
        /// schema epoch of the facts the write was classified with
        schema: Option<u64>,
    },
    /// may have written anything (CALL, DO, volatile functions, text the
    /// parser rejects)
    Database,
    /// changed the schema (DDL, GRANT, …): anything, and what pgsift knows
    /// about functions and row-level security may be out of date
    Schema,
}

/// The versions of the tables a query reads and the database epoch, read
/// before the query is forwarded; its result is stored under them.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// (table key, version)
    pub versions: Vec<(TableKey, u64)>,
    /// the database epoch
    pub epoch: u64,
}

/// The result of looking a key up.
pub enum Lookup {
    /// a current entry
    Hit(Bytes),
    /// none; a result read now is stored under this snapshot
    Miss(Snapshot),
    /// the backend cannot be used now: go to Postgres, store nothing
    Unavailable,
    /// another instance changed the schema since this one read the
    /// catalog: go to Postgres, store nothing, read the catalog again
    Skip,
}

/// Entries, versions and epochs kept in this process.
pub struct MemoryStore {
    entries: Cache<u128, Arc<Entry>, rustc_hash::FxBuildHasher>,
    versions: DashMap<TableKey, u64>,
    epochs: DashMap<Arc<str>, u64>,
}

enum Backend {
    Memory(MemoryStore),
    Redis(Arc<remote::RedisStore>),
}

/// The cache of this pgsift: a backend, the function facts per database,
/// and the misses in flight (single-flight is per instance).
pub struct QueryCache {
    backend: Backend,
    /// per database: which functions are immutable, which tables use RLS
    pub volatility: Arc<volatility::VolatilityTable>,
    /// misses being fetched right now: later misses of the same key wait
    inflight: Arc<Inflight>,
}

type Inflight = DashMap<u128, tokio::sync::watch::Receiver<bool>>;

/// A miss being fetched. It lands when dropped — stored, given up, or its
/// session gone — and wakes the sessions waiting for the same key.
pub struct Flight {
    key: u128,
    done: tokio::sync::watch::Sender<bool>,
    inflight: Arc<Inflight>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.inflight.remove(&self.key);
        let _ = self.done.send(true);
    }
}

/// What a miss should do.
pub enum Miss {
    /// fetch it; others wait for this session
    Lead(Flight),
    /// another session is fetching it: wait on this, then look again
    Wait(tokio::sync::watch::Receiver<bool>),
}

impl MemoryStore {
    /// A store holding at most `max_bytes` of results.
    pub fn new(max_bytes: u64) -> MemoryStore {
        MemoryStore {
            entries: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_k, v: &Arc<Entry>| (v.bytes.len() + 64).min(u32::MAX as usize) as u32)
                .expire_after(PerEntryTtl)
                .build_with_hasher(rustc_hash::FxBuildHasher),
            versions: DashMap::new(),
            epochs: DashMap::new(),
        }
    }

    /// The current versions of `tables` and the database epoch: taken
    /// before a cacheable SELECT is forwarded.
    pub fn snapshot(&self, db: &Arc<str>, tables: &[String]) -> (Vec<(TableKey, u64)>, u64) {
        let versions = tables
            .iter()
            .map(|t| {
                let key = (db.clone(), table_name(t));
                let v = self.versions.get(&key).map(|v| *v).unwrap_or(0);
                (key, v)
            })
            .collect();
        (versions, self.epoch(db))
    }

    fn epoch(&self, db: &Arc<str>) -> u64 {
        self.epochs.get(db).map(|e| *e).unwrap_or(0)
    }

    /// A current entry for `key`, if any.
    pub fn get(&self, key: u128, db: &Arc<str>) -> Option<Bytes> {
        let e = self.entries.get(&key)?;
        if e.epoch != self.epoch(db) {
            return None;
        }
        let current = e
            .versions
            .iter()
            .all(|(k, v)| self.versions.get(k).map(|x| *x).unwrap_or(0) == *v);
        current.then(|| e.bytes.clone())
    }

    /// Stores a result read under `versions` and `epoch`.
    pub fn put(
        &self,
        key: u128,
        bytes: Bytes,
        versions: Vec<(TableKey, u64)>,
        epoch: u64,
        ttl: Duration,
    ) {
        self.entries.insert(
            key,
            Arc::new(Entry {
                bytes,
                versions,
                epoch,
                ttl,
            }),
        );
    }

    /// A write to `tables` took effect.
    pub fn invalidate_tables(&self, db: &Arc<str>, tables: &[String]) {
        for t in tables {
            *self
                .versions
                .entry((db.clone(), table_name(t)))
                .or_insert(0) += 1;
        }
    }

    /// Something whose effects are unknown took effect: nothing cached for
    /// the database before now may be served.
    pub fn invalidate_database(&self, db: &Arc<str>) {
        *self.epochs.entry(db.clone()).or_insert(0) += 1;
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    /// Entries held.
    pub fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl QueryCache {
    /// An in-process cache holding at most `max_bytes` of results.
    pub fn new(max_bytes: u64) -> QueryCache {
        QueryCache::with_backend(Backend::Memory(MemoryStore::new(max_bytes)))
    }

    /// A cache shared through Redis at `url`, its keys under `prefix`.
    pub fn redis(url: &str, prefix: &str) -> anyhow::Result<QueryCache> {
        Ok(QueryCache::with_backend(Backend::Redis(Arc::new(
            remote::RedisStore::new(url, prefix)?,
        ))))
    }

    fn with_backend(backend: Backend) -> QueryCache {
        let shared = match &backend {
            Backend::Redis(r) => Some(r.clone()),
            Backend::Memory(_) => None,
        };
        QueryCache {
            backend,
            volatility: Arc::new(volatility::VolatilityTable::new(shared)),
            inflight: Arc::default(),
        }
    }

    /// The backend's name, as in `cache.backend`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// False while the backend cannot be read (Redis unreachable, or an
    /// invalidation not yet made up for).
    pub fn healthy(&self) -> bool {
        match &self.backend {
            Backend::Memory(_) => true,
            Backend::Redis(r) => !r.degraded(),
        }
    }

    /// The upstream databases the instance serves (at start, and after a
    /// reload). The Redis backend serves a database only after it has
    /// bumped its epochs on the current connection: what an instance that
    /// died owing a repair, or a Redis restarted from old persistence, left
    /// behind is never served. Call inside the runtime.
    pub fn expect_databases(&self, dbs: impl IntoIterator<Item = Arc<str>>) {
        if let Backend::Redis(r) = &self.backend {
            r.expect_databases(dbs);
        }
    }

    /// Shutdown: waits, up to `limit`, until no invalidation is owed to
    /// Redis (one that could not be recorded). True when none is.
    pub async fn settle(&self, limit: Duration) -> bool {
        match &self.backend {
            Backend::Memory(_) => true,
            Backend::Redis(r) => r.settle(limit).await,
        }
    }

    /// Looks `key` up; on a miss, the versions of `tables` (the tables the
    /// query reads) and the epoch, read now, before the query is forwarded.
    pub async fn lookup(&self, key: u128, db: &Arc<str>, tables: &[String]) -> Lookup {
        match &self.backend {
            Backend::Memory(m) => match m.get(key, db) {
                Some(bytes) => Lookup::Hit(bytes),
                None => {
                    let (versions, epoch) = m.snapshot(db, tables);
                    Lookup::Miss(Snapshot { versions, epoch })
                }
            },
            Backend::Redis(r) => {
                // boxed: a Redis call's future would otherwise size every
                // session's task, idle ones included
                let (found, schema) = match Box::pin(r.lookup(key, db, tables)).await {
                    remote::Found::Hit(b, s) => (Lookup::Hit(b), s),
                    remote::Found::Miss(snapshot, s) => (Lookup::Miss(snapshot), s),
                    remote::Found::Unavailable => return Lookup::Unavailable,
                };
                let facts = self.volatility.get(db).and_then(|f| f.schema_epoch);
                if facts != Some(schema) {
                    self.volatility.forget(db);
                    return Lookup::Skip;
                }
                found
            }
        }
    }

    /// Stores a result read under `snapshot`, then lands the miss's flight
    /// (the waiting sessions look again once the entry is there).
    pub fn put(
        &self,
        key: u128,
        bytes: Bytes,
        snapshot: Snapshot,
        ttl: Duration,
        flight: Option<Flight>,
    ) {
        match &self.backend {
            Backend::Memory(m) => {
                m.put(key, bytes, snapshot.versions, snapshot.epoch, ttl);
                drop(flight);
            }
            Backend::Redis(r) => r.put(key, bytes, snapshot, ttl, flight),
        }
    }

    /// True when invalidations are recorded at once ([`Self::invalidate_now`]);
    /// otherwise they take a round trip ([`Self::invalidate`]).
    pub fn records_at_once(&self) -> bool {
        matches!(self.backend, Backend::Memory(_))
    }

    /// Records invalidations in the memory backend (no-op for others).
    pub fn invalidate_now(&self, db: &Arc<str>, effects: &[Effect]) {
        if let Backend::Memory(m) = &self.backend {
            for e in effects {
                match e {
                    Effect::Tables { tables, .. } => m.invalidate_tables(db, tables),
                    Effect::Database | Effect::Schema => m.invalidate_database(db),
                }
            }
        }
        self.forget_facts_after(db, effects);
    }

    /// Records invalidations, whatever the backend; returns once they are
    /// recorded (or recording failed and the backend stopped serving).
    pub async fn invalidate(&self, db: &Arc<str>, effects: &[Effect]) {
        match &self.backend {
            Backend::Memory(_) => self.invalidate_now(db, effects),
            Backend::Redis(r) => {
                r.invalidate(db, effects).await;
                self.forget_facts_after(db, effects);
            }
        }
    }

    fn forget_facts_after(&self, db: &Arc<str>, effects: &[Effect]) {
        if effects.contains(&Effect::Schema) {
            self.volatility.forget(db);
        }
    }

    /// Bytes held: in process, or in use by Redis.
    pub async fn bytes(&self) -> u64 {
        match &self.backend {
            Backend::Memory(m) => m.bytes(),
            Backend::Redis(r) => r.used_memory().await.unwrap_or(0),
        }
    }

    /// Entries held in process (`None` for a shared backend).
    pub fn entries(&self) -> Option<u64> {
        match &self.backend {
            Backend::Memory(m) => Some(m.len()),
            Backend::Redis(_) => None,
        }
    }

    /// Single-flight: the first miss of a key leads, later ones wait.
    pub fn miss(&self, key: u128) -> Miss {
        match self.inflight.entry(key) {
            dashmap::Entry::Occupied(o) => Miss::Wait(o.get().clone()),
            dashmap::Entry::Vacant(v) => {
                let (done, rx) = tokio::sync::watch::channel(false);
                v.insert(rx);
                Miss::Lead(Flight {
                    key,
                    done,
                    inflight: self.inflight.clone(),
                })
            }
        }
    }
}

/// The cache key of a simple-query SELECT: database, role, the exact text,
/// and every setting that changes what the server returns or how it prints
/// it (the client's own settings; the rest are the pool's defaults, the
/// same for every client of the pool).
pub fn key(database: &str, user: &str, sql: &[u8], settings: &[(String, String)]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [database.as_bytes(), user.as_bytes(), sql] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let mut s: Vec<(String, &str)> = settings
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    s.sort();
    for (k, v) in s {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(v.as_bytes());
        h.update(&[0]);
    }
    h.digest128()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_read_before_a_write_is_never_served_after_it() {
        let c = MemoryStore::new(1 << 20);
        let db: Arc<str> = "blog".into();
        let k = key("blog", "u", b"SELECT * FROM posts", &[]);
        let (v, e) = c.snapshot(&db, &["posts".into()]);
        c.invalidate_tables(&db, &["public.posts".into()]);
        c.put(
            k,
            Bytes::from_static(b"rows"),
            v,
            e,
            Duration::from_secs(60),
        );
        assert_eq!(
            c.get(k, &db),
            None,
            "stored under a version the write made stale"
        );
        let (v, e) = c.snapshot(&db, &["posts".into()]);
        c.put(
            k,
            Bytes::from_static(b"rows2"),
            v,
            e,
            Duration::from_secs(60),
        );
        assert_eq!(c.get(k, &db), Some(Bytes::from_static(b"rows2")));
        c.invalidate_database(&db);
        assert_eq!(c.get(k, &db), None);
    }

    #[test]
    fn keys_differ_by_role_text_and_settings() {
        let a = key(
            "db",
            "alice",
            b"SELECT 1",
            &[("TimeZone".into(), "UTC".into())],
        );
        assert_ne!(
            a,
            key(
                "db",
                "bob",
                b"SELECT 1",
                &[("TimeZone".into(), "UTC".into())]
            )
        );
        assert_ne!(
            a,
            key(
                "db",
                "alice",
                b"SELECT 2",
                &[("TimeZone".into(), "UTC".into())]
            )
        );
        assert_ne!(
            a,
            key(
                "db",
                "alice",
                b"SELECT 1",
                &[("TimeZone".into(), "Asia/Tokyo".into())]
            )
        );
        assert_eq!(
            a,
            key(
                "db",
                "alice",
                b"SELECT 1",
                &[("timezone".into(), "UTC".into())]
            )
        );
    }
}
