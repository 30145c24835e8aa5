//! Real client programs through pgsift: psql, pgbench in every protocol mode,
//! the JDBC driver, sqlx, and the pgsift command line itself (check,
//! --version, --help).
// Tests run tokio runtimes of their own, with timers: the timer functions
// clippy.toml keeps out of pgsift (src/timer.rs) are theirs to use.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{databases_yaml, pgbench, pgbench_within, shared_postgres, Proxy};
use std::process::Command;
use std::time::Duration;

fn pgsift() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgsift"))
}

#[test]
fn check_accepts_the_committed_example_config() {
    let out = pgsift()
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_prints_every_error_with_its_key_path_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "databases:\n  blog:\n    pool_size: 0\npool:\n  checkout_timeout: soon\ncache:\n  backend: disk\n").unwrap();
    let out = pgsift()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("databases.blog.pool_size: must be > 0"),
        "{err}"
    );
    assert!(
        err.contains("pool.checkout_timeout: invalid duration \"soon\""),
        "{err}"
    );
    assert!(
        err.contains("cache.backend: invalid value \"disk\""),
        "{err}"
    );

    // a typo does not hide the other errors
    std::fs::write(
        &path,
        "databases:\n  blog:\n    pool_sise: 3\n    pool_mode: sometimes\npool:\n  idle_timout: 1m\n",
    )
    .unwrap();
    let out = pgsift()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for line in [
        "databases.blog.pool_sise: unknown key",
        "pool.idle_timout: unknown key",
        "databases.blog.pool_mode: invalid value \"sometimes\"",
    ] {
        assert!(err.contains(line), "{line} in {err}");
    }
}

/// `pgsift check` on a config file holding `yaml`: its exit code and
/// what it printed on stderr.
fn check(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = pgsift()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_refuses_a_log_level_that_is_no_level() {
    // tracing reads a bare word that is no level as a target name, which
    // would silence every log line
    for level in ["warning", "inf", "verbose", "pgsift=debug,warning"] {
        let (code, err) = check(&format!("logging:\n  level: \"{level}\"\n"));
        assert_eq!(code, Some(1), "{level}: {err}");
        assert!(
            err.contains("logging.level:") && err.contains(level),
            "{level}: {err}"
        );
    }
    for level in [
        "warn",
        "INFO",
        "off",
        "pgsift=debug,warn",
        "pgsift::frontend",
    ] {
        let (code, err) = check(&format!("logging:\n  level: \"{level}\"\n"));
        assert_eq!(code, Some(0), "{level}: {err}");
    }
}

#[test]
fn check_refuses_pool_sizes_beyond_their_bound() {
    let huge = "9223372036854775807";
    for (yaml, key) in [
        (
            format!("databases:\n  blog:\n    pool_size: {huge}\n"),
            "databases.blog.pool_size:",
        ),
        (
            format!("databases:\n  blog:\n    min_pool_size: {huge}\n"),
            "databases.blog.min_pool_size:",
        ),
        (
            format!("pool:\n  max_client_conn: {huge}\n"),
            "pool.max_client_conn:",
        ),
        (
            format!("pool:\n  multiplex_servers: {huge}\n"),
            "pool.multiplex_servers:",
        ),
        (format!("worker_threads: {huge}\n"), "worker_threads:"),
    ] {
        let (code, err) = check(&yaml);
        assert_eq!(code, Some(1), "{yaml}: {err}");
        assert!(err.contains(key) && err.contains(huge), "{yaml}: {err}");
    }
    let (code, err) = check("databases:\n  blog:\n    pool_size: 10000\n    min_pool_size: 10\n");
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn check_loads_the_tls_files_and_looks_for_the_report_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_cert(dir.path());
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, other_key) = self_signed_cert(&other);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").unwrap();
    let tls = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "tls: {{cert: {}, key: {}, mode: allow}}\n",
            cert.display(),
            key.display()
        )
    };
    let (code, err) = check(&tls(&cert, &key));
    assert_eq!(code, Some(0), "{err}");
    for (yaml, want) in [
        (tls(&garbage, &key), "tls.cert:"),
        (tls(&cert, &garbage), "tls.key:"),
        (tls(&cert, &other_key), "tls.key:"),
    ] {
        let (code, err) = check(&yaml);
        assert_eq!(code, Some(1), "{yaml}: {err}");
        assert!(err.contains(want), "{yaml}: {err}");
    }
    let (code, err) = check(&format!(
        "n_plus_one:\n  report_file: {}\n",
        dir.path().join("no-such-dir").join("n.jsonl").display()
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("n_plus_one.report_file:") && err.contains("no-such-dir"),
        "{err}"
    );
    let (code, err) = check(&format!(
        "n_plus_one:\n  report_file: {}\n",
        dir.path().join("n.jsonl").display()
    ));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn version_and_help_describe_the_program() {
    let out = pgsift().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pgsift "));
    let out = pgsift().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--upstream") && help.contains("--config") && help.contains("check"),
        "{help}"
    );
}

fn psql(url: &str, args: &[&str]) -> std::process::Output {
    Command::new("psql")
        .arg("-X")
        .arg(url)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn psql_runs_multi_statement_queries_and_copy_through_pgsift() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&databases_yaml(pg, "session", 4));
    let url = proxy.url("blog", "blogpw", "app");
    let out = psql(
        &url,
        &["-q", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-c",
          "DROP TABLE IF EXISTS psql_t; CREATE TABLE psql_t (id int, s text); INSERT INTO psql_t SELECT g, 'r' || g FROM generate_series(1, 1000) g; SELECT count(*), sum(id) FROM psql_t"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000|500500");
    let out = psql(
        &url,
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "\\copy (SELECT * FROM psql_t ORDER BY id) TO STDOUT",
        ],
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1000);
    let out = psql(&url, &["-c", "SELECT 1/0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("division by zero"));
}

#[test]
fn pgbench_runs_with_zero_failures_through_session_pooling_in_every_protocol_mode() {
    let pg = shared_postgres();
    pg.psql("postgres", "CREATE DATABASE bench OWNER blog");
    let proxy = Proxy::start(&format!(
        "databases:\n  bench: {{host: 127.0.0.1, port: {}, pool_mode: session, pool_size: 20}}\n",
        pg.port
    ));
    let url = proxy.url("blog", "blogpw", "bench");
    let (ok, _, text) = pgbench(&url, &["-i", "-s", "5", "-q"]);
    assert!(ok, "{text}");
    let secs = std::env::var("PGSIFT_PGBENCH_SECONDS").unwrap_or_else(|_| "10".into());
    for mode in ["simple", "extended", "prepared"] {
        let (ok, failed, text) = pgbench(&url, &["-c", "16", "-j", "2", "-T", &secs, "-M", mode]);
        assert!(ok, "pgbench -M {mode} failed:\n{text}");
        assert_eq!(failed, Some(0), "pgbench -M {mode}:\n{text}");
    }
}

/// On the multi-thread runtime (`worker_threads` of 2 or more, the default
/// on machines with 4 cores or more) a socket's wake-up can come from
/// another thread than the one polling its session. pgbench in every
/// protocol mode, in both pool modes, finishes on time with no failures: a
/// lost wake-up would leave a client waiting for ever.
#[test]
fn pgbench_runs_with_zero_failures_on_the_multi_thread_runtime() {
    let pg = shared_postgres();
    pg.psql("postgres", "CREATE DATABASE mtbench OWNER blog");
    for pool_mode in ["session", "transaction"] {
        let proxy = Proxy::start(&format!(
            "worker_threads: 2\ndatabases:\n  mtbench: {{host: 127.0.0.1, port: {}, pool_mode: {pool_mode}, pool_size: 4}}\npool:\n  checkout_timeout: 30s\n",
            pg.port
        ));
        let url = proxy.url("blog", "blogpw", "mtbench");
        if pool_mode == "session" {
            let (ok, _, text) = pgbench(&url, &["-i", "-s", "1", "-q"]);
            assert!(ok, "{text}");
        }
        for mode in ["simple", "extended", "prepared"] {
            let clients = if pool_mode == "session" { "4" } else { "16" };
            let run = pgbench_within(
                &url,
                &["-c", clients, "-j", "2", "-T", "4", "-M", mode],
                Duration::from_secs(60),
            );
            let Some((ok, failed, text)) = run else {
                panic!("pgbench -M {mode} in {pool_mode} mode did not finish: a client was left waiting");
            };
            assert!(ok, "pgbench -M {mode} ({pool_mode}) failed:\n{text}");
            assert_eq!(failed, Some(0), "pgbench -M {mode} ({pool_mode}):\n{text}");
        }
    }
}

/// A self-signed certificate and its key in `dir`.
fn self_signed_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    (cert, key)
}

/// pgsift with client TLS in `tls_mode` (a fresh self-signed certificate,
/// in the returned temp dir), the usual databases in `pool_mode`, and
/// `extra` config.
fn tls_proxy(tls_mode: &str, pool_mode: &str, extra: &str) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_cert(dir.path());
    let proxy = Proxy::start(&format!(
        "tls: {{cert: {}, key: {}, mode: {tls_mode}}}\n{}{extra}",
        cert.display(),
        key.display(),
        databases_yaml(shared_postgres(), pool_mode, 2)
    ));
    (proxy, dir)
}

#[test]
fn tls_is_negotiated_when_configured_and_required_when_asked() {
    let (proxy, _dir) = tls_proxy("require", "session", "");
    let url = proxy.url("blog", "blogpw", "app");
    let out = psql(
        &format!("{url}?sslmode=require"),
        &["-A", "-t", "-c", "SELECT 42"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let out = psql(&format!("{url}?sslmode=disable"), &["-c", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Over `max_client_conn`, a client that asks for TLS gets it, and the 53300
/// inside it, as from Postgres: with sslmode=require libpq reports the
/// limit, not a server without SSL.
#[test]
fn a_tls_client_over_max_client_conn_hears_too_many_clients() {
    let (proxy, _dir) = tls_proxy("require", "session", "pool:\n  max_client_conn: 1\n");
    // a connection still in its login holds the one client slot
    let _holder = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let url = proxy.url("blog", "blogpw", "app");
    let out = psql(&format!("{url}?sslmode=require"), &["-c", "SELECT 1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("sorry, too many clients already"),
        "{stderr}"
    );
}

#[test]
fn a_reload_turns_tls_on_and_a_reload_with_an_unreadable_key_changes_nothing() {
    let pg = shared_postgres();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_cert(dir.path());
    let proxy = Proxy::start(&databases_yaml(pg, "session", 2));
    let url = proxy.url("blog", "blogpw", "app");
    let select = |sslmode: &str| {
        psql(
            &format!("{url}?sslmode={sslmode}"),
            &["-A", "-t", "-c", "SELECT 42"],
        )
    };
    assert!(
        !select("require").status.success(),
        "no TLS before the reload"
    );
    let plain = std::fs::read_to_string(&proxy.config_path).unwrap();
    let tls = format!(
        "tls: {{cert: {}, key: {}, mode: require}}\n",
        cert.display(),
        key.display()
    );
    std::fs::write(&proxy.config_path, format!("{tls}{plain}")).unwrap();
    proxy.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !select("require").status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "TLS never came: {}",
            proxy.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = select("disable");
    assert!(
        !out.status.success(),
        "mode: require refuses plaintext after the reload"
    );
    // a key that cannot be read: the reload is rejected, TLS goes on
    let bad = dir.path().join("missing.key");
    std::fs::write(
        &proxy.config_path,
        format!(
            "tls: {{cert: {}, key: {}, mode: require}}\n{plain}",
            cert.display(),
            bad.display()
        ),
    )
    .unwrap();
    proxy.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !proxy.log().contains("reload rejected") {
        assert!(
            std::time::Instant::now() < deadline,
            "no rejection logged: {}",
            proxy.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = select("require");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

#[test]
fn the_jdbc_driver_works_in_both_pool_modes() {
    let jar = "/usr/share/java/postgresql.jar";
    assert!(
        std::path::Path::new(jar).exists(),
        "{jar} is missing: run scripts/test.sh (it installs libpostgresql-jdbc-java)"
    );
    let pg = shared_postgres();
    for (mode, pool_size) in [("session", 8), ("transaction", 3)] {
        let proxy = Proxy::start(&databases_yaml(pg, mode, pool_size));
        let out = Command::new("java")
            .args(["-cp", jar])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/java/JdbcCheck.java"
            ))
            .arg(format!(
                "jdbc:postgresql://127.0.0.1:{}/app?sslmode=disable",
                proxy.port
            ))
            .args(["blog", "blogpw"])
            .output()
            .expect("java (scripts/test.sh installs a JDK when it is missing)");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
            "JDBC in {mode} mode: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlx_with_its_pool_and_statement_cache_works_in_transaction_mode() {
    use sqlx::Acquire;
    let pg = shared_postgres();
    let proxy = Proxy::start(&databases_yaml(pg, "transaction", 2));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .connect(&proxy.url("blog", "blogpw", "app"))
        .await
        .unwrap();
    type Row = (
        i32,
        String,
        Vec<u8>,
        Vec<i32>,
        serde_json::Value,
        Option<String>,
    );
    let row: Row =
        sqlx::query_as("SELECT $1::int4, $2::text, $3::bytea, $4::int4[], $5::json, NULL::text")
            .bind(-7)
            .bind("naïve café ✓ 日本")
            .bind(vec![0u8, 255, 39, 92])
            .bind(vec![1, 2, 3])
            .bind(serde_json::json!({"a": [1, null]}))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        row,
        (
            -7,
            "naïve café ✓ 日本".to_owned(),
            vec![0u8, 255, 39, 92],
            vec![1, 2, 3],
            serde_json::json!({"a": [1, null]}),
            None
        )
    );
    // six connections, each with its own cache of named statements, on two
    // servers: every statement finds its prepared form wherever it runs
    let mut tasks = Vec::new();
    for t in 0..6i64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            let mut pids = std::collections::BTreeSet::new();
            for i in 0..50i64 {
                let (v, pid): (i64, i32) = sqlx::query_as("SELECT $1::int8 * 2, pg_backend_pid()")
                    .bind(i + t)
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
                assert_eq!(v, 2 * (i + t));
                pids.insert(pid);
            }
            let mut tx = conn.begin().await.unwrap();
            let (a,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            let (b,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(a, b, "a transaction keeps its server");
            tx.commit().await.unwrap();
            pids
        }));
    }
    let mut servers = std::collections::BTreeSet::new();
    for t in tasks {
        servers.extend(t.await.unwrap());
    }
    // two transactions held at once hold both servers: the statement runs
    // on each (so its prepared form moved), and there are no others
    let mut held = Vec::new();
    for i in 0..2i64 {
        let mut tx = pool.begin().await.unwrap();
        let (v, pid): (i64, i32) = sqlx::query_as("SELECT $1::int8 * 2, pg_backend_pid()")
            .bind(i)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(v, 2 * i);
        servers.insert(pid);
        held.push((tx, pid));
    }
    assert_ne!(held[0].1, held[1].1, "two transactions on one server");
    for (tx, _) in held {
        tx.commit().await.unwrap();
    }
    assert_eq!(servers.len(), 2, "{servers:?}: the pool has two servers");
}

/// Over TLS pgsift offers SCRAM-SHA-256-PLUS, channel binding to its
/// certificate, as Postgres does: libpq with `channel_binding=require` (the
/// connection strings of several hosted Postgres services carry it) logs
/// in, and so do clients that prefer or refuse binding. Without TLS there
/// is nothing to bind to, and libpq refuses on its own side.
#[test]
fn channel_binding_works_over_tls() {
    let (proxy, _dir) = tls_proxy("allow", "transaction", "");
    let url = proxy.url("blog", "blogpw", "app");
    for binding in ["require", "prefer", "disable"] {
        let out = psql(
            &format!("{url}?sslmode=require&channel_binding={binding}"),
            &["-A", "-t", "-c", "SELECT 42"],
        );
        assert!(
            out.status.success(),
            "channel_binding={binding}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    }
    // a wrong password is still refused with binding
    let bad = proxy.url("blog", "wrong", "app");
    let out = psql(
        &format!("{bad}?sslmode=require&channel_binding=require"),
        &["-c", "SELECT 1"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql(
        &format!("{url}?sslmode=disable&channel_binding=require"),
        &["-c", "SELECT 1"],
    );
    assert!(!out.status.success(), "no binding without TLS");
}
