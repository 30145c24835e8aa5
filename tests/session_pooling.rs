//! Session pooling end to end with tokio-postgres against a real Postgres:
//! data fidelity, COPY, authentication errors, cancel, hygiene, limits.
// Tests run tokio runtimes of their own, with timers: the timer functions
// clippy.toml keeps out of pgsift (src/timer.rs) are theirs to use.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{connect, databases_yaml, promoted, shared_postgres, Proxy};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;

fn session_proxy(pool_size: usize) -> Proxy {
    Proxy::start(&databases_yaml(shared_postgres(), "session", pool_size))
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_rows_read_through_pgsift_equal_rows_read_directly() {
    let pg = shared_postgres();
    let proxy = session_proxy(4);
    let sql =
        "SELECT 1::int4 AS i, 9007199254740993::int8 AS big, 12345.678901::numeric::text AS n, \
               'héllo ✓ 漢字 😀'::text AS t, '\\x00ff10'::bytea AS b, \
               '2024-02-29 12:34:56.789+02'::timestamptz AS ts, ARRAY[1,NULL,3]::int4[] AS arr, \
               '{\"a\": [1, 2, {\"b\": null}]}'::jsonb AS j, NULL::text AS nothing";
    let direct = connect(&format!(
        "host=127.0.0.1 port={} user=blog password=blogpw dbname=app",
        pg.port
    ))
    .await
    .unwrap();
    let via = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    // extended protocol (binary results)
    let a = direct.query_one(sql, &[]).await.unwrap();
    let b = via.query_one(sql, &[]).await.unwrap();
    assert_eq!(a.get::<_, i32>("i"), b.get::<_, i32>("i"));
    assert_eq!(a.get::<_, i64>("big"), b.get::<_, i64>("big"));
    assert_eq!(a.get::<_, String>("n"), b.get::<_, String>("n"));
    assert_eq!(a.get::<_, String>("t"), b.get::<_, String>("t"));
    assert_eq!(a.get::<_, Vec<u8>>("b"), b.get::<_, Vec<u8>>("b"));
    assert_eq!(
        a.get::<_, std::time::SystemTime>("ts"),
        b.get::<_, std::time::SystemTime>("ts")
    );
    assert_eq!(
        a.get::<_, Vec<Option<i32>>>("arr"),
        b.get::<_, Vec<Option<i32>>>("arr")
    );
    assert_eq!(
        a.get::<_, serde_json::Value>("j"),
        b.get::<_, serde_json::Value>("j")
    );
    assert_eq!(b.get::<_, Option<String>>("nothing"), None);
    // simple protocol (text results)
    let sa = direct.simple_query(sql).await.unwrap();
    let sb = via.simple_query(sql).await.unwrap();
    assert_eq!(format!("{:?}", rows_of(&sa)), format!("{:?}", rows_of(&sb)));
}

fn rows_of(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100k_row_result_arrives_complete() {
    let proxy = session_proxy(4);
    let via = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    let rows = via
        .query(
            "SELECT g, md5(g::text) FROM generate_series(1, 100000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 100_000);
    let sum: i64 = rows.iter().map(|r| r.get::<_, i32>(0) as i64).sum();
    assert_eq!(sum, 100_000 * 100_001 / 2);
    assert_eq!(
        rows[41].get::<_, String>(1),
        format!("{:x}", md5::compute("42"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_from_and_to_round_trips_100k_rows() {
    let proxy = session_proxy(4);
    let via = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    via.batch_execute("DROP TABLE IF EXISTS copy_rt; CREATE TABLE copy_rt (id int, note text)")
        .await
        .unwrap();
    let sink = via.copy_in("COPY copy_rt FROM STDIN").await.unwrap();
    let mut data = String::new();
    for i in 0..100_000 {
        data.push_str(&format!("{i}\tnote {i} ü\n"));
    }
    futures_util::pin_mut!(sink);
    for chunk in data.as_bytes().chunks(64 * 1024) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 100_000);
    let out = via
        .copy_out("COPY (SELECT * FROM copy_rt ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    futures_util::pin_mut!(out);
    let mut back = Vec::new();
    while let Some(chunk) = out.next().await {
        back.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(back).unwrap(), data);
    via.batch_execute("DROP TABLE copy_rt").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_refused_with_28p01() {
    let proxy = session_proxy(2);
    let err = connect(&proxy.conn_str("blog", "wrong", "app"))
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code(), &SqlState::INVALID_PASSWORD);
    assert_eq!(
        db.message(),
        "password authentication failed for user \"blog\""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_user_fails_exactly_like_a_wrong_password() {
    let proxy = session_proxy(2);
    let err = connect(&proxy.conn_str("mallory", "x", "app"))
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code(), &SqlState::INVALID_PASSWORD);
    assert_eq!(
        db.message(),
        "password authentication failed for user \"mallory\""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_database_is_refused_with_3d000() {
    let proxy = session_proxy(2);
    let err = connect(&proxy.conn_str("blog", "blogpw", "nosuchdb"))
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code(), &SqlState::INVALID_CATALOG_NAME);
    assert_eq!(db.message(), "database \"nosuchdb\" does not exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn md5_verifier_users_log_in_with_md5_on_both_sides() {
    let pg = shared_postgres();
    let verifier = format!("md5{:x}", md5::compute("md5pwmd5user"));
    let dbs = databases_yaml(pg, "session", 2);
    let proxy = Proxy::start_with(|port, admin| {
        format!(
            "listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}, users: [md5user]}}\nusers:\n  - {{name: md5user, password: {verifier}}}\n{dbs}"
        )
    });
    let c = connect(&proxy.conn_str("md5user", "md5pw", "app"))
        .await
        .unwrap();
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "md5user");
    let err = connect(&proxy.conn_str("md5user", "nope", "app"))
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().code(),
        &SqlState::INVALID_PASSWORD
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_request_stops_pg_sleep_within_two_seconds() {
    let proxy = session_proxy(4);
    let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    cancel_pg_sleep_within_two_seconds(&c).await;
    // the session goes on
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Runs `SELECT pg_sleep(30)` on `c` and cancels it from another
/// connection 300 ms in: it must end with 57014 within 2 s.
async fn cancel_pg_sleep_within_two_seconds(c: &tokio_postgres::Client) {
    let token = c.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let err = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    canceller.await.unwrap();
    assert_eq!(
        err.as_db_error().map(|e| e.code()),
        Some(&SqlState::QUERY_CANCELED),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_with_an_unknown_key_is_ignored() {
    let proxy = session_proxy(2);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(12345, 67890, &mut buf);
    tokio::io::AsyncWriteExt::write_all(&mut s, &buf)
        .await
        .unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(n, 0, "nothing is sent back for a cancel request");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_gone_mid_transaction_leaves_no_open_transaction_or_lock() {
    let pg = shared_postgres();
    let proxy = session_proxy(1);
    common::kill_client_inside_update_and_check_the_row_is_free(pg, &proxy, "gone_rows").await;
    // and the server went back to the pool clean: the next client gets it
    let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    let v: i32 = c
        .query_one("SELECT v FROM gone_rows WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_mode_resets_a_server_before_the_next_client() {
    let proxy = session_proxy(1);
    let a = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    a.batch_execute("SET work_mem = '7MB'; PREPARE p AS SELECT 1; CREATE TEMP TABLE t_tmp (x int)")
        .await
        .unwrap();
    let pid_a: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    let pid_b: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid_a, pid_b, "the server is reused");
    let wm: String = b.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(wm, "4MB");
    // simple protocol: tokio-postgres's own prepared statements stay out of the count
    let prepared = b
        .simple_query("SELECT count(*) FROM pg_prepared_statements WHERE name = 'p'")
        .await
        .unwrap();
    assert_eq!(rows_of(&prepared), vec![vec![Some("0".to_string())]]);
    assert!(b.simple_query("SELECT * FROM t_tmp").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_settings_and_options_reach_the_server() {
    let proxy = session_proxy(2);
    let c = connect(&format!(
        "{} application_name=myapp options='-c search_path=pg_catalog -c statement_timeout=1234'",
        proxy.conn_str("blog", "blogpw", "app")
    ))
    .await
    .unwrap();
    let row = c
        .query_one("SELECT current_setting('application_name'), current_setting('search_path'), current_setting('statement_timeout')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "myapp");
    assert_eq!(row.get::<_, String>(1), "pg_catalog");
    assert_eq!(row.get::<_, String>(2), "1234ms");
}

#[tokio::test(flavor = "multi_thread")]
async fn notices_errors_and_notifications_are_forwarded() {
    let proxy = session_proxy(4);
    let (listener, mut conn) = tokio_postgres::connect(
        &proxy.conn_str("blog", "blogpw", "app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while let Some(Ok(m)) = stream.next().await {
            let _ = tx.send(m);
        }
    });
    listener.batch_execute("LISTEN chan").await.unwrap();
    listener
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        .await
        .unwrap();
    let other = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    other
        .batch_execute("NOTIFY chan, 'payload-1'")
        .await
        .unwrap();
    let mut saw_notice = false;
    let mut saw_notification = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(saw_notice && saw_notification) && Instant::now() < deadline {
        // a query makes the connection read the pending notification
        let _ = listener.simple_query("SELECT 1").await;
        while let Ok(m) = rx.try_recv() {
            match m {
                tokio_postgres::AsyncMessage::Notice(n) => {
                    saw_notice |= n.message() == "hello from plpgsql"
                }
                tokio_postgres::AsyncMessage::Notification(n) => {
                    saw_notification |= n.payload() == "payload-1"
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_notice, "notice forwarded");
    assert!(saw_notification, "notification forwarded");
    let err = other.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().code(),
        &SqlState::DIVISION_BY_ZERO
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_longer_than_checkout_timeout_gives_53300_naming_the_pool() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&format!(
        "{}pool:\n  checkout_timeout: 500ms\n",
        databases_yaml(pg, "session", 1)
    ));
    let _holder = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    let started = Instant::now();
    let err = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::TOO_MANY_CONNECTIONS);
    assert!(db.message().contains("app/blog"), "{}", db.message());
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// The login timeout bounds startup and authentication only: a client that
/// has logged in and waits for a server waits up to checkout_timeout and
/// then hears the 53300 of SPEC §5, instead of being dropped in silence
/// when the login timeout strikes during the wait.
#[tokio::test(flavor = "multi_thread")]
async fn a_login_waiting_for_a_server_past_the_login_timeout_gets_53300() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&format!(
        "{}pool:\n  checkout_timeout: 3s\n  client_login_timeout: 1s\n",
        databases_yaml(pg, "session", 1)
    ));
    let _holder = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    let started = Instant::now();
    let err = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code()),
        Some(&SqlState::TOO_MANY_CONNECTIONS),
        "{err}"
    );
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_secs(2) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
}

/// A proxy in `mode` with `max_client_conn: 2` and its two clients; a
/// third client's login error.
async fn full_proxy(
    mode: &str,
) -> (
    Proxy,
    tokio_postgres::Client,
    tokio_postgres::Client,
    tokio_postgres::Error,
) {
    let pg = shared_postgres();
    let proxy = Proxy::start(&format!(
        "{}pool:\n  max_client_conn: 2\n",
        databases_yaml(pg, mode, 2)
    ));
    let conn = proxy.conn_str("blog", "blogpw", "app");
    let a = connect(&conn).await.unwrap();
    let b = connect(&conn).await.unwrap();
    let err = connect(&conn).await.unwrap_err();
    (proxy, a, b, err)
}

#[tokio::test(flavor = "multi_thread")]
async fn more_clients_than_max_client_conn_get_53300() {
    let (_proxy, _a, _b, err) = full_proxy("transaction").await;
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::TOO_MANY_CONNECTIONS);
    assert_eq!(db.message(), "sorry, too many clients already");
}

/// Cancel requests do not count against `max_client_conn` (Postgres reads
/// them before it checks its connection limit): a full proxy still cancels
/// its clients' queries.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_request_is_honoured_at_max_client_conn() {
    let (_proxy, a, _b, err) = full_proxy("session").await;
    assert_eq!(
        err.as_db_error().map(|e| e.code()),
        Some(&SqlState::TOO_MANY_CONNECTIONS),
        "the limit is reached"
    );
    cancel_pg_sleep_within_two_seconds(&a).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn session_mode_keeps_repeated_unnamed_statements_prepared_for_the_session_only() {
    use tokio_postgres::types::Type;
    let pg = shared_postgres();
    let proxy = Proxy::start(&format!(
        "{}pool:\n  prepare_unnamed_statements: true\n",
        databases_yaml(pg, "session", 1)
    ));
    let conn = proxy.conn_str("blog", "blogpw", "app");
    let triple = "SELECT $1::int4 * 3";
    for round in 0..2 {
        // pool_size 1: the second client gets the first one's server
        let c = connect(&conn).await.unwrap();
        assert_eq!(promoted(&c, triple).await, 0, "round {round}: DISCARD ALL");
        for i in 0..10i32 {
            let r = c.query_typed(triple, &[(&i, Type::INT4)]).await.unwrap();
            assert_eq!(r[0].get::<_, i32>(0), 3 * i);
        }
        assert_eq!(promoted(&c, triple).await, 1, "round {round}");
        // a named statement keeps the client's own name in session mode
        let named = c.prepare("SELECT $1::int4 + 1").await.unwrap();
        let own: i64 = common::scalar(
            &c,
            "SELECT count(*) FROM pg_prepared_statements \
             WHERE statement = 'SELECT $1::int4 + 1' AND name NOT LIKE 'pgsift_%'",
        )
        .await
        .parse()
        .unwrap();
        assert_eq!(own, 1, "round {round}");
        assert_eq!(
            c.query_one(&named, &[&1i32])
                .await
                .unwrap()
                .get::<_, i32>(0),
            2
        );
        // a simple query in between (it drops the unnamed statement)
        c.batch_execute("SELECT 1").await.unwrap();
        // the client's Close of its own statement reaches the server
        drop(named);
        let left: i64 = common::scalar(
            &c,
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int4 + 1'",
        )
        .await
        .parse()
        .unwrap();
        assert_eq!(left, 0, "round {round}");
        drop(c);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A socket directory as the upstream host (libpq's convention): both pool
/// modes reach the server over its Unix-domain socket, and cancel requests
/// do too.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_directory_as_upstream_host_serves_both_modes_and_cancels() {
    let pg = shared_postgres();
    for mode in ["session", "transaction"] {
        let proxy = Proxy::start(&format!(
            "databases:\n  app: {{host: \"{dir}\", port: {p}, pool_mode: {mode}, pool_size: 2}}\n",
            dir = pg.socket_dir().display(),
            p = pg.port
        ));
        let conn_str = proxy.conn_str("blog", "blogpw", "app");
        let c = connect(&conn_str).await.unwrap();
        // Postgres shows no client address for a Unix-domain connection
        let origin = common::scalar(
            &c,
            "SELECT coalesce(client_addr::text, 'socket') FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .await;
        assert_eq!(origin, "socket", "{mode}");
        // six clients with prepared statements share two servers
        let mut workers = Vec::new();
        for w in 0..6i32 {
            let conn_str = conn_str.clone();
            workers.push(tokio::spawn(async move {
                let c = connect(&conn_str).await.unwrap();
                let st = c.prepare("SELECT $1::int * 2").await.unwrap();
                for i in 0..50i32 {
                    let v: i32 = c.query_one(&st, &[&(w * 1000 + i)]).await.unwrap().get(0);
                    assert_eq!(v, (w * 1000 + i) * 2);
                }
            }));
        }
        // in session mode both servers are taken by the workers until they
        // finish; the cancel test below runs after them
        for w in workers {
            w.await.unwrap();
        }
        cancel_pg_sleep_within_two_seconds(&c).await;
    }
}

/// Server connections of `db` as `usename` (or as anyone else, with `!`).
fn servers_of(db: &str, usename: &str) -> i64 {
    let (op, name) = match usename.strip_prefix('!') {
        Some(n) => ("<>", n),
        None => ("=", usename),
    };
    shared_postgres()
        .psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND usename {op} '{name}'"
            ),
        )
        .parse()
        .unwrap()
}

/// Waits up to 10 s for `db`'s server connections as `usename` to be `n`.
async fn wait_servers(db: &str, usename: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = servers_of(db, usename);
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{db}: {now} server connections as {usename}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_with_a_server_user_has_one_pool_for_all_its_clients_opened_at_start() {
    let pg = shared_postgres();
    pg.psql(
        "postgres",
        "CREATE ROLE pool_owner LOGIN PASSWORD 'ownerpw'",
    );
    pg.psql("postgres", "CREATE DATABASE forced OWNER pool_owner");
    let proxy = Proxy::start(&format!(
        "databases:\n  forced: {{host: 127.0.0.1, port: {}, pool_mode: session, pool_size: 2, min_pool_size: 2, server_user: pool_owner, server_password: ownerpw}}\npool:\n  checkout_timeout: 500ms\n",
        pg.port
    ));
    // min_pool_size: open before any client, as the server user
    wait_servers("forced", "pool_owner", 2).await;
    // two client users, one upstream identity, one pool of 2
    let a = connect(&proxy.conn_str("blog", "blogpw", "forced"))
        .await
        .unwrap();
    let b = connect(&proxy.conn_str("md5user", "md5pw", "forced"))
        .await
        .unwrap();
    for c in [&a, &b] {
        assert_eq!(common::scalar(c, "SELECT current_user").await, "pool_owner");
    }
    let err = connect(&proxy.conn_str("postgres", "postgres", "forced"))
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::TOO_MANY_CONNECTIONS);
    assert!(
        db.message().contains("forced/pool_owner"),
        "{}",
        db.message()
    );
    assert_eq!(servers_of("forced", "!pool_owner"), 0);
    assert_eq!(servers_of("forced", "pool_owner"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn min_pool_size_opens_a_pool_at_its_first_login_when_its_user_is_not_known_in_advance() {
    let pg = shared_postgres();
    pg.psql("postgres", "CREATE DATABASE warm_later OWNER blog");
    let proxy = Proxy::start(&format!(
        "databases:\n  warm_later: {{host: 127.0.0.1, port: {}, pool_mode: session, pool_size: 4, min_pool_size: 2}}\n",
        pg.port
    ));
    // several users could connect: no pool yet, for no one (the upkeep
    // that opens min_pool_size runs every second)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(servers_of("warm_later", "!none"), 0);
    let c = connect(&proxy.conn_str("blog", "blogpw", "warm_later"))
        .await
        .unwrap();
    assert_eq!(common::scalar(&c, "SELECT current_user").await, "blog");
    drop(c);
    // the client's pool stays at min_pool_size after it left
    wait_servers("warm_later", "blog", 2).await;
    assert_eq!(servers_of("warm_later", "!blog"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn min_pool_size_opens_the_only_users_pool_at_start() {
    let pg = shared_postgres();
    pg.psql("postgres", "CREATE DATABASE warm_now OWNER blog");
    let _proxy = Proxy::start_with(|port, admin_port| {
        format!(
            "listen: 127.0.0.1:{port}\nadmin:\n  listen: 127.0.0.1:{admin_port}\n  users: []\nusers:\n  - {{name: blog, password: blogpw}}\ndatabases:\n  warm_now: {{host: 127.0.0.1, port: {}, pool_mode: transaction, pool_size: 4, min_pool_size: 3}}\n",
            pg.port
        )
    });
    wait_servers("warm_now", "blog", 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_gives_a_database_a_server_user_moves_its_connected_clients_to_that_pool() {
    let pg = shared_postgres();
    pg.psql(
        "postgres",
        "CREATE ROLE later_owner LOGIN PASSWORD 'laterpw'",
    );
    pg.psql("postgres", "CREATE DATABASE forced_later OWNER blog");
    let proxy = Proxy::start(&format!(
        "databases:\n  forced_later: {{host: 127.0.0.1, port: {}, pool_mode: transaction, pool_size: 2}}\n",
        pg.port
    ));
    let c = connect(&proxy.conn_str("blog", "blogpw", "forced_later"))
        .await
        .unwrap();
    assert_eq!(common::scalar(&c, "SELECT current_user").await, "blog");
    let yaml = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(
        &proxy.config_path,
        yaml.replace(
            "pool_size: 2}",
            "pool_size: 2, server_user: later_owner, server_password: laterpw}",
        ),
    )
    .unwrap();
    proxy.signal("HUP");
    // the connected client goes on, its next transactions on the new pool
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let who = common::scalar(&c, "SELECT current_user").await;
        if who == "later_owner" {
            break;
        }
        assert_eq!(who, "blog");
        assert!(Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // and the old pool's servers are gone
    wait_servers("forced_later", "blog", 0).await;
}

/// A COPY FROM STDIN sent as Bind/Execute/Sync (tokio-postgres `copy_in`,
/// libpq `PQexecParams`) owes no ReadyForQuery while the data flows (the
/// server ignores that Sync), yet it is in flight: SIGTERM lets it finish.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_extended_protocol_copy_under_way_finish() {
    let pg = shared_postgres();
    pg.psql(
        "app",
        "CREATE TABLE drain_copy (id int); GRANT ALL ON drain_copy TO blog",
    );
    let mut proxy = Proxy::start(&format!(
        "{}shutdown_timeout: 10s\n",
        databases_yaml(pg, "session", 2)
    ));
    let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    let sink = c.copy_in("COPY drain_copy FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\n2\n"))
        .await
        .unwrap();
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.send(bytes::Bytes::from_static(b"3\n")).await.unwrap();
    let rows = sink.finish().await.expect("the copy under way finishes");
    assert_eq!(rows, 3);
    drop(c);
    proxy
        .wait_exit(Duration::from_secs(5))
        .expect("pgsift exits after the drain");
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM drain_copy").trim(),
        "3"
    );
}

/// A client that leaves in the middle of an extended-protocol COPY has its
/// server cancelled and closed, as with any statement in flight: no
/// `DISCARD ALL` is sent into the copy (Postgres refuses a Query in copy-in
/// mode and ends the connection, having lost protocol synchronization).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_mid_copy_has_its_server_cancelled_not_reset() {
    use common::raw::{first_value, message, one_off, query, raw_login, read_until};
    use tokio::io::AsyncWriteExt;
    let pg = shared_postgres();
    pg.psql(
        "app",
        "CREATE TABLE left_copy (id int); GRANT ALL ON left_copy TO blog",
    );
    let proxy = Proxy::start(&format!(
        "{}pool:\n  checkout_timeout: 10s\n",
        databases_yaml(pg, "session", 1)
    ));
    let mut s = raw_login(proxy.port).await;
    s.write_all(&query("SELECT pg_backend_pid()"))
        .await
        .unwrap();
    let pid = first_value(&read_until(&mut s, b'Z').await).unwrap();
    s.write_all(&one_off("COPY left_copy FROM STDIN"))
        .await
        .unwrap();
    read_until(&mut s, b'G').await;
    s.write_all(&message(b'd', b"1\n2\n")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    let started = Instant::now();
    let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the next client waited {:?} for the pool's only server",
        started.elapsed()
    );
    let next = common::scalar(&c, "SELECT pg_backend_pid()").await;
    assert_ne!(next, pid, "the copying server was closed");
    assert_eq!(
        common::scalar(&c, "SELECT count(*) FROM left_copy").await,
        "0"
    );
    // the server never read a Query in copy-in mode (Postgres logs the
    // message it refused, then the COPY as the context)
    let log = pg.log();
    let lines: Vec<&str> = log.lines().collect();
    let refused = lines.windows(2).any(|w| {
        w[0].contains("unexpected message type 0x51 during COPY") && w[1].contains("COPY left_copy")
    });
    assert!(!refused, "DISCARD ALL was sent into the copy:\n{log}");
}

/// A simple-query COPY FROM STDIN whose data the server rejects ends with
/// ErrorResponse and ReadyForQuery; the client need not send CopyDone (libpq
/// does not once it has seen the error). Its later Syncs are answered as
/// usual, so the server is clean when it leaves: the next client gets it
/// back (after DISCARD ALL) instead of a new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_copy_the_client_never_ended_leaves_its_server_reusable() {
    use common::raw::{first_error, first_value, message, one_off, query, raw_login};
    use common::raw::{read_until, read_until_closed, terminate};
    use tokio::io::AsyncWriteExt;
    let pg = shared_postgres();
    pg.psql(
        "app",
        "CREATE TABLE failed_copy (id int); GRANT ALL ON failed_copy TO blog",
    );
    let proxy = session_proxy(1);
    let mut s = raw_login(proxy.port).await;
    s.write_all(&query("COPY failed_copy FROM STDIN"))
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
    s.write_all(&terminate()).await.unwrap();
    read_until_closed(&mut s).await;
    let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
        .await
        .unwrap();
    let next = common::scalar(&c, "SELECT pg_backend_pid()").await;
    assert_eq!(next, pid, "the server went back to the pool");
}

/// Postgres runs everything a client sent before its Terminate, also in the
/// same write (a client that inserts a row and leaves at once): so does
/// pgsift, in both pool modes, on the plain path (no cache) and the cache's
/// path, for simple and extended queries, also a statement that takes a
/// while. The server then goes back to the pool.
#[tokio::test(flavor = "multi_thread")]
async fn statements_sent_with_a_terminate_in_one_write_run() {
    use common::raw::{one_off, query, raw_login, read_until_closed, terminate};
    use tokio::io::AsyncWriteExt;
    let pg = shared_postgres();
    pg.psql(
        "app",
        "CREATE TABLE terminate_rows (v int); GRANT ALL ON terminate_rows TO blog",
    );
    let mut v = 0;
    for (mode, extra) in [
        ("session", "cache:\n  backend: off\n"),
        ("session", ""),
        ("transaction", ""),
    ] {
        let proxy = Proxy::start(&format!("{}{extra}", databases_yaml(pg, mode, 1)));
        for batch in [
            |v: i32| query(&format!("INSERT INTO terminate_rows VALUES ({v})")),
            |v: i32| one_off(&format!("INSERT INTO terminate_rows VALUES ({v})")),
            |v: i32| {
                query(&format!(
                    "SELECT pg_sleep(0.5); INSERT INTO terminate_rows VALUES ({v})"
                ))
            },
        ] {
            v += 1;
            let mut s = raw_login(proxy.port).await;
            let mut bytes = batch(v);
            bytes.extend(terminate());
            s.write_all(&bytes).await.unwrap();
            read_until_closed(&mut s).await;
            drop(s);
            let c = connect(&proxy.conn_str("blog", "blogpw", "app"))
                .await
                .unwrap();
            let found = common::scalar(
                &c,
                &format!("SELECT count(*) FROM terminate_rows WHERE v = {v}"),
            )
            .await;
            assert_eq!(found, "1", "{mode} {extra:?}: row {v}");
        }
    }
}
