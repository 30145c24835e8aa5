//! The SELECT cache end to end: hits are byte-identical to
//! misses and skip the server, writes through pgsift invalidate before they
//! are acknowledged (autocommit, transactions, MERGE, prepared DML without a
//! new Parse, COPY, TRUNCATE, DDL, volatile functions), keys separate roles
//! and settings, RLS tables and non-immutable functions are never cached,
//! a temporary table (in any spelling), a setting changed behind a comment
//! or a text pgsift may misread (standard_conforming_strings off) never
//! shares a result, and a stress test with concurrent writers and readers
//! sees no stale read.
//! The Redis backend: two instances share entries and invalidations (stress
//! with writers on one and readers on both), Redis killed and restarted
//! under load costs no client an error and serves no stale read, and an
//! invalidation that could not be recorded stops the instance from serving
//! until it has bumped the epoch. A Redis that refuses writes but answers
//! reads (full with `noeviction`, demoted to a replica) stops every
//! instance from serving what a refused write made stale, as do a flushed
//! versions hash, an instance killed or stopped owing a repair, and a Redis
//! restored from old files while no instance ran. A three-master Redis
//! Cluster works the same.
// Tests run tokio runtimes of their own, with timers: the timer functions
// clippy.toml keeps out of pgsift (src/timer.rs) are theirs to use.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{connect, shared_postgres, Proxy};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};
use tokio_postgres::SimpleQueryMessage;

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let pg = shared_postgres();
        pg.psql("postgres", "CREATE DATABASE cachedb OWNER blog");
        pg.psql("postgres", "CREATE ROLE reader LOGIN PASSWORD 'readerpw'; GRANT reader TO blog");
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE items (id int PRIMARY KEY, v int, owner text); INSERT INTO items SELECT g, 0, CASE WHEN g % 2 = 0 THEN 'blog' ELSE 'reader' END FROM generate_series(1, 100) g");
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE counters (id int PRIMARY KEY, v bigint); INSERT INTO counters SELECT g, 0 FROM generate_series(1, 8) g; CREATE TABLE counters_r (LIKE counters INCLUDING ALL); INSERT INTO counters_r SELECT * FROM counters; CREATE TABLE counters_f (LIKE counters INCLUDING ALL); INSERT INTO counters_f SELECT * FROM counters; CREATE TABLE flaky (id int, v int); INSERT INTO flaky VALUES (42, 1)");
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE secret (id int, owner text); INSERT INTO secret VALUES (1, 'blog'), (2, 'reader'); ALTER TABLE secret ENABLE ROW LEVEL SECURITY; ALTER TABLE secret FORCE ROW LEVEL SECURITY; CREATE POLICY own ON secret USING (owner = current_user)");
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE stamps (id int, at timestamptz); INSERT INTO stamps VALUES (1, '2026-01-01 12:00:00+00'); CREATE TABLE staging (id int, v int)");
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE privy (id int, v int); INSERT INTO privy VALUES (1, 0)");
        // written by the two-instance test only (privy must stay 0 for the role test)
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE shared_r (id int, v int); INSERT INTO shared_r VALUES (1, 0)");
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE parents (id int PRIMARY KEY); CREATE TABLE kids (id int, parent int REFERENCES parents ON DELETE CASCADE); INSERT INTO parents VALUES (1), (2); INSERT INTO kids VALUES (1, 1), (2, 1), (3, 2)");
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE audited (id int, v int); CREATE TABLE audit_log (n int); INSERT INTO audited VALUES (1, 0); CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN INSERT INTO audit_log VALUES (1); RETURN NEW; END'; CREATE TRIGGER t AFTER UPDATE ON audited FOR EACH ROW EXECUTE FUNCTION log_it()");
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE base_t (id int, v int); INSERT INTO base_t VALUES (1, 0); CREATE VIEW base_v AS SELECT * FROM base_t; CREATE TABLE events (id int, v int) PARTITION BY RANGE (id); CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (0) TO (100); INSERT INTO events VALUES (5, 0)");
        // a commit that takes 1.5 s and shrugs off cancel requests (as one
        // waiting for a synchronous standby does)
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE doubt (id int PRIMARY KEY, v int); INSERT INTO doubt VALUES (1, 0), (2, 0); CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ DECLARE until timestamptz := clock_timestamp() + interval '1.5 s'; BEGIN WHILE clock_timestamp() < until LOOP BEGIN PERFORM pg_sleep(0.05); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; RETURN NULL; END $$; CREATE CONSTRAINT TRIGGER slow AFTER UPDATE ON doubt DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()");
        // the same, taking 6 s: longer than pgsift waits in the session
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE doubt_long (id int PRIMARY KEY, v int); INSERT INTO doubt_long VALUES (1, 0), (2, 0); CREATE FUNCTION slower_commit() RETURNS trigger LANGUAGE plpgsql AS $$ DECLARE until timestamptz := clock_timestamp() + interval '6 s'; BEGIN WHILE clock_timestamp() < until LOOP BEGIN PERFORM pg_sleep(0.05); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; RETURN NULL; END $$; CREATE CONSTRAINT TRIGGER slow AFTER UPDATE ON doubt_long DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slower_commit()");
        // written by the COMMIT AND CHAIN and two-phase commit tests only
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE chained (id int PRIMARY KEY, v int); INSERT INTO chained VALUES (1, 0), (2, 0), (3, 0), (4, 0); CREATE TABLE twophase (id int PRIMARY KEY, v int); INSERT INTO twophase VALUES (1, 0), (2, 0); CREATE TABLE rr_pipe (id int PRIMARY KEY, v int); INSERT INTO rr_pipe VALUES (1, 0)");
        // a tenant's schema with a table of the same name
        pg.psql("cachedb", "SET ROLE blog; CREATE SCHEMA tenant2; CREATE TABLE tenant2.items (id int PRIMARY KEY, v int, owner text); INSERT INTO tenant2.items VALUES (60, 77, 'blog'), (61, 77, 'blog')");
        // written through the alias test and the cross-instance DDL test only
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE aliased (id int, v int); INSERT INTO aliased VALUES (1, 0); CREATE TABLE posted (id int); CREATE TABLE post_log (n int)");
        // one row per Redis fault test; flushed_w gets a trigger in one
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE refused (id int PRIMARY KEY, v int); INSERT INTO refused SELECT g, 0 FROM generate_series(1, 10) g; CREATE TABLE flushed_w (id int); CREATE TABLE flushed_log (n int)");
        // a table a session hides behind a temporary one; a covered table a
        // volatile function writes, and one no rule covers
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE shadowed (id int, v text); INSERT INTO shadowed VALUES (1, 'permanent'); CREATE TABLE strings_t (id int, v int); INSERT INTO strings_t VALUES (1, 0); CREATE TABLE strings_hidden (v text); INSERT INTO strings_hidden VALUES ('old'); CREATE FUNCTION strings_bump() RETURNS int LANGUAGE sql VOLATILE AS 'UPDATE strings_t SET v = v + 1 RETURNING v'");
        pg.psql("cachedb", "GRANT SELECT ON items, secret, stamps TO reader; GRANT SELECT (id) ON privy TO reader");
    });
}

fn cache_proxy(extra_users: bool) -> Proxy {
    // busy polling on: every memory-backend test also runs it
    cache_proxy_with(extra_users, "backend: memory")
}

/// A proxy on the Redis backend at `redis`.
fn redis_proxy(redis: &common::Redis) -> Proxy {
    redis_url_proxy(&redis.url())
}

fn redis_url_proxy(url: &str) -> Proxy {
    redis_url_proxy_with(url, "")
}

/// A proxy on the Redis backend at `url`, with `top` added to its config's
/// top level.
fn redis_url_proxy_with(url: &str, top: &str) -> Proxy {
    cache_proxy_full(
        false,
        &format!("backend: redis\n  redis_url: \"{url}\"\n  key_prefix: \"t:\""),
        top,
    )
}

fn cache_proxy_with(extra_users: bool, backend: &str) -> Proxy {
    cache_proxy_full(extra_users, backend, "")
}

/// A proxy on the cache backend `backend`, with `top` added to its config's
/// top level.
fn cache_proxy_full(extra_users: bool, backend: &str, top: &str) -> Proxy {
    setup();
    let busy = if backend.contains("memory") {
        format!("busy_poll: 200us\n{top}")
    } else {
        top.to_owned()
    };
    let pg = shared_postgres();
    let users = if extra_users {
        "  - {name: reader, password: readerpw}\n"
    } else {
        ""
    };
    Proxy::start_with(|port, admin| {
        format!(
            "listen: 127.0.0.1:{port}\n{busy}admin: {{listen: 127.0.0.1:{admin}, users: [blog]}}\nusers:\n  - {{name: blog, password: blogpw}}\n{users}databases:\n  cachedb: {{host: 127.0.0.1, port: {}, pool_mode: transaction, pool_size: 6}}\ncache:\n  {backend}\n  rules:\n    - tables: [items, counters, counters_r, counters_f, flaky, secret, stamps, staging, privy, shared_r, parents, kids, audited, audit_log, base_t, base_v, events, events_1, doubt, doubt_long, chained, twophase, rr_pipe, aliased, posted, post_log, refused, flushed_w, flushed_log]\n      ttl: 60s\n",
            pg.port
        )
    })
}

/// Where the `blog` role reaches `cachedb` through `proxy`.
fn dsn(proxy: &Proxy) -> String {
    proxy.conn_str("blog", "blogpw", "cachedb")
}

/// A client of `proxy` as the `blog` role on `cachedb`.
async fn client(proxy: &Proxy) -> tokio_postgres::Client {
    connect(&dsn(proxy)).await.unwrap()
}

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    rows(&c.simple_query(sql).await.unwrap())[0][0]
        .clone()
        .unwrap_or_default()
}

/// Waits (up to 10 s) until `proxy` has read its catalog facts: a probe
/// read of `shared_r` counts as a miss or a hit there, not as a bypass. A
/// busy machine (CI runs the suites side by side) can take longer than a
/// fixed pause. Fails the test when they never load: every test that reads
/// through the cache would otherwise pass on bypasses alone.
async fn wait_for_facts(c: &tokio_postgres::Client, proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = metric(proxy, "miss") + metric(proxy, "hit");
        one(c, "SELECT count(*) FROM shared_r WHERE id > 1").await;
        if metric(proxy, "miss") + metric(proxy, "hit") > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pgsift never read its catalog facts: the probe read stayed a bypass for 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `sql` through `c` twice and checks that the second read was
/// served from the cache; returns the value. A value read after a write
/// proves the write invalidated only when the value before it was cached.
/// (The first read is sent at once: a read right after a write must see
/// it. After DDL, pgsift reads its catalog facts again: `wait_for_facts`.)
async fn cached(c: &tokio_postgres::Client, proxy: &Proxy, sql: &str) -> String {
    let first = one(c, sql).await;
    let hits = metric(proxy, "hit");
    let second = one(c, sql).await;
    assert_eq!(second, first, "{sql}: the second read differs");
    assert_eq!(
        metric(proxy, "hit"),
        hits + 1.0,
        "{sql}: the second read was not served from the cache"
    );
    second
}

fn metric(proxy: &Proxy, result: &str) -> f64 {
    metric_of(proxy, "", result)
}

/// `pgsift_cache_requests_total` of `result` for `database` (any, if empty).
fn metric_of(proxy: &Proxy, database: &str, result: &str) -> f64 {
    let (_, body) = common::http_get(proxy.admin_port, "/metrics").unwrap();
    body.lines()
        .find(|l| {
            l.starts_with("pgsift_cache_requests_total")
                && l.contains(&format!("result=\"{result}\""))
                && (database.is_empty() || l.contains(&format!("database=\"{database}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Changes a row behind pgsift's back: a cached result then stays as it was
/// (bounded by the TTL), which shows the read was served from the cache.
fn write_directly(sql: &str) {
    shared_postgres().psql("cachedb", sql);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hit_is_byte_identical_to_the_miss_and_skips_the_server() {
    use common::raw;
    use tokio::io::AsyncWriteExt;
    let proxy = cache_proxy(false);
    let c = client(&proxy).await;
    wait_for_facts(&c, &proxy).await;
    let sql =
        "SELECT id, v, owner, id * 2.5 AS x, NULL::text AS n FROM items WHERE id <= 3 ORDER BY id";
    // every message of the reply, tag and body, as the client receives it:
    // a simple query, and a one-off extended one (unnamed Parse, Bind,
    // Execute, Sync)
    let mut s = raw::raw_login_as(proxy.port, "blog", "blogpw", "cachedb").await;
    let mut replies = Vec::new();
    for (protocol, request) in [("simple", raw::query(sql)), ("extended", raw::one_off(sql))] {
        let (misses, hits) = (metric(&proxy, "miss"), metric(&proxy, "hit"));
        s.write_all(&request).await.unwrap();
        let miss = raw::read_until(&mut s, b'Z').await;
        assert_eq!(metric(&proxy, "miss"), misses + 1.0, "{protocol}: a miss");
        let rows = miss.iter().filter(|(t, _)| *t == b'D').count();
        assert_eq!(rows, 3, "{protocol}: {miss:?}");
        s.write_all(&request).await.unwrap();
        let hit = raw::read_until(&mut s, b'Z').await;
        assert_eq!(metric(&proxy, "hit"), hits + 1.0, "{protocol}: a hit");
        assert_eq!(
            hit, miss,
            "{protocol}: the hit's bytes differ from the miss's"
        );
        replies.push((protocol, request, miss));
    }
    // the hit skips the server: a change behind pgsift's back is not seen
    write_directly("UPDATE items SET owner = 'changed' WHERE id = 1");
    for (protocol, request, miss) in replies {
        s.write_all(&request).await.unwrap();
        let again = raw::read_until(&mut s, b'Z').await;
        assert_eq!(
            again, miss,
            "{protocol}: served from the cache, not the server"
        );
    }
    write_directly("UPDATE items SET owner = 'reader' WHERE id = 1");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_through_pgsift_invalidate_before_they_are_acknowledged() {
    let proxy = cache_proxy(false);
    let c = client(&proxy).await;
    wait_for_facts(&c, &proxy).await;
    // each value is read twice (`cached`): the second read is a hit, so
    // the write that follows has a cached entry to invalidate
    let read = "SELECT v FROM items WHERE id = 10";
    assert_eq!(cached(&c, &proxy, read).await, "0");
    // autocommit UPDATE
    c.simple_query("UPDATE items SET v = 1 WHERE id = 10")
        .await
        .unwrap();
    assert_eq!(one(&c, read).await, "1");
    // inside a transaction: the transaction sees its own write (no cache),
    // others see the new value once COMMIT is acknowledged
    let other = client(&proxy).await;
    assert_eq!(cached(&other, &proxy, read).await, "1");
    c.batch_execute("BEGIN; UPDATE items SET v = 2 WHERE id = 10")
        .await
        .unwrap();
    assert_eq!(one(&c, read).await, "2");
    assert_eq!(one(&other, read).await, "1");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(cached(&other, &proxy, read).await, "2");
    // ROLLBACK leaves the old value
    c.batch_execute("BEGIN; UPDATE items SET v = 99 WHERE id = 10; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(one(&other, read).await, "2");
    // MERGE
    c.batch_execute("MERGE INTO items t USING (SELECT 10 AS id) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = 3").await.unwrap();
    assert_eq!(cached(&other, &proxy, read).await, "3");
    // INSERT … ON CONFLICT
    c.batch_execute(
        "INSERT INTO items VALUES (10, 4, 'blog') ON CONFLICT (id) DO UPDATE SET v = 4",
    )
    .await
    .unwrap();
    assert_eq!(cached(&other, &proxy, read).await, "4");
    // a named statement bound again without a new Parse (extended protocol)
    let upd = c
        .prepare("UPDATE items SET v = $1 WHERE id = 10")
        .await
        .unwrap();
    for v in [5i32, 6] {
        c.execute(&upd, &[&v]).await.unwrap();
        assert_eq!(cached(&other, &proxy, read).await, v.to_string());
    }
    // a writable CTE
    c.batch_execute(
        "WITH u AS (UPDATE items SET v = 7 WHERE id = 10 RETURNING id) SELECT count(*) FROM u",
    )
    .await
    .unwrap();
    assert_eq!(cached(&other, &proxy, read).await, "7");
    // COPY FROM into a cached table
    let staging = "SELECT count(*) FROM staging";
    assert_eq!(cached(&other, &proxy, staging).await, "0");
    let sink = c.copy_in("COPY staging FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    use futures_util::SinkExt;
    sink.send(bytes::Bytes::from_static(b"1\t1\n2\t2\n"))
        .await
        .unwrap();
    sink.finish().await.unwrap();
    assert_eq!(cached(&other, &proxy, staging).await, "2");
    // TRUNCATE (DDL-class: invalidates the database)
    c.batch_execute("TRUNCATE staging").await.unwrap();
    assert_eq!(one(&other, staging).await, "0");
    // a volatile function may write anything
    c.batch_execute("CREATE OR REPLACE FUNCTION bump() RETURNS int LANGUAGE sql VOLATILE AS 'UPDATE items SET v = 8 WHERE id = 10 RETURNING v'").await.unwrap();
    wait_for_facts(&other, &proxy).await;
    assert_eq!(cached(&other, &proxy, read).await, "7");
    assert_eq!(one(&c, "SELECT bump()").await, "8");
    assert_eq!(cached(&other, &proxy, read).await, "8");
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_settings_and_rls_never_share_a_result() {
    let proxy = cache_proxy(true);
    let blog = client(&proxy).await;
    let reader = connect(&proxy.conn_str("reader", "readerpw", "cachedb"))
        .await
        .unwrap();
    wait_for_facts(&blog, &proxy).await;
    // RLS: each role sees its own row, every time
    for _ in 0..3 {
        assert_eq!(
            one(&blog, "SELECT string_agg(owner, ',') FROM secret").await,
            "blog"
        );
        assert_eq!(
            one(&reader, "SELECT string_agg(owner, ',') FROM secret").await,
            "reader"
        );
    }
    // column privileges: reader may not read counters.v, even after blog cached it
    assert_eq!(one(&blog, "SELECT v FROM privy WHERE id = 1").await, "0");
    assert_eq!(one(&blog, "SELECT v FROM privy WHERE id = 1").await, "0");
    let err = reader
        .simple_query("SELECT v FROM privy WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().code(),
        &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE
    );
    // TimeZone, DateStyle and search_path give different, correct results
    let q = "SELECT at::text FROM stamps WHERE id = 1";
    let utc = connect(&format!("{} options='-c TimeZone=UTC'", dsn(&proxy)))
        .await
        .unwrap();
    let tokyo = connect(&format!("{} options='-c TimeZone=Asia/Tokyo'", dsn(&proxy)))
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(one(&utc, q).await, "2026-01-01 12:00:00+00");
        assert_eq!(one(&tokyo, q).await, "2026-01-01 21:00:00+09");
    }
    blog.batch_execute("SET DateStyle = 'German'")
        .await
        .unwrap();
    assert_eq!(
        one(&blog, "SELECT at::date::text FROM stamps WHERE id = 1").await,
        "01.01.2026"
    );
    assert_eq!(
        one(&utc, "SELECT at::date::text FROM stamps WHERE id = 1").await,
        "2026-01-01"
    );
    assert_eq!(
        one(&blog, "SELECT at::date::text FROM stamps WHERE id = 1").await,
        "01.01.2026"
    );
    // a role change pgsift does not model turns the cache off for that
    // client: its reads are bypasses, neither blog's entry nor a new one.
    // (A table both roles may read, without row-level security: an RLS
    // table such as secret is never cached, whatever the role.)
    let read = "SELECT owner FROM items WHERE id = 4";
    assert_eq!(cached(&blog, &proxy, read).await, "blog");
    let (hits, bypasses) = (metric(&proxy, "hit"), metric(&proxy, "bypass"));
    blog.batch_execute("SET ROLE reader").await.unwrap();
    assert_eq!(one(&blog, read).await, "blog");
    assert_eq!(
        metric(&proxy, "hit"),
        hits,
        "blog's entry served after SET ROLE reader"
    );
    assert_eq!(metric(&proxy, "bypass"), bypasses + 1.0, "not a bypass");
}

#[tokio::test(flavor = "multi_thread")]
async fn non_immutable_functions_and_locking_reads_are_not_cached() {
    let proxy = cache_proxy(false);
    let c = client(&proxy).await;
    wait_for_facts(&c, &proxy).await;
    let hits = metric(&proxy, "hit");
    for sql in [
        "SELECT now() > at FROM stamps WHERE id = 1",
        "SELECT random() < 2, id FROM stamps",
        "SELECT CURRENT_TIMESTAMP > at FROM stamps",
        "SELECT id FROM items WHERE id = 1 FOR UPDATE",
    ] {
        c.simple_query(sql).await.unwrap();
        c.simple_query(sql).await.unwrap();
    }
    assert_eq!(metric(&proxy, "hit"), hits);
    // an immutable function is fine
    c.simple_query("SELECT lower(owner) FROM items WHERE id = 2")
        .await
        .unwrap();
    c.simple_query("SELECT lower(owner) FROM items WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(metric(&proxy, "hit"), hits + 1.0);
}

/// What a stress run saw.
#[derive(Debug, Default)]
struct Stress {
    writes: u64,
    reads: u64,
    stale: u64,
    errors: u64,
}

/// 4 writers (round-robin over `writers`) increment rows of `table` and 8
/// readers (round-robin over `readers`) read them for `secs` seconds while
/// `during` runs. A read that returns less than the newest value
/// acknowledged to any writer before the read started is stale. Errors are
/// counted, not fatal.
async fn stress(
    table: &str,
    writers: &[String],
    readers: &[String],
    secs: u64,
    during: impl FnOnce() + Send + 'static,
) -> Stress {
    let acked: Arc<Vec<AtomicI64>> = Arc::new((0..8).map(|_| AtomicI64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    common::connect(&writers[0])
        .await
        .unwrap()
        .batch_execute(&format!("UPDATE {table} SET v = 0"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..4usize {
        let (acked, stop) = (acked.clone(), stop.clone());
        let (conn, table) = (writers[w % writers.len()].clone(), table.to_owned());
        tasks.push(tokio::spawn(async move {
            let c = common::connect(&conn).await.unwrap();
            let mut s = Stress::default();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let id = 1 + ((n * 4 + w) % 8);
                n += 1;
                let sql = format!("UPDATE {table} SET v = v + 1 WHERE id = {id} RETURNING v");
                match c.simple_query(&sql).await {
                    Ok(m) => {
                        let v: i64 = rows(&m)[0][0].as_ref().unwrap().parse().unwrap();
                        acked[id - 1].fetch_max(v, Ordering::SeqCst);
                        s.writes += 1;
                    }
                    Err(e) => {
                        eprintln!("writer error: {e}");
                        s.errors += 1;
                    }
                }
            }
            s
        }));
    }
    for r in 0..8usize {
        let (acked, stop) = (acked.clone(), stop.clone());
        let (conn, table) = (readers[r % readers.len()].clone(), table.to_owned());
        tasks.push(tokio::spawn(async move {
            let c = common::connect(&conn).await.unwrap();
            let mut s = Stress::default();
            let mut k = r;
            while !stop.load(Ordering::Relaxed) {
                let id = 1 + (k % 8);
                k += 3;
                let floor = acked[id - 1].load(Ordering::SeqCst);
                let sql = format!("SELECT v FROM {table} WHERE id = {id}");
                match c.simple_query(&sql).await {
                    Ok(m) => {
                        let v: i64 = rows(&m)[0][0].as_ref().unwrap().parse().unwrap();
                        if v < floor {
                            s.stale += 1;
                        }
                        s.reads += 1;
                    }
                    Err(e) => {
                        eprintln!("reader error: {e}");
                        s.errors += 1;
                    }
                }
            }
            s
        }));
    }
    let started = Instant::now();
    let during = tokio::task::spawn_blocking(during);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    during.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut total = Stress::default();
    for t in tasks {
        let s = t.await.unwrap();
        total.writes += s.writes;
        total.reads += s.reads;
        total.stale += s.stale;
        total.errors += s.errors;
    }
    eprintln!("stress on {table}: {total:?} in {:?}", started.elapsed());
    total
}

fn stress_seconds() -> u64 {
    std::env::var("PGSIFT_STRESS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_and_readers_never_see_a_stale_read() {
    let proxy = cache_proxy(false);
    wait_for_facts(&client(&proxy).await, &proxy).await;
    let conn = vec![dsn(&proxy)];
    let s = stress("counters", &conn, &conn, stress_seconds(), || {}).await;
    let hits = metric(&proxy, "hit");
    assert!(s.writes > 100 && s.reads > 100, "{s:?}");
    assert!(hits > 0.0, "the cache served some reads");
    assert_eq!((s.stale, s.errors), (0, 0), "stale reads, errors");
}

/// Two instances on a Redis of their own, each with a client, both with
/// their catalog facts read.
async fn two_instances() -> (
    common::Redis,
    Proxy,
    Proxy,
    tokio_postgres::Client,
    tokio_postgres::Client,
) {
    let redis = common::Redis::start();
    let (a, b) = (redis_proxy(&redis), redis_proxy(&redis));
    let ca = client(&a).await;
    let cb = client(&b).await;
    wait_for_facts(&ca, &a).await;
    wait_for_facts(&cb, &b).await;
    (redis, a, b, ca, cb)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_on_one_redis_share_entries_and_invalidations() {
    let (redis, a, b, ca, cb) = two_instances().await;
    let sql = "SELECT v FROM shared_r WHERE id = 1";
    // A stores what it read in the background, after answering: B's read
    // waits until the entry is in Redis (the probes' entries settled first)
    let entries = || redis.cli(&["--scan", "--pattern", "t:c:*"]).lines().count();
    let mut settled = entries();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = entries();
        if now == settled {
            break;
        }
        settled = now;
    }
    let v = one(&ca, sql).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while entries() == settled && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hits_b = metric(&b, "hit");
    assert_eq!(one(&cb, sql).await, v);
    assert_eq!(metric(&b, "hit"), hits_b + 1.0, "B is served what A stored");
    // a write through A is seen by a read through B right after its ack
    ca.batch_execute("UPDATE shared_r SET v = v + 1 WHERE id = 1")
        .await
        .unwrap();
    let newer = one(&cb, sql).await;
    assert_eq!(newer.parse::<i64>().unwrap(), v.parse::<i64>().unwrap() + 1);
    // every key is under the prefix, the versions of a database in one
    // hash-tagged key
    let keys = redis.cli(&["--scan"]);
    assert!(keys.lines().count() >= 2, "{keys}");
    assert!(keys.lines().all(|k| k.starts_with("t:")), "{keys}");
    // (the upstream database, whatever name clients use for it)
    let versions = format!("t:{{cachedb@127.0.0.1:{}}}:v", shared_postgres().port);
    assert!(keys.lines().any(|k| k == versions), "{keys}");
    assert!(keys.lines().any(|k| k.starts_with("t:c:")), "{keys}");
    let (_, body) = common::http_get(a.admin_port, "/metrics").unwrap();
    assert!(
        body.contains("pgsift_cache_healthy{backend=\"redis\"} 1"),
        "{body}"
    );

    // the stress test: writers on A, readers on both
    let (wa, rb) = (dsn(&a), dsn(&b));
    let s = stress(
        "counters_r",
        std::slice::from_ref(&wa),
        &[wa.clone(), rb],
        stress_seconds(),
        || {},
    )
    .await;
    assert!(s.writes > 100 && s.reads > 100, "{s:?}");
    assert!(
        metric(&b, "hit") > hits_b + 1.0,
        "B served reads from Redis"
    );
    assert_eq!((s.stale, s.errors), (0, 0), "stale reads, errors");
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_through_one_instance_makes_the_others_read_the_catalog_again() {
    let redis = common::Redis::start();
    let (a, b) = (redis_proxy(&redis), redis_proxy(&redis));
    let ca = client(&a).await;
    let cb = client(&b).await;
    ca.batch_execute(
        "CREATE OR REPLACE FUNCTION twice(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 * 2'",
    )
    .await
    .unwrap();
    let sql = "SELECT twice(v) FROM items WHERE id = 50";
    // B learns that twice() is immutable and serves the query from Redis
    let start = Instant::now();
    loop {
        let hits = metric(&b, "hit");
        one(&cb, sql).await;
        if metric(&b, "hit") > hits {
            break;
        }
        // generous: a debug build under a loaded CI machine can miss the
        // Redis deadline once and spend a repair cycle degraded
        if start.elapsed() > Duration::from_secs(20) {
            let (_, body) = common::http_get(b.admin_port, "/metrics").unwrap();
            let cache_lines: Vec<&str> = body
                .lines()
                .filter(|l| l.starts_with("pgsift_cache"))
                .collect();
            panic!(
                "never cached; B's cache metrics:\n{}",
                cache_lines.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A makes it volatile: B must stop caching it, not go on with what it
    // read from the catalog before
    ca.batch_execute(
        "CREATE OR REPLACE FUNCTION twice(int) RETURNS int VOLATILE LANGUAGE sql AS 'SELECT $1 * 2'",
    )
    .await
    .unwrap();
    let hits = metric(&b, "hit");
    for _ in 0..8 {
        one(&cb, sql).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&b, "hit"),
        hits,
        "a volatile function's result was served from the cache"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn another_instances_trigger_is_seen_by_a_write_before_any_read() {
    // A has read the catalog: posted has no trigger
    let (_redis, _a, b, ca, cb) = two_instances().await;
    // through B: a trigger makes every write to posted write post_log too
    cb.batch_execute(
        "CREATE FUNCTION log_post() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN INSERT INTO post_log VALUES (1); RETURN NEW; END'; \
         CREATE TRIGGER logged AFTER INSERT ON posted FOR EACH ROW EXECUTE FUNCTION log_post()",
    )
    .await
    .unwrap();
    let log = "SELECT count(*) FROM post_log";
    let start = Instant::now();
    loop {
        let hits = metric(&b, "hit");
        assert_eq!(one(&cb, log).await, "0");
        if metric(&b, "hit") > hits {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never cached on B"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A writes posted with no read before it: it classified the write
    // with the facts it read before the trigger existed
    ca.batch_execute("INSERT INTO posted VALUES (1)")
        .await
        .unwrap();
    assert_eq!(
        one(&cb, log).await,
        "1",
        "B served post_log as it was before A's acknowledged write"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_names_of_one_database_share_invalidations() {
    setup();
    let pg = shared_postgres();
    let proxy = Proxy::start_with(|port, admin| {
        format!(
            "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}, users: [blog]}}\nusers:\n  - {{name: blog, password: blogpw}}\ndatabases:\n  cachedb: {{host: 127.0.0.1, port: {0}, pool_mode: transaction, pool_size: 4}}\n  alias: {{host: 127.0.0.1, port: {0}, dbname: cachedb, pool_mode: transaction, pool_size: 4}}\ncache:\n  backend: memory\n  rules:\n    - tables: [aliased, shared_r]\n      ttl: 60s\n",
            pg.port
        )
    });
    let c = client(&proxy).await;
    let via_alias = connect(&proxy.conn_str("blog", "blogpw", "alias"))
        .await
        .unwrap();
    wait_for_facts(&via_alias, &proxy).await;
    let read = "SELECT v FROM aliased WHERE id = 1";
    assert_eq!(one(&via_alias, read).await, "0");
    let hits = metric(&proxy, "hit");
    assert_eq!(one(&via_alias, read).await, "0");
    assert!(metric(&proxy, "hit") > hits, "cached through the alias");
    c.batch_execute("UPDATE aliased SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        one(&via_alias, read).await,
        "1",
        "a write through one name left the other name's entry stale"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_cluster_shares_entries_and_invalidations_too() {
    let cluster = common::RedisCluster::start();
    let (a, b) = (
        redis_url_proxy(&cluster.url()),
        redis_url_proxy(&cluster.url()),
    );
    let ca = client(&a).await;
    let cb = client(&b).await;
    wait_for_facts(&ca, &a).await;
    wait_for_facts(&cb, &b).await;
    // several entries, so that they land on different nodes
    let sql = |id: i32| format!("SELECT v FROM items WHERE id = {}", 40 + id);
    for i in 0..6 {
        one(&ca, &sql(i)).await;
    }
    let hits = metric(&b, "hit");
    for i in 0..6 {
        one(&cb, &sql(i)).await;
    }
    assert_eq!(metric(&b, "hit"), hits + 6.0, "B is served what A stored");
    let before: i64 = one(&cb, &sql(0)).await.parse().unwrap();
    ca.batch_execute("UPDATE items SET v = v + 1 WHERE id = 40")
        .await
        .unwrap();
    assert_eq!(one(&cb, &sql(0)).await.parse::<i64>().unwrap(), before + 1);
    // pgsift's keys on every master: the entries are spread over the
    // masters; every other key is the one hash-tagged versions key of the
    // database (the upstream one, whatever name clients use for it), so
    // every counter of the database lives in one slot
    let keys: Vec<(u16, Vec<String>)> = cluster
        .ports
        .iter()
        .map(|p| {
            let keys = cluster.cli(*p, &["--scan"]);
            (*p, keys.lines().map(str::to_owned).collect())
        })
        .collect();
    let holding: Vec<usize> = keys
        .iter()
        .map(|(_, k)| k.iter().filter(|k| k.starts_with("t:c:")).count())
        .collect();
    assert!(
        holding.iter().filter(|n| **n > 0).count() >= 2,
        "entries on one node only: {keys:?}"
    );
    let others: Vec<(u16, &str)> = keys
        .iter()
        .flat_map(|(p, k)| k.iter().map(move |k| (*p, k.as_str())))
        .filter(|(_, k)| !k.starts_with("t:c:"))
        .collect();
    let versions = format!("t:{{cachedb@127.0.0.1:{}}}:v", shared_postgres().port);
    assert_eq!(
        others.iter().map(|(_, k)| *k).collect::<Vec<_>>(),
        [versions.as_str()],
        "one versions key for the database: {keys:?}"
    );
    // a hash of the epoch and the table versions, items' among them
    // (written above)
    let fields = cluster.cli(others[0].0, &["HKEYS", &versions]);
    let fields: Vec<&str> = fields.lines().collect();
    assert!(
        ["e", "t:items"].iter().all(|f| fields.contains(f)),
        "{versions}: {fields:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_and_restarted_under_load_costs_no_error_and_no_stale_read() {
    let redis = Arc::new(common::Redis::start());
    let (a, b) = (redis_proxy(&redis), redis_proxy(&redis));
    wait_for_facts(&client(&a).await, &a).await;
    wait_for_facts(&client(&b).await, &b).await;
    let (wa, rb) = (dsn(&a), dsn(&b));
    let r = redis.clone();
    let admin = a.admin_port;
    let s = stress(
        "counters_f",
        std::slice::from_ref(&wa),
        &[wa.clone(), rb],
        stress_seconds().max(6),
        move || {
            // warm, then Redis dies; writes go on while it is down; it comes
            // back with its old entries and counters (append-only file)
            std::thread::sleep(Duration::from_secs(2));
            r.kill();
            std::thread::sleep(Duration::from_millis(1500));
            let (_, body) = common::http_get(admin, "/metrics").unwrap();
            assert!(
                body.contains("pgsift_cache_healthy{backend=\"redis\"} 0"),
                "marked unhealthy while Redis is down"
            );
            r.restart();
        },
    )
    .await;
    assert!(s.writes > 100 && s.reads > 100, "{s:?}");
    assert_eq!((s.stale, s.errors), (0, 0), "stale reads, errors");
    let (_, body) = common::http_get(a.admin_port, "/metrics").unwrap();
    assert!(
        body.contains("pgsift_cache_healthy{backend=\"redis\"} 1"),
        "healthy again after the epoch bump"
    );
    let errors = metric(&a, "error") + metric(&b, "error");
    assert!(errors > 0.0, "lookups failed while Redis was down");
    // and it serves from Redis again
    let c = connect(&wa).await.unwrap();
    one(&c, "SELECT v FROM counters_f WHERE id = 1").await;
    let hits = metric(&a, "hit");
    one(&c, "SELECT v FROM counters_f WHERE id = 1").await;
    assert_eq!(metric(&a, "hit"), hits + 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_invalidation_stops_reads_until_the_epoch_is_bumped() {
    let redis = common::Redis::start();
    let a = redis_proxy(&redis);
    let c = client(&a).await;
    wait_for_facts(&c, &a).await;
    let sql = "SELECT v FROM flaky WHERE id = 42";
    assert_eq!(one(&c, sql).await, "1");
    let hits = metric(&a, "hit");
    assert_eq!(one(&c, sql).await, "1");
    assert_eq!(metric(&a, "hit"), hits + 1.0, "cached in Redis");
    // Redis hangs: the write is acknowledged once its invalidation timed out
    redis.signal("STOP");
    let t = Instant::now();
    c.batch_execute("UPDATE flaky SET v = 2 WHERE id = 42")
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Redis is back with the old entry and the old versions: pgsift must
    // not serve it, not even before its repair has run
    redis.signal("CONT");
    for _ in 0..20 {
        assert_eq!(one(&c, sql).await, "2", "stale entry served");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // after the repair the cache serves again, the new value
    let start = Instant::now();
    loop {
        let (_, body) = common::http_get(a.admin_port, "/metrics").unwrap();
        if body.contains("pgsift_cache_healthy{backend=\"redis\"} 1") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    one(&c, sql).await;
    let hits = metric(&a, "hit");
    assert_eq!(one(&c, sql).await, "2");
    assert_eq!(metric(&a, "hit"), hits + 1.0, "served from Redis again");
}

/// Waits (up to 20 s) until `proxy` reads from Redis again
/// (`pgsift_cache_healthy` 1).
fn until_healthy(proxy: &Proxy) {
    let start = Instant::now();
    loop {
        let (_, body) = common::http_get(proxy.admin_port, "/metrics").unwrap();
        if body.contains("pgsift_cache_healthy{backend=\"redis\"} 1") {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never healthy again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Redis over `maxmemory` with `noeviction` (Redis's default policy)
/// refuses every write that may grow memory and still answers reads.
fn fill_up(redis: &common::Redis) {
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
}

fn free_up(redis: &common::Redis) {
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_redis_fails_every_instances_lookups_not_only_the_writers_invalidation() {
    let (redis, a, b, ca, cb) = two_instances().await;
    let sql = "SELECT v FROM refused WHERE id = 1";
    assert_eq!(cached(&cb, &b, sql).await, "0");
    fill_up(&redis);
    // A's HINCRBY is refused (OOM): A acknowledges all the same
    ca.batch_execute("UPDATE refused SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    // B's GET and HMGET would still be answered, with the old versions
    for _ in 0..5 {
        assert_eq!(
            one(&cb, sql).await,
            "1",
            "B served the value from before A's acknowledged write"
        );
    }
    assert_eq!(one(&ca, sql).await, "1");
    // memory again: both serve from Redis again, the new value
    free_up(&redis);
    until_healthy(&a);
    until_healthy(&b);
    wait_for_facts(&cb, &b).await;
    assert_eq!(cached(&cb, &b, sql).await, "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_a_full_redis_refused_is_recorded_even_if_its_instance_dies_at_once() {
    let (redis, a, b, ca, cb) = two_instances().await;
    let sql = "SELECT v FROM refused WHERE id = 3";
    assert_eq!(cached(&cb, &b, sql).await, "0");
    fill_up(&redis);
    ca.batch_execute("UPDATE refused SET v = 1 WHERE id = 3")
        .await
        .unwrap();
    // A dies before any repair of its own; memory frees before B reads
    // anything: B never saw Redis refuse a write
    drop(ca);
    drop(a);
    free_up(&redis);
    assert_eq!(
        one(&cb, sql).await,
        "1",
        "B served the value from before A's acknowledged write"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_demoted_to_a_replica_fails_every_instances_lookups() {
    let (redis, _a, b, ca, cb) = two_instances().await;
    let sql = "SELECT v FROM refused WHERE id = 2";
    assert_eq!(cached(&cb, &b, sql).await, "0");
    // a failover that leaves redis_url on the old master: the other Redis
    // syncs from it and is promoted, the old master becomes its replica
    // (with the same entries and versions) and refuses writes (READONLY)
    let other = common::Redis::start();
    other.cli(&["CONFIG", "SET", "masterauth", &redis.password]);
    other.cli(&["REPLICAOF", "127.0.0.1", &redis.port.to_string()]);
    other.wait_for_master_link();
    other.cli(&["REPLICAOF", "NO", "ONE"]);
    redis.cli(&["CONFIG", "SET", "masterauth", &other.password]);
    redis.cli(&["REPLICAOF", "127.0.0.1", &other.port.to_string()]);
    redis.wait_for_master_link();
    ca.batch_execute("UPDATE refused SET v = 1 WHERE id = 2")
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(
            one(&cb, sql).await,
            "1",
            "B served the value from before A's acknowledged write"
        );
    }
    let (_, body) = common::http_get(b.admin_port, "/metrics").unwrap();
    assert!(
        body.contains("pgsift_cache_healthy{backend=\"redis\"} 0"),
        "B reads from a replica"
    );
}

/// Two instances on `redis`: A logs in as the ACL user `pgsift_a` (whose
/// writes a test can take away), B as the default user.
async fn instances_with_acl(
    redis: &common::Redis,
    a_top: &str,
) -> (Proxy, Proxy, tokio_postgres::Client, tokio_postgres::Client) {
    redis.cli(&[
        "ACL", "SETUSER", "pgsift_a", "on", ">apw", "~*", "&*", "+@all",
    ]);
    let a = redis_url_proxy_with(&acl_url(redis), a_top);
    let b = redis_proxy(redis);
    let (ca, cb) = (client(&a).await, client(&b).await);
    wait_for_facts(&ca, &a).await;
    wait_for_facts(&cb, &b).await;
    (a, b, ca, cb)
}

fn acl_url(redis: &common::Redis) -> String {
    format!("redis://pgsift_a:apw@127.0.0.1:{}/0", redis.port)
}

/// A's Redis user may write (`true`) or not.
fn a_may_write(redis: &common::Redis, yes: bool) {
    let rule = if yes { "+@all" } else { "-@write" };
    redis.cli(&["ACL", "SETUSER", "pgsift_a", rule]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_died_owing_a_repair_bumps_the_epochs_when_it_starts_again() {
    let redis = common::Redis::start();
    let (a, b, ca, cb) = instances_with_acl(&redis, "").await;
    let sql = "SELECT v FROM refused WHERE id = 4";
    assert_eq!(cached(&cb, &b, sql).await, "0");
    // A cannot record its invalidation (nor delete the versions), and is
    // killed before its repair could land
    a_may_write(&redis, false);
    ca.batch_execute("UPDATE refused SET v = 1 WHERE id = 4")
        .await
        .unwrap();
    drop(ca);
    drop(a);
    a_may_write(&redis, true);
    // the window README states: nothing told B yet
    let hits = metric(&b, "hit");
    assert_eq!(one(&cb, sql).await, "0");
    assert_eq!(metric(&b, "hit"), hits + 1.0);
    // A starts again: it bumps every configured database before serving
    let a = redis_url_proxy(&acl_url(&redis));
    until_healthy(&a);
    assert_eq!(
        one(&cb, sql).await,
        "1",
        "B served the value from before A's acknowledged write after A started again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_stopping_while_it_owes_a_repair_keeps_trying_until_shutdown_timeout() {
    let redis = common::Redis::start();
    let (mut a, b, ca, cb) = instances_with_acl(&redis, "shutdown_timeout: 60s\n").await;
    let sql = "SELECT v FROM refused WHERE id = 5";
    assert_eq!(cached(&cb, &b, sql).await, "0");
    a_may_write(&redis, false);
    ca.batch_execute("UPDATE refused SET v = 1 WHERE id = 5")
        .await
        .unwrap();
    drop(ca);
    a.signal("TERM");
    assert!(
        a.wait_exit(Duration::from_secs(2)).is_none(),
        "A exited owing a repair; log:\n{}",
        a.log()
    );
    a_may_write(&redis, true);
    assert!(
        a.wait_exit(Duration::from_secs(30)).is_some(),
        "A did not exit once its repair could land; log:\n{}",
        a.log()
    );
    assert_eq!(
        one(&cb, sql).await,
        "1",
        "B served the value from before A's acknowledged write"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restored_from_old_persistence_while_no_instance_ran_serves_nothing_from_before() {
    let redis = common::Redis::start();
    let sql = "SELECT v FROM refused WHERE id = 6";
    {
        let (a, b) = (redis_proxy(&redis), redis_proxy(&redis));
        let (ca, cb) = (client(&a).await, client(&b).await);
        wait_for_facts(&ca, &a).await;
        wait_for_facts(&cb, &b).await;
        assert_eq!(cached(&cb, &b, sql).await, "0");
        // the last state Redis persisted before a power loss: the write
        // after it is lost with the machine, pgsift instances included
        let old = redis.snapshot();
        ca.batch_execute("UPDATE refused SET v = 1 WHERE id = 6")
            .await
            .unwrap();
        assert_eq!(one(&cb, sql).await, "1");
        drop((ca, cb, a, b));
        redis.restart_from(&old);
    }
    let (a, b) = (redis_proxy(&redis), redis_proxy(&redis));
    let cb = client(&b).await;
    wait_for_facts(&client(&a).await, &a).await;
    wait_for_facts(&cb, &b).await;
    assert_eq!(
        one(&cb, sql).await,
        "1",
        "an entry from before the acknowledged write came back with Redis's old files"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flushed_redis_never_makes_old_catalog_facts_current_again() {
    // A has read the catalog: flushed_w has no trigger
    let (redis, _a, b, ca, cb) = two_instances().await;
    // through B: a trigger makes every write to flushed_w write flushed_log
    // too (the schema epoch moves)
    cb.batch_execute(
        "CREATE FUNCTION log_flushed() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN INSERT INTO flushed_log VALUES (1); RETURN NEW; END'; \
         CREATE TRIGGER logged AFTER INSERT ON flushed_w FOR EACH ROW EXECUTE FUNCTION log_flushed()",
    )
    .await
    .unwrap();
    // the versions hash is lost (FLUSHALL; an eviction does the same)
    redis.cli(&["FLUSHALL"]);
    let log = "SELECT count(*) FROM flushed_log";
    let start = Instant::now();
    loop {
        let hits = metric(&b, "hit");
        assert_eq!(one(&cb, log).await, "0");
        if metric(&b, "hit") > hits {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never cached on B"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A writes flushed_w with the facts it read before the trigger existed
    ca.batch_execute("INSERT INTO flushed_w VALUES (1)")
        .await
        .unwrap();
    assert_eq!(
        one(&cb, log).await,
        "1",
        "B served flushed_log as it was before A's acknowledged write"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_of_one_key_run_the_query_once() {
    let proxy = cache_proxy(false);
    let conn = dsn(&proxy);
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(connect(&conn).await.unwrap());
    }
    wait_for_facts(&clients[0], &proxy).await;
    // slow enough (a 1M-row join) that the six requests overlap
    let sql = "SELECT count(*) FROM items a, items b, items c WHERE a.id + b.id + c.id > 7";
    let (misses, hits) = (metric(&proxy, "miss"), metric(&proxy, "hit"));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(async move { one(&c, sql).await }))
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(metric(&proxy, "miss") - misses, 1.0, "one upstream query");
    assert_eq!(metric(&proxy, "hit") - hits, 5.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_reads_are_served_and_invalidated_too() {
    let proxy = cache_proxy(false);
    let c = client(&proxy).await;
    let other = client(&proxy).await;
    wait_for_facts(&c, &proxy).await;
    let stmt = c
        .prepare("SELECT v, owner FROM items WHERE id = $1")
        .await
        .unwrap();
    let read = |id: i32| {
        let (c, stmt) = (&c, &stmt);
        async move {
            let r = c.query_one(stmt, &[&id]).await.unwrap();
            (r.get::<_, i32>(0), r.get::<_, String>(1))
        }
    };
    let first = read(20).await;
    let hits = metric(&proxy, "hit");
    assert_eq!(read(20).await, first);
    assert_eq!(read(20).await, first);
    assert_eq!(
        metric(&proxy, "hit"),
        hits + 2.0,
        "binary-format extended reads are cached"
    );
    // different parameter values are different keys
    assert_ne!(read(21).await.1, first.1);
    // a write by another client through pgsift invalidates
    other
        .execute("UPDATE items SET v = v + 100 WHERE id = 20", &[])
        .await
        .unwrap();
    assert_eq!(read(20).await.0, first.0 + 100);
    // and one-shot statements too: unnamed Parse, Bind, Describe portal,
    // Execute, Sync, what libpq's PQexecParams sends (tokio-postgres's
    // query_typed describes the statement instead: not cached, as README
    // says)
    use common::raw;
    use tokio::io::AsyncWriteExt;
    let q = "SELECT v FROM items WHERE id = 22";
    let mut parse = vec![0];
    parse.extend_from_slice(q.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut one_shot = raw::message(b'P', &parse);
    one_shot.extend(raw::message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    one_shot.extend(raw::message(b'D', b"P\0"));
    one_shot.extend(raw::message(b'E', &[0, 0, 0, 0, 0]));
    one_shot.extend(raw::message(b'S', b""));
    let mut s = raw::raw_login_as(proxy.port, "blog", "blogpw", "cachedb").await;
    let mut read_one_shot = async || {
        s.write_all(&one_shot).await.unwrap();
        let reply = raw::read_until(&mut s, b'Z').await;
        let v = raw::first_value(&reply).unwrap_or_else(|| panic!("{reply:?}"));
        v.parse::<i64>().unwrap()
    };
    let a = read_one_shot().await;
    let hits = metric(&proxy, "hit");
    assert_eq!(read_one_shot().await, a);
    assert_eq!(
        metric(&proxy, "hit"),
        hits + 1.0,
        "a one-shot read is cached"
    );
    other
        .execute("UPDATE items SET v = v + 1 WHERE id = 22", &[])
        .await
        .unwrap();
    assert_eq!(
        read_one_shot().await,
        a + 1,
        "a one-shot read is invalidated"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_sent_before_the_previous_reply_arrived_invalidates_too() {
    let proxy = cache_proxy(false);
    let c = client(&proxy).await;
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    let read = "SELECT v FROM items WHERE id = 36";
    let first = one(&other, read).await;
    assert_eq!(one(&other, read).await, first, "stored, then a hit");
    let hits = metric(&proxy, "hit");
    for v in 1..=4 {
        // polled together, tokio-postgres pipelines the two requests: the
        // UPDATE is on its way before the SELECT's ReadyForQuery is back
        let update = format!("UPDATE items SET v = {v} WHERE id = 36");
        if v % 2 == 1 {
            let (r, w) = tokio::join!(c.simple_query("SELECT 1"), c.simple_query(&update));
            r.unwrap();
            w.unwrap();
        } else {
            let (r, w) = tokio::join!(c.query("SELECT 1", &[]), c.execute(&update, &[]));
            r.unwrap();
            w.unwrap();
        }
        assert_eq!(
            one(&other, read).await,
            v.to_string(),
            "a stale read after the acknowledged UPDATE"
        );
        assert_eq!(one(&other, read).await, v.to_string());
    }
    assert!(
        metric(&proxy, "hit") > hits,
        "the read is served from the cache"
    );
}

/// Sends `sql` through a client of `proxy` and closes the client's socket
/// 100 ms later, before the reply (no Terminate).
async fn send_and_vanish(proxy: &Proxy, setup: &str, sql: &str) {
    let (c, conn) = tokio_postgres::connect(&dsn(proxy), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    if !setup.is_empty() {
        c.batch_execute(setup).await.unwrap();
    }
    let sent = sql.to_owned();
    let query = tokio::spawn(async move {
        let _ = c.batch_execute(&sent).await;
    });
    // vanish once the server runs it (a fixed pause could end before the
    // statement left the client on a busy machine: then nothing commits)
    let running = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{}'",
        sql.replace('\'', "''")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while shared_postgres().psql("postgres", &running) == "0" {
        assert!(Instant::now() < deadline, "{sql} never reached the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn.abort();
    let _ = query.await;
}

/// Waits (up to `limit`) until `read` through `c` gives `want`.
async fn until_read(c: &tokio_postgres::Client, read: &str, want: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let got = one(c, read).await;
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_that_commits_after_its_client_left_is_invalidated_after_the_commit() {
    let proxy = cache_proxy(false);
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    let pg = shared_postgres();
    // a COMMIT sent, then the client is gone (the commit takes 1.5 s); and
    // an autocommit UPDATE, whose commit takes as long, sent likewise
    let cases = [
        ("BEGIN; UPDATE doubt SET v = 1 WHERE id = 1", "COMMIT", 1),
        ("", "UPDATE doubt SET v = 1 WHERE id = 2", 2),
    ];
    for (setup, sql, id) in cases {
        let read = format!("SELECT v FROM doubt WHERE id = {id}");
        assert_eq!(cached(&other, &proxy, &read).await, "0");
        send_and_vanish(&proxy, setup, sql).await;
        // read while the commit is under way: the session has ended and
        // recorded the write's invalidation, so the read misses, and the
        // old value is stored again (the next read is a hit)
        tokio::time::sleep(Duration::from_millis(200)).await;
        let misses = metric(&proxy, "miss");
        assert_eq!(one(&other, &read).await, "0", "{sql}: not committed yet");
        assert_eq!(
            metric(&proxy, "miss"),
            misses + 1.0,
            "{sql}: the entry read before the write was not invalidated when its client left"
        );
        let hits = metric(&proxy, "hit");
        assert_eq!(one(&other, &read).await, "0", "{sql}: not committed yet");
        assert_eq!(
            metric(&proxy, "hit"),
            hits + 1.0,
            "{sql}: the old value, stored"
        );
        let direct = format!("SELECT v FROM doubt WHERE id = {id}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while pg.psql("cachedb", &direct) != "1" {
            assert!(Instant::now() < deadline, "{sql} never committed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // the entry stored before the commit must not outlive it (its TTL
        // is 60 s): pgsift records the invalidation again once the
        // server has ended
        assert_eq!(
            until_read(&other, &read, "1", Duration::from_secs(3)).await,
            "1",
            "{sql}: a stale read after the commit"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_departed_clients_write_that_commits_after_pgsift_stopped_waiting_is_invalidated_then() {
    let proxy = cache_proxy(false);
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    let pg = shared_postgres();
    let read = "SELECT v FROM doubt_long WHERE id = 1";
    assert_eq!(cached(&other, &proxy, read).await, "0");
    // the commit takes 6 s; the session waits 5 s for it, records the
    // invalidation again and ends
    send_and_vanish(&proxy, "", "UPDATE doubt_long SET v = 1 WHERE id = 1").await;
    // reads all along: those after the session's last record and before
    // the commit store the old value again
    let deadline = Instant::now() + Duration::from_secs(15);
    while pg.psql("cachedb", read) != "1" {
        assert!(Instant::now() < deadline, "the update never committed");
        let _ = one(&other, read).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the entry stored before the commit must not outlive it (TTL 60 s)
    assert_eq!(
        until_read(&other, read, "1", Duration::from_secs(3)).await,
        "1",
        "a stale read after a commit pgsift had stopped waiting for"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_departed_clients_multiplexed_write_that_commits_late_is_invalidated_then() {
    let proxy = cache_proxy_full(false, "backend: memory", "pool:\n  multiplex_servers: 2\n");
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    let pg = shared_postgres();
    let read = "SELECT v FROM doubt_long WHERE id = 2";
    assert_eq!(cached(&other, &proxy, read).await, "0");
    // a prepared autocommit UPDATE (Bind, Execute, Sync: a multiplexed
    // batch) whose commit takes 6 s, and then the client is gone
    let (c, conn) = tokio_postgres::connect(&dsn(&proxy), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let update = "UPDATE doubt_long SET v = $1 WHERE id = 2";
    let stmt = c.prepare(update).await.unwrap();
    // the client's prepared statements run multiplexed
    let probe = c.prepare("SELECT $1::int").await.unwrap();
    let before = multiplexed(&proxy);
    c.query_one(&probe, &[&7i32]).await.unwrap();
    assert!(multiplexed(&proxy) > before, "not multiplexed");
    let query = tokio::spawn(async move {
        let _ = c.execute(&stmt, &[&1i32]).await;
    });
    let running = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{update}'"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while pg.psql("postgres", &running) == "0" {
        assert!(
            Instant::now() < deadline,
            "the update never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn.abort();
    let _ = query.await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while pg.psql("cachedb", read) != "1" {
        assert!(Instant::now() < deadline, "the update never committed");
        let _ = one(&other, read).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        until_read(&other, read, "1", Duration::from_secs(3)).await,
        "1",
        "a stale read after a multiplexed commit pgsift had stopped waiting for"
    );
}

/// All transactions run on multiplexed servers so far.
fn multiplexed(proxy: &Proxy) -> f64 {
    let (_, body) = common::http_get(proxy.admin_port, "/metrics").unwrap();
    body.lines()
        .filter(|l| l.starts_with("pgsift_multiplexed_transactions_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A Parse of `sql` as statement `name` with parameter types `types`.
fn parse_typed(name: &str, sql: &[u8], types: &[u32]) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(sql);
    body.push(0);
    body.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for t in types {
        body.extend_from_slice(&t.to_be_bytes());
    }
    common::raw::message(b'P', &body)
}

/// The first column of the first DataRow in `msgs`, as bytes.
fn first_value(msgs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let (_, row) = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
    let len = i32::from_be_bytes(row[2..6].try_into().unwrap()) as usize;
    row[6..6 + len].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_bound_again_is_keyed_by_the_parameter_types_it_was_prepared_with() {
    use common::raw;
    use tokio::io::AsyncWriteExt;
    let proxy = cache_proxy(false);
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    let sql = b"SELECT $1 / 2 AS half FROM items WHERE id = 60";
    // the same text and the same text parameter, prepared as int4 by one
    // client and as numeric by another: 1 / 2 is 0 for one, 0.5 for the
    // other
    let mut answers = Vec::new();
    let hits = metric(&proxy, "hit");
    for oid in [23, 1700] {
        let mut s = raw::raw_login_as(proxy.port, "blog", "blogpw", "cachedb").await;
        let mut b = parse_typed("half", sql, &[oid]);
        b.extend(raw::sync());
        s.write_all(&b).await.unwrap();
        raw::read_ready(&mut s, 1).await;
        let mut values = Vec::new();
        for _ in 0..3 {
            let mut b = raw::bind("half", &["1"]);
            b.extend(raw::execute());
            b.extend(raw::sync());
            s.write_all(&b).await.unwrap();
            let got = raw::read_ready(&mut s, 1).await;
            assert!(raw::errors(&got).is_empty(), "{got:?}");
            values.push(String::from_utf8(first_value(&got)).unwrap());
        }
        answers.push(values);
    }
    assert_eq!(answers[0], ["0", "0", "0"]);
    for v in &answers[1] {
        assert!(
            v.starts_with("0.5"),
            "numeric 1 / 2 answered {v}: another statement's entry"
        );
    }
    // each client's second and third executions were served from the cache
    assert_eq!(metric(&proxy, "hit"), hits + 4.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_parse_of_a_name_in_use_does_not_change_what_its_bind_is_keyed_by() {
    use common::raw;
    use tokio::io::AsyncWriteExt;
    let proxy = cache_proxy(false);
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    let (first, second) = (
        b"SELECT id FROM items WHERE id = 60".as_slice(),
        b"SELECT id FROM items WHERE id = 61".as_slice(),
    );
    // another client has the second text's result cached, bound alone
    let mut y = raw::raw_login_as(proxy.port, "blog", "blogpw", "cachedb").await;
    let mut b = parse_typed("t", second, &[]);
    b.extend(raw::sync());
    y.write_all(&b).await.unwrap();
    raw::read_ready(&mut y, 1).await;
    for _ in 0..2 {
        let mut b = raw::bind("t", &[]);
        b.extend(raw::execute());
        b.extend(raw::sync());
        y.write_all(&b).await.unwrap();
        assert_eq!(first_value(&raw::read_ready(&mut y, 1).await), b"61");
    }
    // this client prepares the first text, then the second under the same
    // name: refused (42P05), the name keeps the first
    let mut x = raw::raw_login_as(proxy.port, "blog", "blogpw", "cachedb").await;
    let mut b = parse_typed("t", first, &[]);
    b.extend(raw::bind("t", &[]));
    b.extend(raw::execute());
    b.extend(raw::sync());
    x.write_all(&b).await.unwrap();
    assert_eq!(first_value(&raw::read_ready(&mut x, 1).await), b"60");
    let mut b = parse_typed("t", second, &[]);
    b.extend(raw::sync());
    x.write_all(&b).await.unwrap();
    let got = raw::read_ready(&mut x, 1).await;
    assert_eq!(raw::errors(&got), ["42P05"]);
    for _ in 0..2 {
        let mut b = raw::bind("t", &[]);
        b.extend(raw::execute());
        b.extend(raw::sync());
        x.write_all(&b).await.unwrap();
        assert_eq!(
            first_value(&raw::read_ready(&mut x, 1).await),
            b"60",
            "the refused text's entry"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeatable_read_transaction_begun_in_a_pipeline_stays_out_of_the_cache() {
    use common::raw;
    use tokio::io::AsyncWriteExt;
    let proxy = cache_proxy(false);
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    let read = "SELECT v FROM rr_pipe WHERE id = 1";
    let mut s = raw::raw_login_as(proxy.port, "blog", "blogpw", "cachedb").await;
    // an autocommit statement and the BEGIN in one write: the first one's
    // transaction ends after the BEGIN was sent
    let mut b = raw::query("SELECT 1");
    b.extend(raw::query("BEGIN ISOLATION LEVEL REPEATABLE READ"));
    s.write_all(&b).await.unwrap();
    raw::read_ready(&mut s, 2).await;
    s.write_all(&raw::query(read)).await.unwrap();
    assert_eq!(first_value(&raw::read_ready(&mut s, 1).await), b"0");
    // a write acknowledged, then a read in the old snapshot
    other
        .batch_execute("UPDATE rr_pipe SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    s.write_all(&raw::query(read)).await.unwrap();
    assert_eq!(first_value(&raw::read_ready(&mut s, 1).await), b"0");
    eprintln!(
        "DBG miss {} bypass {} hit {}",
        metric(&proxy, "miss"),
        metric(&proxy, "bypass"),
        metric(&proxy, "hit")
    );
    // a client with the same settings (none at startup) reads it
    let mut third = raw::raw_login_as(proxy.port, "blog", "blogpw", "cachedb").await;
    third.write_all(&raw::query(read)).await.unwrap();
    assert_eq!(
        first_value(&raw::read_ready(&mut third, 1).await),
        b"1",
        "the old snapshot's read was stored"
    );
    s.write_all(&raw::query("COMMIT")).await.unwrap();
    raw::read_ready(&mut s, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn texts_that_differ_outside_utf8_are_different_statements() {
    use common::raw;
    use tokio::io::AsyncWriteExt;
    let proxy = cache_proxy(false);
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    // LATIN1 texts whose literals differ only in a non-UTF-8 byte
    for (letter, twice) in [(0xe9u8, true), (0xe8, false)] {
        let mut s = raw::raw_login_as(proxy.port, "blog", "blogpw", "cachedb").await;
        s.write_all(&raw::query("SET client_encoding TO 'LATIN1'"))
            .await
            .unwrap();
        raw::read_ready(&mut s, 1).await;
        let mut sql = b"SELECT 'caf".to_vec();
        sql.push(letter);
        sql.extend_from_slice(b"' AS w FROM items WHERE id = 60");
        for _ in 0..if twice { 2 } else { 1 } {
            let mut b = parse_typed("", &sql, &[]);
            b.extend(raw::bind("", &[]));
            b.extend(raw::execute());
            b.extend(raw::sync());
            s.write_all(&b).await.unwrap();
            let got = raw::read_ready(&mut s, 1).await;
            assert!(raw::errors(&got).is_empty(), "{got:?}");
            assert_eq!(
                first_value(&got),
                [b'c', b'a', b'f', letter],
                "another text's entry"
            );
        }
    }
}

/// Writes committed by a COMMIT that does not end the session's
/// transaction: COMMIT AND CHAIN, and a COMMIT followed by BEGIN in one
/// Query. Rows `first` and `first + 1` of `chained`.
async fn commits_inside_a_session_transaction(proxy: &Proxy, first: i32) {
    let c = client(proxy).await;
    let other = client(proxy).await;
    wait_for_facts(&other, proxy).await;
    let reads = [first, first + 1].map(|id| format!("SELECT v FROM chained WHERE id = {id}"));
    for read in &reads {
        assert_eq!(cached(&other, proxy, read).await, "0");
    }
    c.batch_execute(&format!(
        "BEGIN; UPDATE chained SET v = 1 WHERE id = {first}; COMMIT AND CHAIN"
    ))
    .await
    .unwrap();
    assert_eq!(one(&other, &reads[0]).await, "1", "after COMMIT AND CHAIN");
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!(
        "UPDATE chained SET v = 1 WHERE id = {}; COMMIT; BEGIN",
        first + 1
    ))
    .await
    .unwrap();
    assert_eq!(one(&other, &reads[1]).await, "1", "after COMMIT; BEGIN");
    c.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_leaves_the_session_in_a_transaction_invalidates_what_it_committed() {
    commits_inside_a_session_transaction(&cache_proxy(false), 1).await;
    let redis = common::Redis::start();
    commits_inside_a_session_transaction(&redis_proxy(&redis), 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_prepared_invalidates_the_prepared_transactions_writes() {
    let proxy = cache_proxy(false);
    let c = client(&proxy).await;
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    let read = "SELECT v FROM twophase WHERE id = 1";
    assert_eq!(cached(&other, &proxy, read).await, "0");
    c.batch_execute(
        "BEGIN; UPDATE twophase SET v = 1 WHERE id = 1; PREPARE TRANSACTION 'pgsift_2pc'",
    )
    .await
    .unwrap();
    // not committed yet: this read stores the old value again
    assert_eq!(cached(&other, &proxy, read).await, "0");
    // committed from another session, which never saw the write
    let third = client(&proxy).await;
    third
        .batch_execute("COMMIT PREPARED 'pgsift_2pc'")
        .await
        .unwrap();
    assert_eq!(
        one(&other, read).await,
        "1",
        "a stale read after COMMIT PREPARED"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_setting_changed_inside_a_transaction_keys_that_transactions_reads() {
    let proxy = cache_proxy(false);
    let c = client(&proxy).await;
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    let (stored, fresh) = (
        "SELECT v FROM items WHERE id = 60",
        "SELECT v FROM items WHERE id = 61",
    );
    assert_eq!(cached(&other, &proxy, stored).await, "0");
    // the server runs the transaction's reads with the new search_path at
    // once; the client's settings change only when the transaction ends
    c.batch_execute("BEGIN; SET search_path = tenant2, public")
        .await
        .unwrap();
    assert_eq!(one(&c, stored).await, "77", "another search_path's entry");
    assert_eq!(one(&c, fresh).await, "77");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        one(&other, fresh).await,
        "0",
        "tenant2's row stored under the default search_path"
    );
    // after the COMMIT the setting is the client's own, and keys its reads
    assert_eq!(cached(&c, &proxy, stored).await, "77");
    let hits = metric(&proxy, "hit");
    assert_eq!(one(&other, stored).await, "0");
    assert_eq!(
        metric(&proxy, "hit"),
        hits + 1.0,
        "other's entry is still there"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeatable_read_transaction_is_never_cached_however_it_is_spelled() {
    let proxy = cache_proxy(false);
    let (a, b, c) = (
        client(&proxy).await,
        client(&proxy).await,
        client(&proxy).await,
    );
    wait_for_facts(&c, &proxy).await;
    let begins = [
        "BEGIN ISOLATION LEVEL REPEATABLE  READ",
        "BEGIN ISOLATION LEVEL\n  REPEATABLE /* snapshot */ READ",
        "START TRANSACTION ISOLATION LEVEL serializable",
    ];
    for (v, begin) in begins.into_iter().enumerate() {
        let read = "SELECT v FROM items WHERE id = 62";
        let before = v.to_string();
        // outside A's transaction the read is cached (B's write drops it)
        assert_eq!(cached(&c, &proxy, read).await, before);
        // A's snapshot is taken before B's write is acknowledged
        a.batch_execute(begin).await.unwrap();
        assert_eq!(one(&a, "SELECT 1").await, "1");
        b.simple_query(&format!("UPDATE items SET v = {} WHERE id = 62", v + 1))
            .await
            .unwrap();
        let (misses, bypasses) = (metric(&proxy, "miss"), metric(&proxy, "bypass"));
        assert_eq!(one(&a, read).await, before, "{begin}: A reads its snapshot");
        assert_eq!(
            (metric(&proxy, "miss"), metric(&proxy, "bypass")),
            (misses, bypasses + 1.0),
            "{begin}: A's read is a bypass, not a miss to store"
        );
        a.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            one(&c, read).await,
            (v + 1).to_string(),
            "{begin}: A's snapshot was served to C"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn views_and_partitions_are_never_read_stale() {
    let proxy = cache_proxy(false);
    let c = client(&proxy).await;
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    // a view reads the table a write names
    let view = "SELECT v FROM base_v WHERE id = 1";
    assert_eq!(one(&other, view).await, "0");
    assert_eq!(one(&other, view).await, "0");
    c.simple_query("UPDATE base_t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(one(&other, view).await, "1", "a stale read of a view");
    // a partitioned table and its partition are written through each other
    let parent = "SELECT v FROM events WHERE id = 5";
    let partition = "SELECT v FROM events_1 WHERE id = 5";
    for sql in [parent, partition, parent, partition] {
        assert_eq!(one(&other, sql).await, "0");
    }
    c.simple_query("UPDATE events_1 SET v = 1 WHERE id = 5")
        .await
        .unwrap();
    assert_eq!(one(&other, parent).await, "1", "a stale read of the parent");
    c.simple_query("UPDATE events SET v = 2 WHERE id = 5")
        .await
        .unwrap();
    assert_eq!(
        one(&other, partition).await,
        "2",
        "a stale read of a partition"
    );
    // the table behind the view is still cached
    let table = "SELECT v FROM base_t WHERE id = 1";
    one(&other, table).await;
    let hits = metric(&proxy, "hit");
    assert_eq!(one(&other, table).await, "1");
    assert_eq!(metric(&proxy, "hit"), hits + 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_whose_transactions_default_to_repeatable_read_is_not_cached() {
    setup();
    let pg = shared_postgres();
    pg.psql("postgres", "CREATE DATABASE isodb OWNER blog");
    // and its control: the same table in a database with the default
    pg.psql("postgres", "CREATE DATABASE rcdb OWNER blog");
    for db in ["isodb", "rcdb"] {
        pg.psql(
            db,
            "SET ROLE blog; CREATE TABLE t (id int, v int); INSERT INTO t VALUES (1, 0)",
        );
    }
    pg.psql(
        "postgres",
        "ALTER DATABASE isodb SET default_transaction_isolation = 'repeatable read'",
    );
    // Postgres logs the statements run on isodb: pgsift's catalog query too
    pg.psql("postgres", "ALTER DATABASE isodb SET log_statement = 'all'");
    let proxy = Proxy::start_with(|port, admin| {
        format!(
            "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}, users: [blog]}}\nusers:\n  - {{name: blog, password: blogpw}}\ndatabases:\n  isodb: {{host: 127.0.0.1, port: {0}, pool_mode: transaction, pool_size: 4}}\n  rcdb: {{host: 127.0.0.1, port: {0}, pool_mode: transaction, pool_size: 4}}\ncache:\n  backend: memory\n  rules:\n    - tables: [t]\n      ttl: 60s\n",
            pg.port
        )
    });
    let read = "SELECT v FROM t WHERE id = 1";
    // the control: the rule covers t, and a read of it is cached in rcdb
    let rc = connect(&proxy.conn_str("blog", "blogpw", "rcdb"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hits = metric_of(&proxy, "rcdb", "hit");
        assert_eq!(one(&rc, read).await, "0");
        if metric_of(&proxy, "rcdb", "hit") == hits + 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "a read in rcdb is never cached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dsn = proxy.conn_str("blog", "blogpw", "isodb");
    let (a, b, c) = (
        connect(&dsn).await.unwrap(),
        connect(&dsn).await.unwrap(),
        connect(&dsn).await.unwrap(),
    );
    // the first read has pgsift read isodb's catalog facts (the query
    // shows in Postgres's log); with them, reads of isodb stay bypasses
    let deadline = Instant::now() + Duration::from_secs(10);
    one(&c, read).await;
    while !pg.log().contains("FROM pg_catalog.pg_db_role_setting") {
        assert!(
            Instant::now() < deadline,
            "pgsift never read isodb's catalog facts"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (the facts are stored once their reply has reached pgsift)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bypasses = metric_of(&proxy, "isodb", "bypass");
    for _ in 0..3 {
        assert_eq!(one(&c, read).await, "0");
    }
    assert_eq!(
        metric_of(&proxy, "isodb", "bypass"),
        bypasses + 3.0,
        "reads of isodb are bypasses"
    );
    // A's snapshot is taken before B's write is acknowledged
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(one(&a, "SELECT count(*) FROM t").await, "1");
    b.simple_query("UPDATE t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(one(&a, read).await, "0", "A reads its snapshot");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(one(&c, read).await, "1", "A's snapshot was served to C");
    assert_eq!(metric_of(&proxy, "isodb", "hit"), 0.0);
    assert_eq!(metric_of(&proxy, "isodb", "miss"), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_executes_are_never_cached_and_their_writes_invalidate() {
    let proxy = cache_proxy(false);
    let mut c = client(&proxy).await;
    let other = client(&proxy).await;
    wait_for_facts(&c, &proxy).await;
    // a SELECT read 10 rows at a time (Execute with max rows, PortalSuspended)
    let sql = "SELECT id FROM items WHERE id <= 25 ORDER BY id";
    let (hits, misses) = (metric(&proxy, "hit"), metric(&proxy, "miss"));
    for _ in 0..2 {
        let t = c.transaction().await.unwrap();
        let stmt = t.prepare(sql).await.unwrap();
        let portal = t.bind(&stmt, &[]).await.unwrap();
        let mut ids = Vec::new();
        loop {
            let rows = t.query_portal(&portal, 10).await.unwrap();
            if rows.is_empty() {
                break;
            }
            assert!(rows.len() <= 10, "a partial result stays partial");
            ids.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
        }
        assert_eq!(ids, (1..=25).collect::<Vec<_>>());
        t.commit().await.unwrap();
    }
    assert_eq!(metric(&proxy, "hit"), hits, "nothing served from the cache");
    assert_eq!(metric(&proxy, "miss"), misses, "nothing stored either");
    // the control: the same statement executed whole is a miss, stored
    let stmt = c.prepare(sql).await.unwrap();
    for (n, (hits, misses)) in [(hits, misses + 1.0), (hits + 1.0, misses + 1.0)]
        .into_iter()
        .enumerate()
    {
        let ids: Vec<i32> = c
            .query(&stmt, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, (1..=25).collect::<Vec<_>>());
        assert_eq!(
            (metric(&proxy, "hit"), metric(&proxy, "miss")),
            (hits, misses),
            "the whole execution {n}: a miss, then a hit"
        );
    }

    // DML executed with max rows invalidates like any other write
    let read = "SELECT v FROM items WHERE id = 30";
    let before: i64 = cached(&other, &proxy, read).await.parse().unwrap();
    let t = c.transaction().await.unwrap();
    let stmt = t
        .prepare("UPDATE items SET v = v + 1 WHERE id = 30 RETURNING v")
        .await
        .unwrap();
    let portal = t.bind(&stmt, &[]).await.unwrap();
    let rows = t.query_portal(&portal, 1).await.unwrap();
    assert_eq!(rows.len(), 1);
    t.commit().await.unwrap();
    assert_eq!(
        one(&other, read).await.parse::<i64>().unwrap(),
        before + 1,
        "the write through a partial Execute invalidated the cached read"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cascading_foreign_keys_and_triggers_invalidate_the_tables_they_reach() {
    let proxy = cache_proxy(false);
    let c = client(&proxy).await;
    wait_for_facts(&c, &proxy).await;
    let kids = "SELECT count(*) FROM kids";
    assert_eq!(cached(&c, &proxy, kids).await, "3");
    c.batch_execute("DELETE FROM parents WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(one(&c, kids).await, "1", "the cascade deleted two kids");
    let log = "SELECT count(*) FROM audit_log";
    let before: i64 = cached(&c, &proxy, log).await.parse().unwrap();
    c.batch_execute("UPDATE audited SET v = v + 1")
        .await
        .unwrap();
    assert_eq!(
        one(&c, log).await,
        (before + 1).to_string(),
        "the trigger wrote audit_log"
    );
}

/// A proxy whose `cachedb` runs in transaction mode, with two more names
/// for that database (sharing its cache entries): `sess` in session mode,
/// and `single`, in transaction mode on one server (whatever a client
/// leaves on it, the next one finds).
fn modes_proxy() -> Proxy {
    setup();
    let pg = shared_postgres();
    Proxy::start_with(|port, admin| {
        format!(
            "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}, users: [blog]}}\nusers:\n  - {{name: blog, password: blogpw}}\ndatabases:\n  cachedb: {{host: 127.0.0.1, port: {0}, pool_mode: transaction, pool_size: 4}}\n  sess: {{host: 127.0.0.1, port: {0}, dbname: cachedb, pool_mode: session, pool_size: 8}}\n  single: {{host: 127.0.0.1, port: {0}, dbname: cachedb, pool_mode: transaction, pool_size: 1}}\ncache:\n  backend: memory\n  rules:\n    - tables: [items, privy, shared_r, shadowed, strings_t]\n      ttl: 60s\n",
            pg.port
        )
    })
}

/// A client of `proxy` as `blog` on the database entry `db`.
async fn client_of(proxy: &Proxy, db: &str) -> tokio_postgres::Client {
    connect(&proxy.conn_str("blog", "blogpw", db))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn temporary_tables_made_in_any_spelling_never_share_results() {
    let proxy = modes_proxy();
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    // each makes a temporary `shadowed` holding the row 'temporary': the
    // session that made it reads that one, every other the permanent one
    let fill = "INSERT INTO shadowed VALUES (1, 'temporary')";
    let spellings = [
        format!("CREATE TABLE pg_temp.shadowed (id int, v text); {fill}"),
        format!("CREATE LOCAL TEMP TABLE shadowed (id int, v text); {fill}"),
        format!("/* scratch */ CREATE TEMP TABLE shadowed (id int, v text); {fill}"),
        "SELECT 1 AS id, 'temporary'::text AS v INTO TEMP shadowed".to_string(),
        format!("DO $$BEGIN CREATE TEMP TABLE shadowed (id int, v text); {fill}; END$$"),
    ];
    // session mode: the session keeps its table; its reads stay out of
    // the cache both ways
    for (i, make) in spellings.iter().enumerate() {
        let read = format!("SELECT v FROM shadowed WHERE id = 1 AND {i} = {i}");
        let a = client_of(&proxy, "sess").await;
        a.batch_execute(make).await.unwrap();
        // (after DDL pgsift reads its catalog facts again)
        wait_for_facts(&other, &proxy).await;
        let hits = metric(&proxy, "hit");
        assert_eq!(one(&a, &read).await, "temporary", "{make}");
        assert_eq!(one(&a, &read).await, "temporary", "{make}");
        assert_eq!(
            metric(&proxy, "hit"),
            hits,
            "{make}: A's read of its temporary table was answered from the cache"
        );
        assert_eq!(
            cached(&other, &proxy, &read).await,
            "permanent",
            "{make}: A's temporary row was served to another client"
        );
        assert_eq!(
            one(&a, &read).await,
            "temporary",
            "{make}: another client's row was served to A"
        );
    }
    // transaction mode: the server is reset before the next client gets
    // it (else that client reads the table from Postgres, and the cache
    // stores it for everyone)
    for (i, make) in spellings.iter().enumerate() {
        let read = format!("SELECT v FROM shadowed WHERE id = 1 AND {i} = {i} AND 1 = 1");
        let a = client_of(&proxy, "single").await;
        a.batch_execute(&format!("BEGIN; {make}; COMMIT"))
            .await
            .unwrap();
        let b = client_of(&proxy, "single").await;
        assert_eq!(
            one(&b, &read).await,
            "permanent",
            "{make}: the next client of A's server found A's temporary table"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_changed_behind_a_comment_are_followed_as_plain_ones() {
    let proxy = modes_proxy();
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    // search_path: tenant2 has items of its own
    let sets = [
        "/* tenant */ SET search_path TO tenant2, public",
        "-- tenant\nSET search_path TO tenant2, public",
        "-- a line a carriage return ends\rSET search_path TO tenant2, public",
        "SET /* tenant */ search_path TO tenant2, public -- why",
    ];
    for (i, set) in sets.iter().enumerate() {
        let read = format!("SELECT v FROM items WHERE id = 61 AND {i} = {i}");
        assert_eq!(cached(&other, &proxy, &read).await, "0");
        let c = client(&proxy).await;
        c.batch_execute(set).await.unwrap();
        assert_eq!(
            one(&c, &read).await,
            "77",
            "{set:?}: the entry of another search_path"
        );
        // its own search_path keys its entries
        assert_eq!(cached(&c, &proxy, &read).await, "77");
        assert_eq!(
            cached(&other, &proxy, &read).await,
            "0",
            "{set:?}: tenant2's row stored under the default search_path"
        );
    }
    // in transaction mode, the next client of the server does not inherit it
    let probe = "SELECT current_setting('search_path')";
    let b = client_of(&proxy, "single").await;
    let plain = one(&b, probe).await;
    let a = client_of(&proxy, "single").await;
    a.batch_execute("/* tenant */ SET search_path TO tenant2, public")
        .await
        .unwrap();
    assert_eq!(one(&b, probe).await, plain, "A's SET leaked to B");
    assert_eq!(one(&a, probe).await, "tenant2, public", "A keeps its own");
    // a role: reader may read privy's ids only
    let read = "SELECT v FROM privy WHERE id = 1 AND 1 = 1";
    assert_eq!(cached(&other, &proxy, read).await, "0");
    let c = client(&proxy).await;
    c.batch_execute("/* drop privileges */ SET ROLE reader")
        .await
        .unwrap();
    let err = c
        .simple_query(read)
        .await
        .expect_err("blog's entry was served to reader");
    assert_eq!(
        err.as_db_error().unwrap().code(),
        &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE
    );
    // an isolation level whose snapshots may predate acknowledged writes
    let read = "SELECT v FROM items WHERE id = 70";
    let before: i32 = cached(&other, &proxy, read).await.parse().unwrap();
    let a = client_of(&proxy, "sess").await;
    a.batch_execute("/* pin snapshots */ SET default_transaction_isolation = 'repeatable read'")
        .await
        .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(one(&a, "SELECT 1").await, "1", "the snapshot is taken");
    other
        .simple_query(&format!(
            "UPDATE items SET v = {} WHERE id = 70",
            before + 1
        ))
        .await
        .unwrap();
    assert_eq!(
        one(&a, read).await,
        before.to_string(),
        "A reads its snapshot"
    );
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        one(&other, read).await,
        (before + 1).to_string(),
        "A's snapshot was stored and served after the write was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn texts_with_a_backslash_are_not_read_while_standard_conforming_strings_is_off() {
    let proxy = modes_proxy();
    let other = client(&proxy).await;
    wait_for_facts(&other, &proxy).await;
    // With standard_conforming_strings off, `'x\' … '` is one literal to
    // the server; pgsift's parser reads `'x\'` and then a comment, so what
    // follows the second quote on that line is hidden from it.
    let by_set = client(&proxy).await;
    by_set
        .batch_execute("SET standard_conforming_strings = off")
        .await
        .unwrap();
    let at_login = connect(&format!(
        "{} options='-c standard_conforming_strings=off'",
        dsn(&proxy)
    ))
    .await
    .unwrap();
    for (who, c) in [("by SET", &by_set), ("at login", &at_login)] {
        // a write, through a volatile function, hidden in a read of an
        // uncovered table: it invalidates the whole database
        let read = "SELECT v FROM strings_t WHERE id = 1";
        let before: i32 = cached(&other, &proxy, read).await.parse().unwrap();
        let bump = "SELECT 'x\\' -- ', strings_bump()\nFROM strings_hidden";
        c.simple_query(bump).await.unwrap();
        assert_eq!(
            one(&other, read).await,
            (before + 1).to_string(),
            "{who}: the hidden write left a stale entry"
        );
        // a volatile function hidden in a read of a covered table
        let random = format!(
            "SELECT v, 'x\\' AS a -- ', random()::text AS r\nFROM strings_t WHERE '{who}' <> ''"
        );
        let hits = metric(&proxy, "hit");
        let r = |msgs: Vec<SimpleQueryMessage>| rows(&msgs)[0][2].clone();
        let first = r(c.simple_query(&random).await.unwrap());
        let second = r(c.simple_query(&random).await.unwrap());
        assert_eq!(
            metric(&proxy, "hit"),
            hits,
            "{who}: random() served from the cache"
        );
        assert_ne!(first, second, "{who}");
        // a read of an uncovered table hidden in a read of a covered one
        let uncovered = format!(
            "SELECT v, 'x\\' AS a -- ', (SELECT v FROM strings_hidden) AS u\nFROM strings_t WHERE '{who}' <> ''"
        );
        let u = |msgs: Vec<SimpleQueryMessage>| rows(&msgs)[0][2].clone().unwrap();
        let was = u(c.simple_query(&uncovered).await.unwrap());
        u(c.simple_query(&uncovered).await.unwrap());
        let now = format!("{was}+");
        c.simple_query(&format!("UPDATE strings_hidden SET v = '{now}'"))
            .await
            .unwrap();
        assert_eq!(
            u(c.simple_query(&uncovered).await.unwrap()),
            now,
            "{who}: a stale read of the uncovered table"
        );
    }
}
