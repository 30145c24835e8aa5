//! The floor under pgsift's hot path: a bare byte pipe between clients and
//! PostgreSQL on the same runtime and in the same shape as pgsift's session
//! loop (current-thread runtime, one task per client, a select over both
//! reads, `try_write` first), with no framing, statistics or bookkeeping.
//! BENCHMARKS.md (round 9) counts its instructions per statement against
//! pgsift's and PgBouncer's.
//!
//! ```sh
//! cargo run --release --example pipe_floor -- 127.0.0.1:16470 127.0.0.1:15432
//! ```
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

/// Writes all of `buf`, trying the socket first and waiting only when full.
async fn send_all(w: &OwnedWriteHalf, buf: &[u8]) -> std::io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match w.try_write(&buf[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => w.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn pipe(client: TcpStream, upstream: String) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut cr, cw) = client.into_split();
    let (mut sr, sw) = server.into_split();
    let (mut cbuf, mut sbuf) = (vec![0u8; 16384], vec![0u8; 16384]);
    loop {
        tokio::select! {
            biased;
            r = sr.read(&mut sbuf) => match r? {
                0 => return Ok(()),
                n => send_all(&cw, &sbuf[..n]).await?,
            },
            r = cr.read(&mut cbuf) => match r? {
                0 => return Ok(()),
                n => send_all(&sw, &cbuf[..n]).await?,
            },
        }
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:16470".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:15432".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = TcpListener::bind(&listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let _ = pipe(client, upstream).await;
            });
        }
    })
}
