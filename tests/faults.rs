//! Fault tests with a Postgres of their own: upstream outage and recovery,
//! graceful drain on SIGTERM, reload on SIGHUP with a broken file.
// Tests run tokio runtimes of their own, with timers: the timer functions
// clippy.toml keeps out of pgsift (src/timer.rs) are theirs to use.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{connect, http_get, setup_roles, Postgres, Proxy};
use std::time::{Duration, Instant};

fn own_cluster() -> Postgres {
    let pg = Postgres::start();
    setup_roles(&pg);
    pg
}

fn yaml(pg: &Postgres, mode: &str, extra: &str) -> String {
    format!(
        "databases:\n  app: {{host: 127.0.0.1, port: {}, pool_mode: {mode}, pool_size: 4}}\n{extra}",
        pg.port
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_outage_gives_08006_within_connect_timeout_and_pgsift_recovers() {
    let pg = own_cluster();
    // an upstream that accepts connections and never says a word: only
    // connect_timeout ends the wait (the login timeout is longer), where a
    // stopped Postgres refuses at once
    let hole_port = common::silent_upstream().await;
    let proxy = Proxy::start(&yaml(
        &pg,
        "transaction",
        &format!(
            "  hole: {{host: 127.0.0.1, port: {hole_port}, pool_mode: transaction, pool_size: 4}}\n\
             pool:\n  connect_timeout: 1s\n  client_login_timeout: 10s\n"
        ),
    ));
    // (once: after a failed connect, clients fail fast for a backoff)
    let started = Instant::now();
    let result = async {
        let c = connect(&proxy.conn_str("blog", "blogpw", "hole")).await?;
        c.simple_query("SELECT 1").await
    }
    .await;
    let err = result.expect_err("an upstream that never answers, no result");
    let code = err.as_db_error().map(|e| e.code().code().to_owned());
    assert_eq!(code.as_deref(), Some("08006"), "got {err:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "connect_timeout is 1s; the error took {took:?}"
    );

    let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    drop(c);

    pg.stop("immediate");
    for _ in 0..3 {
        let started = Instant::now();
        let result = async {
            let c = connect(&proxy.conn_str("blog", "blogpw", "app")).await?;
            c.simple_query("SELECT 1").await
        }
        .await;
        let err = result.expect_err("no upstream, no result");
        let code = err.as_db_error().map(|e| e.code().code().to_owned());
        assert_eq!(code.as_deref(), Some("08006"), "got {err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok = async {
            let c = connect(&proxy.conn_str("blog", "blogpw", "app")).await?;
            c.simple_query("SELECT 1").await
        }
        .await;
        if ok.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "pgsift did not recover: {ok:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_idle_servers_are_discarded_not_handed_out() {
    let pg = own_cluster();
    let proxy = Proxy::start(&yaml(&pg, "transaction", ""));
    let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    // kill every server backend behind pgsift's back
    pg.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'blog'",
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // the client's next transaction gets a fresh server
    let rows = c.simple_query("SELECT 2").await.unwrap();
    assert!(!rows.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_transactions_finish_then_exits() {
    let pg = own_cluster();
    let mut proxy = Proxy::start(&yaml(&pg, "transaction", "shutdown_timeout: 10s\n"));
    let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    let running = tokio::spawn(async move {
        let r = c.simple_query("SELECT pg_sleep(1), 'done'").await;
        (r, c)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal("TERM");
    let (r, _c) = running.await.unwrap();
    r.expect("the in-flight query finishes");
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("pgsift exits after the drain");
    assert!(status.success(), "{status:?}");
    assert!(
        connect(&proxy.conn_str("blog", "blogpw", "app"))
            .await
            .is_err(),
        "no new clients"
    );
}

/// SPEC §9: /healthz answers 200 while the process serves, the drain
/// included; /readyz answers 503 from SIGTERM on.
#[tokio::test(flavor = "multi_thread")]
async fn health_endpoints_answer_while_the_drain_runs() {
    let pg = own_cluster();
    let mut proxy = Proxy::start(&yaml(&pg, "transaction", "shutdown_timeout: 20s\n"));
    let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    let running = tokio::spawn(async move {
        let r = c.batch_execute("BEGIN; SELECT pg_sleep(3)").await;
        (r, c)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let admin = proxy.admin_port;
    let status = move |path: &'static str| {
        tokio::task::spawn_blocking(move || http_get(admin, path).map(|(s, _)| s))
    };
    let health = status("/healthz").await.unwrap();
    let ready = status("/readyz").await.unwrap();
    assert!(!running.is_finished(), "the transaction is still running");
    assert_eq!(health, Some(200), "/healthz while draining");
    assert_eq!(ready, Some(503), "/readyz while draining");
    let (r, c) = running.await.unwrap();
    r.expect("the in-flight statement finishes");
    assert_eq!(status("/healthz").await.unwrap(), Some(200));
    c.batch_execute("COMMIT")
        .await
        .expect("the transaction finishes");
    let exit = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("pgsift exits after the drain");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_timeout_bounds_the_drain() {
    let pg = own_cluster();
    let mut proxy = Proxy::start(&yaml(&pg, "transaction", "shutdown_timeout: 1s\n"));
    let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    let started = Instant::now();
    proxy.signal("TERM");
    proxy
        .wait_exit(Duration::from_secs(5))
        .expect("pgsift exits");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited for the open transaction"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_broken_file_keeps_the_old_config_serving() {
    let pg = own_cluster();
    let proxy = Proxy::start(&yaml(&pg, "transaction", ""));
    let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    let good = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(&proxy.config_path, format!("{good}\nbogus_key: 1\n")).unwrap();
    proxy.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.simple_query("SELECT 1")
        .await
        .expect("existing client keeps working");
    let c2 = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .expect("new clients still accepted");
    c2.simple_query("SELECT 1").await.unwrap();
    assert!(proxy.log().contains("reload rejected"), "{}", proxy.log());
}

/// Both of pgsift's sockets of a session, the client's and the server's,
/// have TCP keepalive on (as Postgres's and PgBouncer's do by default), so
/// a peer that vanished without closing (a dead host, a NAT that forgot
/// the flow) does not hold a session and its server for ever.
#[tokio::test(flavor = "multi_thread")]
async fn client_and_server_sockets_have_tcp_keepalive() {
    let pg = common::shared_postgres();
    let proxy = Proxy::start(&common::databases_yaml(pg, "session", 2));
    let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let pid = format!("pid={},", proxy.pid());
    let client_side = format!("127.0.0.1:{} ", proxy.port);
    let server_side = format!("127.0.0.1:{} ", pg.port);
    // ss shows one timer per socket: keepalive's once nothing is in flight
    // (an unacknowledged send shows the retransmission timer instead)
    let mut last = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new("ss")
            .args(["-tnopH", "state", "established"])
            .output()
            .expect("ss (iproute2)");
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        let ours: Vec<&str> = last.lines().filter(|l| l.contains(&pid)).collect();
        let keepalive = |needle: &str| {
            ours.iter()
                .any(|l| l.contains(needle) && l.contains("timer:(keepalive"))
        };
        if keepalive(&client_side) && keepalive(&server_side) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pgsift's client and server sockets should both show a keepalive timer:\n{last}");
}

/// Refused upstream logins are backed off like unreachable servers (as
/// PgBouncer's server_login_retry does): a full server (53300) or a wrong
/// server password (28P01) is not asked again for every client. The
/// clients that come meanwhile fail fast with the last refusal, its
/// SQLSTATE kept, and a text that says what happened (nothing timed out).
#[tokio::test(flavor = "multi_thread")]
async fn refused_upstream_logins_are_backed_off_and_clients_get_the_refusal() {
    let pg = own_cluster();
    pg.psql(
        "postgres",
        "CREATE ROLE capped LOGIN PASSWORD 'cappedpw' CONNECTION LIMIT 0",
    );
    pg.psql("postgres", "CREATE ROLE mistyped LOGIN PASSWORD 'rightpw'");
    let db = |name: &str, user: &str, pw: &str| {
        format!(
            "  {name}: {{host: 127.0.0.1, port: {}, dbname: app, server_user: {user}, \
             server_password: {pw}, pool_mode: transaction, pool_size: 4}}\n",
            pg.port
        )
    };
    let proxy = Proxy::start(&format!(
        "databases:\n{}{}",
        db("full", "capped", "cappedpw"),
        db("badpw", "mistyped", "wrongpw")
    ));
    const CLIENTS: usize = 30;
    for (name, code, upstream_line) in [
        ("full", "53300", "too many connections for role \"capped\""),
        (
            "badpw",
            "28P01",
            "password authentication failed for user \"mistyped\"",
        ),
    ] {
        let mut messages = Vec::new();
        for _ in 0..CLIENTS {
            let result = async {
                let c = connect(&proxy.conn_str("blog", "blogpw", name)).await?;
                c.simple_query("SELECT 1").await
            }
            .await;
            let err = result.expect_err("the upstream refuses every login");
            let e = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
            assert_eq!(e.code().code(), code, "{name}: {e:?}");
            messages.push(e.message().to_owned());
        }
        let refused = pg.log().matches(upstream_line).count();
        assert!(
            (1..CLIENTS / 2).contains(&refused),
            "{name}: {refused} refused upstream logins for {CLIENTS} clients"
        );
        let fast_failed = messages
            .iter()
            .find(|m| m.contains("tries again"))
            .unwrap_or_else(|| panic!("{name}: no client failed fast: {messages:?}"));
        assert!(!fast_failed.contains("timed out"), "{fast_failed}");
    }
}

/// The pool's entry in /api/pools.
fn api_pool(proxy: &Proxy, db: &str) -> serde_json::Value {
    let (_, body) = http_get(proxy.admin_port, "/api/pools").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["database"] == db)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Backend pids of `blog` in database `app`.
fn blog_backends(pg: &Postgres) -> Vec<String> {
    pg.psql(
        "postgres",
        "SELECT pid FROM pg_stat_activity WHERE usename = 'blog' AND datname = 'app'",
    )
    .lines()
    .map(str::trim)
    .filter(|l| !l.is_empty())
    .map(str::to_owned)
    .collect()
}

/// Waits (up to `limit`) until `ok` holds, polling.
async fn eventually(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each pool's upkeep runs on its own: while an upstream that never
/// answers holds its pool's upkeep for connect_timeout (60 s here), a
/// healthy pool whose servers died is refilled to min_pool_size at its
/// next round, not after the other pool's connect gives up.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_does_not_hold_up_other_pools_upkeep() {
    let pg = own_cluster();
    let hole_port = common::silent_upstream().await;
    let proxy = Proxy::start(&format!(
        "databases:\n  \
         hole: {{host: 127.0.0.1, port: {hole_port}, dbname: app, server_user: blog, server_password: blogpw, pool_mode: transaction, pool_size: 2, min_pool_size: 1}}\n  \
         healthy: {{host: 127.0.0.1, port: {}, dbname: app, server_user: blog, server_password: blogpw, pool_mode: transaction, pool_size: 3, min_pool_size: 2}}\n\
         pool:\n  connect_timeout: 60s\n",
        pg.port
    ));
    eventually(Duration::from_secs(20), "both pools' upkeep", || {
        api_pool(&proxy, "hole")["connecting"] == 1 && api_pool(&proxy, "healthy")["idle"] == 2
    })
    .await;
    let killed = blog_backends(&pg);
    assert_eq!(killed.len(), 2, "{killed:?}");
    pg.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'blog' AND datname = 'app'",
    );
    // (the hole's connect goes on for a minute)
    eventually(Duration::from_secs(15), "healthy refilled", || {
        let now = blog_backends(&pg);
        now.iter().filter(|p| !killed.contains(p)).count() == 2
    })
    .await;
    assert_eq!(api_pool(&proxy, "hole")["connecting"], 1);
}

/// A paused pool is not refilled to min_pool_size (as in PgBouncer: a
/// pause is often for upstream maintenance); RESUME refills it.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_pool_is_not_refilled_to_min_pool_size_until_resume() {
    let pg = own_cluster();
    pg.psql("postgres", "CREATE DATABASE witness OWNER blog");
    let proxy = Proxy::start(&format!(
        "databases:\n  \
         paused: {{host: 127.0.0.1, port: {p}, dbname: app, server_user: blog, server_password: blogpw, pool_mode: transaction, pool_size: 3, min_pool_size: 2}}\n  \
         witness: {{host: 127.0.0.1, port: {p}, dbname: witness, server_user: blog, server_password: blogpw, pool_mode: transaction, pool_size: 2, min_pool_size: 1}}\n",
        p = pg.port
    ));
    let witness_backends = || {
        pg.psql(
            "postgres",
            "SELECT pid FROM pg_stat_activity WHERE datname = 'witness'",
        )
        .trim()
        .to_owned()
    };
    eventually(Duration::from_secs(20), "min_pool_size opened", || {
        api_pool(&proxy, "paused")["idle"] == 2
            && blog_backends(&pg).len() == 2
            && !witness_backends().is_empty()
    })
    .await;
    let admin = connect(&proxy.conn_str("admin", "adminpw", "pgsift"))
        .await
        .unwrap();
    admin.simple_query("PAUSE paused").await.unwrap();
    pg.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'blog' AND datname = 'app'",
    );
    // an upkeep round of the paused pool drops its dead servers...
    eventually(Duration::from_secs(15), "dead servers dropped", || {
        api_pool(&proxy, "paused")["idle"] == 0
    })
    .await;
    // ...and at least one more round passes (the witness pool, killed
    // now, is refilled by a later one)
    let witness = witness_backends();
    pg.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'witness'",
    );
    eventually(Duration::from_secs(15), "witness refilled", || {
        let now = witness_backends();
        !now.is_empty() && now != witness
    })
    .await;
    assert_eq!(
        blog_backends(&pg),
        Vec::<String>::new(),
        "opened while paused"
    );
    let pool = api_pool(&proxy, "paused");
    assert_eq!(pool["idle"], 0, "{pool}");
    assert_eq!(pool["connecting"], 0, "{pool}");
    admin.simple_query("RESUME paused").await.unwrap();
    eventually(Duration::from_secs(15), "refilled after RESUME", || {
        blog_backends(&pg).len() == 2
    })
    .await;
}

/// A second SIGTERM during the drain stops pgsift at once (as PgBouncer
/// 1.23 does), without waiting for shutdown_timeout; the client still in
/// its transaction is told why (FATAL 57P01) before its connection closes.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_ends_the_drain_at_once_and_clients_get_57p01() {
    use common::raw;
    use tokio::io::AsyncWriteExt;
    let pg = own_cluster();
    let mut proxy = Proxy::start(&yaml(&pg, "transaction", "shutdown_timeout: 120s\n"));
    let mut s = raw::raw_login(proxy.port).await;
    s.write_all(&raw::query("BEGIN")).await.unwrap();
    raw::read_ready(&mut s, 1).await;
    proxy.signal("TERM");
    let admin = proxy.admin_port;
    eventually(Duration::from_secs(10), "the drain began", || {
        http_get(admin, "/readyz").map(|(s, _)| s) == Some(503)
    })
    .await;
    assert!(proxy.wait_exit(Duration::from_millis(200)).is_none());
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .expect("pgsift exits at the second SIGTERM (shutdown_timeout is 120 s)");
    assert!(status.success(), "{status:?}");
    let bytes = raw::read_until_closed(&mut s).await;
    assert_eq!(
        raw::error_code(&bytes).as_deref(),
        Some("57P01"),
        "{bytes:?}"
    );
}

/// Clients still in a transaction when shutdown_timeout ends the drain get
/// FATAL 57P01 before their connection closes, rather than a bare close.
#[tokio::test(flavor = "multi_thread")]
async fn clients_left_at_shutdown_timeout_get_57p01() {
    use common::raw;
    use tokio::io::AsyncWriteExt;
    let pg = own_cluster();
    let mut proxy = Proxy::start(&yaml(&pg, "transaction", "shutdown_timeout: 1s\n"));
    let mut s = raw::raw_login(proxy.port).await;
    s.write_all(&raw::query("BEGIN")).await.unwrap();
    raw::read_ready(&mut s, 1).await;
    proxy.signal("TERM");
    let bytes = raw::read_until_closed(&mut s).await;
    assert_eq!(
        raw::error_code(&bytes).as_deref(),
        Some("57P01"),
        "{bytes:?}"
    );
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("pgsift exits");
    assert!(status.success(), "{status:?}");
}
