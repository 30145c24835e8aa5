//! Opens many idle client connections to pgsift (SCRAM login, then nothing)
//! and keeps them open, to measure pgsift's memory per idle client.
//!
//! `cargo run --release --example idle_clients -- PORT USER PASSWORD DB COUNT [HOLD_SECONDS]`
//! Prints `connected N` when all are logged in, then holds them.
// This example runs a tokio runtime of its own, with timers: the timer functions
// clippy.toml keeps out of pgsift (src/timer.rs) are its to use.
#![allow(clippy::disallowed_methods)]

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn login(port: u16, user: &str, password: &str, db: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut buf = BytesMut::new();
    frontend::startup_message([("user", user), ("database", db)], &mut buf)?;
    s.write_all(&buf).await?;
    let mut rbuf = BytesMut::new();
    let mut scram: Option<ScramSha256> = None;
    loop {
        let (tag, msg) = pgsift::protocol::io::read_message(&mut s, &mut rbuf, 1 << 20)
            .await
            .map_err(std::io::Error::other)?;
        let body = &msg[5..];
        buf.clear();
        match tag {
            b'R' => match u32::from_be_bytes([body[0], body[1], body[2], body[3]]) {
                0 => {}
                10 => {
                    let sc = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response("SCRAM-SHA-256", sc.message(), &mut buf)?;
                    scram = Some(sc);
                }
                11 => {
                    let sc = scram
                        .as_mut()
                        .ok_or_else(|| std::io::Error::other("no scram"))?;
                    sc.update(&body[4..])?;
                    frontend::sasl_response(sc.message(), &mut buf)?;
                }
                12 => scram
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("no scram"))?
                    .finish(&body[4..])?,
                other => return Err(std::io::Error::other(format!("auth {other}"))),
            },
            b'Z' => return Ok(s),
            b'E' => return Err(std::io::Error::other("login refused")),
            _ => {}
        }
        if !buf.is_empty() {
            s.write_all(&buf).await?;
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: idle_clients PORT USER PASSWORD DB COUNT [HOLD_SECONDS]");
        std::process::exit(2);
    }
    let port: u16 = args[1].parse().expect("port");
    let (user, password, db) = (args[2].clone(), args[3].clone(), args[4].clone());
    let count: usize = args[5].parse().expect("count");
    let hold: u64 = args.get(6).and_then(|s| s.parse().ok()).unwrap_or(3600);
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (gate, user, password, db) = (gate.clone(), user.clone(), password.clone(), db.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            login(port, &user, &password, &db).await.ok()
        }));
    }
    let mut held = Vec::with_capacity(count);
    for t in tasks {
        if let Ok(Some(s)) = t.await {
            held.push(s);
        }
    }
    println!("connected {}", held.len());
    tokio::time::sleep(std::time::Duration::from_secs(hold)).await;
}
