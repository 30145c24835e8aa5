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
//! Both epochs start at a random value (`HSETNX`) and move by random steps,
//! so an entry written before the hash was lost (a flush, an eviction, a
//! Redis restart without its data) never matches the epoch after it, even
//! when the table versions line up again, and catalog facts read under the
//! old schema epoch never count as current.
//!
//! Faults: every call has a deadline. A failed lookup is a bypass (the
//! statement goes to Postgres). Any failure — above all an invalidation that
//! could not be recorded — leaves the instance *degraded*: it reads nothing
//! from Redis until it has bumped the epoch of every database it knows,
//! after the last failure. Invalidations are still attempted while
//! degraded, since other instances may be serving.
//!
//! What the other instances rely on:
//! - Every lookup writes too (`HSETNX` of the epochs, a no-op once they
//!   exist: nothing is replicated or logged): a Redis that refuses writes
//!   but still answers reads — over `maxmemory` with `noeviction`, a
//!   read-only replica, `MISCONF`, `CLIENT PAUSE WRITE` — fails every
//!   instance's lookups, not only the writer's invalidation.
//! - An invalidation Redis refused is recorded by deleting the database's
//!   version hash instead, when Redis allows that (`DEL` is allowed over
//!   `maxmemory`): the epochs the next lookup creates are new random ones.
//! - A connection, the first one included, serves nothing until the epochs
//!   of every database the instance knows were bumped through it: Redis may
//!   have restarted from old persistence, failed over and lost the last
//!   writes, or this instance may have died owing a repair. A replica is
//!   refused at connection (`ROLE`).
//! - On shutdown, an instance that owes a repair keeps trying until
//!   `shutdown_timeout`.

use super::{Effect, Snapshot, TableKey};
use ::redis::aio::ConnectionLike;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Deadline of one cache call; past it the statement goes to Postgres.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between attempts to repair a degraded instance.
const REPAIR_EVERY: Duration = Duration::from_millis(200);
const MAGIC: &[u8; 4] = b"PGS1";

#[derive(Clone)]
enum Connection {
    Single(::redis::aio::MultiplexedConnection),
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

/// The connection in use, and which one it is.
struct Link {
    conn: Connection,
    /// counts the connections opened, from 1
    number: u64,
}

#[derive(Default)]
struct Repair {
    /// failures (skipped or failed invalidations, failed calls, new
    /// connections) so far
    failures: u64,
    /// a repair task is running
    running: bool,
    /// an invalidation was not recorded: other instances may serve what
    /// its write made stale until a repair lands
    owed: bool,
}

/// The shared store.
pub struct RedisStore {
    target: Target,
    /// the connection in use; replaced only after a failure
    link: Mutex<Option<Link>>,
    /// one connection attempt at a time
    connecting: tokio::sync::Mutex<()>,
    /// connections opened so far
    opened: AtomicU64,
    /// the connection a repair bumped the epochs through: lookups serve
    /// only what they read through it
    bumped: AtomicU64,
    prefix: String,
    degraded: AtomicBool,
    repair: Mutex<Repair>,
    /// databases this instance serves (configured or seen): the epochs a
    /// repair bumps
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
    /// connected until the first call, and nothing is served before the
    /// first repair (see [`Self::expect_databases`]).
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
            link: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            opened: AtomicU64::new(0),
            bumped: AtomicU64::new(0),
            prefix: prefix.to_owned(),
            degraded: AtomicBool::new(true),
            repair: Mutex::new(Repair::default()),
            databases: Mutex::new(HashSet::new()),
        })
    }

    /// Adds databases the instance serves (the configured ones, at start
    /// and after a reload). New ones are served only after a repair has
    /// bumped their epochs: this instance may have died owing one, or Redis
    /// may have come back from old persistence while no instance ran. Call
    /// it inside the runtime (it starts the repair).
    pub fn expect_databases(self: &Arc<Self>, dbs: impl IntoIterator<Item = Arc<str>>) {
        let added = {
            let mut known = self.databases.lock();
            dbs.into_iter()
                .fold(0, |n, db| n + known.insert(db) as usize)
        };
        if added > 0 {
            self.suspend();
        }
    }

    /// The connection in use, opened if there is none: a new one counts as
    /// a failure, so nothing read through it is served before a repair has
    /// bumped the epochs through it.
    async fn connection(self: &Arc<Self>) -> anyhow::Result<(Connection, u64)> {
        if let Some(l) = self.link.lock().as_ref() {
            return Ok((l.conn.clone(), l.number));
        }
        let _one = self.connecting.lock().await;
        if let Some(l) = self.link.lock().as_ref() {
            return Ok((l.conn.clone(), l.number));
        }
        let conn = self.open().await?;
        let number = self.opened.fetch_add(1, Ordering::AcqRel) + 1;
        if number > 1 {
            tracing::info!(
                "redis connection opened again: reads wait until the epochs are bumped through it"
            );
        }
        self.suspend();
        *self.link.lock() = Some(Link {
            conn: conn.clone(),
            number,
        });
        Ok((conn, number))
    }

    async fn open(&self) -> anyhow::Result<Connection> {
        Ok(match &self.target {
            Target::Single(client) => {
                let config = ::redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CALL_TIMEOUT))
                    .set_response_timeout(Some(CALL_TIMEOUT));
                let mut c = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                // A replica's data is replaced wholesale when it syncs, and
                // one that accepts writes (`replica-read-only no`) would
                // take invalidations its master never sees. (A Redis that
                // refuses ROLE — an ACL, a renamed command — is taken as it
                // is: the lookups' writes still fail on a read-only one.)
                let role: ::redis::RedisResult<Vec<::redis::Value>> =
                    ::redis::cmd("ROLE").query_async(&mut c).await;
                match role {
                    Ok(role) => {
                        let role = role
                            .into_iter()
                            .next()
                            .map(::redis::from_redis_value::<String>)
                            .transpose()?
                            .unwrap_or_default();
                        if role != "master" {
                            anyhow::bail!("redis is a {role}, not a master");
                        }
                    }
                    Err(e) if refusal(&e) => {}
                    Err(e) => return Err(e.into()),
                }
                Connection::Single(c)
            }
            Target::Cluster(client) => Connection::Cluster(client.get_async_connection().await?),
        })
    }

    /// One command under the deadline.
    async fn query<T: ::redis::FromRedisValue>(
        self: &Arc<Self>,
        cmd: &::redis::Cmd,
    ) -> anyhow::Result<T> {
        let r = within(async { Ok(self.connection().await?.0.query(cmd).await?) }).await;
        if let Err(e) = &r {
            self.drop_if_broken(e);
        }
        r
    }

    /// A call failed: when the connection is in doubt (broken, or past a
    /// deadline), the next call opens a new one.
    fn drop_if_broken(&self, e: &anyhow::Error) {
        let broken = e.downcast_ref::<::redis::RedisError>().is_none_or(|e| {
            e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
        });
        if broken {
            *self.link.lock() = None;
        }
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

    /// The epochs of `vkey` created with random values where missing (a
    /// write, refused wherever Redis refuses writes), ahead of the reads of
    /// `p`.
    fn init_epochs(p: &mut ::redis::Pipeline, vkey: &str) {
        for field in ["e", "s"] {
            p.cmd("HSETNX")
                .arg(vkey)
                .arg(field)
                .arg(epoch_init())
                .ignore();
        }
    }

    /// Looks `key` up and reads the versions of `tables` and the epoch, in
    /// one round trip.
    pub async fn lookup(self: &Arc<Self>, key: u128, db: &Arc<str>, tables: &[String]) -> Found {
        if self.degraded() {
            return Found::Unavailable;
        }
        if !self.note_database(db) {
            return Found::Unavailable;
        }
        let names: Vec<String> = tables.iter().map(|t| super::table_name(t)).collect();
        let vkey = self.versions_key(db);
        let result = within(async {
            let (conn, number) = self.connection().await?;
            let mut get = ::redis::cmd("GET");
            get.arg(self.entry_key(key));
            // The no-op writes first: a Redis that refuses writes (full,
            // read-only) fails the lookup, as it failed the invalidation
            // of a write whose versions it still serves. They also give a
            // database Redis has not seen (or a lost hash) random epochs.
            let mut p = ::redis::pipe();
            Self::init_epochs(&mut p, &vkey);
            let hmget = p.cmd("HMGET").arg(&vkey).arg("e").arg("s");
            for n in &names {
                hmget.arg(format!("t:{n}"));
            }
            let (entry, current) = tokio::join!(
                conn.query::<Option<Vec<u8>>>(&get),
                conn.pipeline::<(Vec<Option<u64>>,)>(&p)
            );
            anyhow::Ok((entry?, current?.0, number))
        })
        .await;
        let (entry, current, number) = match result {
            Ok(r) => r,
            Err(e) => {
                self.drop_if_broken(&e);
                self.failed(&format!("lookup: {e:#}"));
                return Found::Unavailable;
            }
        };
        // read through a connection whose epochs were bumped after it
        // opened, with no failure since
        if self.degraded() || self.bumped.load(Ordering::Acquire) != number {
            return Found::Unavailable;
        }
        // (missing: the hash was deleted between the HSETNX and the HMGET)
        let (Some(epoch), Some(schema)) = (
            current.first().copied().flatten(),
            current.get(1).copied().flatten(),
        ) else {
            return Found::Unavailable;
        };
        let versions: Vec<(TableKey, u64)> = names
            .into_iter()
            .zip(current[2..].iter())
            .map(|(n, v)| ((db.clone(), n), v.unwrap_or(0)))
            .collect();
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
                store.failed(&format!("store: {e:#}"));
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
        // round trip before the write is acknowledged. A missing schema
        // epoch (the hash was flushed, evicted or deleted) proves nothing
        // about what the facts knew: the whole database too.
        p.cmd("HGET").arg(&vkey).arg("s");
        let recorded = within(async {
            let (c, _) = self.connection().await?;
            let (schema,): (Option<u64>,) = c.pipeline(&p).await?;
            if schema.is_none() || classified.iter().any(|s| *s != schema) {
                let mut bump = ::redis::pipe();
                bump.cmd("HINCRBY")
                    .arg(&vkey)
                    .arg("e")
                    .arg(epoch_step())
                    .ignore();
                Self::init_epochs(&mut bump, &vkey);
                c.pipeline::<()>(&bump).await?;
            }
            anyhow::Ok(())
        })
        .await;
        let Err(e) = recorded else {
            return;
        };
        self.drop_if_broken(&e);
        if answered(&e) {
            // Redis answered and refused: over maxmemory with noeviction,
            // say, where a DEL is still allowed. Without the hash every
            // lookup must create new random epochs — a write, refused by
            // the same Redis until it accepts writes again — and then no
            // entry read before matches them: the invalidation is recorded.
            let mut del = ::redis::cmd("DEL");
            del.arg(&vkey);
            if self.query::<i64>(&del).await.is_ok() {
                self.failed(&format!(
                    "invalidation refused ({e:#}); the versions of {db} were deleted instead"
                ));
                return;
            }
        }
        self.repair.lock().owed = true;
        self.failed(&format!("invalidation: {e:#}"));
    }

    /// The schema epoch of `db`, read before the catalog is: facts read
    /// under it are current while it stays. Created (random) if missing.
    pub async fn schema_epoch(self: &Arc<Self>, db: &str) -> Option<u64> {
        let vkey = self.versions_key(db);
        let mut p = ::redis::pipe();
        Self::init_epochs(&mut p, &vkey);
        p.cmd("HGET").arg(&vkey).arg("s");
        let read = within(async {
            let (c, _) = self.connection().await?;
            let (s,): (Option<u64>,) = c.pipeline(&p).await?;
            anyhow::Ok(s)
        })
        .await;
        match read {
            Ok(s) => s,
            Err(e) => {
                self.drop_if_broken(&e);
                None
            }
        }
    }

    /// Adds `db` to the databases a repair bumps. False when it is new:
    /// nothing of it is served until a repair has bumped it.
    fn note_database(self: &Arc<Self>, db: &Arc<str>) -> bool {
        let new = {
            let mut d = self.databases.lock();
            !d.contains(db) && d.insert(db.clone())
        };
        if new {
            self.suspend();
        }
        !new
    }

    /// Something failed: read nothing until the epochs have moved past it.
    fn failed(self: &Arc<Self>, what: &str) {
        if !self.degraded() {
            tracing::warn!(
                "redis cache unavailable ({what}); reads go to Postgres until it recovers"
            );
        }
        self.suspend();
    }

    /// Counts a failure, stops reads and makes sure a repair runs.
    fn suspend(self: &Arc<Self>) {
        let start = {
            let mut r = self.repair.lock();
            r.failures += 1;
            let start = !r.running;
            r.running = true;
            start
        };
        self.degraded.store(true, Ordering::Release);
        if start {
            let store = self.clone();
            tokio::spawn(async move { store.repair().await });
        }
    }

    /// Bumps the epoch of every database this instance knows, until a
    /// round succeeds with no failure after it started.
    async fn repair(self: Arc<Self>) {
        loop {
            let round = within(async {
                let (conn, number) = self.connection().await?;
                let seen = self.repair.lock().failures;
                let dbs: Vec<Arc<str>> = self.databases.lock().iter().cloned().collect();
                for db in &dbs {
                    // the schema too: a DDL whose bump failed may have
                    // changed functions or policies
                    let mut p = ::redis::pipe();
                    for field in ["e", "s"] {
                        p.cmd("HINCRBY")
                            .arg(self.versions_key(db))
                            .arg(field)
                            .arg(epoch_step())
                            .ignore();
                    }
                    conn.pipeline::<()>(&p).await?;
                }
                anyhow::Ok((number, seen, dbs.len()))
            })
            .await;
            match round {
                Ok((number, seen, dbs)) => {
                    let mut state = self.repair.lock();
                    if state.failures == seen {
                        state.running = false;
                        state.owed = false;
                        self.bumped.store(number, Ordering::Release);
                        self.degraded.store(false, Ordering::Release);
                        tracing::info!(
                            databases = dbs,
                            "redis cache ready: epochs bumped, reads served"
                        );
                        return;
                    }
                }
                Err(e) => self.drop_if_broken(&e),
            }
            crate::timer::sleep(REPAIR_EVERY).await;
        }
    }

    /// Waits, up to `limit`, until no invalidation is owed (shutdown: once
    /// the process is gone, nothing records it until this instance starts
    /// again). True when none is.
    pub async fn settle(&self, limit: Duration) -> bool {
        let start = Instant::now();
        if self.repair.lock().owed {
            tracing::info!(
                "an invalidation is not recorded in redis yet: retrying for up to {limit:?} before exiting"
            );
        }
        while self.repair.lock().owed {
            if start.elapsed() >= limit {
                tracing::warn!(
                    "exiting with an invalidation not recorded in redis: other instances may serve what it made stale until this instance starts again (a start bumps every epoch) or their TTL runs out"
                );
                return false;
            }
            crate::timer::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Memory Redis reports in use (`INFO memory`; a cluster's nodes
    /// added up), for the bytes gauge.
    pub async fn used_memory(self: &Arc<Self>) -> Option<u64> {
        let info: ::redis::Value = self.query(::redis::cmd("INFO").arg("memory")).await.ok()?;
        let texts: Vec<String> = match info {
            ::redis::Value::Map(nodes) => nodes
                .into_iter()
                .filter_map(|(_, v)| ::redis::from_redis_value(v).ok())
                .collect(),
            v => vec![::redis::from_redis_value(v).ok()?],
        };
        texts
            .iter()
            .map(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum()
    }
}

/// True when the error is Redis's answer (a refusal: OOM, READONLY,
/// NOPERM, …), not a missing one (a broken connection, a deadline).
fn answered(e: &anyhow::Error) -> bool {
    e.downcast_ref::<::redis::RedisError>().is_some_and(refusal)
}

/// True when Redis answered with an error.
fn refusal(e: &::redis::RedisError) -> bool {
    matches!(
        e.kind(),
        ::redis::ErrorKind::Server(_) | ::redis::ErrorKind::Extension
    )
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

/// A random first epoch, below 2^48: random steps keep it far from the
/// 2^63 where `HINCRBY` stops.
fn epoch_init() -> u64 {
    (rand::random::<u64>() >> 16).max(1)
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
