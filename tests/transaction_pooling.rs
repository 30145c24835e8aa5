//! Transaction pooling end to end: pgbench in every protocol mode with many
//! more clients than servers, named prepared statements moving between
//! servers (and the LRU limit), per-client session settings, hygiene.
// Tests run tokio runtimes of their own, with timers: the timer functions
// clippy.toml keeps out of pgsift (src/timer.rs) are theirs to use.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{connect, databases_yaml, pgbench, promoted, scalar, shared_postgres, Proxy};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// A client of `proxy` as `blog` on `app`.
async fn app_client(proxy: &Proxy) -> tokio_postgres::Client {
    connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap()
}

fn tx_proxy(pool_size: usize, extra: &str) -> Proxy {
    Proxy::start(&format!(
        "{}{extra}",
        databases_yaml(shared_postgres(), "transaction", pool_size)
    ))
}

#[test]
fn pgbench_with_64_clients_on_8_servers_has_no_failures_in_any_protocol_mode() {
    let pg = shared_postgres();
    pg.psql("postgres", "CREATE DATABASE txbench OWNER blog");
    let proxy = Proxy::start(&format!(
        "databases:\n  txbench: {{host: 127.0.0.1, port: {}, pool_mode: transaction, pool_size: 8}}\npool:\n  checkout_timeout: 30s\n",
        pg.port
    ));
    let url = proxy.url("blog", "blogpw", "txbench");
    let (ok, _, text) = pgbench(&url, &["-i", "-s", "2", "-q"]);
    assert!(ok, "{text}");
    let secs = std::env::var("PGSIFT_PGBENCH_SECONDS").unwrap_or_else(|_| "10".into());
    for mode in ["prepared", "extended", "simple"] {
        let (ok, failed, text) = pgbench(&url, &["-c", "64", "-j", "2", "-T", &secs, "-M", mode]);
        assert!(ok, "pgbench -M {mode} failed:\n{text}");
        assert_eq!(failed, Some(0), "pgbench -M {mode}:\n{text}");
    }
    // the pool never grew past its size
    let servers = pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'txbench' AND usename = 'blog'",
    );
    assert!(
        servers.parse::<i32>().unwrap() <= 8,
        "{servers} server connections"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn named_statements_move_between_servers_with_their_clients() {
    let proxy = tx_proxy(2, "");
    // more clients than servers, each with its own named statements
    // (tokio-postgres prepares every query as a named statement)
    let mut tasks = Vec::new();
    for c in 0..8i32 {
        let conn = proxy.conn_str("blog", "blogpw", "app");
        tasks.push(tokio::spawn(async move {
            let client = connect(&conn).await.unwrap();
            let add = client.prepare("SELECT $1::int4 + $2::int4").await.unwrap();
            let cat = client
                .prepare("SELECT $1::text || '-' || $2::text")
                .await
                .unwrap();
            let mut pids = HashSet::new();
            for i in 0..200i32 {
                let r: i32 = client.query_one(&add, &[&c, &i]).await.unwrap().get(0);
                assert_eq!(r, c + i);
                let s: String = client
                    .query_one(&cat, &[&format!("c{c}"), &i.to_string()])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(s, format!("c{c}-{i}"));
                if i % 20 == 0 {
                    let pid: i32 = client
                        .query_one("SELECT pg_backend_pid()", &[])
                        .await
                        .unwrap()
                        .get(0);
                    pids.insert(pid);
                }
            }
            pids.len()
        }));
    }
    let mut moved = 0;
    for t in tasks {
        moved += (t.await.unwrap() > 1) as usize;
    }
    assert!(
        moved > 0,
        "clients were expected to land on different servers"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_a_statement_keeps_the_shared_server_statement_for_others() {
    let proxy = tx_proxy(1, "");
    let a = app_client(&proxy).await;
    let b = app_client(&proxy).await;
    let sa = a.prepare("SELECT 40 + $1::int4").await.unwrap();
    let sb = b.prepare("SELECT 40 + $1::int4").await.unwrap();
    assert_eq!(
        a.query_one(&sa, &[&2i32]).await.unwrap().get::<_, i32>(0),
        42
    );
    drop(sa); // tokio-postgres sends Close for the statement
    assert_eq!(
        a.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    assert_eq!(
        b.query_one(&sb, &[&3i32]).await.unwrap().get::<_, i32>(0),
        43
    );
    // one shared statement on the server for both clients' text
    let rows = b
        .simple_query(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT 40 + $1::int4'",
        )
        .await
        .unwrap();
    let n = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap();
    assert_eq!(n, "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_after_a_skipped_parse_arrives_in_order_and_the_session_goes_on() {
    let proxy = tx_proxy(1, "");
    let a = app_client(&proxy).await;
    let div = a.prepare("SELECT 10 / $1::int4").await.unwrap();
    assert_eq!(
        a.query_one(&div, &[&2i32]).await.unwrap().get::<_, i32>(0),
        5
    );
    // a second client prepares the same text: its Parse is answered by pgsift
    let b = app_client(&proxy).await;
    let div_b = b.prepare("SELECT 10 / $1::int4").await.unwrap();
    let err = b.query_one(&div_b, &[&0i32]).await.unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().code(),
        &tokio_postgres::error::SqlState::DIVISION_BY_ZERO
    );
    // a pipeline of several statements with an error in the middle
    let (r1, r2, r3) = tokio::join!(
        b.query_one(&div_b, &[&5i32]),
        b.query_one(&div_b, &[&0i32]),
        b.query_one(&div_b, &[&1i32])
    );
    assert_eq!(r1.unwrap().get::<_, i32>(0), 2);
    assert_eq!(
        r2.unwrap_err().as_db_error().map(|e| e.code()),
        Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
    );
    assert_eq!(r3.unwrap().get::<_, i32>(0), 10);
    // a syntax error in a prepare is reported and forgotten: prepared
    // again, it is sent to the server again, not taken for prepared there
    for _ in 0..2 {
        let err = b.prepare("SELEC nonsense").await.unwrap_err();
        assert_eq!(
            err.as_db_error().map(|e| e.code()),
            Some(&tokio_postgres::error::SqlState::SYNTAX_ERROR)
        );
    }
    assert_eq!(
        b.query_one(&div_b, &[&10i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_hold_at_most_max_prepared_statements() {
    let proxy = tx_proxy(1, "pool:\n  max_prepared_statements: 3\n");
    let c = app_client(&proxy).await;
    let mut stmts = Vec::new();
    for k in 0..10i32 {
        stmts.push((
            k,
            c.prepare(&format!("SELECT $1::int4 * {k}")).await.unwrap(),
        ));
    }
    for round in 0..3i32 {
        for (k, s) in &stmts {
            let v: i32 = c.query_one(s, &[&round]).await.unwrap().get(0);
            assert_eq!(v, round * k);
        }
    }
    // the one server keeps the three used last (k = 7, 8, 9), no more and
    // no fewer: the others were closed
    let held = scalar(
        &c,
        "SELECT string_agg(statement, ', ' ORDER BY statement) FROM pg_prepared_statements WHERE name LIKE 'pgsift_%'",
    )
    .await;
    assert_eq!(
        held, "SELECT $1::int4 * 7, SELECT $1::int4 * 8, SELECT $1::int4 * 9",
        "the server holds these statements"
    );
}

/// As in PgBouncer, 0 turns `idle_timeout` and `server_lifetime` off: an
/// idle server outlives a few upkeep rounds (once a second) and is handed
/// out again.
#[tokio::test(flavor = "multi_thread")]
async fn a_zero_idle_timeout_or_server_lifetime_is_off() {
    for key in ["idle_timeout", "server_lifetime"] {
        let proxy = tx_proxy(2, &format!("pool:\n  {key}: 0s\n"));
        let c = app_client(&proxy).await;
        let first = scalar(&c, "SELECT pg_backend_pid()").await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            scalar(&c, "SELECT pg_backend_pid()").await,
            first,
            "{key}: 0s closed the server instead of handing it out again"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_client_keeps_its_own_timezone_and_search_path_across_servers() {
    own_settings_across_servers("").await;
}

/// The same with statement multiplexing: clients with other settings use
/// other shared servers (or none), never one brought to someone else's.
#[tokio::test(flavor = "multi_thread")]
async fn each_client_keeps_its_own_settings_when_statements_are_multiplexed() {
    own_settings_across_servers("pool:\n  multiplex_servers: 2\n").await;
}

async fn own_settings_across_servers(extra: &str) {
    let pg = shared_postgres();
    // the two tests that share this setup run at once: IF NOT EXISTS alone
    // does not keep two sessions from creating the same object together
    // (one fails on a unique index), so they take turns under a lock held
    // to the end of this one transaction (psql sends the lines as one)
    pg.psql(
        "app",
        "SELECT pg_advisory_xact_lock(7201); \
         CREATE SCHEMA IF NOT EXISTS tz_a AUTHORIZATION blog; \
         CREATE SCHEMA IF NOT EXISTS tz_b AUTHORIZATION blog; \
         CREATE TABLE IF NOT EXISTS tz_a.marker AS SELECT 'a'::text AS v; \
         CREATE TABLE IF NOT EXISTS tz_b.marker AS SELECT 'b'::text AS v; \
         GRANT SELECT ON tz_a.marker, tz_b.marker TO blog",
    );
    // three clients on two servers: they keep changing servers (on three
    // when multiplexing, which leaves one server for everything else)
    let proxy = tx_proxy(if extra.is_empty() { 2 } else { 3 }, extra);
    let a = connect(&format!(
        "{} options='-c TimeZone=America/New_York'",
        proxy.conn_str("blog", "blogpw", "app")
    ))
    .await
    .unwrap();
    a.batch_execute("SET search_path TO tz_a").await.unwrap();
    let b = connect(&format!(
        "{} options='-c TimeZone=Asia/Tokyo'",
        proxy.conn_str("blog", "blogpw", "app")
    ))
    .await
    .unwrap();
    b.batch_execute("SET search_path = tz_b, public")
        .await
        .unwrap();
    let plain = app_client(&proxy).await;
    let default_tz: String = plain.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    let mut servers = HashSet::new();
    for i in 0..200 {
        let (ra, rb, rp) = tokio::join!(
            a.query_one(
                "SELECT current_setting('TimeZone'), (SELECT v FROM marker), pg_backend_pid()",
                &[]
            ),
            b.query_one(
                "SELECT current_setting('TimeZone'), (SELECT v FROM marker), pg_backend_pid()",
                &[]
            ),
            plain.query_one(
                "SELECT current_setting('TimeZone'), current_setting('search_path')",
                &[]
            ),
        );
        let (ra, rb, rp) = (ra.unwrap(), rb.unwrap(), rp.unwrap());
        assert_eq!(
            (ra.get::<_, String>(0), ra.get::<_, String>(1)),
            ("America/New_York".into(), "a".into()),
            "round {i}"
        );
        assert_eq!(
            (rb.get::<_, String>(0), rb.get::<_, String>(1)),
            ("Asia/Tokyo".into(), "b".into()),
            "round {i}"
        );
        assert_eq!(rp.get::<_, String>(0), default_tz, "round {i}");
        assert_eq!(rp.get::<_, String>(1), "\"$user\", public", "round {i}");
        servers.insert(ra.get::<_, i32>(2));
        if i % 10 == 0 {
            // a transaction block with SET LOCAL must not leak
            a.batch_execute("BEGIN; SET LOCAL TimeZone = 'UTC'; SELECT 1; COMMIT")
                .await
                .unwrap();
        }
    }
    if extra.is_empty() {
        assert!(
            servers.len() > 1,
            "client a stayed on one server; the test proves nothing"
        );
    } else {
        assert!(multiplexed(&proxy) > 0.0, "nothing was multiplexed");
    }
}

/// Startup settings a server refuses fail the login with the server's
/// SQLSTATE, as when connecting to Postgres itself, not the client's first
/// statement; the server that tried them goes back to the pool, as it was
/// (what the failed statement reset is still owed to the next client).
/// Settings a server has accepted before are not tried again: such a login
/// needs no server.
#[tokio::test(flavor = "multi_thread")]
async fn startup_settings_a_server_refuses_fail_the_login_and_keep_the_server() {
    use tokio_postgres::error::SqlState;
    let proxy = tx_proxy(1, "");
    let warm = app_client(&proxy).await;
    let pid = scalar(&warm, "SELECT pg_backend_pid()").await;
    // the one server is left with this client's statement_timeout: the
    // next login's settings statement resets it, and then fails
    let slow = connect(&format!(
        "{} options='-c statement_timeout=1234'",
        proxy.conn_str("blog", "blogpw", "app")
    ))
    .await
    .unwrap();
    assert_eq!(scalar(&slow, "SHOW statement_timeout").await, "1234ms");
    for (options, code) in [
        ("-c no_such_guc=1", SqlState::UNDEFINED_OBJECT),
        ("-c TimeZone=Bogus/Zone", SqlState::INVALID_PARAMETER_VALUE),
    ] {
        let err = connect(&format!(
            "{} options='{options}'",
            proxy.conn_str("blog", "blogpw", "app")
        ))
        .await
        .map(|_| ())
        .expect_err(options);
        assert_eq!(
            err.as_db_error().map(|e| e.code()),
            Some(&code),
            "{options}: {err}"
        );
    }
    assert_eq!(
        scalar(&warm, "SELECT pg_backend_pid()").await,
        pid,
        "the pool's one server was kept"
    );
    assert_eq!(scalar(&warm, "SHOW statement_timeout").await, "0");
    let tokyo = connect(&format!(
        "{} options='-c TimeZone=Asia/Tokyo'",
        proxy.conn_str("blog", "blogpw", "app")
    ))
    .await
    .unwrap();
    assert_eq!(scalar(&tokyo, "SHOW TimeZone").await, "Asia/Tokyo");
    // the only server is taken: logins with known settings get in all the same
    warm.batch_execute("BEGIN").await.unwrap();
    let again = tokio::time::timeout(
        Duration::from_secs(2),
        connect(&format!(
            "{} options='-c TimeZone=Asia/Tokyo'",
            proxy.conn_str("blog", "blogpw", "app")
        )),
    )
    .await
    .expect("no server needed")
    .unwrap();
    // and so do logins with new settings: they are not tried without a free
    // server (no wait, no 53300), and a refused one fails the first
    // statement instead
    let new_setting = |options: &'static str| {
        let conn = format!(
            "{} options='{options}'",
            proxy.conn_str("blog", "blogpw", "app")
        );
        tokio::time::timeout(Duration::from_secs(2), async move { connect(&conn).await })
    };
    let paris = new_setting("-c TimeZone=Europe/Paris")
        .await
        .expect("a new setting waits for no server")
        .unwrap();
    let unknown = new_setting("-c another_guc=1")
        .await
        .expect("a new setting waits for no server")
        .unwrap();
    warm.batch_execute("COMMIT").await.unwrap();
    assert_eq!(scalar(&again, "SHOW TimeZone").await, "Asia/Tokyo");
    assert_eq!(scalar(&paris, "SHOW TimeZone").await, "Europe/Paris");
    let err = unknown.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code()),
        Some(&SqlState::UNDEFINED_OBJECT),
        "{err}"
    );
    assert_eq!(scalar(&warm, "SELECT pg_backend_pid()").await, pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_killed_inside_a_transaction_leaves_its_row_unlocked() {
    let proxy = tx_proxy(2, "");
    common::kill_client_inside_update_and_check_the_row_is_free(
        shared_postgres(),
        &proxy,
        "tx_gone",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_and_errors_inside_transactions_keep_the_server_until_rollback() {
    let proxy = tx_proxy(1, "");
    let a = app_client(&proxy).await;
    let b = app_client(&proxy).await;
    a.batch_execute("BEGIN").await.unwrap();
    let pid1: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(a.batch_execute("SELECT 1/0").await.is_err());
    // in the failed transaction the client still holds its server: b waits
    let b_query = tokio::spawn(async move {
        b.query_one("SELECT pg_backend_pid()", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !b_query.is_finished(),
        "b got a server while a's transaction was open"
    );
    let err = a.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().code(),
        &tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION
    );
    a.batch_execute("ROLLBACK").await.unwrap();
    let pid_b = b_query.await.unwrap().unwrap();
    assert_eq!(pid_b, pid1, "the one server went to b after the rollback");
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_copy_in_works_in_transaction_mode() {
    let pg = shared_postgres();
    pg.psql(
        "app",
        "CREATE TABLE IF NOT EXISTS tx_copy (id int, v int); GRANT ALL ON tx_copy TO blog",
    );
    let proxy = tx_proxy(2, "");
    let c = app_client(&proxy).await;
    for round in 0..3 {
        let sink = c.copy_in("COPY tx_copy FROM STDIN").await.unwrap();
        futures_util::pin_mut!(sink);
        use futures_util::SinkExt;
        sink.send(bytes::Bytes::from_static(b"1\t1\n2\t2\n"))
            .await
            .unwrap();
        assert_eq!(sink.finish().await.unwrap(), 2, "round {round}");
        c.batch_execute("SELECT 1").await.unwrap();
    }
    c.batch_execute("TRUNCATE tx_copy").await.unwrap();
    // the client is not pinned: another client gets a server
    let d = app_client(&proxy).await;
    let e = app_client(&proxy).await;
    let (a, b) = tokio::join!(d.simple_query("SELECT 1"), e.simple_query("SELECT 1"));
    a.unwrap();
    b.unwrap();
}

/// Two clients with the same startup settings share the only server: what one
/// SETs (reported and unreported tracked settings) never reaches the other,
/// also after the server was brought in line with those same startup settings
/// before (the per-checkout settings comparison is skipped only while nothing
/// changed the server's settings).
#[tokio::test]
async fn a_set_never_leaks_to_a_client_with_the_same_startup_settings() {
    let proxy = tx_proxy(1, "");
    let a = app_client(&proxy).await;
    let b = app_client(&proxy).await;
    let sql = "SELECT current_setting('search_path'), current_setting('TimeZone'), current_setting('extra_float_digits')";
    let defaults = b.query_one(sql, &[]).await.unwrap();
    let defaults: (String, String, String) = (defaults.get(0), defaults.get(1), defaults.get(2));
    async fn read(c: &tokio_postgres::Client, sql: &str) -> (String, String, String) {
        let r = c.query_one(sql, &[]).await.unwrap();
        (r.get(0), r.get(1), r.get(2))
    }
    for round in 0..10 {
        // even rounds change only settings the server does not report
        // (no ParameterStatus tells pgsift the server changed)
        let (zone, set_zone) = if round % 2 == 0 {
            (defaults.1.clone(), String::new())
        } else {
            (
                "Asia/Tokyo".to_string(),
                "; SET TimeZone = 'Asia/Tokyo'".to_string(),
            )
        };
        a.batch_execute(&format!(
            "SET search_path TO pg_catalog, public; SET extra_float_digits = 3{set_zone}"
        ))
        .await
        .unwrap();
        assert_eq!(
            read(&b, sql).await,
            defaults,
            "round {round}: b after a's SET"
        );
        assert_eq!(
            read(&a, sql).await,
            (
                "pg_catalog, public".to_string(),
                zone.to_string(),
                "3".to_string()
            ),
            "round {round}: a keeps its own"
        );
        assert_eq!(read(&b, sql).await, defaults, "round {round}: b again");
        a.batch_execute("RESET ALL").await.unwrap();
        assert_eq!(
            read(&a, sql).await,
            defaults,
            "round {round}: a after RESET ALL"
        );
        assert_eq!(
            read(&b, sql).await,
            defaults,
            "round {round}: b after a's RESET ALL"
        );
    }
}

#[tokio::test]
async fn session_state_a_client_changes_never_reaches_another_client() {
    shared_postgres().psql(
        "postgres",
        "DO $$ BEGIN CREATE ROLE txreader; EXCEPTION WHEN duplicate_object THEN NULL; END $$; GRANT txreader TO blog",
    );
    // one server: whatever a leaves on it, b would see
    let proxy = tx_proxy(1, "");
    let a = app_client(&proxy).await;
    let b = app_client(&proxy).await;
    let read = "SELECT current_setting('statement_timeout') || ',' || coalesce(current_setting('app.tenant_id', true), '') || ',' || current_user";
    assert_eq!(scalar(&b, read).await, "0,,blog");
    // settings of any name, custom ones and the role follow their client
    a.batch_execute("SET statement_timeout = 1234; SET app.tenant_id = '7'; SET ROLE txreader")
        .await
        .unwrap();
    for round in 0..3 {
        assert_eq!(scalar(&b, read).await, "0,,blog", "round {round}: b");
        assert_eq!(
            scalar(&a, read).await,
            "1234ms,7,txreader",
            "round {round}: a keeps its own"
        );
    }
    a.batch_execute("RESET ROLE; RESET statement_timeout")
        .await
        .unwrap();
    assert_eq!(scalar(&a, read).await, "0,7,blog");
    assert_eq!(scalar(&b, read).await, "0,,blog");
    // what pgsift cannot carry is reset before the server serves anyone else
    scalar(&a, "SELECT set_config('lock_timeout', '4321', false)").await;
    scalar(&a, "SELECT pg_advisory_lock(77)::text").await;
    assert_eq!(scalar(&b, "SHOW lock_timeout").await, "0");
    assert_eq!(
        scalar(
            &b,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        .await,
        "0"
    );
    // and the client's carried settings are applied again after the reset
    assert_eq!(scalar(&a, read).await, "0,7,blog");
}

/// A superuser's `SET ROLE` makes its server report `is_superuser = off`,
/// a parameter no statement can change: the next client of that server
/// gets the role reset, never a `RESET is_superuser` that fails (and,
/// before, failed for every later client of the pool). The same for a
/// role or session authorization changed where pgsift does not read it
/// (inside a DO block) and for `SET SESSION AUTHORIZATION`.
#[tokio::test(flavor = "multi_thread")]
async fn a_superusers_role_change_leaves_the_pool_usable_for_every_later_client() {
    let pg = shared_postgres();
    pg.psql(
        "postgres",
        "DO $$ BEGIN CREATE ROLE txrole_plain; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    );
    // one server: every client lands on the one the role was changed on
    let proxy = tx_proxy(1, "");
    let url = proxy.url("postgres", "postgres", "app");
    // the reproduction: psql sends each line as a Query of its own
    let psql = |input: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", &url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = psql("SET ROLE txrole_plain;\nSELECT current_user;\n");
    assert!(ok && text.contains("txrole_plain"), "{text}");
    let read = "SELECT current_user || ',' || session_user || ',' || current_setting('is_superuser') || ',' || current_setting('log_min_duration_statement')";
    for i in 0..3 {
        let (ok, text) = psql("select 1;\n");
        assert!(ok, "psql client {i} after SET ROLE: {text}");
        let c = connect(&proxy.conn_str("postgres", "postgres", "app"))
            .await
            .unwrap_or_else(|e| panic!("client {i} after SET ROLE: {e}"));
        assert_eq!(
            scalar(&c, read).await,
            "postgres,postgres,on,-1",
            "client {i}"
        );
    }
    // changes pgsift does not read from the SQL: the server reports them,
    // and the next client gets them reset
    for change in [
        "DO $$ BEGIN EXECUTE 'SET ROLE txrole_plain'; END $$",
        "DO $$ BEGIN EXECUTE 'SET SESSION AUTHORIZATION txrole_plain'; END $$",
        "SET SESSION AUTHORIZATION txrole_plain",
        // a setting only a superuser may reset: reset after the role
        "SET log_min_duration_statement = 100000; DO $$ BEGIN EXECUTE 'SET ROLE txrole_plain'; END $$",
    ] {
        let a = connect(&proxy.conn_str("postgres", "postgres", "app"))
            .await
            .unwrap();
        a.batch_execute(change).await.unwrap();
        drop(a);
        for i in 0..3 {
            let c = connect(&proxy.conn_str("postgres", "postgres", "app"))
                .await
                .unwrap_or_else(|e| panic!("client {i} after {change}: {e}"));
            let r = c.simple_query(read).await;
            let row = r.unwrap_or_else(|e| panic!("client {i} after {change}: {e}"));
            let got = row.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            });
            assert_eq!(
                got.as_deref(),
                Some("postgres,postgres,on,-1"),
                "client {i} after {change}"
            );
        }
    }
    // a client that keeps its role keeps it, beside one that does not
    let a = connect(&proxy.conn_str("postgres", "postgres", "app"))
        .await
        .unwrap();
    let b = connect(&proxy.conn_str("postgres", "postgres", "app"))
        .await
        .unwrap();
    a.batch_execute("SET ROLE txrole_plain").await.unwrap();
    for round in 0..3 {
        assert_eq!(
            scalar(&a, read).await,
            "txrole_plain,postgres,off,-1",
            "round {round}"
        );
        assert_eq!(
            scalar(&b, read).await,
            "postgres,postgres,on,-1",
            "round {round}"
        );
    }
}

/// A statement behind a comment is the plain statement to Postgres, and so
/// to pgsift: a SET is carried with its client and kept from the next
/// client of the server, LISTEN and a temporary table make the server dirty,
/// and DEALLOCATE or DISCARD ALL of protocol-prepared statements act on the
/// client's names.
#[tokio::test(flavor = "multi_thread")]
async fn statements_behind_a_comment_act_as_the_plain_ones() {
    use common::raw::{errors, first_value, parse, query, raw_login, read_ready, sync};
    // one server: whatever a leaves on it, b would see
    let proxy = tx_proxy(1, "");
    let a = app_client(&proxy).await;
    let b = app_client(&proxy).await;
    let read =
        "SELECT current_setting('search_path') || ',' || current_setting('statement_timeout')";
    let plain = scalar(&b, read).await;
    a.batch_execute("/* tenant */ SET search_path TO pg_catalog, public")
        .await
        .unwrap();
    a.batch_execute("-- caller: x\rSET statement_timeout = 1234")
        .await
        .unwrap();
    for round in 0..2 {
        assert_eq!(scalar(&b, read).await, plain, "round {round}: b");
        assert_eq!(
            scalar(&a, read).await,
            "pg_catalog, public,1234ms",
            "round {round}: a keeps its own"
        );
    }
    a.batch_execute("/* events */ LISTEN chan").await.unwrap();
    assert_eq!(
        scalar(&b, "SELECT count(*) FROM pg_listening_channels()").await,
        "0",
        "a's LISTEN reached b"
    );
    a.batch_execute("-- scratch\nCREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    assert_eq!(
        scalar(&b, "SELECT (to_regclass('pg_temp.scratch') IS NULL)::text").await,
        "true",
        "a's temporary table reached b"
    );
    // statement names
    let mut s = raw_login(proxy.port).await;
    send(&mut s, &[parse("s1", "SELECT 1"), sync()]).await;
    assert!(errors(&read_ready(&mut s, 1).await).is_empty());
    send(&mut s, &[query("/* evict */ DEALLOCATE s1")]).await;
    assert_eq!(
        errors(&read_ready(&mut s, 1).await),
        Vec::<String>::new(),
        "DEALLOCATE behind a comment"
    );
    send(&mut s, &[parse("s1", "SELECT 2"), run("s1")]).await;
    let got = read_ready(&mut s, 1).await;
    assert_eq!(errors(&got), Vec::<String>::new(), "the name is free again");
    assert_eq!(first_value(&got).as_deref(), Some("2"));
    send(
        &mut s,
        &[
            query("-- reset\nDISCARD /* every */ ALL"),
            parse("s1", "SELECT 3"),
            run("s1"),
        ],
    )
    .await;
    let got = read_ready(&mut s, 2).await;
    assert_eq!(
        errors(&got),
        Vec::<String>::new(),
        "DISCARD ALL behind a comment frees the names"
    );
    assert_eq!(first_value(&got).as_deref(), Some("3"));
}

#[tokio::test]
async fn a_prepared_set_config_dirties_its_server_at_every_execution() {
    let proxy = tx_proxy(1, "");
    let a = app_client(&proxy).await;
    let b = app_client(&proxy).await;
    // a driver's statement cache: Parse once, then Bind and Execute only
    let set = a
        .prepare("SELECT set_config('app.tenant_id', $1, false)")
        .await
        .unwrap();
    let read = "SELECT coalesce(current_setting('app.tenant_id', true), '')";
    for tenant in ["7", "8", "9"] {
        a.query_one(&set, &[&tenant]).await.unwrap();
        assert_eq!(scalar(&b, read).await, "", "tenant {tenant} leaked");
    }
}

#[tokio::test]
async fn a_reset_setting_returns_to_the_clients_login_value() {
    let proxy = tx_proxy(1, "");
    let dsn = format!(
        "{} options='-c statement_timeout=4321'",
        proxy.conn_str("blog", "blogpw", "app")
    );
    let a = connect(&dsn).await.unwrap();
    let b = app_client(&proxy).await;
    assert_eq!(scalar(&a, "SHOW statement_timeout").await, "4321ms");
    a.batch_execute("SET statement_timeout = 99").await.unwrap();
    assert_eq!(scalar(&a, "SHOW statement_timeout").await, "99ms");
    assert_eq!(scalar(&b, "SHOW statement_timeout").await, "0");
    for reset in [
        "RESET statement_timeout",
        "RESET ALL",
        "SET statement_timeout TO DEFAULT",
    ] {
        a.batch_execute(reset).await.unwrap();
        assert_eq!(
            scalar(&a, "SHOW statement_timeout").await,
            "4321ms",
            "after {reset}"
        );
        assert_eq!(
            scalar(&b, "SHOW statement_timeout").await,
            "0",
            "b after {reset}"
        );
        a.batch_execute("SET statement_timeout = 99").await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_unnamed_statements_are_kept_prepared_only_when_enabled() {
    use tokio_postgres::types::Type;
    let double = "SELECT $1::int4 * 2";
    let concat = "SELECT $1::text || '!'";
    for enabled in [true, false] {
        let proxy = tx_proxy(
            1,
            &format!("pool:\n  prepare_unnamed_statements: {enabled}\n"),
        );
        let c = app_client(&proxy).await;
        // query_typed sends an unnamed Parse, Bind, Describe, Execute, Sync
        for i in 0..20i32 {
            let r = c.query_typed(double, &[(&i, Type::INT4)]).await.unwrap();
            assert_eq!(r[0].get::<_, i32>(0), 2 * i);
            let s = format!("s{i}");
            let r = c.query_typed(concat, &[(&s, Type::TEXT)]).await.unwrap();
            assert_eq!(r[0].get::<_, String>(0), format!("s{i}!"));
            // a utility statement stays unnamed and works in between
            let r = c.query_typed("SHOW DateStyle", &[]).await.unwrap();
            assert!(!r[0].get::<_, String>(0).is_empty());
        }
        let want = i64::from(enabled);
        assert_eq!(promoted(&c, double).await, want, "enabled: {enabled}");
        assert_eq!(promoted(&c, concat).await, want, "enabled: {enabled}");
        assert_eq!(promoted(&c, "SHOW DateStyle").await, 0);
        // errors in a promoted statement arrive in order; the session goes on
        let div = "SELECT 10 / $1::int4";
        for (d, want) in [(5i32, Some(2i32)), (0, None), (1, Some(10))] {
            match c.query_typed(div, &[(&d, Type::INT4)]).await {
                Ok(r) => assert_eq!(Some(r[0].get::<_, i32>(0)), want),
                Err(e) => {
                    assert_eq!(want, None, "{e}");
                    assert_eq!(
                        e.as_db_error().unwrap().code(),
                        &tokio_postgres::error::SqlState::DIVISION_BY_ZERO
                    );
                }
            }
        }
        // a named statement next to promoted unnamed ones
        let named = c.prepare(double).await.unwrap();
        assert_eq!(
            c.query_one(&named, &[&21i32])
                .await
                .unwrap()
                .get::<_, i32>(0),
            42
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promoted_statement_whose_plan_went_stale_is_prepared_afresh() {
    use tokio_postgres::types::Type;
    let pg = shared_postgres();
    for mode in ["transaction", "session"] {
        let table = format!("stale_plan_{mode}");
        pg.psql(
            "app",
            &format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int, a text); \
                 INSERT INTO {table} VALUES (1, 'x'); GRANT ALL ON {table} TO blog"
            ),
        );
        let proxy = Proxy::start(&format!(
            "{}pool:\n  prepare_unnamed_statements: true\n",
            databases_yaml(pg, mode, 1)
        ));
        let c = app_client(&proxy).await;
        let sql = format!("SELECT * FROM {table} WHERE id = $1");
        for _ in 0..3 {
            let r = c.query_typed(&sql, &[(&1i32, Type::INT4)]).await.unwrap();
            assert_eq!(r[0].len(), 2);
        }
        assert_eq!(promoted(&c, &sql).await, 1, "{mode}");
        let pid = scalar(&c, "SELECT pg_backend_pid()").await;
        pg.psql("app", &format!("ALTER TABLE {table} ADD COLUMN b int"));
        // the server's cached plan of the shared statement no longer fits:
        // that one execution fails as Postgres reports it ...
        let err = c
            .query_typed(&sql, &[(&1i32, Type::INT4)])
            .await
            .unwrap_err();
        assert_eq!(
            err.as_db_error().unwrap().code(),
            &tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED,
            "{mode}: {err}"
        );
        // ... then pgsift closes it and the next execution prepares it afresh
        for _ in 0..3 {
            let r = c.query_typed(&sql, &[(&1i32, Type::INT4)]).await.unwrap();
            assert_eq!(r[0].len(), 3, "{mode}");
        }
        // on the same server: nothing had to be thrown away
        assert_eq!(scalar(&c, "SELECT pg_backend_pid()").await, pid, "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_text_under_two_search_paths_is_two_server_statements() {
    use tokio_postgres::types::Type;
    let pg = shared_postgres();
    pg.psql(
        "app",
        "CREATE SCHEMA IF NOT EXISTS tenant_a AUTHORIZATION blog; \
         CREATE SCHEMA IF NOT EXISTS tenant_b AUTHORIZATION blog; \
         DROP TABLE IF EXISTS tenant_a.shape, tenant_b.shape; \
         CREATE TABLE tenant_a.shape AS SELECT 1 AS id; \
         CREATE TABLE tenant_b.shape AS SELECT 1 AS id, 'b'::text AS extra; \
         GRANT SELECT ON tenant_a.shape, tenant_b.shape TO blog",
    );
    // one server for both tenants: their statements meet on it
    let proxy = tx_proxy(1, "pool:\n  prepare_unnamed_statements: true\n");
    let conn = proxy.conn_str("blog", "blogpw", "app");
    let a = connect(&format!("{conn} options='-c search_path=tenant_a'"))
        .await
        .unwrap();
    let b = app_client(&proxy).await;
    b.batch_execute("SET search_path = tenant_b").await.unwrap();
    let sql = "SELECT * FROM shape WHERE id = $1";
    for i in 0..10 {
        let ra = a.query_typed(sql, &[(&1i32, Type::INT4)]).await;
        let rb = b.query_typed(sql, &[(&1i32, Type::INT4)]).await;
        assert_eq!(ra.unwrap()[0].len(), 1, "tenant a, round {i}");
        assert_eq!(rb.unwrap()[0].len(), 2, "tenant b, round {i}");
        // named statements (tokio-postgres prepares them) too
        let na = a.prepare(sql).await.unwrap();
        assert_eq!(a.query(&na, &[&1i32]).await.unwrap()[0].len(), 1);
        let nb = b.prepare(sql).await.unwrap();
        assert_eq!(b.query(&nb, &[&1i32]).await.unwrap()[0].len(), 2);
    }
    assert!(promoted(&a, sql).await >= 2);
}

#[test]
fn pgbench_with_unnamed_statements_kept_prepared_has_no_failures_in_either_pool_mode() {
    let pg = shared_postgres();
    pg.psql("postgres", "CREATE DATABASE txbench_promote OWNER blog");
    let proxy = Proxy::start(&format!(
        "databases:\n  txbench_promote: {{host: 127.0.0.1, port: {}, pool_mode: transaction, pool_size: 4}}\npool:\n  checkout_timeout: 30s\n  prepare_unnamed_statements: true\n",
        pg.port
    ));
    let url = proxy.url("blog", "blogpw", "txbench_promote");
    let (ok, _, text) = pgbench(&url, &["-i", "-s", "1", "-q"]);
    assert!(ok, "{text}");
    // the TPC-B-like script: BEGIN, UPDATEs, SELECT, INSERT, END — unnamed
    // statements inside and outside transactions
    let (ok, failed, text) = pgbench(&url, &["-c", "32", "-j", "2", "-T", "5", "-M", "extended"]);
    assert!(ok, "{text}");
    assert_eq!(failed, Some(0), "{text}");
    let held = pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'txbench_promote'",
    );
    assert!(held.parse::<i32>().unwrap() <= 4, "{held}");
    drop(proxy);
    // session mode with the option: every protocol mode, 8 clients
    let proxy = Proxy::start(&format!(
        "databases:\n  txbench_promote: {{host: 127.0.0.1, port: {}, pool_mode: session, pool_size: 8}}\npool:\n  prepare_unnamed_statements: true\n",
        pg.port
    ));
    let url = proxy.url("blog", "blogpw", "txbench_promote");
    for mode in ["extended", "prepared", "simple"] {
        let (ok, failed, text) = pgbench(&url, &["-c", "8", "-j", "2", "-T", "3", "-M", mode]);
        assert!(ok, "session -M {mode}: {text}");
        assert_eq!(failed, Some(0), "session -M {mode}: {text}");
    }
}

/// `pgsift_multiplexed_transactions_total`, summed over its labels.
fn multiplexed(proxy: &Proxy) -> f64 {
    let (_, body) = common::http_get(proxy.admin_port, "/metrics").unwrap();
    body.lines()
        .filter(|l| l.starts_with("pgsift_multiplexed_transactions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Statement multiplexing: many clients' prepared autocommit statements
/// share two servers at once. Every client gets its own results and its
/// own errors, in order; statements inside a transaction stay on the
/// client's server (they see its uncommitted rows); a client with other
/// settings is not mixed in with the rest.
#[tokio::test(flavor = "multi_thread")]
async fn multiplexed_statements_reach_their_own_clients_with_their_errors() {
    let pg = shared_postgres();
    pg.psql(
        "app",
        "CREATE TABLE IF NOT EXISTS mux_rows (id int PRIMARY KEY, owner int); GRANT ALL ON mux_rows TO blog",
    );
    let proxy = tx_proxy(4, "pool:\n  multiplex_servers: 2\n");
    let mut workers = Vec::new();
    for w in 0..16i32 {
        let conn_str = if w % 4 == 3 {
            // other settings: another lane, or a server of its own
            format!(
                "{} options='-c TimeZone=Asia/Tokyo'",
                proxy.conn_str("blog", "blogpw", "app")
            )
        } else {
            proxy.conn_str("blog", "blogpw", "app")
        };
        workers.push(tokio::spawn(async move {
            let c = connect(&conn_str).await.unwrap();
            let echo = c
                .prepare("SELECT $1::int + 0, current_setting('TimeZone')")
                .await
                .unwrap();
            let divide = c.prepare("SELECT 100 / $1::int").await.unwrap();
            let tz = if w % 4 == 3 { "Asia/Tokyo" } else { "" };
            for i in 0..200i32 {
                let v = w * 10_000 + i;
                let row = c.query_one(&echo, &[&v]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), v, "worker {w}");
                if !tz.is_empty() {
                    assert_eq!(row.get::<_, String>(1), tz, "worker {w}");
                }
                if i % 20 == 0 {
                    let err = c.query_one(&divide, &[&0i32]).await.unwrap_err();
                    assert_eq!(
                        err.as_db_error().map(|e| e.code()),
                        Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO),
                        "worker {w}: {err}"
                    );
                    let ok: i32 = c.query_one(&divide, &[&4i32]).await.unwrap().get(0);
                    assert_eq!(ok, 25);
                }
            }
            // inside a transaction the client's own server answers: it sees
            // its uncommitted row
            let insert = c
                .prepare("INSERT INTO mux_rows VALUES ($1, $2)")
                .await
                .unwrap();
            let count = c
                .prepare("SELECT count(*) FROM mux_rows WHERE owner = $1")
                .await
                .unwrap();
            c.batch_execute("BEGIN").await.unwrap();
            c.execute(&insert, &[&(1000 + w), &w]).await.unwrap();
            let n: i64 = c.query_one(&count, &[&w]).await.unwrap().get(0);
            assert_eq!(n, 1, "worker {w} does not see its own row");
            c.batch_execute("ROLLBACK").await.unwrap();
            let n: i64 = c.query_one(&count, &[&w]).await.unwrap().get(0);
            assert_eq!(n, 0, "worker {w}");
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        multiplexed(&proxy) >= 1000.0,
        "few statements were multiplexed ({}); the test proves little",
        multiplexed(&proxy)
    );
}

/// A slow multiplexed statement holds up no one who comes later: new
/// statements go to another shared server (or a server of their own), and
/// the slow one can still be cancelled.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_multiplexed_statement_can_be_cancelled_and_blocks_no_newcomer() {
    let proxy = tx_proxy(3, "pool:\n  multiplex_servers: 2\n");
    let slow = app_client(&proxy).await;
    let sleep = slow.prepare("SELECT pg_sleep($1::float8)").await.unwrap();
    let token = slow.cancel_token();
    let sleeping = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r = slow.query_one(&sleep, &[&30f64]).await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quick = app_client(&proxy).await;
    let st = quick.prepare("SELECT $1::int * 3").await.unwrap();
    let before = multiplexed(&proxy);
    tokio::time::timeout(Duration::from_secs(20), async {
        for i in 0..100i32 {
            let v: i32 = quick.query_one(&st, &[&i]).await.unwrap().get(0);
            assert_eq!(v, i * 3);
        }
    })
    .await
    .expect("statements waited behind the sleeping one");
    assert!(multiplexed(&proxy) - before >= 100.0);
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (r, took) = sleeping.await.unwrap();
    let err = r.unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code()),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// Runs `sql` through psql as the superuser until it returns a value for
/// which `ok` holds, and returns it; fails the test after 60 s (`what`
/// says what was awaited).
fn poll_psql(sql: &str, ok: impl Fn(&str) -> bool, what: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let v = shared_postgres().psql("postgres", sql);
        if ok(&v) {
            return v;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let activity = shared_postgres().psql(
                "postgres",
                "SELECT string_agg(concat_ws(' ', pid, state, query_start, left(query, 80)), E'\\n') FROM pg_stat_activity WHERE backend_type = 'client backend'",
            );
            panic!("{what}: not within 60 s (last: {v:?}); pg_stat_activity:\n{activity}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a raw client's replies until its ReadyForQuery (60 s at most):
/// the number of DataRows and the SQLSTATEs of errors.
async fn read_rows_until_ready(s: &mut tokio::net::TcpStream) -> (usize, Vec<String>) {
    let mut rbuf = bytes::BytesMut::new();
    let (mut rows, mut errors) = (0, Vec::new());
    let read = async {
        loop {
            let (tag, msg) = pgsift::protocol::io::read_message(s, &mut rbuf, 1 << 20)
                .await
                .expect("the connection stays open");
            match tag {
                b'D' => rows += 1,
                b'E' => errors.push(pgsift::protocol::messages::parse_error_fields(&msg[5..]).code),
                b'Z' => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("no ReadyForQuery within 60 s");
    (rows, errors)
}

/// Statement multiplexing: a client's cancel request reaches the shared
/// server only while the client's own batch runs there. Client A leaves
/// the 50 MB result of its multiplexed statement unread (pgsift holds the
/// rest; A's session has not yet seen the statement end), and the shared
/// server goes on to client B's long statement; A's cancel request then
/// cancels nothing — before, it cancelled B's statement.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_after_its_multiplexed_statement_ended_spares_the_next_clients_statement() {
    use common::raw;
    use tokio::io::AsyncWriteExt;
    // one shared server (the other stays for everything else)
    let proxy = tx_proxy(2, "pool:\n  multiplex_servers: 1\n");
    let (mut a, a_pid, a_secret) = raw::raw_login_keyed(proxy.port, "blog", "blogpw", "app").await;
    let big = "SELECT repeat('x', 1000) FROM generate_series(1, $1::int) /* mux_ended_big */";
    a.write_all(&[raw::parse("big", big), raw::sync()].concat())
        .await
        .unwrap();
    raw::read_ready(&mut a, 1).await;
    let b = app_client(&proxy).await;
    let sleep = b
        .prepare("SELECT pg_sleep($1::float8) /* mux_ended_sleep */")
        .await
        .unwrap();
    // (B's statements run only after A's: A's login settings differ from
    // B's, and a shared server serves one set of settings at a time)
    let before = multiplexed(&proxy);
    let t0 = shared_postgres().psql("postgres", "SELECT now()");
    a.write_all(&[raw::bind("big", &["50000"]), raw::execute(), raw::sync()].concat())
        .await
        .unwrap();
    // the server ends A's statement (pgsift reads all of it); A reads nothing
    let a_server = poll_psql(
        &format!("SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity WHERE query LIKE '%mux_ended_big%' AND state = 'idle' AND query_start > '{t0}'"),
        |v| !v.is_empty(),
        "A's statement ends on the server",
    );
    // time for pgsift to read the rest and A's ReadyForQuery, and for the
    // shared server, idle then, to go back to the pool (after 100 ms)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sleeping = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r = b.query_one(&sleep, &[&6f64]).await;
        (r, started.elapsed())
    });
    let b_server = poll_psql(
        "SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity WHERE query LIKE '%mux_ended_sleep%' AND state = 'active' AND pid <> pg_backend_pid()",
        |v| !v.is_empty(),
        "B's statement runs",
    );
    assert_eq!(
        a_server, b_server,
        "B's statement was expected on A's shared server; the test proves nothing"
    );
    raw::raw_cancel(proxy.port, a_pid, a_secret).await;
    let (r, took) = sleeping.await.unwrap();
    if let Err(e) = &r {
        let code = e.as_db_error().map(|d| d.code().code().to_owned());
        panic!("A's cancel request reached B's statement after {took:?}: {e} ({code:?})");
    }
    assert!(took >= Duration::from_secs(5), "{took:?}");
    // A's result arrives whole, uncancelled
    let (rows, errors) = read_rows_until_ready(&mut a).await;
    assert_eq!((rows, errors), (50_000, vec![]));
    assert!(
        multiplexed(&proxy) - before >= 2.0,
        "nothing was multiplexed"
    );
}

/// How many clients of `proxy` SHOW CLIENTS lists as active without a
/// server: their multiplexed batch waits on a shared server (one that has
/// no server yet, or whose server is not known to the client's entry).
fn clients_active_without_server(proxy: &Proxy) -> usize {
    let out = std::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SHOW CLIENTS"])
        .arg(proxy.url("admin", "adminpw", "pgsift"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split('|').collect();
            f.len() >= 7 && f[5] == "active" && f[6].is_empty()
        })
        .count()
}

/// Waits (60 s at most) until `n` clients of `proxy` are active without a
/// server.
fn wait_for_lane_clients(proxy: &Proxy, n: usize) {
    let start = std::time::Instant::now();
    while clients_active_without_server(proxy) != n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{n} clients never waited on the shared server"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Statement multiplexing: a cancel request for a batch still waiting on
/// its shared server is not lost. One the shared server has not been sent
/// yet (the shared server waits for a free server) is answered at once
/// with 57014, as Postgres answers a cancelled statement, and never runs;
/// one already sent behind another client's statement is cancelled when it
/// starts, and the statement ahead of it is not. Before, both were dropped:
/// the cancel request reached nothing, and the statement ran in full.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_for_a_multiplexed_statement_still_waiting_on_its_shared_server_cancels_it() {
    let proxy = tx_proxy(
        2,
        "pool:\n  multiplex_servers: 1\n  checkout_timeout: 120s\n",
    );
    let sql = "SELECT pg_sleep($1::float8) /* mux_wait_sleep */";
    // A and B log in alike: their batches share one server
    let a = Arc::new(app_client(&proxy).await);
    let b = Arc::new(app_client(&proxy).await);
    let sa = a.prepare(sql).await.unwrap();
    let sb = b.prepare(sql).await.unwrap();
    let b_cancel = b.cancel_token();
    let run = |c: &Arc<tokio_postgres::Client>, st: &tokio_postgres::Statement, secs: f64| {
        let (c, st) = (c.clone(), st.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = c.query_one(&st, &[&secs]).await.map(|_| ());
            (r, started.elapsed())
        })
    };
    let code = |r: &Result<(), tokio_postgres::Error>| {
        r.as_ref()
            .err()
            .and_then(|e| e.as_db_error())
            .map(|e| e.code().code().to_owned())
    };
    // every server is held by a transaction: the shared server waits for one
    let hold = || async {
        let h1 = app_client(&proxy).await;
        let h2 = app_client(&proxy).await;
        for h in [&h1, &h2] {
            h.batch_execute("BEGIN; SELECT 1").await.unwrap();
        }
        (h1, h2)
    };

    // 1. not yet sent: answered at once, while the servers are still held
    let (h1, h2) = hold().await;
    let a_run = run(&a, &sa, 1.0);
    wait_for_lane_clients(&proxy, 1);
    let b_run = run(&b, &sb, 1.0);
    wait_for_lane_clients(&proxy, 2);
    b_cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (r, _) = tokio::time::timeout(Duration::from_secs(30), b_run)
        .await
        .expect("B's cancelled statement still waits for a server")
        .unwrap();
    assert_eq!(code(&r).as_deref(), Some("57014"), "B: {r:?}");
    assert!(!a_run.is_finished(), "A ran without a server");
    for h in [&h1, &h2] {
        h.batch_execute("COMMIT").await.unwrap();
    }
    let (r, took) = a_run.await.unwrap();
    assert!(r.is_ok(), "A: {r:?}");
    assert!(took >= Duration::from_secs(1), "A: {took:?}");
    // B goes on as usual
    let (r, _) = run(&b, &sb, 0.0).await.unwrap();
    assert!(r.is_ok(), "B afterwards: {r:?}");

    // 2. sent behind A's statement: cancelled when it starts, A's is not
    let (h1, h2) = hold().await;
    let a_run = run(&a, &sa, 3.0);
    wait_for_lane_clients(&proxy, 1);
    let b_run = run(&b, &sb, 60.0);
    wait_for_lane_clients(&proxy, 2);
    // the shared server gets a server, and both batches are sent to it
    for h in [&h1, &h2] {
        h.batch_execute("COMMIT").await.unwrap();
    }
    poll_psql(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%mux_wait_sleep%' AND state = 'active' AND pid <> pg_backend_pid()",
        |v| v == "1",
        "A's statement runs",
    );
    b_cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (r, took) = a_run.await.unwrap();
    assert!(r.is_ok(), "A was cancelled: {r:?}");
    assert!(took >= Duration::from_secs(3), "A: {took:?}");
    let (r, took) = b_run.await.unwrap();
    assert_eq!(
        code(&r).as_deref(),
        Some("57014"),
        "B after {took:?}: {r:?}"
    );
    assert!(took < Duration::from_secs(50), "B: {took:?}");
}

/// How often each result came back (see [`busy_multiplexed_clients`]).
type Tally = Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>;

/// 16 clients that keep a multiplexed statement running without a pause
/// (so that their shared servers never go idle), counting in `tally` how
/// often each result came back: `sql` is prepared and run with no
/// parameters, its first column read as text. Once every client has been
/// answered, returns a flag that stops them and their tasks.
async fn busy_multiplexed_clients(
    proxy: &Proxy,
    db: &str,
    sql: &'static str,
    tally: &Tally,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = connect(&proxy.conn_str("blog", "blogpw", db))
            .await
            .unwrap();
        let st = c.prepare(sql).await.unwrap();
        let (tally, stop, answered) = (tally.clone(), stop.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let mut first = true;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v: String = c.query_one(&st, &[]).await.unwrap().get(0);
                *tally.lock().unwrap().entry(v).or_default() += 1;
                if std::mem::take(&mut first) {
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    let start = std::time::Instant::now();
    while answered.load(std::sync::atomic::Ordering::Relaxed) < 16 || multiplexed(proxy) < 200.0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not every client was answered, or nothing multiplexed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (stop, tasks)
}

/// The results that came back (and how often) between two readings of a
/// [`Tally`].
fn tally_between(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
) -> std::collections::HashMap<String, u64> {
    after
        .iter()
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Statement multiplexing: after a reload that moves a pool to another
/// database, statements go there within seconds, also when the shared
/// servers never go idle (before, they stayed on the old database as long
/// as their clients kept them busy: only a server given back to the pool
/// was compared with the pool's upstream).
#[tokio::test(flavor = "multi_thread")]
async fn multiplexed_statements_move_to_the_new_upstream_after_a_reload() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&format!(
        "databases:\n  muxmoving: {{host: 127.0.0.1, port: {}, dbname: app, pool_mode: transaction, pool_size: 4}}\npool:\n  multiplex_servers: 2\n  connect_timeout: 30s\n",
        pg.port
    ));
    let tally = Tally::default();
    let sql = "SELECT current_database()::text";
    let (stop, tasks) = busy_multiplexed_clients(&proxy, "muxmoving", sql, &tally).await;
    let yaml = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(
        &proxy.config_path,
        yaml.replace("dbname: app", "dbname: blog"),
    )
    .unwrap();
    proxy.signal("HUP");
    let start = std::time::Instant::now();
    while !proxy.log().contains("configuration reloaded") {
        assert!(start.elapsed() < Duration::from_secs(30), "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // what was sent to the old servers before they were told is answered
    // there; a few seconds later, everything runs on the new database
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = tally.lock().unwrap().clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = tally_between(&before, &tally.lock().unwrap());
    assert!(
        !window.contains_key("app") && window.contains_key("blog"),
        "3 to 5 s after the reload, statements ran on (database: count) {window:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
}

/// Statement multiplexing: a shared server kept busy without a pause is
/// still recycled after server_lifetime (before, only a server given back
/// to the pool was; a busy shared server never was).
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_shared_server_is_recycled_after_server_lifetime() {
    let proxy = tx_proxy(
        4,
        "pool:\n  multiplex_servers: 2\n  server_lifetime: 2s\n  connect_timeout: 30s\n",
    );
    let tally = Tally::default();
    let sql = "SELECT pg_backend_pid()::text";
    let (stop, tasks) = busy_multiplexed_clients(&proxy, "app", sql, &tally).await;
    let window = |secs: u64| {
        let tally = tally.clone();
        async move {
            let before = tally.lock().unwrap().clone();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let after = tally.lock().unwrap().clone();
            tally_between(&before, &after)
        }
    };
    let early = window(1).await;
    assert!(!early.is_empty());
    // every server of that second is past its lifetime 4 s later
    tokio::time::sleep(Duration::from_secs(4)).await;
    let late = window(2).await;
    let kept: Vec<_> = early.keys().filter(|pid| late.contains_key(*pid)).collect();
    assert!(
        kept.is_empty(),
        "backends {kept:?} still served statements after server_lifetime; \
         5 to 7 s in, statements ran on (backend: count) {late:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
}

/// pgbench's TPC-B-like script and its select-only one with prepared
/// statements, and the select-only one with unnamed statements kept
/// prepared (`-M extended`), 64 clients on 8 servers of which 4 multiplex:
/// no failures, the bank's books still balance (no write lost or applied
/// twice), and both protocol modes were multiplexed.
#[test]
fn pgbench_with_multiplexed_statements_has_no_failures_and_balanced_books() {
    let pg = shared_postgres();
    pg.psql("postgres", "CREATE DATABASE muxbench OWNER blog");
    let proxy = Proxy::start(&format!(
        "databases:\n  muxbench: {{host: 127.0.0.1, port: {}, pool_mode: transaction, pool_size: 8}}\npool:\n  checkout_timeout: 30s\n  multiplex_servers: 4\n  prepare_unnamed_statements: true\n",
        pg.port
    ));
    let url = proxy.url("blog", "blogpw", "muxbench");
    let (ok, _, text) = pgbench(&url, &["-i", "-s", "1", "-q"]);
    assert!(ok, "{text}");
    for (mode, script) in [
        ("prepared", &["-S"][..]),
        ("prepared", &[][..]),
        ("extended", &["-S"][..]),
    ] {
        let before = multiplexed(&proxy);
        // -n: no vacuum, and no truncation of the history the check below reads
        let mut args = vec!["-n", "-c", "64", "-j", "2", "-T", "5", "-M", mode];
        args.extend_from_slice(script);
        let (ok, failed, text) = pgbench(&url, &args);
        assert!(ok, "pgbench {args:?} failed:\n{text}");
        assert_eq!(failed, Some(0), "pgbench {args:?}:\n{text}");
        if !script.is_empty() {
            let n = multiplexed(&proxy) - before;
            assert!(n > 1000.0, "pgbench {args:?}: {n} multiplexed");
        }
    }
    let sums = pg.psql(
        "muxbench",
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(tbalance) FROM pgbench_tellers) AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(delta) FROM pgbench_history)",
    );
    assert_eq!(sums.trim(), "t", "the books do not balance");
}

/// When pgsift's own Parse of a statement fails on a multiplexed server
/// (its table is gone), each client using the statement gets the server's
/// error for it, never "prepared statement … does not exist" because it
/// was queued behind the failed Parse; once the table is back, all work.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_parse_on_a_multiplexed_server_is_each_clients_own_error() {
    let pg = shared_postgres();
    pg.psql("app", "DROP TABLE IF EXISTS mux_gone");
    let proxy = tx_proxy(4, "pool:\n  multiplex_servers: 2\n");
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(app_client(&proxy).await);
    }
    async fn all(
        clients: &[tokio_postgres::Client],
        st: &[tokio_postgres::Statement],
    ) -> Vec<Result<tokio_postgres::Row, tokio_postgres::Error>> {
        futures_util::future::join_all(clients.iter().zip(st).map(|(c, st)| c.query_one(st, &[])))
            .await
    }
    for round in 0..4 {
        pg.psql(
            "app",
            "CREATE TABLE mux_gone (x int); GRANT ALL ON mux_gone TO blog",
        );
        // a new text each round: prepared (on one server) while the table
        // exists, then run everywhere once it is gone, so the shared
        // servers prepare it themselves, concurrently, and fail
        let sql = format!("SELECT count(*) FROM mux_gone WHERE {round} >= 0");
        let mut st = Vec::new();
        for c in &clients {
            st.push(c.prepare(&sql).await.unwrap());
        }
        pg.psql("app", "DROP TABLE mux_gone");
        for r in all(&clients, &st).await {
            let err = r.unwrap_err();
            assert_eq!(
                err.as_db_error().map(|e| e.code()),
                Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE),
                "round {round}: {err}"
            );
        }
        if round == 3 {
            // and once the table is back, every client's statement works
            pg.psql(
                "app",
                "CREATE TABLE mux_gone (x int); GRANT ALL ON mux_gone TO blog",
            );
            for r in all(&clients, &st).await {
                assert_eq!(r.unwrap().get::<_, i64>(0), 0);
            }
        }
    }
    assert!(multiplexed(&proxy) > 0.0);
}

/// A simple-query COPY FROM STDIN whose data the server rejects, without a
/// CopyDone from the client: its next batches are answered as usual, the
/// server goes back to the pool after them (another client gets it), and
/// it is reused, not closed as out of step.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_sent_whole_before_its_response_releases_its_server() {
    use common::raw::{message, query, raw_login, read_until};
    use tokio::io::AsyncWriteExt;
    let pg = shared_postgres();
    pg.psql(
        "app",
        "CREATE TABLE tx_whole_copy (id int); GRANT ALL ON tx_whole_copy TO blog",
    );
    let proxy = tx_proxy(1, "pool:\n  checkout_timeout: 2s\n");
    let mut s = raw_login(proxy.port).await;
    // the query, its data and its end in one write, before the server's
    // CopyInResponse
    let mut whole = query("COPY tx_whole_copy FROM STDIN");
    whole.extend_from_slice(&message(b'd', b"1\n2\n"));
    whole.extend_from_slice(&message(b'c', b""));
    s.write_all(&whole).await.unwrap();
    read_until(&mut s, b'Z').await;
    // the raw client stays connected, idle: the pool's only server is free
    let c = app_client(&proxy).await;
    let rows = c
        .simple_query("SELECT count(*) FROM tx_whole_copy")
        .await
        .expect("the pool's only server is free");
    assert!(matches!(
        &rows[1],
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("2")
    ));
    drop(s);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_copy_the_client_never_ended_releases_its_server() {
    use common::raw::{first_error, first_value, message, one_off, query, raw_login, read_until};
    use tokio::io::AsyncWriteExt;
    let pg = shared_postgres();
    pg.psql(
        "app",
        "CREATE TABLE tx_failed_copy (id int); GRANT ALL ON tx_failed_copy TO blog",
    );
    let proxy = tx_proxy(1, "pool:\n  checkout_timeout: 2s\n");
    let mut s = raw_login(proxy.port).await;
    s.write_all(&query("COPY tx_failed_copy FROM STDIN"))
        .await
        .unwrap();
    read_until(&mut s, b'G').await;
    s.write_all(&message(b'd', b"not a number\n"))
        .await
        .unwrap();
    let failed = read_until(&mut s, b'Z').await;
    assert_eq!(first_error(&failed).as_deref(), Some("22P02"));
    s.write_all(&one_off("SELECT pg_backend_pid()"))
        .await
        .unwrap();
    let pid = first_value(&read_until(&mut s, b'Z').await).unwrap();
    // the raw client stays connected, idle
    let c = app_client(&proxy).await;
    let other = c
        .simple_query("SELECT pg_backend_pid()")
        .await
        .expect("the pool's only server is free");
    let other = other
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap();
    assert_eq!(other, pid, "the server was reused");
    drop(s);
}

/// A raw client's batch of messages, written at once.
async fn send(s: &mut tokio::net::TcpStream, msgs: &[Vec<u8>]) {
    use tokio::io::AsyncWriteExt;
    s.write_all(&msgs.concat()).await.unwrap();
}

/// After an error the server ignores everything up to Sync, a simple Query
/// too: no ReadyForQuery is owed for it, and the client's server goes back
/// to the pool after the Sync's.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_the_server_skipped_after_an_error_releases_the_server() {
    use common::raw::{bind, errors, execute, first_error, message, parse, query};
    use common::raw::{raw_login, read_ready, read_until, sync};
    let proxy = tx_proxy(1, "pool:\n  checkout_timeout: 2s\n");
    let mut s = raw_login(proxy.port).await;
    send(
        &mut s,
        &[
            parse("", "SELECT 1/0"),
            bind("", &[]),
            execute(),
            query("SELECT 2"),
            sync(),
        ],
    )
    .await;
    let got = read_ready(&mut s, 1).await;
    assert_eq!(errors(&got), ["22012"]);
    assert!(
        !got.iter().any(|(t, _)| *t == b'D'),
        "the query was skipped"
    );
    // the same with the error back before the client sent the query
    let failing = [
        parse("", "SELECT 1/0"),
        bind("", &[]),
        execute(),
        message(b'H', b""),
    ];
    send(&mut s, &failing).await;
    assert_eq!(
        first_error(&read_until(&mut s, b'E').await).as_deref(),
        Some("22012")
    );
    send(&mut s, &[query("SELECT 2"), sync()]).await;
    let got = read_ready(&mut s, 1).await;
    assert!(
        !got.iter().any(|(t, _)| *t == b'D'),
        "the query was skipped"
    );
    // the raw client stays connected, idle: the pool's only server is free
    let c = app_client(&proxy).await;
    c.simple_query("SELECT 4")
        .await
        .expect("the pool's only server is free");
    drop(s);
}

/// The Close pgsift sends to make room for a statement (least recently
/// used first) sits in the client's pipeline: when an earlier message fails,
/// the server skips it and keeps the statement. pgsift must not take it for
/// gone (preparing it again would fail with 42P05 at every later use).
#[tokio::test(flavor = "multi_thread")]
async fn an_eviction_the_server_skipped_after_an_error_leaves_the_statement_usable() {
    use common::raw::{bind, errors, execute, first_value, message, parse, raw_login};
    use common::raw::{read_ready, read_until, sync};
    let proxy = tx_proxy(1, "pool:\n  max_prepared_statements: 2\n");
    let mut s = raw_login(proxy.port).await;
    send(
        &mut s,
        &[parse("a", "SELECT 1"), parse("b", "SELECT 2"), sync()],
    )
    .await;
    assert!(errors(&read_ready(&mut s, 1).await).is_empty());
    // preparing c evicts a, after a division by zero
    send(
        &mut s,
        &[
            parse("", "SELECT 1/0"),
            bind("", &[]),
            execute(),
            parse("c", "SELECT 3"),
            sync(),
        ],
    )
    .await;
    assert_eq!(errors(&read_ready(&mut s, 1).await), ["22012"]);
    // (the server skipped the Parse of c too)
    send(&mut s, &[parse("c", "SELECT 3"), sync()]).await;
    assert_eq!(errors(&read_ready(&mut s, 1).await), Vec::<String>::new());
    for _ in 0..3 {
        send(&mut s, &[bind("a", &[]), execute(), sync()]).await;
        let got = read_ready(&mut s, 1).await;
        assert_eq!(errors(&got), Vec::<String>::new());
        assert_eq!(first_value(&got).as_deref(), Some("1"));
    }
    let run = |name: &str| [bind(name, &[]), execute(), sync()].concat();
    for (name, value) in [("b", "2"), ("c", "3")] {
        send(&mut s, &[run(name)]).await;
        let got = read_ready(&mut s, 1).await;
        assert_eq!(errors(&got), Vec::<String>::new(), "{name}");
        assert_eq!(first_value(&got).as_deref(), Some(value));
    }
    // the statement evicted (b) used again after the Sync, in the same batch
    let failing = [parse("", "SELECT 1/0"), bind("", &[]), execute()].concat();
    send(
        &mut s,
        &[failing.clone(), parse("d", "SELECT 4"), sync(), run("b")],
    )
    .await;
    let got = read_ready(&mut s, 2).await;
    assert_eq!(errors(&got), ["22012"]);
    assert_eq!(first_value(&got).as_deref(), Some("2"));
    // and after the error has come back, before the client's Sync (b goes
    // again: c is used after it)
    send(&mut s, &[run("c")]).await;
    assert_eq!(errors(&read_ready(&mut s, 1).await), Vec::<String>::new());
    send(
        &mut s,
        &[failing, parse("e", "SELECT 5"), message(b'H', b"")],
    )
    .await;
    assert_eq!(errors(&read_until(&mut s, b'E').await), ["22012"]);
    send(&mut s, &[sync(), run("b")]).await;
    let got = read_ready(&mut s, 2).await;
    assert_eq!(errors(&got), Vec::<String>::new());
    assert_eq!(first_value(&got).as_deref(), Some("2"));
    for (name, value) in [("a", "1"), ("b", "2"), ("c", "3")] {
        send(&mut s, &[run(name)]).await;
        let got = read_ready(&mut s, 1).await;
        assert_eq!(errors(&got), Vec::<String>::new(), "{name}");
        assert_eq!(first_value(&got).as_deref(), Some(value));
    }
}

/// DEALLOCATE ALL drops the statements prepared before it, not those the
/// client prepared after it in the same pipeline; and a Parse after it of a
/// text the server had is prepared again, not answered by pgsift.
#[tokio::test(flavor = "multi_thread")]
async fn deallocate_all_drops_only_the_statements_prepared_before_it() {
    use common::raw::{bind, errors, execute, first_error, first_value, parse, query};
    use common::raw::{raw_login, read_ready, sync};
    let proxy = tx_proxy(1, "");
    let mut s = raw_login(proxy.port).await;
    send(
        &mut s,
        &[
            parse("", "DEALLOCATE ALL"),
            bind("", &[]),
            execute(),
            parse("x", "SELECT 5"),
            bind("x", &[]),
            execute(),
            sync(),
        ],
    )
    .await;
    assert!(errors(&read_ready(&mut s, 1).await).is_empty());
    for _ in 0..2 {
        send(&mut s, &[bind("x", &[]), execute(), sync()]).await;
        let got = read_ready(&mut s, 1).await;
        assert_eq!(errors(&got), Vec::<String>::new());
        assert_eq!(first_value(&got).as_deref(), Some("5"));
    }
    send(&mut s, &[parse("y", "SELECT 6"), sync()]).await;
    assert!(errors(&read_ready(&mut s, 1).await).is_empty());
    send(
        &mut s,
        &[
            query("DEALLOCATE ALL"),
            parse("y2", "SELECT 6"),
            bind("y2", &[]),
            execute(),
            sync(),
        ],
    )
    .await;
    let got = read_ready(&mut s, 2).await;
    assert_eq!(errors(&got), Vec::<String>::new());
    assert_eq!(first_value(&got).as_deref(), Some("6"));
    // a reset that fails drops nothing (as a Query or a Parse of it)
    send(&mut s, &[parse("z", "SELECT 7"), sync()]).await;
    assert!(errors(&read_ready(&mut s, 1).await).is_empty());
    let extended = [parse("", "DISCARD ALL"), bind("", &[]), execute(), sync()].concat();
    for discard in [query("DISCARD ALL"), extended] {
        let steps = [
            (query("BEGIN"), None),
            (discard, Some("25001")),
            (query("ROLLBACK"), None),
        ];
        for (step, error) in steps {
            send(&mut s, &[step]).await;
            assert_eq!(first_error(&read_ready(&mut s, 1).await).as_deref(), error);
        }
        send(&mut s, &[bind("z", &[]), execute(), sync()]).await;
        let got = read_ready(&mut s, 1).await;
        assert_eq!(errors(&got), Vec::<String>::new());
        assert_eq!(first_value(&got).as_deref(), Some("7"));
    }
}

/// With unnamed statements left to the server (the default), a client's
/// unnamed statement stays on the server it used: another client binding
/// the unnamed statement there must get Postgres's 26000, not run it.
#[tokio::test(flavor = "multi_thread")]
async fn a_clients_unnamed_statement_is_not_anothers() {
    use common::raw::{bind, errors, execute, first_value, parse, raw_login, read_ready};
    use common::raw::{sync, target};
    let proxy = tx_proxy(1, "");
    let mut a = raw_login(proxy.port).await;
    let mut b = raw_login(proxy.port).await;
    send(&mut a, &[parse("", "SELECT 'A:' || $1::text"), sync()]).await;
    assert!(errors(&read_ready(&mut a, 1).await).is_empty());
    // its own, in a later transaction on the same server
    send(&mut a, &[bind("", &["a"]), execute(), sync()]).await;
    assert_eq!(
        first_value(&read_ready(&mut a, 1).await).as_deref(),
        Some("A:a")
    );
    send(&mut b, &[bind("", &["b"]), execute(), sync()]).await;
    let got = read_ready(&mut b, 1).await;
    assert_eq!(errors(&got), ["26000"], "{:?}", first_value(&got));
    send(&mut b, &[target(b'D', b'S', ""), sync()]).await;
    assert_eq!(errors(&read_ready(&mut b, 1).await), ["26000"]);
    // its own unnamed statement, as usual
    send(
        &mut b,
        &[
            parse("", "SELECT 'B:' || $1::text"),
            bind("", &["b"]),
            execute(),
            sync(),
        ],
    )
    .await;
    assert_eq!(
        first_value(&read_ready(&mut b, 1).await).as_deref(),
        Some("B:b")
    );
    send(&mut b, &[bind("", &["again"]), execute(), sync()]).await;
    assert_eq!(
        first_value(&read_ready(&mut b, 1).await).as_deref(),
        Some("B:again")
    );
}

/// A statement name the client uses already is refused (42P05), whatever
/// the text, as Postgres does, and keeps its statement; DEALLOCATE ALL
/// frees every name.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_name_in_use_is_refused_as_on_postgres() {
    use common::raw::{errors, first_value, parse, query, raw_login, read_ready, sync};
    let proxy = tx_proxy(1, "");
    let mut s = raw_login(proxy.port).await;
    send(&mut s, &[parse("s1", "SELECT 1"), sync()]).await;
    assert!(errors(&read_ready(&mut s, 1).await).is_empty());
    for sql in ["SELECT 2", "SELECT 1"] {
        send(&mut s, &[parse("s1", sql), run("s1")]).await;
        let got = read_ready(&mut s, 1).await;
        assert_eq!(errors(&got), ["42P05"], "{sql}");
        assert_eq!(first_value(&got), None);
        send(&mut s, &[run("s1")]).await;
        assert_eq!(
            first_value(&read_ready(&mut s, 1).await).as_deref(),
            Some("1")
        );
    }
    // the name of the refused Parse is not left on the server
    let left = "SELECT count(*) FROM pg_prepared_statements WHERE name = 's1'";
    send(&mut s, &[query(left)]).await;
    assert_eq!(
        first_value(&read_ready(&mut s, 1).await).as_deref(),
        Some("0")
    );
    // DEALLOCATE ALL frees the names
    send(
        &mut s,
        &[query("DEALLOCATE ALL"), parse("s1", "SELECT 4"), run("s1")],
    )
    .await;
    let got = read_ready(&mut s, 2).await;
    assert_eq!(errors(&got), Vec::<String>::new());
    assert_eq!(first_value(&got).as_deref(), Some("4"));
}

/// Bind, Execute and Sync of the unnamed portal of `name`.
fn run(name: &str) -> Vec<u8> {
    use common::raw::{bind, execute, sync};
    [bind(name, &[]), execute(), sync()].concat()
}

/// A Close the server skipped after an error leaves the name defined, and
/// a Parse that failed leaves it free, as on Postgres.
#[tokio::test(flavor = "multi_thread")]
async fn a_skipped_close_or_failed_parse_changes_no_statement_name() {
    use common::raw::{bind, errors, execute, first_value, parse, raw_login, read_ready};
    use common::raw::{sync, target};
    let proxy = tx_proxy(1, "");
    let mut s = raw_login(proxy.port).await;
    send(&mut s, &[parse("s1", "SELECT 1"), sync()]).await;
    assert!(errors(&read_ready(&mut s, 1).await).is_empty());
    let failing = [parse("", "SELECT 1/0"), bind("", &[]), execute()].concat();
    send(&mut s, &[failing, target(b'C', b'S', "s1"), sync()]).await;
    assert_eq!(errors(&read_ready(&mut s, 1).await), ["22012"]);
    send(&mut s, &[run("s1")]).await;
    assert_eq!(
        first_value(&read_ready(&mut s, 1).await).as_deref(),
        Some("1")
    );
    send(&mut s, &[parse("s3", "SELEC"), sync()]).await;
    assert_eq!(errors(&read_ready(&mut s, 1).await), ["42601"]);
    send(&mut s, &[target(b'D', b'S', "s3"), sync()]).await;
    assert_eq!(errors(&read_ready(&mut s, 1).await), ["26000"]);
    send(&mut s, &[parse("s3", "SELECT 3"), run("s3")]).await;
    assert_eq!(
        first_value(&read_ready(&mut s, 1).await).as_deref(),
        Some("3")
    );
}

/// A SQL `DEALLOCATE name` of a statement the client prepared through the
/// protocol runs on whichever server the client lands on; where that
/// server lacks the statement, pgsift prepares it first. If that Parse
/// fails (the table it reads is gone), the server skips everything up to
/// a Sync, the client's Query included: before, the client then waited for
/// ever. It now gets the errors and its ReadyForQuery, and the server
/// stays usable.
#[tokio::test(flavor = "multi_thread")]
async fn a_deallocate_whose_statement_no_longer_parses_is_answered() {
    use common::raw::{first_error, message, query, raw_login, read_until};
    use tokio::io::AsyncWriteExt;
    let pg = shared_postgres();
    pg.psql(
        "app",
        "CREATE TABLE dealloc_gone (v int); GRANT ALL ON dealloc_gone TO blog",
    );
    // one server, one statement per server: s2 evicts s1 from it
    let proxy = tx_proxy(1, "pool:\n  max_prepared_statements: 1\n");
    let parse = |name: &str, sql: &str| {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(sql.as_bytes());
        body.extend_from_slice(&[0, 0, 0]);
        let mut m = message(b'P', &body);
        m.extend(message(b'S', b""));
        m
    };
    let mut s = raw_login(proxy.port).await;
    s.write_all(&parse("s1", "SELECT v FROM dealloc_gone"))
        .await
        .unwrap();
    assert_eq!(first_error(&read_until(&mut s, b'Z').await), None);
    s.write_all(&parse("s2", "SELECT 2")).await.unwrap();
    assert_eq!(first_error(&read_until(&mut s, b'Z').await), None);
    pg.psql("app", "DROP TABLE dealloc_gone");
    s.write_all(&query("DEALLOCATE s1")).await.unwrap();
    let msgs = read_until(&mut s, b'Z').await;
    assert_eq!(first_error(&msgs).as_deref(), Some("42P01"), "{msgs:?}");
    assert_eq!(msgs.iter().filter(|(t, _)| *t == b'Z').count(), 1);
    // the client and the pool's one server go on
    s.write_all(&query("SELECT 41 + 1")).await.unwrap();
    let msgs = read_until(&mut s, b'Z').await;
    assert_eq!(common::raw::first_value(&msgs).as_deref(), Some("42"));
    let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    assert_eq!(scalar(&c, "SELECT 7").await, "7");
}

/// Pipelines where an error makes the server skip what pgsift had already
/// booked (found by a review of the statement-name changes): a name
/// prepared again in a later Sync segment after its first Parse failed is
/// taken, as on Postgres (not 42P05, and not lost); a DISCARD ALL parsed
/// but skipped before any Execute gives the client its names back; a
/// client whose unnamed Parse was skipped cannot run the unnamed statement
/// another client left on the server (26000, as on Postgres).
#[tokio::test(flavor = "multi_thread")]
async fn statement_names_survive_what_the_server_skips_after_an_error() {
    use common::raw::{bind, errors, execute, first_value, parse, raw_login, read_ready, sync};
    use tokio::io::AsyncWriteExt;
    let proxy = tx_proxy(1, "");
    let cat = |parts: &[Vec<u8>]| parts.concat();

    // a failed Parse, then the same name again after the Sync
    let mut s = raw_login(proxy.port).await;
    s.write_all(&cat(&[
        parse("s1", "SELEC 'typo'"),
        sync(),
        parse("s1", "SELECT 'fixed'"),
        bind("s1", &[]),
        execute(),
        sync(),
    ]))
    .await
    .unwrap();
    let msgs = read_ready(&mut s, 2).await;
    assert_eq!(errors(&msgs), ["42601"], "{msgs:?}");
    assert_eq!(first_value(&msgs).as_deref(), Some("fixed"));
    s.write_all(&cat(&[bind("s1", &[]), execute(), sync()]))
        .await
        .unwrap();
    let msgs = read_ready(&mut s, 1).await;
    assert_eq!(first_value(&msgs).as_deref(), Some("fixed"), "{msgs:?}");

    // a DISCARD ALL the server skips, parsed before any Execute
    s.write_all(&cat(&[parse("s2", "SELECT 'two'"), sync()]))
        .await
        .unwrap();
    read_ready(&mut s, 1).await;
    let mut flush = common::raw::message(b'H', b"");
    flush = cat(&[
        bind("nosuch", &[]),
        execute(),
        parse("", "DISCARD ALL"),
        flush,
    ]);
    s.write_all(&flush).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(&sync()).await.unwrap();
    let msgs = read_ready(&mut s, 1).await;
    assert_eq!(errors(&msgs), ["26000"], "{msgs:?}");
    s.write_all(&cat(&[bind("s2", &[]), execute(), sync()]))
        .await
        .unwrap();
    let msgs = read_ready(&mut s, 1).await;
    assert_eq!(first_value(&msgs).as_deref(), Some("two"), "{msgs:?}");
    s.write_all(&common::raw::terminate()).await.unwrap();

    // one client's unnamed statement, another client's skipped Parse
    let mut a = raw_login(proxy.port).await;
    a.write_all(&cat(&[
        parse("", "SELECT 'secret of A'"),
        bind("", &[]),
        execute(),
        sync(),
    ]))
    .await
    .unwrap();
    read_ready(&mut a, 1).await;
    let mut b = raw_login(proxy.port).await;
    b.write_all(&cat(&[
        bind("nosuch", &[]),
        execute(),
        parse("", "SELECT 'own of B'"),
        sync(),
    ]))
    .await
    .unwrap();
    read_ready(&mut b, 1).await;
    b.write_all(&cat(&[bind("", &[]), execute(), sync()]))
        .await
        .unwrap();
    let msgs = read_ready(&mut b, 1).await;
    assert_eq!(first_value(&msgs), None, "{msgs:?}");
    assert_eq!(errors(&msgs), ["26000"], "{msgs:?}");
}
