//! Malformed and hostile input from clients: each bad client gets an 08P01
//! ErrorResponse (or is closed), nothing panics, nothing hangs, and a client
//! running queries alongside never notices.
// Tests run tokio runtimes of their own, with timers: the timer functions
// clippy.toml keeps out of pgsift (src/timer.rs) are theirs to use.
#![allow(clippy::disallowed_methods)]

mod common;

use bytes::{BufMut, BytesMut};
use common::raw::{error_code, raw_login, raw_login_as, read_until_closed};
use common::{connect, databases_yaml, shared_postgres, Proxy};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A well-behaved client that keeps querying while the bad ones misbehave.
async fn bystander(proxy_conn: String, stop: tokio::sync::watch::Receiver<bool>) -> usize {
    let c = connect(&proxy_conn).await.unwrap();
    let mut n = 0;
    while !*stop.borrow() {
        let v: i32 = c
            .query_one("SELECT $1::int4 + 1", &[&(n as i32)])
            .await
            .expect("bystander query failed")
            .get(0);
        assert_eq!(v, n as i32 + 1);
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_packets_get_08p01_and_other_clients_are_unaffected() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&format!(
        "{}pool:\n  client_login_timeout: 1s\n  max_message_size: 1MiB\n",
        databases_yaml(pg, "transaction", 4)
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let by = tokio::spawn(bystander(proxy.conn_str("blog", "blogpw", "app"), stop_rx));

    // startup packet with length 3
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(&[0, 0, 0, 3]).await.unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01")
    );

    // a 20,000-byte startup packet
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let mut big = BytesMut::new();
    big.put_u32(20_000);
    big.put_u32(196_608);
    big.resize(20_000, b'a');
    let _ = s.write_all(&big).await;
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01")
    );

    // garbage instead of a startup packet (a huge length word, then noise)
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01")
    );

    // a startup packet whose parameters are not terminated
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let mut p = BytesMut::new();
    p.put_u32(4 + 4 + 5);
    p.put_u32(196_608);
    p.put_slice(b"user\0");
    s.write_all(&p).await.unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01")
    );

    // an empty parameter name before the end: Postgres reads it as the
    // terminator, which must be the last byte
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let body = b"user\0blog\0\0x\0\0";
    let mut p = BytesMut::new();
    p.put_u32((8 + body.len()) as u32);
    p.put_u32(196_608);
    p.put_slice(body);
    s.write_all(&p).await.unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01")
    );

    // protocol 2.0 is refused for its version before its layout is read
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let mut p = BytesMut::new();
    p.put_u32(4 + 4 + 5);
    p.put_u32(2 << 16);
    p.put_slice(b"user\0");
    s.write_all(&p).await.unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("0A000")
    );

    // after login: a message announcing 2 GiB
    let mut s = raw_login(proxy.port).await;
    s.write_all(&[b'Q', 0x80, 0, 0, 0]).await.unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01")
    );

    // after login: a message over max_message_size
    let mut s = raw_login(proxy.port).await;
    let mut m = BytesMut::new();
    m.put_u8(b'Q');
    m.put_u32(2 << 20);
    s.write_all(&m).await.unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01")
    );

    // after login: a length below 4
    let mut s = raw_login(proxy.port).await;
    s.write_all(&[b'Q', 0, 0, 0, 2]).await.unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01")
    );

    // after login: an unknown message type
    let mut s = raw_login(proxy.port).await;
    s.write_all(&[b'@', 0, 0, 0, 4]).await.unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01")
    );

    // after login: random garbage
    let mut s = raw_login(proxy.port).await;
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = s.write_all(&noise).await;
    let got = read_until_closed(&mut s).await;
    assert_eq!(error_code(&got).as_deref(), Some("08P01"), "garbage");

    // a client that connects and sends nothing is closed by the login timeout
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut s).await;
    assert!(got.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        started.elapsed()
    );

    // a client that stops in the middle of its startup packet, likewise
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(&[0, 0, 0, 40, 0, 3]).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut s).await;
    assert!(started.elapsed() < Duration::from_secs(3));

    stop_tx.send(true).unwrap();
    let queries = by.await.expect("the bystander saw no error");
    assert!(queries > 10, "bystander kept working ({queries} queries)");
    // pgsift is still healthy
    assert_eq!(
        common::http_get(proxy.admin_port, "/healthz").map(|r| r.0),
        Some(200)
    );
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_protocol_minor_versions_get_negotiate_protocol_version() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&databases_yaml(pg, "session", 2));
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let mut p = BytesMut::new();
    let body = b"user\0blog\0database\0app\0_pq_.something\0on\0\0";
    p.put_u32((8 + body.len()) as u32);
    p.put_u32((3 << 16) | 2);
    p.put_slice(body);
    s.write_all(&p).await.unwrap();
    let mut rbuf = BytesMut::new();
    let (tag, msg) = pgsift::protocol::io::read_message(&mut s, &mut rbuf, 1 << 16)
        .await
        .unwrap();
    assert_eq!(tag, b'v');
    assert_eq!(
        u32::from_be_bytes(msg[5..9].try_into().unwrap()),
        0,
        "newest minor version: 0"
    );
    assert_eq!(u32::from_be_bytes(msg[9..13].try_into().unwrap()), 1);
    assert_eq!(&msg[13..], b"_pq_.something\0");
    // authentication follows as usual
    let (tag, _) = pgsift::protocol::io::read_message(&mut s, &mut rbuf, 1 << 16)
        .await
        .unwrap();
    assert_eq!(tag, b'R');
}

#[tokio::test(flavor = "multi_thread")]
async fn ssl_and_gssenc_requests_are_declined_without_tls_configured() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&databases_yaml(pg, "session", 2));
    for code in [80_877_103u32, 80_877_104] {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        let mut p = BytesMut::new();
        p.put_u32(8);
        p.put_u32(code);
        s.write_all(&p).await.unwrap();
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_password_message_gets_08p01() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&databases_yaml(pg, "session", 2));
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "blog"), ("database", "app")],
        &mut buf,
    )
    .unwrap();
    s.write_all(&buf).await.unwrap();
    let mut rbuf = BytesMut::new();
    let (tag, _) = pgsift::protocol::io::read_message(&mut s, &mut rbuf, 1 << 16)
        .await
        .unwrap();
    assert_eq!(tag, b'R', "the password challenge");
    // a SASLInitialResponse announcing 100,000 bytes (authentication
    // messages are small: pgsift reads at most 8 KiB of one)
    let mut m = BytesMut::new();
    m.put_u8(b'p');
    m.put_u32(100_000);
    m.put_slice(b"SCRAM-SHA-256\0");
    s.write_all(&m).await.unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01")
    );
    // a length below 4 likewise
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(&buf).await.unwrap();
    let mut rbuf = BytesMut::new();
    pgsift::protocol::io::read_message(&mut s, &mut rbuf, 1 << 16)
        .await
        .unwrap();
    s.write_all(&[b'p', 0, 0, 0, 1]).await.unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01")
    );
}

/// A fake upstream that logs anyone in (trust) and answers every simple
/// query with CommandComplete and ReadyForQuery, except one containing
/// `misbehave`, which gets `reply` and then nothing more. Returns its port.
async fn misbehaving_upstream(reply: Vec<u8>) -> u16 {
    use common::raw::message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                s.read_exact(&mut len).await?;
                let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                s.read_exact(&mut startup).await?;
                let mut hello = message(b'R', &0u32.to_be_bytes());
                hello.extend(message(b'S', b"server_version\x0015.0\0"));
                hello.extend(message(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
                hello.extend(message(b'Z', b"I"));
                s.write_all(&hello).await?;
                let mut rbuf = BytesMut::new();
                loop {
                    let (tag, msg) = pgsift::protocol::io::read_message(&mut s, &mut rbuf, 1 << 20)
                        .await
                        .map_err(std::io::Error::other)?;
                    match tag {
                        b'Q' if msg.windows(9).any(|w| w == b"misbehave") => {
                            s.write_all(&reply).await?;
                        }
                        b'Q' => {
                            let mut ok = message(b'C', b"SELECT 0\0");
                            ok.extend(message(b'Z', b"I"));
                            s.write_all(&ok).await?;
                        }
                        b'S' => s.write_all(&message(b'Z', b"I")).await?,
                        b'X' => return Ok::<(), std::io::Error>(()),
                        _ => {}
                    }
                }
            });
        }
    });
    port
}

/// Bytes from the server that are no message, or a ReadyForQuery that is
/// not one, end the client with 08P01 in both pool modes, promptly, without
/// pgsift buffering what follows: before, transaction mode took a framing
/// error for "need more bytes" and waited forever, and both modes read a
/// 4 GiB DataRow into memory.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_sending_no_message_ends_its_client_with_08p01() {
    use common::raw::{message, query};
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a length of 0", b"Z\0\0\0\0".to_vec()),
        ("a 4 GiB DataRow", b"D\xff\xff\xff\xff\0\x01".to_vec()),
        ("ReadyForQuery without its status", {
            let mut b = message(b'C', b"SELECT 1\0");
            b.extend(message(b'Z', b""));
            b
        }),
        ("ReadyForQuery with status X", {
            let mut b = message(b'C', b"SELECT 1\0");
            b.extend(message(b'Z', b"X"));
            b
        }),
    ];
    for mode in ["session", "transaction"] {
        for (what, reply) in &cases {
            let upstream = misbehaving_upstream(reply.clone()).await;
            let proxy = Proxy::start(&format!(
                "databases:\n  app: {{host: 127.0.0.1, port: {upstream}, pool_mode: {mode}, pool_size: 2}}\n"
            ));
            let mut s = raw_login(proxy.port).await;
            s.write_all(&query("SELECT 'misbehave'")).await.unwrap();
            let started = Instant::now();
            let got = read_until_closed(&mut s).await;
            assert_eq!(
                error_code(&got).as_deref(),
                Some("08P01"),
                "{mode} mode, {what}: {got:?}; log:\n{}",
                proxy.log()
            );
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{mode} mode, {what}: the client was not closed"
            );
            // the next client gets a server of its own, and is served
            let mut s = raw_login(proxy.port).await;
            s.write_all(&query("SELECT 1")).await.unwrap();
            let msgs = common::raw::read_until(&mut s, b'Z').await;
            assert_eq!(common::raw::first_error(&msgs), None, "{mode} mode, {what}");
        }
    }
}

/// A PasswordMessage after login, or a CopyDone/CopyFail longer than
/// Postgres accepts, is refused by pgsift with 08P01. Before, it went to the
/// server, which closes the connection on either (`p` with a FATAL, an
/// oversized message without a word); as neither is owed a reply, the
/// server was back in the pool first and the next client's query died with
/// it.
#[tokio::test(flavor = "multi_thread")]
async fn messages_a_server_would_die_of_get_08p01_and_spare_the_pool() {
    use common::raw::message;
    let pg = shared_postgres();
    let proxy = Proxy::start(&databases_yaml(pg, "transaction", 1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let by = tokio::spawn(bystander(proxy.conn_str("blog", "blogpw", "app"), stop_rx));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let big = vec![b'x'; 20_000];
    let cases = [
        ("a PasswordMessage", message(b'p', b"whatever\0")),
        ("a 20,000-byte CopyDone", message(b'c', &big)),
        ("a 20,000-byte CopyFail", message(b'f', &big)),
        ("a 20,000-byte Sync", message(b'S', &big)),
    ];
    for _ in 0..10 {
        for (what, bad) in &cases {
            let mut s = raw_login(proxy.port).await;
            s.write_all(bad).await.unwrap();
            assert_eq!(
                error_code(&read_until_closed(&mut s).await).as_deref(),
                Some("08P01"),
                "{what}"
            );
        }
    }
    // refused on the header, before any of the body is buffered
    let mut s = raw_login(proxy.port).await;
    s.write_all(&[b'E', 0x0b, 0xeb, 0xc2, 0x00]).await.unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01"),
        "the header of a 200 MB Execute"
    );
    stop_tx.send(true).unwrap();
    let served = by.await.expect("the bystander saw no error");
    assert!(served > 0);
}

/// A server that stops answering while pgsift brings its settings in line
/// with a client's (transaction mode, at checkout) is given up after a few
/// seconds: the client gets an error instead of waiting forever, and the
/// pool slot is free again. Before, the session hung for good and held the
/// pool's only server, so everyone else got 53300.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_stuck_in_a_settings_change_is_given_up() {
    use common::raw::{first_error, query, raw_login_with, read_until};
    // the settings change names the application: the fake never answers it
    let upstream = misbehaving_upstream(Vec::new()).await;
    let proxy = Proxy::start(&format!(
        "databases:\n  app: {{host: 127.0.0.1, port: {upstream}, pool_mode: transaction, pool_size: 1}}\npool:\n  checkout_timeout: 20s\n"
    ));
    // a plain client first, so the pool's defaults are known and the next
    // login needs no server
    let mut plain = raw_login(proxy.port).await;
    plain.write_all(&query("SELECT 1")).await.unwrap();
    assert_eq!(first_error(&read_until(&mut plain, b'Z').await), None);

    let mut stuck = raw_login_with(proxy.port, &[("application_name", "misbehave")]).await;
    stuck.write_all(&query("SELECT 1")).await.unwrap();
    let started = Instant::now();
    let mut rbuf = BytesMut::new();
    let got = tokio::time::timeout(
        Duration::from_secs(15),
        pgsift::protocol::io::read_message(&mut stuck, &mut rbuf, 1 << 20),
    )
    .await
    .expect("the client waited more than 15 s for its server")
    .expect("an answer, not a closed socket");
    assert_eq!(got.0, b'E', "an error: {got:?}");
    assert_eq!(error_code(&got.1).as_deref(), Some("08006"));
    // the pool's one slot is free: the plain client is served at once
    plain.write_all(&query("SELECT 2")).await.unwrap();
    let msgs = read_until(&mut plain, b'Z').await;
    assert_eq!(first_error(&msgs), None, "{msgs:?}");
    assert!(started.elapsed() < Duration::from_secs(12));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_or_malformed_admin_console_message_gets_08p01() {
    let pg = shared_postgres();
    let proxy = Proxy::start(&databases_yaml(pg, "transaction", 2));
    // a Query announcing 2 MiB: the console reads at most 1 MiB
    let mut s = raw_login_as(proxy.port, "admin", "adminpw", "pgsift").await;
    let mut m = BytesMut::new();
    m.put_u8(b'Q');
    m.put_u32(2 << 20);
    m.put_slice(b"SHOW POOLS");
    s.write_all(&m).await.unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01")
    );
    // a length below 4
    let mut s = raw_login_as(proxy.port, "admin", "adminpw", "pgsift").await;
    s.write_all(&[b'Q', 0, 0, 0, 1]).await.unwrap();
    assert_eq!(
        error_code(&read_until_closed(&mut s).await).as_deref(),
        Some("08P01")
    );
}
