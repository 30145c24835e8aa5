//! The SELECT cache (SPEC §8), memory backend: results of cacheable SELECTs
//! stored as the exact server messages, keyed by everything that changes
//! them, and invalidated through per-table versions and a per-database epoch.
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

/// Versions, epochs and entries of this pgsift.
pub struct QueryCache {
    entries: Cache<u128, Arc<Entry>>,
    versions: DashMap<TableKey, u64>,
    epochs: DashMap<Arc<str>, u64>,
    /// per database: which functions are immutable, which tables use RLS
    pub volatility: Arc<volatility::VolatilityTable>,
    /// misses being fetched right now: later misses of the same key wait
    inflight: DashMap<u128, tokio::sync::watch::Receiver<bool>>,
}

/// A miss being fetched; dropping it (or [`Flight::land`]) wakes the
/// sessions waiting for the same key.
pub struct Flight {
    key: u128,
    done: tokio::sync::watch::Sender<bool>,
}

/// What a miss should do.
pub enum Miss {
    /// fetch it; others wait for this session
    Lead(Flight),
    /// another session is fetching it: wait on this, then look again
    Wait(tokio::sync::watch::Receiver<bool>),
}

impl QueryCache {
    /// A memory cache holding at most `max_bytes` of results.
    pub fn new(max_bytes: u64) -> QueryCache {
        QueryCache {
            entries: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_k, v: &Arc<Entry>| (v.bytes.len() + 64).min(u32::MAX as usize) as u32)
                .expire_after(PerEntryTtl)
                .build(),
            versions: DashMap::new(),
            epochs: DashMap::new(),
            volatility: Arc::new(volatility::VolatilityTable::default()),
            inflight: DashMap::new(),
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

    /// Single-flight: the first miss of a key leads, later ones wait.
    pub fn miss(&self, key: u128) -> Miss {
        match self.inflight.entry(key) {
            dashmap::Entry::Occupied(o) => Miss::Wait(o.get().clone()),
            dashmap::Entry::Vacant(v) => {
                let (done, rx) = tokio::sync::watch::channel(false);
                v.insert(rx);
                Miss::Lead(Flight { key, done })
            }
        }
    }

    /// The leader of a flight is done (stored or gave up).
    pub fn land(&self, flight: Flight) {
        self.inflight.remove(&flight.key);
        let _ = flight.done.send(true);
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
        let c = QueryCache::new(1 << 20);
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
