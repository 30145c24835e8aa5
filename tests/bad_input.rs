//! Malformed and hostile input from clients: each bad client gets an 08P01
//! ErrorResponse (or is closed), nothing panics, nothing hangs, and a client
//! running queries alongside never notices.
// Tests run tokio runtimes of their own, with timers: the timer functions
// clippy.toml keeps out of pgsift (src/timer.rs) are theirs to use.
#![allow(clippy::disallowed_methods)]

mod common;

use bytes::{BufMut, BytesMut};
use common::raw::{error_code, raw_login, read_until_closed};
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
    assert!(error_code(&got).is_some(), "garbage gets an error response");

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
