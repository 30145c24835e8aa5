//! HTTP admin endpoints: `/healthz` (the process serves), `/readyz` (the
//! listener is bound and an upstream answered), `/api/pools`,
//! `/api/queries?limit=N`, `/api/n-plus-one` and the `/n-plus-one` page.

use crate::app::App;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The admin router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/pools", get(pools))
        .route("/api/queries", get(queries))
        .route("/api/n-plus-one", get(n_plus_one_json))
        .route("/n-plus-one", get(n_plus_one_html))
        .with_state(app)
}

/// Serves the admin HTTP API until shutdown.
pub async fn serve(app: Arc<App>, listener: tokio::net::TcpListener) {
    let mut shutdown = app.shutdown_signal();
    let router = router(app);
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
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

/// One row of /api/pools.
#[derive(Serialize)]
struct PoolRow {
    database: String,
    user: String,
    mode: &'static str,
    size: usize,
    active: usize,
    idle: usize,
    waiting: usize,
    connecting: usize,
    clients: usize,
}

async fn pools(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let mut rows: Vec<PoolRow> = app
        .pools
        .iter()
        .map(|p| {
            let s = p.settings();
            PoolRow {
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
    rows.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
    Json(serde_json::json!({ "pools": rows }))
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
