//! The Redis backend: entries, table versions and database epochs kept in a
//! Redis (or Redis Cluster) that any number of pgsift instances share, so a
//! write through one instance invalidates what all of them serve.
//!
//! Layout, all under `key_prefix`:
//! - `<prefix>{<db>}:v` — a hash per upstream database (`dbname@host:port`):
//!   field `e` is the epoch,
//!   `s` the schema epoch (moved by DDL only: other instances reload what
//!   they know about functions and row-level security when it moves),
//!   `t:<table>` a table's version. One key per database, so every counter
//!   of a database lives in one hash slot of a cluster.
//! - `<prefix>c:<key>` — one string per entry: the epoch and table versions
//!   it was read under, then the exact server messages; spread over slots.
//!
//! An epoch starts at a random value (`HSETNX`) and moves by random steps,
//! so an entry written before a Redis restart that lost the counters never
//! matches the epoch after it, even when the table versions line up again.
//!
//! Faults: every call has a deadline. A failed lookup is a bypass (the
//! statement goes to Postgres). A failed invalidation — or any failure at
//! all — leaves the instance *degraded*: it reads nothing from Redis until it
//! has bumped the epoch of every database it has served, after the last
//! failure. Invalidations are still attempted while degraded, since other
//! instances may be serving.

use super::{Effect, Snapshot, TableKey};
use ::redis::aio::ConnectionLike;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Deadline of one cache call; past it the statement goes to Postgres.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between attempts to repair a degraded instance.
const REPAIR_EVERY: Duration = Duration::from_millis(200);
const MAGIC: &[u8; 4] = b"PGS1";

#[derive(Clone)]
enum Connection {
    Single(::redis::aio::ConnectionManager),
    Cluster(::redis::cluster_async::ClusterConnection),
}

impl Connection {
    async fn query<T: ::redis::FromRedisValue>(
        &self,
        cmd: &::redis::Cmd,
    ) -> ::redis::RedisResult<T> {
        match self.clone() {
            Connection::Single(mut c) => cmd.query_async(&mut c).await,
            Connection::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    /// Runs a pipeline; `T` is what its commands not ignored answer.
    async fn pipeline<T: ::redis::FromRedisValue>(
        &self,
        p: &::redis::Pipeline,
    ) -> ::redis::RedisResult<T> {
        async fn run<T: ::redis::FromRedisValue>(
            c: &mut impl ConnectionLike,
            p: &::redis::Pipeline,
        ) -> ::redis::RedisResult<T> {
            p.query_async(c).await
        }
        match self.clone() {
            Connection::Single(mut c) => run(&mut c, p).await,
            Connection::Cluster(mut c) => run(&mut c, p).await,
        }
    }
}

/// Where the connection comes from (one per instance: size is no concern).
#[allow(clippy::large_enum_variant)]
enum Target {
    Single(::redis::Client),
    Cluster(::redis::cluster::ClusterClient),
}

#[derive(Default)]
struct Repair {
    /// failures (skipped or failed invalidations, failed calls) so far
    failures: u64,
    /// a repair task is running
    running: bool,
}

/// The shared store.
pub struct RedisStore {
    target: Target,
    connection: tokio::sync::OnceCell<Connection>,
    prefix: String,
    degraded: AtomicBool,
    repair: Mutex<Repair>,
    /// databases this instance has served: the epochs a repair bumps
    databases: Mutex<HashSet<Arc<str>>>,
}

/// The result of a lookup.
pub enum Found {
    /// a current entry, and the schema epoch
    Hit(Bytes, u64),
    /// none: the versions read now, to store a result under; the schema
    /// epoch
    Miss(Snapshot, u64),
    /// Redis is not usable right now
    Unavailable,
}

impl RedisStore {
    /// A store for `url`: `redis://` or `rediss://` (with AUTH in the URL),
    /// or several comma-separated node URLs for a Redis Cluster. Nothing is
    /// connected until the first call.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<RedisStore> {
        let nodes: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let target = if nodes.len() > 1 {
            Target::Cluster(
                ::redis::cluster::ClusterClient::builder(nodes)
                    .connection_timeout(CALL_TIMEOUT)
                    .response_timeout(CALL_TIMEOUT)
                    .build()?,
            )
        } else {
            Target::Single(::redis::Client::open(url)?)
        };
        Ok(RedisStore {
            target,
            connection: tokio::sync::OnceCell::new(),
            prefix: prefix.to_owned(),
            degraded: AtomicBool::new(false),
            repair: Mutex::new(Repair::default()),
            databases: Mutex::new(HashSet::new()),
        })
    }

    async fn connection(&self) -> anyhow::Result<Connection> {
        let c = self
            .connection
            .get_or_try_init(|| async {
                anyhow::Ok(match &self.target {
                    Target::Single(client) => {
                        let config = ::redis::aio::ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(CALL_TIMEOUT))
                            .set_response_timeout(Some(CALL_TIMEOUT))
                            .set_number_of_retries(1)
                            .set_max_delay(Duration::from_millis(500));
                        Connection::Single(::redis::aio::ConnectionManager::new_lazy_with_config(
                            client.clone(),
                            config,
                        )?)
                    }
                    Target::Cluster(client) => Connection::Cluster(
                        crate::timer::timeout(CALL_TIMEOUT, client.get_async_connection())
                            .await??,
                    ),
                })
            })
            .await?;
        Ok(c.clone())
    }

    /// One command under the deadline.
    async fn query<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> anyhow::Result<T> {
        within(async { Ok(self.connection().await?.query(cmd).await?) }).await
    }

    /// True while the instance may not read from Redis.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    fn versions_key(&self, db: &str) -> String {
        // braces in a database name would move the hash tag
        let tag: String = db
            .chars()
            .map(|c| if c == '{' || c == '}' { '_' } else { c })
            .collect();
        format!("{}{{{}}}:v", self.prefix, tag)
    }

    fn entry_key(&self, key: u128) -> String {
        format!("{}c:{:032x}", self.prefix, key)
    }

    /// Looks `key` up and reads the versions of `tables` and the epoch, in
    /// one round trip.
    pub async fn lookup(self: &Arc<Self>, key: u128, db: &Arc<str>, tables: &[String]) -> Found {
        if self.degraded() {
            return Found::Unavailable;
        }
        self.note_database(db);
        let names: Vec<String> = tables.iter().map(|t| super::table_name(t)).collect();
        let vkey = self.versions_key(db);
        let result = within(async {
            let conn = self.connection().await?;
            let mut get = ::redis::cmd("GET");
            get.arg(self.entry_key(key));
            let mut hmget = ::redis::cmd("HMGET");
            hmget.arg(&vkey).arg("e").arg("s");
            for n in &names {
                hmget.arg(format!("t:{n}"));
            }
            let (entry, mut current) = tokio::join!(
                conn.query::<Option<Vec<u8>>>(&get),
                conn.query::<Vec<Option<u64>>>(&hmget)
            );
            if current.as_ref().is_ok_and(|c| c.first() == Some(&None)) {
                // a database Redis has never seen (or a Redis that lost its
                // data): it gets a random epoch first
                let mut init = ::redis::cmd("HSETNX");
                init.arg(&vkey).arg("e").arg(epoch_step());
                conn.query::<()>(&init).await?;
                current = conn.query::<Vec<Option<u64>>>(&hmget).await;
            }
            anyhow::Ok((entry?, current?))
        })
        .await;
        let (entry, current) = match result {
            Ok(r) => r,
            Err(e) => {
                self.failed(&format!("lookup: {e}"));
                return Found::Unavailable;
            }
        };
        let Some(epoch) = current.first().copied().flatten() else {
            return Found::Unavailable;
        };
        let versions: Vec<(TableKey, u64)> = names
            .into_iter()
            .zip(current[2..].iter())
            .map(|(n, v)| ((db.clone(), n), v.unwrap_or(0)))
            .collect();
        let schema = current.get(1).copied().flatten().unwrap_or(0);
        if let Some(bytes) = entry.and_then(|e| decode(&e, epoch, &versions)) {
            return Found::Hit(bytes, schema);
        }
        Found::Miss(Snapshot { versions, epoch }, schema)
    }

    /// Stores an entry in the background (the reader does not wait); the
    /// miss's flight lands once it is stored.
    pub fn put(
        self: &Arc<Self>,
        key: u128,
        bytes: Bytes,
        snapshot: Snapshot,
        ttl: Duration,
        flight: Option<super::Flight>,
    ) {
        if self.degraded() {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let value = encode(&snapshot, &bytes);
            let mut set = ::redis::cmd("SET");
            set.arg(store.entry_key(key))
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            if let Err(e) = store.query::<()>(&set).await {
                store.failed(&format!("store: {e}"));
            }
            drop(flight);
        });
    }

    /// Records the invalidations of writes that took effect. Returns when
    /// they are recorded, or when recording failed (then the instance is
    /// degraded until its repair has bumped the epochs).
    pub async fn invalidate(self: &Arc<Self>, db: &Arc<str>, effects: &[Effect]) {
        self.note_database(db);
        // tried even while degraded: other instances may be serving (they
        // never saw Redis fail), and they must see this write
        let vkey = self.versions_key(db);
        let mut p = ::redis::pipe();
        // the schema epochs that said which tables writes reach
        let mut classified: Vec<Option<u64>> = Vec::new();
        for e in effects {
            match e {
                Effect::Tables { tables, schema } => {
                    for t in tables {
                        p.cmd("HINCRBY")
                            .arg(&vkey)
                            .arg(format!("t:{}", super::table_name(t)))
                            .arg(1)
                            .ignore();
                    }
                    if !classified.contains(schema) {
                        classified.push(*schema);
                    }
                }
                Effect::Database => {
                    p.cmd("HINCRBY")
                        .arg(&vkey)
                        .arg("e")
                        .arg(epoch_step())
                        .ignore();
                }
                Effect::Schema => {
                    for field in ["e", "s"] {
                        p.cmd("HINCRBY")
                            .arg(&vkey)
                            .arg(field)
                            .arg(epoch_step())
                            .ignore();
                    }
                }
            }
        }
        // Table writes were classified with catalog facts read under some
        // schema epoch. Another instance's DDL (a trigger, a rule, a
        // cascading foreign key, a function made VOLATILE) moves that epoch
        // without this instance seeing it: then the write may have reached
        // other tables, and the whole database is invalidated, in a second
        // round trip before the write is acknowledged.
        p.cmd("HGET").arg(&vkey).arg("s");
        let recorded = within(async {
            let c = self.connection().await?;
            let (schema,): (Option<u64>,) = c.pipeline(&p).await?;
            let current = Some(schema.unwrap_or(0));
            if classified.iter().any(|s| *s != current) {
                let mut bump = ::redis::cmd("HINCRBY");
                bump.arg(&vkey).arg("e").arg(epoch_step());
                c.query::<u64>(&bump).await?;
            }
            anyhow::Ok(())
        })
        .await;
        if let Err(e) = recorded {
            self.failed(&format!("invalidation: {e}"));
        }
    }

    /// The schema epoch of `db` (0 when never moved), read before the
    /// catalog is: facts read under it are current while it stays.
    pub async fn schema_epoch(&self, db: &str) -> Option<u64> {
        let mut c = ::redis::cmd("HGET");
        c.arg(self.versions_key(db)).arg("s");
        let s: Option<u64> = self.query(&c).await.ok()?;
        Some(s.unwrap_or(0))
    }

    fn note_database(&self, db: &Arc<str>) {
        let mut d = self.databases.lock();
        if !d.contains(db) {
            d.insert(db.clone());
        }
    }

    /// Something failed: read nothing until the epochs have moved past it.
    fn failed(self: &Arc<Self>, what: &str) {
        let start = {
            let mut r = self.repair.lock();
            r.failures += 1;
            let start = !r.running;
            r.running = true;
            start
        };
        if !self.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "redis cache unavailable ({what}); reads go to Postgres until it recovers"
            );
        }
        if start {
            let store = self.clone();
            tokio::spawn(async move { store.repair().await });
        }
    }

    /// Bumps the epoch of every database this instance has served, until a
    /// round succeeds with no failure after it started.
    async fn repair(self: Arc<Self>) {
        loop {
            crate::timer::sleep(REPAIR_EVERY).await;
            let seen = self.repair.lock().failures;
            let dbs: Vec<Arc<str>> = self.databases.lock().iter().cloned().collect();
            let bumped = within(async {
                let conn = self.connection().await?;
                for db in &dbs {
                    // the schema too: a DDL whose bump failed may have
                    // changed functions or policies
                    for field in ["e", "s"] {
                        let mut c = ::redis::cmd("HINCRBY");
                        c.arg(self.versions_key(db)).arg(field).arg(epoch_step());
                        conn.query::<i64>(&c).await?;
                    }
                }
                anyhow::Ok(())
            })
            .await;
            if bumped.is_err() {
                continue;
            }
            let mut state = self.repair.lock();
            if state.failures == seen {
                state.running = false;
                self.degraded.store(false, Ordering::Release);
                tracing::info!("redis cache recovered: epochs bumped, reads resume");
                return;
            }
        }
    }

    /// Memory Redis reports in use (`INFO memory`), for the bytes gauge.
    pub async fn used_memory(&self) -> Option<u64> {
        let info: String = self.query(::redis::cmd("INFO").arg("memory")).await.ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Runs Redis work under the deadline of one cache call. The Redis client
/// uses tokio's timers itself (its own timeouts, reconnect backoff): pgsift
/// keeps the session runtime's time driver when the cache backend is Redis
/// (main.rs), and the connection's tasks run beside the sessions.
async fn within<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    crate::timer::timeout(CALL_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
}

/// A random epoch step: epochs never repeat across Redis restarts.
fn epoch_step() -> u64 {
    rand::random::<u32>() as u64 + 1
}

/// A stored entry: the snapshot it was read under, then the messages.
pub fn encode(s: &Snapshot, bytes: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(bytes.len() + 16 + s.versions.len() * 24);
    b.put_slice(MAGIC);
    b.put_u64(s.epoch);
    b.put_u16(s.versions.len() as u16);
    for ((_, table), v) in &s.versions {
        b.put_u16(table.len() as u16);
        b.put_slice(table.as_bytes());
        b.put_u64(*v);
    }
    b.put_slice(bytes);
    b.freeze()
}

/// The messages of a stored entry, when it was read under exactly the
/// current epoch and versions. Whatever Redis returns (a shared Redis may
/// hold anything under the prefix) is refused, never a panic.
pub fn decode(raw: &[u8], epoch: u64, current: &[(TableKey, u64)]) -> Option<Bytes> {
    let mut b = raw;
    if b.len() < 14 || &b[..4] != MAGIC {
        return None;
    }
    b.advance(4);
    if b.get_u64() != epoch {
        return None;
    }
    let n = b.get_u16() as usize;
    if n != current.len() {
        return None;
    }
    for ((_, table), v) in current {
        if b.remaining() < 2 {
            return None;
        }
        let len = b.get_u16() as usize;
        if b.remaining() < len + 8 || &b[..len] != table.as_bytes() {
            return None;
        }
        b.advance(len);
        if b.get_u64() != *v {
            return None;
        }
    }
    Some(Bytes::copy_from_slice(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_only_their_own_epoch_and_versions() {
        let db: Arc<str> = "blog".into();
        let s = Snapshot {
            versions: vec![
                ((db.clone(), "posts".into()), 3),
                ((db.clone(), "users".into()), 0),
            ],
            epoch: 77,
        };
        let raw = encode(&s, b"rows");
        assert_eq!(decode(&raw, 77, &s.versions).as_deref(), Some(&b"rows"[..]));
        assert_eq!(decode(&raw, 78, &s.versions), None);
        let mut newer = s.versions.clone();
        newer[1].1 = 1;
        assert_eq!(decode(&raw, 77, &newer), None);
        assert_eq!(decode(&raw[..10], 77, &s.versions), None);
        assert_eq!(
            decode(b"garbage that is long enough", 77, &s.versions),
            None
        );
    }
}
