//! N+1 detection end to end: the blog example's naive request through
//! pgsift, with psycopg2 (literals inlined) and asyncpg ($n parameters),
//! must produce exactly the two N+1 reports a DBA needs; the eager version,
//! a loop of identical queries and unrelated statements must not. The
//! reports are served as JSON, as an HTML page (checked in headless
//! Chromium) and appended to the JSONL report file.
// Tests run tokio runtimes of their own, with timers: the timer functions
// clippy.toml keeps out of pgsift (src/timer.rs) are theirs to use.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{http_get, shared_postgres, Proxy};
use serde_json::Value;
use std::process::Command;
use std::sync::Once;

fn load_blog_schema() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let pg = shared_postgres();
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                &pg.url("blog", "blogpw", "blog"),
                "-f",
            ])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/blog/schema.sql"
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

fn blog_proxy(report_file: Option<&std::path::Path>) -> Proxy {
    load_blog_schema();
    let pg = shared_postgres();
    let file = report_file
        .map(|f| format!("  report_file: {}\n", f.display()))
        .unwrap_or_default();
    Proxy::start(&format!(
        "databases:\n  blog: {{host: 127.0.0.1, port: {}, pool_mode: transaction, pool_size: 4}}\nn_plus_one:\n  min_repeats: 5\n  max_gap: 2s\n{file}",
        pg.port
    ))
}

/// Runs one request of examples/blog/blog.py and returns pgsift's reports for it.
fn run_request(proxy: &Proxy, driver: &str, request: &str) -> Vec<Value> {
    let out = Command::new(common::venv_python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/blog/blog.py"
        ))
        .args([
            "--dsn",
            &proxy.url("blog", "blogpw", "blog"),
            "--driver",
            driver,
            "--request",
            request,
            "--json",
        ])
        .arg("--admin")
        .arg(format!("http://127.0.0.1:{}", proxy.admin_port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "blog.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON reports");
    v.as_array().unwrap().clone()
}

fn assert_naive_reports(reports: &[Value], app: &str) {
    assert_eq!(reports.len(), 2, "{reports:#?}");
    let queries: Vec<&str> = reports
        .iter()
        .map(|r| r["query"].as_str().unwrap())
        .collect();
    assert!(
        queries
            .iter()
            .any(|q| q.contains("FROM comments WHERE post_id = $1")),
        "{queries:?}"
    );
    assert!(
        queries
            .iter()
            .any(|q| q.contains("FROM users WHERE id = $1")),
        "{queries:?}"
    );
    for r in reports {
        assert_eq!(r["kind"], "n_plus_one");
        assert_eq!(
            r["max_repeats"], 20,
            "one lookup per post of the page: {r:#}"
        );
        assert_eq!(r["application"], app);
        assert_eq!(r["database"], "blog");
        assert_eq!(r["user"], "blog");
        let parent = r["parent_query"].as_str().unwrap();
        assert!(
            parent.contains("FROM posts ORDER BY created_at DESC LIMIT"),
            "parent is the posts list: {parent}"
        );
        assert_eq!(
            r["parent_fingerprint"], reports[0]["parent_fingerprint"],
            "both bursts have the same parent"
        );
        assert!(r["total_ms"].as_f64().unwrap() > 0.0);
        let s = r["suggestion"].as_str().unwrap();
        assert!(s.contains("= ANY($1)") && s.contains("selectinload"), "{s}");
        for key in [
            "fingerprint",
            "example",
            "client_addr",
            "occurrences",
            "total_repeats",
            "first_seen",
            "last_seen",
            "id",
        ] {
            assert!(!r[key].is_null(), "{key} missing in {r:#}");
        }
    }
}

#[test]
fn psycopg2_naive_request_gives_two_n_plus_one_reports_with_the_posts_query_as_parent() {
    let proxy = blog_proxy(None);
    let reports = run_request(&proxy, "psycopg2", "naive");
    assert_naive_reports(&reports, "blog-naive-psycopg2");
    // literals are kept in the example
    assert!(reports
        .iter()
        .any(|r| r["example"].as_str().unwrap().contains("WHERE id = ")));
}

#[test]
fn asyncpg_naive_request_gives_the_same_two_reports() {
    let proxy = blog_proxy(None);
    let reports = run_request(&proxy, "asyncpg", "naive");
    assert_naive_reports(&reports, "blog-naive-asyncpg");
}

#[test]
fn an_orm_with_lazy_relationships_gives_two_n_plus_one_reports_on_psycopg2_and_psycopg3() {
    let proxy = blog_proxy(None);
    for driver in ["sqlalchemy", "sqlalchemy-psycopg"] {
        let reports = run_request(&proxy, driver, "naive");
        assert_eq!(reports.len(), 2, "{driver}: {reports:#?}");
        let mut queries: Vec<&str> = reports
            .iter()
            .map(|r| r["query"].as_str().unwrap())
            .collect();
        queries.sort();
        // SQLAlchemy's lazy loads: the comments of a post, the author by
        // id (psycopg 3's dialect casts its parameters: `$1::INTEGER`)
        assert!(
            queries[0].starts_with("SELECT comments.id, comments.post_id")
                && queries[0].contains(" FROM comments WHERE $1")
                && queries[0].contains(" = comments.post_id ORDER BY comments.created_at"),
            "{driver}: {queries:?}"
        );
        assert!(
            queries[1].starts_with(
                "SELECT users.id, users.name, users.email FROM users WHERE users.id = $1"
            ),
            "{driver}: {queries:?}"
        );
        for r in &reports {
            assert_eq!(r["kind"], "n_plus_one", "{driver}: {r:#}");
            assert_eq!(r["max_repeats"], 20, "{driver}: one load per post: {r:#}");
            assert_eq!(r["application"], format!("blog-naive-{driver}"));
            let parent = r["parent_query"].as_str().unwrap();
            assert!(
                parent.contains("FROM posts ORDER BY posts.created_at DESC"),
                "{driver}: the parent is the posts query: {parent}"
            );
            let s = r["suggestion"].as_str().unwrap();
            assert!(s.contains("selectinload"), "{s}");
        }
        // selectinload: three statements, no burst
        assert!(
            run_request(&proxy, driver, "eager").is_empty(),
            "{driver}: eager loading is not N+1"
        );
        let dups = run_request(&proxy, driver, "duplicate");
        assert_eq!(dups.len(), 1, "{driver}: {dups:#?}");
        assert_eq!(dups[0]["kind"], "duplicate", "{driver}: {dups:#?}");
    }
}

#[test]
fn inlined_literals_and_parameters_land_on_the_same_fingerprints() {
    let proxy = blog_proxy(None);
    let mut a: Vec<String> = run_request(&proxy, "psycopg2", "naive")
        .iter()
        .map(|r| r["fingerprint"].to_string())
        .collect();
    let mut b: Vec<String> = run_request(&proxy, "asyncpg", "naive")
        .iter()
        .map(|r| r["fingerprint"].to_string())
        .collect();
    a.sort();
    b.sort();
    // the blog's naive page has two loops (author and comments per post)
    assert_eq!(a.len(), 2, "psycopg2's reports: {a:?}");
    assert_eq!(a, b);
}

#[test]
fn eager_loading_duplicates_and_unrelated_statements_are_told_apart() {
    let proxy = blog_proxy(None);
    for driver in ["psycopg2", "asyncpg"] {
        assert!(
            run_request(&proxy, driver, "eager").is_empty(),
            "eager loading is not N+1 ({driver})"
        );
        assert!(
            run_request(&proxy, driver, "unrelated").is_empty(),
            "5 unrelated statements ({driver})"
        );
        let dups = run_request(&proxy, driver, "duplicate");
        assert_eq!(dups.len(), 1, "{dups:#?}");
        assert_eq!(dups[0]["kind"], "duplicate");
        assert_eq!(dups[0]["max_repeats"], 10);
    }
}

#[test]
fn reports_reach_the_jsonl_file_the_html_page_and_top_statements() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("n_plus_one.jsonl");
    let proxy = blog_proxy(Some(&file));
    run_request(&proxy, "psycopg2", "naive");
    // JSONL: one line per finished burst
    let mut lines = 0;
    for _ in 0..50 {
        lines = std::fs::read_to_string(&file)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(lines, 2);
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["kind"], "n_plus_one");
    // top statements
    let (status, body) = http_get(proxy.admin_port, "/api/queries?limit=5").unwrap();
    assert_eq!(status, 200);
    let q: Value = serde_json::from_str(&body).unwrap();
    let rows = q["queries"].as_array().unwrap();
    assert!(rows.len() <= 5 && !rows.is_empty());
    let users = rows
        .iter()
        .find(|r| {
            r["query"]
                .as_str()
                .unwrap()
                .contains("FROM users WHERE id = $1")
        })
        .expect("the lookup is a top statement");
    assert_eq!(users["calls"], 20);
    assert_eq!(users["rows"], 20);
    // the HTML page, rendered by a real browser
    let url = format!("http://127.0.0.1:{}/n-plus-one", proxy.admin_port);
    let dom = common::chromium_dom(&url);
    assert!(
        dom.contains("<table id=\"reports\">"),
        "rendered page: {dom}"
    );
    assert!(
        dom.contains("FROM users WHERE id = $1")
            && dom.contains("FROM comments WHERE post_id = $1"),
        "{dom}"
    );
    assert!(
        dom.contains("blog-naive-psycopg2") && dom.contains("selectinload"),
        "{dom}"
    );
    assert_eq!(dom.matches("class=\"kind-n_plus_one\"").count(), 2);
}

#[test]
fn an_extended_protocol_loop_with_literals_in_its_text_is_an_n_plus_one() {
    // what JDBC's Statement.executeQuery("… id = " + id) sends: a Parse of
    // a text with the value written into it, a Bind without parameters
    let proxy = blog_proxy(None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = common::connect(&proxy.conn_str("blog", "blogpw", "blog"))
            .await
            .unwrap();
        c.query("SELECT id, user_id FROM posts ORDER BY id LIMIT 8", &[])
            .await
            .unwrap();
        for id in 1..=8 {
            c.query(&format!("SELECT id, name FROM users WHERE id = {id}"), &[])
                .await
                .unwrap();
        }
    });
    // the client left: its bursts ended
    let mut reports = Vec::new();
    for _ in 0..50 {
        let (_, body) = http_get(proxy.admin_port, "/api/n-plus-one").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        reports = v["reports"].as_array().cloned().unwrap_or_default();
        if !reports.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert_eq!(reports[0]["kind"], "n_plus_one", "{reports:#?}");
    assert_eq!(reports[0]["max_repeats"], 8);
}

/// pgsift's reports of `app`, once every client of `proxy` has left: their
/// sessions have ended, so their bursts are finished and recorded (waiting
/// for the clients, not for a fixed time, keeps this true on a slow machine).
fn reports_once_clients_left(proxy: &Proxy, app: &str) -> Vec<Value> {
    let start = std::time::Instant::now();
    loop {
        let (_, body) = http_get(proxy.admin_port, "/api/pools").unwrap();
        let pools: Value = serde_json::from_str(&body).unwrap();
        let clients: u64 = pools["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["clients"].as_u64().unwrap())
            .sum();
        if clients == 0 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the clients did not leave: {pools}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (_, body) = http_get(proxy.admin_port, "/api/n-plus-one").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    v["reports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["application"] == app)
        .cloned()
        .collect()
}

#[test]
fn a_row_by_row_insert_loop_is_a_bulk_write_with_a_batching_suggestion_not_an_n_plus_one() {
    // what executemany() sends: one prepared INSERT, executed once per row
    // — one at a time in autocommit, inside one transaction (psycopg2), or
    // pipelined (psycopg 3, asyncpg)
    let proxy = blog_proxy(None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let setup = common::connect(&proxy.conn_str("blog", "blogpw", "blog"))
            .await
            .unwrap();
        setup
            .batch_execute("CREATE TABLE IF NOT EXISTS n1_bulk_rows (a int, b text)")
            .await
            .unwrap();
        drop(setup);
        for how in ["autocommit", "transaction", "pipelined"] {
            let mut c = common::connect(&format!(
                "{} application_name=bulk-{how}",
                proxy.conn_str("blog", "blogpw", "blog")
            ))
            .await
            .unwrap();
            let insert = "INSERT INTO n1_bulk_rows (a, b) VALUES ($1, $2)";
            match how {
                "autocommit" => {
                    let st = c.prepare(insert).await.unwrap();
                    for i in 0..40i32 {
                        c.execute(&st, &[&i, &format!("b{i}")]).await.unwrap();
                    }
                }
                "transaction" => {
                    let t = c.transaction().await.unwrap();
                    let st = t.prepare(insert).await.unwrap();
                    for i in 0..40i32 {
                        t.execute(&st, &[&i, &format!("b{i}")]).await.unwrap();
                    }
                    t.commit().await.unwrap();
                }
                _ => {
                    let st = c.prepare(insert).await.unwrap();
                    let values: Vec<(i32, String)> =
                        (0..40).map(|i| (i, format!("b{i}"))).collect();
                    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 2]> =
                        values.iter().map(|(a, b)| [a as _, b as _]).collect();
                    // polled together: tokio-postgres pipelines them
                    let runs = params.iter().map(|p| c.execute(&st, p));
                    for r in futures_util::future::join_all(runs).await {
                        r.unwrap();
                    }
                }
            }
        }
    });
    drop(rt);
    for how in ["autocommit", "transaction", "pipelined"] {
        let reports = reports_once_clients_left(&proxy, &format!("bulk-{how}"));
        assert_eq!(reports.len(), 1, "{how}: {reports:#?}");
        let r = &reports[0];
        assert_eq!(r["kind"], "bulk_write", "{how}: {r:#}");
        assert_eq!(r["max_repeats"], 40, "{how}: {r:#}");
        // the example is concrete: the values bound (binary int4 and
        // text) in place of the placeholders
        let example = r["example"].as_str().unwrap();
        let concrete = regex_lite_values(example);
        assert!(concrete, "{how}: example {example:?}");
        assert!(
            r["query"]
                .as_str()
                .unwrap()
                .starts_with("INSERT INTO n1_bulk_rows"),
            "{how}: {r:#}"
        );
        let s = r["suggestion"].as_str().unwrap();
        assert!(
            s.contains("n1_bulk_rows") && s.contains("COPY") && s.contains("unnest"),
            "{how}: {s}"
        );
        assert!(
            !s.contains("lookup") && !s.contains("selectinload") && !s.contains("the table"),
            "{how}: a read's advice for a write: {s}"
        );
    }
}

#[test]
fn a_pgbench_transaction_loop_is_a_workload_not_an_n_plus_one() {
    // every statement of pgbench's transaction (BEGIN; UPDATE; SELECT;
    // UPDATE; UPDATE; INSERT; END) repeats once per transaction: the loop is
    // the benchmark itself, not one lookup per row of a parent query
    let proxy = blog_proxy(None);
    let pg = shared_postgres();
    let (ok, _, text) =
        common::pgbench(&pg.url("blog", "blogpw", "blog"), &["-i", "-s", "1", "-q"]);
    assert!(ok, "pgbench -i failed:\n{text}");
    for (mode, secs) in [("prepared", "2"), ("simple", "1"), ("extended", "1")] {
        let app = format!("pgbench-{mode}");
        let url = format!(
            "{}?application_name={app}",
            proxy.url("blog", "blogpw", "blog")
        );
        let (ok, failed, text) = common::pgbench(&url, &["-c", "1", "-T", secs, "-M", mode]);
        assert!(ok && failed == Some(0), "pgbench -M {mode} failed:\n{text}");
        let transactions: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(transactions >= 10, "too few transactions to tell:\n{text}");
        let reports = reports_once_clients_left(&proxy, &app);
        assert!(
            reports.is_empty(),
            "-M {mode}, {transactions} transactions: {reports:#?}"
        );
    }
    // the statements did pass through pgsift
    let (_, body) = http_get(proxy.admin_port, "/api/queries?limit=50").unwrap();
    assert!(body.contains("pgbench_accounts"), "{body}");
}

#[test]
fn executemany_of_psycopg2_psycopg3_and_asyncpg_is_a_bulk_write() {
    // the reviewer's case: 100 rows through each driver's executemany()
    // (psycopg2 one at a time in a transaction, psycopg 3 and asyncpg
    // pipelined)
    let proxy = blog_proxy(None);
    let script = r#"
import sys, asyncio
import psycopg2, psycopg, asyncpg
dsn = sys.argv[1]
rows = [(i, f"b{i}") for i in range(100)]
c = psycopg2.connect(dsn, application_name="em-psycopg2")
cur = c.cursor()
cur.execute("CREATE TABLE IF NOT EXISTS n1_em_rows (a int, b text)")
c.commit()
cur.executemany("INSERT INTO n1_em_rows (a, b) VALUES (%s, %s)", rows)
c.commit()
c.close()
c = psycopg.connect(dsn, application_name="em-psycopg3")
c.cursor().executemany("INSERT INTO n1_em_rows (a, b) VALUES (%s, %s)", rows)
c.commit()
c.close()
async def main():
    c = await asyncpg.connect(dsn, server_settings={"application_name": "em-asyncpg"})
    await c.executemany("INSERT INTO n1_em_rows (a, b) VALUES ($1, $2)", rows)
    await c.close()
asyncio.run(main())
"#;
    let out = Command::new(common::venv_python())
        .args(["-c", script, &proxy.url("blog", "blogpw", "blog")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for app in ["em-psycopg2", "em-psycopg3", "em-asyncpg"] {
        let reports = reports_once_clients_left(&proxy, app);
        assert_eq!(reports.len(), 1, "{app}: {reports:#?}");
        let r = &reports[0];
        assert_eq!(r["kind"], "bulk_write", "{app}: {r:#}");
        assert_eq!(r["max_repeats"], 100, "{app}: {r:#}");
        let s = r["suggestion"].as_str().unwrap();
        assert!(
            s.contains("INSERT INTO n1_em_rows") && s.contains("COPY"),
            "{app}: {s}"
        );
    }
}

/// True when `example` is the bulk test's INSERT with a row's values bound:
/// `VALUES (<n>, 'b<n>')`.
fn regex_lite_values(example: &str) -> bool {
    let Some(rest) = example.strip_prefix("INSERT INTO n1_bulk_rows (a, b) VALUES (") else {
        return false;
    };
    let Some((n, rest)) = rest.split_once(", 'b") else {
        return false;
    };
    n.parse::<i32>().is_ok() && rest == format!("{n}')")
}
