//! Observability and operations: /metrics parsed as Prometheus text with
//! every SPEC family and label and counters that move with traffic; the
//! Grafana dashboard's queries checked against a live scrape; the admin
//! console; PAUSE/RESUME and SIGHUP reload under pgbench load; the status
//! page in headless Chromium.
// Tests run tokio runtimes of their own, with timers: the timer functions
// clippy.toml keeps out of pgsift (src/timer.rs) are theirs to use.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{databases_yaml, http_get, pgbench, shared_postgres, Proxy};
use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

fn scrape(proxy: &Proxy) -> prometheus_parse::Scrape {
    let (status, body) = http_get(proxy.admin_port, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format")
}

fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => {
                h.iter().map(|c| c.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => 0.0,
        })
}

const FAMILIES: &[(&str, &[&str])] = &[
    ("pgsift_client_connections", &["database", "user", "state"]),
    ("pgsift_server_connections", &["database", "user", "state"]),
    ("pgsift_pool_wait_seconds", &["database", "user"]),
    ("pgsift_queries_total", &["database", "user", "kind"]),
    ("pgsift_query_duration_seconds", &["database", "kind"]),
    ("pgsift_transactions_total", &["database", "user"]),
    (
        "pgsift_multiplexed_transactions_total",
        &["database", "user"],
    ),
    ("pgsift_cache_requests_total", &["database", "result"]),
    ("pgsift_cache_invalidations_total", &["database"]),
    ("pgsift_cache_bytes", &["backend"]),
    (
        "pgsift_n_plus_one_bursts_total",
        &["database", "application"],
    ),
    ("pgsift_errors_total", &["kind"]),
    ("pgsift_bytes_total", &["direction"]),
];

fn psql(url: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-X", "-A", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_expose_every_family_and_label_and_move_with_traffic() {
    let pg = shared_postgres();
    // a generous max_gap: a loaded CI machine must not split the burst
    let proxy = Proxy::start(&format!(
        "{}n_plus_one:\n  max_gap: 2s\n",
        databases_yaml(pg, "transaction", 4)
    ));
    let c = common::connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let before = scrape(&proxy);
    for _ in 0..10 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    c.batch_execute("CREATE TEMP TABLE IF NOT EXISTS m (x int)")
        .await
        .unwrap();
    assert!(c.simple_query("SELECT 1/0").await.is_err());
    // an N+1 burst from a named application
    let app = common::connect(&format!(
        "{} application_name=metrics-app",
        proxy.conn_str("blog", "blogpw", "app")
    ))
    .await
    .unwrap();
    n_plus_one_burst(&app, 6, 1000).await;
    drop(app); // the burst ends with the connection
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = scrape(&proxy);

    // every family with its labels
    for (family, labels) in FAMILIES {
        let samples: Vec<_> = after
            .samples
            .iter()
            .filter(|s| s.metric == *family)
            .collect();
        assert!(!samples.is_empty(), "{family} missing");
        for s in samples {
            let keys: BTreeSet<&str> = s
                .labels
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "le" && *k != "quantile")
                .collect();
            let want: BTreeSet<&str> = labels.iter().copied().collect();
            assert_eq!(keys, want, "labels of {family}");
        }
    }
    // no fingerprint or SQL text in any label value
    for s in &after.samples {
        for v in s.labels.values() {
            assert!(
                !v.contains(' ') && v.len() < 64,
                "suspicious label value {v:?} on {}",
                s.metric
            );
        }
    }
    let q = |s: &prometheus_parse::Scrape| {
        sample(
            s,
            "pgsift_queries_total",
            &[("database", "app"), ("user", "blog"), ("kind", "select")],
        )
        .unwrap_or(0.0)
    };
    assert!(
        q(&after) - q(&before) >= 11.0,
        "select counter moved by {}",
        q(&after) - q(&before)
    );
    let tx = |s: &prometheus_parse::Scrape| {
        sample(
            s,
            "pgsift_transactions_total",
            &[("database", "app"), ("user", "blog")],
        )
        .unwrap_or(0.0)
    };
    assert!(tx(&after) - tx(&before) >= 10.0);
    let err = |s: &prometheus_parse::Scrape| {
        sample(s, "pgsift_errors_total", &[("kind", "query")]).unwrap_or(0.0)
    };
    assert_eq!(err(&after) - err(&before), 1.0);
    let bytes = |s: &prometheus_parse::Scrape| {
        sample(s, "pgsift_bytes_total", &[("direction", "client_in")]).unwrap_or(0.0)
    };
    assert!(bytes(&after) > bytes(&before));
    assert_eq!(
        sample(
            &after,
            "pgsift_n_plus_one_bursts_total",
            &[("database", "app"), ("application", "metrics-app")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "pgsift_errors_total",
            &[("kind", "session_only_feature")]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &after,
            "pgsift_client_connections",
            &[("database", "app"), ("user", "blog"), ("state", "idle")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(after.docs.contains_key("pgsift_query_duration_seconds"));
}

/// README: /metrics has every family of SPEC §9 from the start, series or
/// not (Prometheus text allows a family's HELP and TYPE without samples).
#[test]
fn metrics_list_every_family_before_any_traffic() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&format!(
        "{}cache:\n  backend: \"off\"\n",
        databases_yaml(pg, "transaction", 2)
    ));
    let (status, body) = http_get(proxy.admin_port, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    for (family, _) in FAMILIES {
        assert!(
            body.lines()
                .any(|l| l.starts_with(&format!("# TYPE {family} "))),
            "{family} missing:\n{body}"
        );
    }
    let parsed = scrape(&proxy);
    for (family, _) in FAMILIES {
        assert!(parsed.docs.contains_key(*family), "no HELP for {family}");
    }
}

#[test]
fn every_dashboard_query_references_an_exported_metric() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&databases_yaml(pg, "transaction", 2));
    // traffic, including one N+1 burst, so every family has samples
    let mut sql = String::from("SELECT relname FROM pg_class LIMIT 5;");
    for i in 0..6 {
        sql.push_str(&format!(
            "SELECT oid FROM pg_class WHERE oid = {};",
            1000 + i
        ));
    }
    let out = psql(&proxy.url("blog", "blogpw", "app"), &sql);
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(300));
    // the series names as scraped: a histogram's are its _bucket, _sum and
    // _count (PromQL has no series of its bare name)
    let (status, body) = http_get(proxy.admin_port, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    let exported: BTreeSet<String> = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/pgsift.json"
    ))
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() >= 12, "{} queries", exprs.len());
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for row in ["Traffic", "Pools", "Cache", "N+1", "Errors"] {
        assert!(titles.contains(&row), "row {row} missing: {titles:?}");
    }
    for e in &exprs {
        let names: Vec<&str> = e
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("pgsift_"))
            .collect();
        assert!(!names.is_empty(), "query without a pgsift metric: {e}");
        for n in names {
            assert!(
                exported.contains(n),
                "dashboard uses {n}, which pgsift does not export; exported: {exported:?}"
            );
        }
    }
}

#[test]
fn admin_console_answers_every_show_command_and_refuses_other_users() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&databases_yaml(pg, "transaction", 2));
    assert!(psql(&proxy.url("blog", "blogpw", "app"), "SELECT 1")
        .status
        .success());
    let admin = proxy.url("admin", "adminpw", "pgsift");
    for cmd in [
        "SHOW POOLS",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW STATS",
        "SHOW QUERIES",
        "SHOW N_PLUS_ONE",
        "SHOW CACHE",
        "SHOW CONFIG",
    ] {
        let out = psql(&admin, cmd);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().count() >= 2, "{cmd} gave no table: {text}");
        assert!(
            text.lines().last().unwrap().ends_with(" rows)")
                || text.lines().last().unwrap().ends_with(" row)"),
            "{cmd}: {text}"
        );
    }
    let pools = String::from_utf8_lossy(&psql(&admin, "SHOW POOLS").stdout).to_string();
    assert!(pools.contains("app|blog|transaction|2|"), "{pools}");
    let queries = String::from_utf8_lossy(&psql(&admin, "SHOW QUERIES").stdout).to_string();
    assert!(queries.contains("SELECT $1"), "{queries}");
    assert!(psql(&admin, "RELOAD").status.success());
    let out = psql(&admin, "SHOW NONSENSE");
    assert!(!out.status.success());
    // the blog user is not an admin
    let out = psql(&proxy.url("blog", "blogpw", "pgsift"), "SHOW POOLS");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not allowed into the pgsift admin console")
    );
    // and a wrong password fails like anywhere else
    let out = psql(&proxy.url("admin", "nope", "pgsift"), "SHOW POOLS");
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
}

fn bench_proxy(db: &str, pool_size: usize) -> Proxy {
    let pg = shared_postgres();
    pg.psql("postgres", &format!("CREATE DATABASE {db} OWNER blog"));
    let proxy = Proxy::start(&format!(
        "databases:\n  {db}: {{host: 127.0.0.1, port: {}, pool_mode: transaction, pool_size: {pool_size}}}\n",
        pg.port
    ));
    let (ok, _, text) = pgbench(&proxy.url("blog", "blogpw", db), &["-i", "-s", "1", "-q"]);
    assert!(ok, "{text}");
    proxy
}

#[test]
fn pause_and_resume_under_pgbench_load_lose_no_transaction() {
    let proxy = bench_proxy("opsbench", 4);
    let url = proxy.url("blog", "blogpw", "opsbench");
    let bench = std::thread::spawn(move || {
        pgbench(&url, &["-c", "8", "-j", "2", "-T", "6", "-M", "extended"])
    });
    std::thread::sleep(Duration::from_secs(1));
    let admin = proxy.url("admin", "adminpw", "pgsift");
    let out = psql(&admin, "PAUSE opsbench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pools = String::from_utf8_lossy(&psql(&admin, "SHOW POOLS").stdout).to_string();
    assert!(pools.contains("|true"), "paused: {pools}");
    assert!(
        pools.contains("opsbench|blog|transaction|4|0|"),
        "no server in use while paused: {pools}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(psql(&admin, "RESUME opsbench").status.success());
    let (ok, failed, text) = bench.join().unwrap();
    assert!(ok, "{text}");
    assert_eq!(failed, Some(0), "{text}");
}

/// `PAUSE` then `RESUME db`: db runs again, pools it opens later included,
/// while every other database stays paused.
#[tokio::test(flavor = "multi_thread")]
async fn resume_of_one_database_after_pause_of_all_frees_that_database_only() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&databases_yaml(pg, "transaction", 2));
    let admin = common::connect(&proxy.conn_str("admin", "adminpw", "pgsift"))
        .await
        .unwrap();
    admin.simple_query("PAUSE").await.unwrap();
    admin.simple_query("RESUME app").await.unwrap();
    // no pool existed at PAUSE: the one app's first client opens is not paused
    let app = tokio::time::timeout(Duration::from_secs(5), async {
        let c = common::connect(&proxy.conn_str("blog", "blogpw", "app"))
            .await
            .unwrap();
        common::scalar(&c, "SELECT 1").await
    })
    .await;
    assert_eq!(app.ok().as_deref(), Some("1"), "app is still paused");
    let other = proxy.conn_str("blog", "blogpw", "postgres");
    let blocked = tokio::time::timeout(Duration::from_secs(1), async {
        let c = common::connect(&other).await?;
        c.simple_query("SELECT 1").await
    })
    .await;
    assert!(blocked.is_err(), "postgres was resumed too: {blocked:?}");
    let paused: HashMap<String, String> = admin
        .simple_query("SHOW POOLS")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0)?.to_owned(), r.get("paused")?.to_owned()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(paused.get("app").map(String::as_str), Some("false"));
    assert_eq!(paused.get("postgres").map(String::as_str), Some("true"));
    admin.simple_query("RESUME").await.unwrap();
    let c = common::connect(&other).await.unwrap();
    assert_eq!(common::scalar(&c, "SELECT 1").await, "1");
}

#[test]
fn sighup_with_a_new_pool_size_applies_under_load() {
    let proxy = bench_proxy("opsreload", 2);
    let url = proxy.url("blog", "blogpw", "opsreload");
    let bench = std::thread::spawn(move || {
        pgbench(&url, &["-c", "8", "-j", "2", "-T", "5", "-M", "prepared"])
    });
    std::thread::sleep(Duration::from_secs(1));
    let yaml = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(
        &proxy.config_path,
        yaml.replace("pool_size: 2", "pool_size: 6"),
    )
    .unwrap();
    proxy.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    let (_, body) = http_get(proxy.admin_port, "/api/pools").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sizes: HashMap<String, u64> = v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["database"].as_str().unwrap().to_owned(),
                p["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sizes.get("opsreload"), Some(&6), "{body}");
    let (ok, failed, text) = bench.join().unwrap();
    assert!(ok, "{text}");
    assert_eq!(failed, Some(0), "{text}");
    assert!(proxy.log().contains("configuration reloaded"));
}

#[test]
fn a_pool_a_reload_closed_leaves_no_connection_series_behind() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&databases_yaml(pg, "session", 2));
    for db in ["app", "postgres"] {
        assert!(psql(&proxy.url("blog", "blogpw", db), "SELECT 1")
            .status
            .success());
    }
    let series = |db: &str| {
        let (_, body) = http_get(proxy.admin_port, "/metrics").unwrap();
        body.lines()
            .filter(|l| {
                l.starts_with("pgsift_server_connections")
                    && l.contains(&format!("database=\"{db}\""))
            })
            .count()
    };
    assert!(series("postgres") > 0 && series("app") > 0);
    let yaml = std::fs::read_to_string(&proxy.config_path).unwrap();
    let kept: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.trim_start().starts_with("postgres:"))
        .collect();
    std::fs::write(&proxy.config_path, kept.join("\n") + "\n").unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while series("postgres") > 0 {
        assert!(
            Instant::now() < deadline,
            "the removed database's server gauges are still scraped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(series("app") > 0, "the pool that stays keeps its series");
}

#[test]
fn stalled_admin_http_clients_are_bounded_and_closed() {
    use std::io::{Read, Write};
    let pg = shared_postgres();
    let proxy = Proxy::start(&databases_yaml(pg, "transaction", 2));
    let admin = format!("127.0.0.1:{}", proxy.admin_port);
    // requests that are never finished
    let stalled: Vec<std::net::TcpStream> = (0..300)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&admin).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // past the limit, connections are closed at once
    std::thread::sleep(Duration::from_millis(500));
    // closed (or answered) by the server, rather than still waiting
    let closed = |s: &std::net::TcpStream| {
        let mut s = s.try_clone().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        match s.read(&mut [0u8; 64]) {
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            // end of file, or an answer: no longer waiting
            Ok(n) => n <= 64,
        }
    };
    let open_now = stalled.iter().filter(|s| !closed(s)).count();
    assert!(open_now <= 256, "{open_now} stalled admin connections held");
    // clients of the proxy are unaffected
    assert!(psql(&proxy.url("blog", "blogpw", "app"), "SELECT 1")
        .status
        .success());
    // a stalled request is closed once its time is up (30 s), and the
    // admin server answers again
    std::thread::sleep(Duration::from_secs(31));
    let open_later = stalled.iter().filter(|s| !closed(s)).count();
    assert_eq!(
        open_later, 0,
        "stalled admin connections outlived their time"
    );
    let (status, _) = http_get(proxy.admin_port, "/healthz").unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_moves_a_database_retires_the_servers_of_the_old_one() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&format!(
        "databases:\n  moving: {{host: 127.0.0.1, port: {}, dbname: app, pool_mode: transaction, pool_size: 4}}\n",
        pg.port
    ));
    let dsn = proxy.conn_str("blog", "blogpw", "moving");
    let (a, b) = (
        common::connect(&dsn).await.unwrap(),
        common::connect(&dsn).await.unwrap(),
    );
    // A holds a server of the old database through the reload
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(common::scalar(&a, "SELECT current_database()").await, "app");
    let yaml = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(
        &proxy.config_path,
        yaml.replace("dbname: app", "dbname: blog"),
    )
    .unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy.log().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // its transaction ends on the old server, which must not go back
    a.batch_execute("COMMIT").await.unwrap();
    for _ in 0..4 {
        for c in [&a, &b] {
            assert_eq!(
                common::scalar(c, "SELECT current_database()").await,
                "blog",
                "a server of the old database served a transaction after the reload"
            );
        }
    }
}

#[test]
fn the_status_page_renders_in_a_browser() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&databases_yaml(pg, "transaction", 2));
    assert!(psql(
        &proxy.url("blog", "blogpw", "app"),
        "SELECT count(*) FROM pg_class"
    )
    .status
    .success());
    let dom = common::chromium_dom(&format!("http://127.0.0.1:{}/", proxy.admin_port));
    assert!(
        dom.contains("<table id=\"pools\">")
            && dom.contains("<td>app</td><td>blog</td><td>transaction</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("hit ratio") && dom.contains("SELECT count(*) FROM pg_class"),
        "{dom}"
    );
}

/// An N+1 burst on `c`: a list query, then `n` lookups by id from `first_oid`.
async fn n_plus_one_burst(c: &tokio_postgres::Client, n: u32, first_oid: u32) {
    c.simple_query("SELECT relname FROM pg_class LIMIT 3")
        .await
        .unwrap();
    for oid in first_oid..first_oid + n {
        c.simple_query(&format!("SELECT oid FROM pg_class WHERE oid = {oid}"))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_changes_n_plus_one_thresholds_for_connected_clients() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&format!(
        "{}n_plus_one:\n  min_repeats: 10\n  max_gap: 2s\n",
        databases_yaml(pg, "transaction", 2)
    ));
    let c = common::connect(&format!(
        "{} application_name=reload-app",
        proxy.conn_str("blog", "blogpw", "app")
    ))
    .await
    .unwrap();
    c.simple_query("SELECT 1").await.unwrap();
    let yaml = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(
        &proxy.config_path,
        yaml.replace("min_repeats: 10", "min_repeats: 3"),
    )
    .unwrap();
    proxy.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    n_plus_one_burst(&c, 4, 2000).await;
    drop(c); // the burst ends with the connection
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, body) = http_get(proxy.admin_port, "/api/n-plus-one").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mine: Vec<_> = v["reports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["application"] == "reload-app")
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "the connected client uses the reloaded min_repeats: {body}"
    );
    assert_eq!(mine[0]["max_repeats"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_changes_the_client_limit_and_keeps_the_running_cache_backend() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&format!(
        "{}pool:\n  max_client_conn: 2\ncache:\n  backend: \"off\"\n",
        databases_yaml(pg, "transaction", 2)
    ));
    let url = proxy.conn_str("blog", "blogpw", "app");
    let mut held = vec![
        common::connect(&url).await.unwrap(),
        common::connect(&url).await.unwrap(),
    ];
    let too_many = |e: tokio_postgres::Error| {
        e.as_db_error()
            .is_some_and(|d| d.message() == "sorry, too many clients already")
    };
    assert!(too_many(common::connect(&url).await.unwrap_err()));
    let reload = |from: &str, to: &str| {
        let yaml = std::fs::read_to_string(&proxy.config_path).unwrap();
        assert!(yaml.contains(from));
        std::fs::write(&proxy.config_path, yaml.replace(from, to)).unwrap();
        proxy.signal("HUP");
    };
    reload("max_client_conn: 2", "max_client_conn: 3");
    let deadline = Instant::now() + Duration::from_secs(10);
    let third = loop {
        match common::connect(&url).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(too_many(e) && Instant::now() < deadline, "{}", proxy.log());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    held.push(third);
    assert!(too_many(common::connect(&url).await.unwrap_err()));
    // lowered below the clients connected: they stay, newcomers wait for room
    reload("max_client_conn: 3", "max_client_conn: 1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for c in &held {
        assert_eq!(common::scalar(c, "SELECT 1").await, "1");
    }
    held.truncate(1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(too_many(common::connect(&url).await.unwrap_err()));
    held.clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = common::connect(&url).await {
        assert!(too_many(e) && Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the cache backend is chosen at start: a reload says so and keeps it
    reload("backend: \"off\"", "backend: memory");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy
        .log()
        .contains("cache.backend changes only on restart")
    {
        assert!(Instant::now() < deadline, "no warning: {}", proxy.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = common::connect(&proxy.conn_str("admin", "adminpw", "pgsift"))
        .await
        .unwrap();
    let rows = admin.simple_query("SHOW CONFIG").await.unwrap();
    let backend: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("cache.backend") => {
                r.get(1).map(str::to_owned)
            }
            _ => None,
        })
        .collect();
    assert_eq!(backend, ["off"], "SHOW CONFIG tells the running backend");
}

#[tokio::test(flavor = "multi_thread")]
async fn n_plus_one_reports_carry_the_application_name_a_client_set_after_login() {
    let pg = shared_postgres();
    for mode in ["session", "transaction"] {
        let proxy = Proxy::start(&format!(
            "{}n_plus_one:\n  min_repeats: 3\n",
            databases_yaml(pg, mode, 2)
        ));
        let c = common::connect(&format!(
            "{} application_name=at-login",
            proxy.conn_str("blog", "blogpw", "app")
        ))
        .await
        .unwrap();
        c.simple_query(&format!("SET application_name = 'set-later-{mode}'"))
            .await
            .unwrap();
        n_plus_one_burst(&c, 4, 2000).await;
        drop(c); // the burst ends with the connection
        let deadline = Instant::now() + Duration::from_secs(10);
        let apps = loop {
            let (_, body) = http_get(proxy.admin_port, "/api/n-plus-one").unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let apps: Vec<String> = v["reports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["application"].as_str().unwrap_or("").to_owned())
                .collect();
            if !apps.is_empty() || Instant::now() > deadline {
                break apps;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(apps, [format!("set-later-{mode}")], "{mode} mode");
        let (_, metrics) = http_get(proxy.admin_port, "/metrics").unwrap();
        assert!(
            metrics.contains(&format!("application=\"set-later-{mode}\"")),
            "{mode} mode: the bursts counter carries the name too"
        );
    }
}

/// The pool entry of (`db`, `user`) in /api/pools.
fn api_pool(proxy: &Proxy, db: &str, user: &str) -> serde_json::Value {
    let (_, body) = http_get(proxy.admin_port, "/api/pools").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["database"] == db && p["user"] == user)
        .cloned()
        .unwrap_or_else(|| panic!("no pool {db}/{user}: {body}"))
}

/// Session-mode logins still waiting for a server when the login timeout
/// (which bounds startup and authentication only) has passed: those waiting
/// for a paused pool go on waiting and get in at RESUME; one whose server
/// never answers gets 08006 at connect_timeout. None leaves a count behind:
/// /api/pools, SHOW POOLS and the gauges show nobody waiting or connecting
/// once they are done, and PAUSE finds no server still active.
#[tokio::test(flavor = "multi_thread")]
async fn logins_waiting_past_the_login_timeout_leave_no_pool_counts_behind() {
    let pg = shared_postgres();
    // an upstream that accepts connections and never says a word
    let hole_port = common::silent_upstream().await;
    let proxy = Proxy::start(&format!(
        "{}  hole: {{host: 127.0.0.1, port: {hole_port}, pool_mode: session, pool_size: 2}}\n\
         pool:\n  client_login_timeout: 1s\n  connect_timeout: 2s\n",
        databases_yaml(pg, "session", 2)
    ));
    let app = proxy.conn_str("blog", "blogpw", "app");
    drop(common::connect(&app).await.unwrap());
    let admin = common::connect(&proxy.conn_str("admin", "adminpw", "pgsift"))
        .await
        .unwrap();
    admin.simple_query("PAUSE app").await.unwrap();
    // they wait past the login timeout
    let paused: Vec<_> = (0..2)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { common::connect(&app).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(api_pool(&proxy, "app", "blog")["waiting"], 2);
    let started = Instant::now();
    let err = common::connect(&proxy.conn_str("blog", "blogpw", "hole"))
        .await
        .map(|_| ())
        .expect_err("the upstream never answers");
    assert_eq!(
        err.as_db_error().map(|e| e.code()),
        Some(&tokio_postgres::error::SqlState::CONNECTION_FAILURE),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    admin.simple_query("RESUME app").await.unwrap();
    for login in paused {
        drop(login.await.unwrap().expect("in after RESUME"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let app_pool = api_pool(&proxy, "app", "blog");
    assert_eq!(app_pool["waiting"], 0, "{app_pool}");
    assert_eq!(app_pool["active"], 0, "{app_pool}");
    let hole_pool = api_pool(&proxy, "hole", "blog");
    assert_eq!(hole_pool["connecting"], 0, "{hole_pool}");
    assert_eq!(hole_pool["waiting"], 0, "{hole_pool}");
    let s = scrape(&proxy);
    let gauge = |name, db, state| {
        sample(
            &s,
            name,
            &[("database", db), ("user", "blog"), ("state", state)],
        )
    };
    assert_eq!(
        gauge("pgsift_client_connections", "app", "waiting"),
        Some(0.0)
    );
    assert_eq!(
        gauge("pgsift_server_connections", "hole", "connecting"),
        Some(0.0)
    );
    // PAUSE does not wait for servers nobody holds
    let started = Instant::now();
    admin.simple_query("PAUSE app").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    admin.simple_query("RESUME app").await.unwrap();
    drop(common::connect(&app).await.unwrap());
}

/// A login that waits for a server (session mode; a paused pool waits
/// without a time limit) and whose client gives up leaves the queue at
/// once: its client slot and its place are free, and RESUME does not hand
/// servers to the dead. Before, such logins stayed until RESUME, and at
/// `max_client_conn` they locked even the admin console out.
#[tokio::test(flavor = "multi_thread")]
async fn logins_that_give_up_while_a_paused_pool_waits_leave_the_queue() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&format!(
        "{}pool:\n  client_login_timeout: 1s\n  max_client_conn: 4\n",
        databases_yaml(pg, "session", 2)
    ));
    let app = proxy.conn_str("blog", "blogpw", "app");
    drop(common::connect(&app).await.unwrap());
    let admin = common::connect(&proxy.conn_str("admin", "adminpw", "pgsift"))
        .await
        .unwrap();
    admin.simple_query("PAUSE app").await.unwrap();
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { common::connect(&app).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(api_pool(&proxy, "app", "blog")["waiting"], 3);
    // the clients give up (their sockets close)
    for w in waiting {
        w.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while api_pool(&proxy, "app", "blog")["waiting"] != 0 {
        assert!(Instant::now() < deadline, "the logins are still queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // their client slots are free: a second admin session gets in
    let admin2 = common::connect(&proxy.conn_str("admin", "adminpw", "pgsift"))
        .await
        .expect("a free client slot");
    admin2.simple_query("RESUME app").await.unwrap();
    drop(common::connect(&app).await.unwrap());
    // (the dropped client's session ends a moment later)
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pool = api_pool(&proxy, "app", "blog");
        if pool["active"] == 0 && pool["waiting"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "servers still held: {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A transaction-mode client waiting for a paused pool whose database a
/// reload removes gets the error every waiter of a closed pool gets
/// (57P01, the pool is closed) at once, instead of waiting for ever (RESUME
/// cannot free it: the pool is gone), and leaves the pool's queue.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_waiting_in_a_paused_pool_a_reload_removes_gets_57p01() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&format!(
        "{}  leaving: {{host: 127.0.0.1, port: {}, dbname: app, pool_mode: transaction, pool_size: 2}}\n",
        databases_yaml(pg, "transaction", 2),
        pg.port
    ));
    let c = common::connect(&proxy.conn_str("blog", "blogpw", "leaving"))
        .await
        .unwrap();
    assert_eq!(common::scalar(&c, "SELECT 1").await, "1");
    let admin = common::connect(&proxy.conn_str("admin", "adminpw", "pgsift"))
        .await
        .unwrap();
    admin.simple_query("PAUSE leaving").await.unwrap();
    let waiting = tokio::spawn(async move {
        let r = c.simple_query("SELECT 2").await;
        (r, c)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while api_pool(&proxy, "leaving", "blog")["waiting"] != 1 {
        assert!(Instant::now() < deadline, "the client is not queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let yaml = std::fs::read_to_string(&proxy.config_path).unwrap();
    let kept: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.trim_start().starts_with("leaving:"))
        .collect();
    std::fs::write(&proxy.config_path, kept.join("\n") + "\n").unwrap();
    proxy.signal("HUP");
    let (r, _c) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting client got no answer within 10 s of the reload")
        .unwrap();
    let err = r.expect_err("its pool is gone");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "57P01", "{db:?}");
    assert!(db.message().contains("is closed"), "{db:?}");
    // nobody is left waiting
    let clients = admin.simple_query("SHOW CLIENTS").await.unwrap();
    let waiting_rows = clients
        .iter()
        .filter(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                (0..r.len()).any(|i| r.get(i) == Some("waiting"))
            }
            _ => false,
        })
        .count();
    assert_eq!(waiting_rows, 0, "{clients:?}");
}

/// A reload that lowers pool_size closes the servers above the new size as
/// they come back, as PgBouncer does: they do not stay open (idle) until
/// idle_timeout, which is 10 minutes here.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_lowers_pool_size_closes_the_servers_above_it() {
    let pg = shared_postgres();
    pg.psql("postgres", "CREATE DATABASE shrinking OWNER blog");
    let proxy = Proxy::start(&format!(
        "databases:\n  shrinking: {{host: 127.0.0.1, port: {}, pool_mode: transaction, pool_size: 3}}\n",
        pg.port
    ));
    let dsn = proxy.conn_str("blog", "blogpw", "shrinking");
    let mut held = Vec::new();
    for _ in 0..3 {
        let c = common::connect(&dsn).await.unwrap();
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        held.push(c);
    }
    let backends = || {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shrinking'",
        )
        .trim()
        .parse::<u32>()
        .unwrap()
    };
    assert_eq!(backends(), 3);
    let yaml = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(
        &proxy.config_path,
        yaml.replace("pool_size: 3", "pool_size: 1"),
    )
    .unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in &held {
        c.batch_execute("COMMIT").await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pool = api_pool(&proxy, "shrinking", "blog");
        let (n, idle) = (backends(), pool["idle"].as_u64().unwrap());
        if n <= 1 && idle <= 1 {
            assert_eq!(pool["size"], 1, "{pool}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} upstream connections and {pool} 10 s after pool_size went to 1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the clients go on, one server at a time
    for c in &held {
        assert_eq!(common::scalar(c, "SELECT 1").await, "1");
    }
    assert!(backends() <= 1);
}

/// Clients that a reload moves to another pool (their database got a
/// `server_user`) are counted in that pool from then on: SHOW POOLS,
/// /api/pools and the client gauges show them there, active ones included,
/// and none are left once they leave.
#[tokio::test(flavor = "multi_thread")]
async fn clients_a_reload_moves_to_another_pool_are_counted_there() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&format!(
        "databases:\n  moved: {{host: 127.0.0.1, port: {}, dbname: app, pool_mode: transaction, pool_size: 3}}\n",
        pg.port
    ));
    let dsn = proxy.conn_str("blog", "blogpw", "moved");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = common::connect(&dsn).await.unwrap();
        assert_eq!(common::scalar(&c, "SELECT current_user").await, "blog");
        clients.push(c);
    }
    assert_eq!(api_pool(&proxy, "moved", "blog")["clients"], 3);
    let yaml = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(
        &proxy.config_path,
        yaml.replace(
            "pool_size: 3}",
            "pool_size: 3, server_user: postgres, server_password: postgres}",
        ),
    )
    .unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in &clients {
        while common::scalar(c, "SELECT current_user").await != "postgres" {
            assert!(Instant::now() < deadline, "no reload: {}", proxy.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let pool = api_pool(&proxy, "moved", "postgres");
    assert_eq!(pool["clients"], 3, "{pool}");
    clients[0].batch_execute("BEGIN; SELECT 1").await.unwrap();
    let s = scrape(&proxy);
    let gauge = |state| {
        sample(
            &s,
            "pgsift_client_connections",
            &[
                ("database", "moved"),
                ("user", "postgres"),
                ("state", state),
            ],
        )
    };
    assert_eq!(gauge("active"), Some(1.0));
    assert_eq!(gauge("idle"), Some(2.0));
    let admin = common::connect(&proxy.conn_str("admin", "adminpw", "pgsift"))
        .await
        .unwrap();
    let pools = admin.simple_query("SHOW POOLS").await.unwrap();
    let row = pools
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("moved") => {
                Some(r.get("clients").map(str::to_owned))
            }
            _ => None,
        })
        .flatten();
    assert_eq!(row.as_deref(), Some("3"), "{pools:?}");
    clients[0].batch_execute("COMMIT").await.unwrap();
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(10);
    while api_pool(&proxy, "moved", "postgres")["clients"] != 0 {
        assert!(Instant::now() < deadline, "clients still counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A transaction-mode client that gives up while its statement waits for a
/// paused pool leaves at once, as a login does: it is no longer listed
/// waiting, its max_client_conn slot is free, and RESUME does not run its
/// statement.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_while_waiting_for_a_paused_pool_leaves_the_queue() {
    use common::raw;
    use tokio::io::AsyncWriteExt;
    let pg = shared_postgres();
    pg.psql(
        "app",
        "CREATE TABLE left_paused (x int); GRANT ALL ON left_paused TO blog",
    );
    let proxy = Proxy::start(&format!(
        "{}pool:\n  max_client_conn: 2\n",
        databases_yaml(pg, "transaction", 2)
    ));
    let mut s = raw::raw_login(proxy.port).await;
    s.write_all(&raw::query("SELECT 1")).await.unwrap();
    raw::read_ready(&mut s, 1).await;
    let admin = common::connect(&proxy.conn_str("admin", "adminpw", "pgsift"))
        .await
        .unwrap();
    admin.simple_query("PAUSE app").await.unwrap();
    s.write_all(&raw::query("INSERT INTO left_paused VALUES (1)"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while api_pool(&proxy, "app", "blog")["waiting"] != 1 {
        assert!(Instant::now() < deadline, "the statement is not queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the client gives up, as libpq's PQfinish does
    s.write_all(&raw::terminate()).await.unwrap();
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pool = api_pool(&proxy, "app", "blog");
        if pool["waiting"] == 0 && pool["clients"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still queued: {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // its client slot is free (the admin session holds the other)
    let other = common::connect(&proxy.conn_str("admin", "adminpw", "pgsift"))
        .await
        .expect("a free client slot");
    other.simple_query("RESUME app").await.unwrap();
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM left_paused").trim(),
        "0",
        "the departed client's statement ran at RESUME"
    );
}
