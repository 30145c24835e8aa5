//! HTTP admin endpoints: `/healthz` (the process serves), `/readyz` (the
//! listener is bound and an upstream answered), `/api/pools`,
//! `/api/queries?limit=N`, `/api/n-plus-one` and the `/n-plus-one` page.

use crate::app::App;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The admin router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(status))
        .route("/metrics", get(metrics))
        .route("/api/pools", get(pools))
        .route("/api/queries", get(queries))
        .route("/api/n-plus-one", get(n_plus_one_json))
        .route("/n-plus-one", get(n_plus_one_html))
        .with_state(app)
}

/// Most admin connections open at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 256;
/// How long an admin connection may wait for a whole request, from its
/// accept or its last response: a client that has not sent one by then
/// (one that sends its headers a byte at a time, or never) is closed, and
/// so is a keep-alive connection left idle that long.
const READ_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30);

/// The admin listener: at most [`MAX_CONNECTIONS`] connections, each of
/// which waits for a request at most [`READ_LIFETIME`]. Stalled clients
/// can neither hold connections forever nor use up the process's file
/// descriptors, which the client listener needs.
struct Guarded {
    listener: tokio::net::TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
}

impl axum::serve::Listener for Guarded {
    type Io = Limited;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Limited, std::net::SocketAddr) {
        loop {
            let (stream, addr) = match self.listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    crate::timer::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                tracing::warn!(%addr, "too many admin connections; closing this one");
                continue;
            };
            let deadline = Box::pin(crate::timer::sleep(READ_LIFETIME));
            return (
                Limited {
                    stream,
                    deadline,
                    waiting: true,
                    last: [0; 3],
                    _slot: slot,
                },
                addr,
            );
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// An admin connection: its slot, and the end of its time to send a
/// request. The time runs while the connection waits for a request: from
/// its accept or its last response until the blank line that ends a
/// request's head. (While a handler runs the server still reads, to notice
/// a client that leaves; that read must not time out.)
struct Limited {
    stream: tokio::net::TcpStream,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// no whole request head has come since the accept or the last response
    waiting: bool,
    /// the last three bytes read (a head's end may span two reads)
    last: [u8; 3],
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Limited {
    /// Bytes read: a request head that ends in them ends the wait.
    fn saw(&mut self, bytes: &[u8]) {
        if head_ended(&mut self.last, bytes) {
            self.waiting = false;
        }
    }
}

/// True when `bytes`, read after bytes ending in `last` (their last three),
/// complete a `\r\n\r\n`; `last` becomes the last three bytes read.
fn head_ended(last: &mut [u8; 3], bytes: &[u8]) -> bool {
    let mut window = [0u8; 4];
    window[1..].copy_from_slice(last);
    let mut ended = false;
    for &b in bytes {
        window.copy_within(1.., 0);
        window[3] = b;
        ended |= &window == b"\r\n\r\n";
    }
    last.copy_from_slice(&window[1..]);
    ended
}

impl tokio::io::AsyncRead for Limited {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Pending if self.waiting => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(Ok(())) => {
                self.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl tokio::io::AsyncWrite for Limited {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        // a response is going out: the next request has its full time
        if !self.waiting {
            self.waiting = true;
            let next = tokio::time::Instant::now() + READ_LIFETIME;
            self.deadline.as_mut().reset(next);
        }
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves the admin HTTP API until the drain that follows shutdown is
/// over: while clients finish their transactions /healthz still answers 200
/// and /readyz 503 (SPEC §9). Should the drain outlast `shutdown_timeout`,
/// the process exits under it.
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener) {
    let mut shutdown = app.shutdown_signal();
    let drained = app.clone();
    let router = router(app);
    let listener = Guarded {
        listener,
        slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
    };
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            drained.all_clients_gone().await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin HTTP server failed");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    if app.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn pools(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "pools": pool_lines(&app) }))
}

/// One line per pool, sorted by database and user (for /api/pools and `/`).
fn pool_lines(app: &App) -> Vec<super::pages::PoolLine> {
    let mut pools: Vec<_> = app
        .pools
        .iter()
        .map(|p| {
            let s = p.settings();
            super::pages::PoolLine {
                database: p.database.clone(),
                user: p.user.clone(),
                mode: match s.mode {
                    crate::config::PoolMode::Session => "session",
                    crate::config::PoolMode::Transaction => "transaction",
                },
                size: s.size,
                active: p.counts.active.load(Ordering::Relaxed),
                idle: p.idle_count(),
                waiting: p.counts.waiting.load(Ordering::Relaxed),
                connecting: p.counts.connecting.load(Ordering::Relaxed),
                clients: p.counts.clients.load(Ordering::Relaxed),
            }
        })
        .collect();
    pools.sort();
    pools
}

#[derive(serde::Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn queries(
    State(app): State<Arc<App>>,
    axum::extract::Query(q): axum::extract::Query<Limit>,
) -> Json<serde_json::Value> {
    let rows = app.sinks.queries.top(q.limit.unwrap_or(50).min(10_000));
    Json(serde_json::json!({ "queries": rows }))
}

async fn n_plus_one_json(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "reports": app.sinks.reports.reports() }))
}

async fn n_plus_one_html(State(app): State<Arc<App>>) -> axum::response::Html<String> {
    axum::response::Html(super::pages::n_plus_one_page(&app.sinks.reports.reports()))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    refresh_cache_gauges(&app).await;
    let body = {
        // one scrape at a time rebuilds the connection gauges and renders
        // them: another scrape's reset never shows half-filled families
        static SCRAPE: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
        let _one = SCRAPE.lock();
        refresh_gauges(&app);
        app.metrics.render()
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Connection gauges are computed from the pools at scrape time. They are
/// emptied first: the series of a pool a reload closed (its database or
/// user removed) must not go on showing its last counts.
pub fn refresh_gauges(app: &App) {
    let m = &app.metrics;
    m.client_connections.reset();
    m.server_connections.reset();
    for p in app.pools.iter() {
        let (db, user) = (p.database.as_str(), p.user.as_str());
        let active = p.counts.active.load(Ordering::Relaxed) as i64;
        let waiting = p.counts.waiting.load(Ordering::Relaxed) as i64;
        let clients = p.counts.clients.load(Ordering::Relaxed) as i64;
        let client_active = active.min(clients);
        m.client_connections
            .with_label_values(&[db, user, "active"])
            .set(client_active);
        m.client_connections
            .with_label_values(&[db, user, "waiting"])
            .set(waiting);
        m.client_connections
            .with_label_values(&[db, user, "idle"])
            .set((clients - client_active - waiting).max(0));
        m.server_connections
            .with_label_values(&[db, user, "active"])
            .set(active);
        m.server_connections
            .with_label_values(&[db, user, "idle"])
            .set(p.idle_count() as i64);
        m.server_connections
            .with_label_values(&[db, user, "connecting"])
            .set(p.counts.connecting.load(Ordering::Relaxed) as i64);
    }
}

/// Cache gauges: bytes held (Redis: its `used_memory`) and health.
pub async fn refresh_cache_gauges(app: &App) {
    if let Some(c) = &app.cache {
        let backend = c.backend_name();
        let bytes = c.bytes().await;
        let m = &app.metrics;
        m.cache_bytes
            .with_label_values(&[backend])
            .set(bytes as f64);
        m.cache_healthy
            .with_label_values(&[backend])
            .set(if c.healthy() { 1.0 } else { 0.0 });
    }
}

async fn status(State(app): State<Arc<App>>) -> axum::response::Html<String> {
    let pools = pool_lines(&app);
    let config = app.config();
    let (mut hits, mut misses) = (0, 0);
    for db in config.databases.keys() {
        hits += app
            .metrics
            .cache_requests_total
            .with_label_values(&[db, "hit"])
            .get();
        misses += app
            .metrics
            .cache_requests_total
            .with_label_values(&[db, "miss"])
            .get();
    }
    let status = super::pages::Status {
        version: env!("CARGO_PKG_VERSION"),
        pools,
        cache: (hits, misses),
        cache_backend: config.cache.backend.clone(),
        queries: app.sinks.queries.top(10),
        n_plus_one: app.sinks.reports.reports().len(),
    };
    axum::response::Html(super::pages::status_page(&status))
}

#[cfg(test)]
mod tests {
    use super::head_ended;

    #[test]
    fn the_end_of_a_request_head_is_found_across_reads() {
        let mut last = [0u8; 3];
        assert!(!head_ended(&mut last, b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(
            head_ended(&mut last, b"\r\n"),
            "split after the header line"
        );
        let mut last = [0u8; 3];
        for (i, chunk) in [&b"GET / HTTP/1.1\r"[..], b"\n", b"\r", b"\n"]
            .iter()
            .enumerate()
        {
            assert_eq!(head_ended(&mut last, chunk), i == 3, "chunk {i}");
        }
        let mut last = [0u8; 3];
        assert!(!head_ended(&mut last, b"\r\n\r"), "not yet");
        assert!(!head_ended(&mut last, b""), "nothing new");
        assert!(
            head_ended(&mut last, b"\nGET"),
            "ended, the next request begun"
        );
    }
}
