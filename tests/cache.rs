//! The SELECT cache (memory backend) end to end: hits are byte-identical to
//! misses and skip the server, writes through pgsift invalidate before they
//! are acknowledged (autocommit, transactions, MERGE, prepared DML without a
//! new Parse, COPY, TRUNCATE, DDL, volatile functions), keys separate roles
//! and settings, RLS tables and non-immutable functions are never cached,
//! and a stress test with concurrent writers and readers sees no stale read.

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
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE counters (id int PRIMARY KEY, v bigint); INSERT INTO counters SELECT g, 0 FROM generate_series(1, 8) g");
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE secret (id int, owner text); INSERT INTO secret VALUES (1, 'blog'), (2, 'reader'); ALTER TABLE secret ENABLE ROW LEVEL SECURITY; ALTER TABLE secret FORCE ROW LEVEL SECURITY; CREATE POLICY own ON secret USING (owner = current_user)");
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE stamps (id int, at timestamptz); INSERT INTO stamps VALUES (1, '2026-01-01 12:00:00+00'); CREATE TABLE staging (id int, v int)");
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE privy (id int, v int); INSERT INTO privy VALUES (1, 0)");
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE parents (id int PRIMARY KEY); CREATE TABLE kids (id int, parent int REFERENCES parents ON DELETE CASCADE); INSERT INTO parents VALUES (1), (2); INSERT INTO kids VALUES (1, 1), (2, 1), (3, 2)");
        pg.psql("cachedb", "SET ROLE blog; CREATE TABLE audited (id int, v int); CREATE TABLE audit_log (n int); INSERT INTO audited VALUES (1, 0); CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN INSERT INTO audit_log VALUES (1); RETURN NEW; END'; CREATE TRIGGER t AFTER UPDATE ON audited FOR EACH ROW EXECUTE FUNCTION log_it()");
        pg.psql("cachedb", "GRANT SELECT ON items, secret, stamps TO reader; GRANT SELECT (id) ON privy TO reader");
    });
}

fn cache_proxy(extra_users: bool) -> Proxy {
    setup();
    let pg = shared_postgres();
    let users = if extra_users {
        "  - {name: reader, password: readerpw}\n"
    } else {
        ""
    };
    Proxy::start_with(|port, admin| {
        format!(
            "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}, users: [blog]}}\nusers:\n  - {{name: blog, password: blogpw}}\n{users}databases:\n  cachedb: {{host: 127.0.0.1, port: {}, pool_mode: transaction, pool_size: 6}}\ncache:\n  backend: memory\n  rules:\n    - tables: [items, counters, secret, stamps, staging, privy, parents, kids, audited, audit_log]\n      ttl: 60s\n",
            pg.port
        )
    })
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

fn metric(proxy: &Proxy, result: &str) -> f64 {
    let (_, body) = common::http_get(proxy.admin_port, "/metrics").unwrap();
    body.lines()
        .find(|l| {
            l.starts_with("pgsift_cache_requests_total")
                && l.contains(&format!("result=\"{result}\""))
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
    let proxy = cache_proxy(false);
    let c = connect(&proxy.conn_str("blog", "blogpw", "cachedb"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // pg_proc facts load
    let sql =
        "SELECT id, v, owner, id * 2.5 AS x, NULL::text AS n FROM items WHERE id <= 3 ORDER BY id";
    let miss = rows(&c.simple_query(sql).await.unwrap());
    let before = metric(&proxy, "hit");
    let hit = rows(&c.simple_query(sql).await.unwrap());
    assert_eq!(miss, hit);
    assert_eq!(metric(&proxy, "hit"), before + 1.0);
    // the raw bytes too: psql's unaligned output through a fresh connection
    write_directly("UPDATE items SET owner = 'changed' WHERE id = 1");
    let again = rows(&c.simple_query(sql).await.unwrap());
    assert_eq!(again, miss, "served from the cache, not the server");
    write_directly("UPDATE items SET owner = 'reader' WHERE id = 1");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_through_pgsift_invalidate_before_they_are_acknowledged() {
    let proxy = cache_proxy(false);
    let c = connect(&proxy.conn_str("blog", "blogpw", "cachedb"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = "SELECT v FROM items WHERE id = 10";
    assert_eq!(one(&c, read).await, "0");
    assert_eq!(one(&c, read).await, "0");
    // autocommit UPDATE
    c.simple_query("UPDATE items SET v = 1 WHERE id = 10")
        .await
        .unwrap();
    assert_eq!(one(&c, read).await, "1");
    // inside a transaction: the transaction sees its own write (no cache),
    // others see the new value once COMMIT is acknowledged
    let other = connect(&proxy.conn_str("blog", "blogpw", "cachedb"))
        .await
        .unwrap();
    assert_eq!(one(&other, read).await, "1");
    c.batch_execute("BEGIN; UPDATE items SET v = 2 WHERE id = 10")
        .await
        .unwrap();
    assert_eq!(one(&c, read).await, "2");
    assert_eq!(one(&other, read).await, "1");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(one(&other, read).await, "2");
    // ROLLBACK leaves the old value
    c.batch_execute("BEGIN; UPDATE items SET v = 99 WHERE id = 10; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(one(&other, read).await, "2");
    // MERGE
    c.batch_execute("MERGE INTO items t USING (SELECT 10 AS id) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = 3").await.unwrap();
    assert_eq!(one(&other, read).await, "3");
    // INSERT … ON CONFLICT
    c.batch_execute(
        "INSERT INTO items VALUES (10, 4, 'blog') ON CONFLICT (id) DO UPDATE SET v = 4",
    )
    .await
    .unwrap();
    assert_eq!(one(&other, read).await, "4");
    // a named statement bound again without a new Parse (extended protocol)
    let upd = c
        .prepare("UPDATE items SET v = $1 WHERE id = 10")
        .await
        .unwrap();
    for v in [5i32, 6] {
        c.execute(&upd, &[&v]).await.unwrap();
        assert_eq!(one(&other, read).await, v.to_string());
    }
    // a writable CTE
    c.batch_execute(
        "WITH u AS (UPDATE items SET v = 7 WHERE id = 10 RETURNING id) SELECT count(*) FROM u",
    )
    .await
    .unwrap();
    assert_eq!(one(&other, read).await, "7");
    // COPY FROM into a cached table
    let staging = "SELECT count(*) FROM staging";
    assert_eq!(one(&other, staging).await, "0");
    let sink = c.copy_in("COPY staging FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    use futures_util::SinkExt;
    sink.send(bytes::Bytes::from_static(b"1\t1\n2\t2\n"))
        .await
        .unwrap();
    sink.finish().await.unwrap();
    assert_eq!(one(&other, staging).await, "2");
    // TRUNCATE (DDL-class: invalidates the database)
    c.batch_execute("TRUNCATE staging").await.unwrap();
    assert_eq!(one(&other, staging).await, "0");
    // a volatile function may write anything
    c.batch_execute("CREATE OR REPLACE FUNCTION bump() RETURNS int LANGUAGE sql VOLATILE AS 'UPDATE items SET v = 8 WHERE id = 10 RETURNING v'").await.unwrap();
    assert_eq!(one(&other, read).await, "7");
    assert_eq!(one(&c, "SELECT bump()").await, "8");
    assert_eq!(one(&other, read).await, "8");
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_settings_and_rls_never_share_a_result() {
    let proxy = cache_proxy(true);
    let blog = connect(&proxy.conn_str("blog", "blogpw", "cachedb"))
        .await
        .unwrap();
    let reader = connect(&proxy.conn_str("reader", "readerpw", "cachedb"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    let utc = connect(&format!(
        "{} options='-c TimeZone=UTC'",
        proxy.conn_str("blog", "blogpw", "cachedb")
    ))
    .await
    .unwrap();
    let tokyo = connect(&format!(
        "{} options='-c TimeZone=Asia/Tokyo'",
        proxy.conn_str("blog", "blogpw", "cachedb")
    ))
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
    // a role change pgsift does not model turns the cache off for that client
    let hits = metric(&proxy, "hit");
    blog.batch_execute("SET ROLE reader").await.unwrap();
    assert_eq!(
        one(&blog, "SELECT string_agg(owner, ',') FROM secret").await,
        "reader"
    );
    assert_eq!(metric(&proxy, "hit"), hits);
}

#[tokio::test(flavor = "multi_thread")]
async fn non_immutable_functions_and_locking_reads_are_not_cached() {
    let proxy = cache_proxy(false);
    let c = connect(&proxy.conn_str("blog", "blogpw", "cachedb"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_and_readers_never_see_a_stale_read() {
    let proxy = cache_proxy(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let secs: u64 = std::env::var("PGSIFT_STRESS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let acked: Arc<Vec<AtomicI64>> = Arc::new((0..8).map(|_| AtomicI64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let conn = proxy.conn_str("blog", "blogpw", "cachedb");
    common::connect(&conn)
        .await
        .unwrap()
        .batch_execute("UPDATE counters SET v = 0")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..4usize {
        let (acked, stop, conn) = (acked.clone(), stop.clone(), conn.clone());
        tasks.push(tokio::spawn(async move {
            let c = common::connect(&conn).await.unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = 1 + ((n as usize * 4 + w) % 8);
                let r = rows(
                    &c.simple_query(&format!(
                        "UPDATE counters SET v = v + 1 WHERE id = {id} RETURNING v"
                    ))
                    .await
                    .unwrap(),
                );
                let v: i64 = r[0][0].as_ref().unwrap().parse().unwrap();
                acked[id - 1].fetch_max(v, Ordering::SeqCst);
                n += 1;
            }
            (n, 0u64)
        }));
    }
    for r in 0..8usize {
        let (acked, stop, conn) = (acked.clone(), stop.clone(), conn.clone());
        tasks.push(tokio::spawn(async move {
            let c = common::connect(&conn).await.unwrap();
            let (mut reads, mut stale) = (0u64, 0u64);
            let mut k = r;
            while !stop.load(Ordering::Relaxed) {
                let id = 1 + (k % 8);
                k += 3;
                let floor = acked[id - 1].load(Ordering::SeqCst);
                let v: i64 = one(&c, &format!("SELECT v FROM counters WHERE id = {id}"))
                    .await
                    .parse()
                    .unwrap();
                if v < floor {
                    stale += 1;
                }
                reads += 1;
            }
            (reads, stale)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut writes, mut reads, mut stale) = (0, 0, 0);
    for (i, t) in tasks.into_iter().enumerate() {
        let (a, b) = t.await.unwrap();
        if i < 4 {
            writes += a;
        } else {
            reads += a;
            stale += b;
        }
    }
    let hits = metric(&proxy, "hit");
    eprintln!(
        "stress: {writes} writes, {reads} reads, {hits} cache hits, {stale} stale in {:?}",
        started.elapsed()
    );
    assert!(
        writes > 100 && reads > 100,
        "{writes} writes, {reads} reads"
    );
    assert!(hits > 0.0, "the cache served some reads");
    assert_eq!(stale, 0, "stale reads");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_of_one_key_run_the_query_once() {
    let proxy = cache_proxy(false);
    let conn = proxy.conn_str("blog", "blogpw", "cachedb");
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(connect(&conn).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    let c = connect(&proxy.conn_str("blog", "blogpw", "cachedb"))
        .await
        .unwrap();
    let other = connect(&proxy.conn_str("blog", "blogpw", "cachedb"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    // and one-shot statements (Parse + Bind + Describe + Execute + Sync) too
    let q = "SELECT owner FROM items WHERE id = 22";
    let a: String = other.query_one(q, &[]).await.unwrap().get(0);
    let b: String = other.query_one(q, &[]).await.unwrap().get(0);
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread")]
async fn cascading_foreign_keys_and_triggers_invalidate_the_tables_they_reach() {
    let proxy = cache_proxy(false);
    let c = connect(&proxy.conn_str("blog", "blogpw", "cachedb"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kids = "SELECT count(*) FROM kids";
    assert_eq!(one(&c, kids).await, "3");
    assert_eq!(one(&c, kids).await, "3");
    c.batch_execute("DELETE FROM parents WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(one(&c, kids).await, "1", "the cascade deleted two kids");
    let log = "SELECT count(*) FROM audit_log";
    let before: i64 = one(&c, log).await.parse().unwrap();
    assert_eq!(one(&c, log).await, before.to_string());
    c.batch_execute("UPDATE audited SET v = v + 1")
        .await
        .unwrap();
    assert_eq!(
        one(&c, log).await,
        (before + 1).to_string(),
        "the trigger wrote audit_log"
    );
}
