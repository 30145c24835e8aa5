//! The admin console: `psql -h 127.0.0.1 -p 6432 -U admin pgsift`, for users
//! listed in `admin.users`. Commands are answered as ordinary result tables
//! over the simple query protocol: SHOW POOLS, CLIENTS, SERVERS, STATS,
//! QUERIES, N_PLUS_ONE, CACHE, CONFIG; RELOAD; PAUSE [db]; RESUME [db].

use crate::app::App;
use crate::frontend::handshake::AdminLogin;
use crate::protocol::io::{read_message, ReadError};
use crate::protocol::messages::{self, Severity};
use crate::sql::Kind;
use bytes::BytesMut;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;

/// A result table: column names and text rows.
pub struct Table {
    /// column names
    pub columns: Vec<&'static str>,
    /// rows of optional text values
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn new(columns: &[&'static str]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }
    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row.into_iter().map(Some).collect());
    }
    fn write(&self, out: &mut BytesMut, tag: &str) {
        messages::row_description_text(out, &self.columns);
        for r in &self.rows {
            messages::data_row_text(out, r);
        }
        messages::command_complete(out, &format!("{tag} {}", self.rows.len()));
    }
}

/// What a command produced.
enum Reply {
    Table(Table),
    Done(String),
    Error(&'static str, String),
}

/// Serves one admin connection until it leaves.
pub async fn run(app: Arc<App>, login: AdminLogin) {
    let AdminLogin {
        mut stream,
        mut rbuf,
        user,
    } = login;
    let mut out = BytesMut::new();
    for (k, v) in [
        ("server_version", "15.0 (pgsift admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", "pgsift"),
    ] {
        messages::parameter_status(&mut out, k, v);
    }
    messages::backend_key_data(&mut out, 0, 0);
    messages::ready_for_query(&mut out, b'I');
    if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let mut shutdown = app.shutdown_signal();
    loop {
        let msg = tokio::select! {
            m = read_message(&mut stream, &mut rbuf, 1 << 20) => m,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (tag, msg) = match msg {
            Ok(m) => m,
            // a malformed or oversized message gets 08P01, then the close
            // (SPEC §11); only a client that is gone hears nothing
            Err(ReadError::Frame(e)) => {
                app.metrics.error("client_protocol");
                out.clear();
                messages::error_response(&mut out, Severity::Fatal, "08P01", &e.to_string());
                let _ = stream.write_all(&out).await;
                break;
            }
            Err(_) => break,
        };
        out.clear();
        match tag {
            b'Q' => {
                let body = &msg[5..];
                let text =
                    String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body)).into_owned();
                let command = text.trim().trim_end_matches(';').trim();
                if command.is_empty() {
                    out.extend_from_slice(b"I\0\0\0\x04");
                } else {
                    tracing::info!(user = %user, command = %command, "admin console command");
                    match execute(&app, command).await {
                        Reply::Table(t) => {
                            let tag = command
                                .split_whitespace()
                                .next()
                                .unwrap_or("SHOW")
                                .to_ascii_uppercase();
                            t.write(&mut out, &tag);
                        }
                        Reply::Done(tag) => messages::command_complete(&mut out, &tag),
                        Reply::Error(code, m) => {
                            messages::error_response(&mut out, Severity::Error, code, &m)
                        }
                    }
                }
                messages::ready_for_query(&mut out, b'I');
            }
            b'X' => break,
            _ => {
                messages::error_response(
                    &mut out,
                    Severity::Fatal,
                    "08P01",
                    "the pgsift admin console speaks only the simple query protocol",
                );
                let _ = stream.write_all(&out).await;
                break;
            }
        }
        if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
            break;
        }
    }
    let _ = stream.shutdown().await;
}

async fn execute(app: &Arc<App>, command: &str) -> Reply {
    let words: Vec<String> = command
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let arg = command
        .split_whitespace()
        .nth(1)
        .map(|s| s.trim_matches('"').to_owned());
    match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["SHOW", "POOLS"] => Reply::Table(show_pools(app)),
        ["SHOW", "CLIENTS"] => Reply::Table(show_clients(app)),
        ["SHOW", "SERVERS"] => Reply::Table(show_servers(app)),
        ["SHOW", "STATS"] => Reply::Table(show_stats(app)),
        ["SHOW", "QUERIES"] => Reply::Table(show_queries(app)),
        ["SHOW", "N_PLUS_ONE"] => Reply::Table(show_n_plus_one(app)),
        ["SHOW", "CACHE"] => Reply::Table(show_cache(app).await),
        ["SHOW", "CONFIG"] => Reply::Table(show_config(app)),
        ["RELOAD"] => {
            let path = app.config_path.read().clone();
            match path {
                None => Reply::Error("55000", "pgsift runs from --upstream: there is no config file to reload".into()),
                Some(p) => match crate::config::Config::load(&p) {
                    Ok(cfg) => match app.apply_config(cfg) {
                        Ok(()) => {
                            tracing::info!(path = %p.display(), "configuration reloaded from the admin console");
                            Reply::Done("RELOAD".into())
                        }
                        Err(e) => Reply::Error("F0000", format!("reload rejected, old configuration stays: {e}")),
                    },
                    Err(e) => Reply::Error("F0000", format!("reload rejected, old configuration stays: {}", e.0.join("; "))),
                },
            }
        }
        ["PAUSE"] | ["PAUSE", _] => pause(app, arg.as_deref()).await,
        ["RESUME"] | ["RESUME", _] => {
            let db = arg.as_deref();
            app.paused.write().resume(db);
            for p in app.pools.iter().filter(|p| db.is_none_or(|d| p.database == d)) {
                p.resume();
            }
            Reply::Done("RESUME".into())
        }
        ["SHOW", ..] => Reply::Error(
            "42704",
            format!("unknown SHOW command \"{command}\": try POOLS, CLIENTS, SERVERS, STATS, QUERIES, N_PLUS_ONE, CACHE or CONFIG"),
        ),
        _ => Reply::Error(
            "42601",
            format!("unknown admin command \"{command}\": try SHOW …, RELOAD, PAUSE [db] or RESUME [db]"),
        ),
    }
}

/// PAUSE [db]: new transactions wait; returns once the transactions in
/// flight have finished (their servers went back to the pool).
async fn pause(app: &Arc<App>, db: Option<&str>) -> Reply {
    if let Some(d) = db {
        if !app.config().databases.contains_key(d) {
            return Reply::Error("3D000", format!("database \"{d}\" does not exist"));
        }
    }
    app.paused.write().pause(db);
    let pools: Vec<_> = app
        .pools
        .iter()
        .filter(|p| db.is_none_or(|d| p.database == d))
        .map(|p| p.value().clone())
        .collect();
    for p in &pools {
        p.pause();
    }
    let limit = app.config().shutdown_timeout;
    let start = Instant::now();
    loop {
        let active: usize = pools
            .iter()
            .map(|p| p.counts.active.load(Ordering::Relaxed))
            .sum();
        if active == 0 {
            return Reply::Done("PAUSE".into());
        }
        if start.elapsed() > limit {
            return Reply::Error(
                "55000",
                format!("paused, but {active} server(s) are still in use after {limit:?} (session-mode clients keep theirs)"),
            );
        }
        crate::timer::sleep(Duration::from_millis(10)).await;
    }
}

fn mode_name(m: crate::config::PoolMode) -> &'static str {
    match m {
        crate::config::PoolMode::Session => "session",
        crate::config::PoolMode::Transaction => "transaction",
    }
}

fn show_pools(app: &App) -> Table {
    let mut t = Table::new(&[
        "database",
        "user",
        "mode",
        "size",
        "active",
        "idle",
        "waiting",
        "connecting",
        "clients",
        "paused",
    ]);
    let mut pools: Vec<_> = app.pools.iter().map(|p| p.value().clone()).collect();
    pools.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
    for p in pools {
        let s = p.settings();
        t.push(vec![
            p.database.clone(),
            p.user.clone(),
            mode_name(s.mode).into(),
            s.size.to_string(),
            p.counts.active.load(Ordering::Relaxed).to_string(),
            p.idle_count().to_string(),
            p.counts.waiting.load(Ordering::Relaxed).to_string(),
            p.counts.connecting.load(Ordering::Relaxed).to_string(),
            p.counts.clients.load(Ordering::Relaxed).to_string(),
            p.is_paused().to_string(),
        ]);
    }
    t
}

fn ago(t: SystemTime) -> String {
    format!(
        "{:.1}",
        SystemTime::now()
            .duration_since(t)
            .unwrap_or_default()
            .as_secs_f64()
    )
}

fn show_clients(app: &App) -> Table {
    let mut t = Table::new(&[
        "id",
        "addr",
        "user",
        "database",
        "application",
        "state",
        "server_pid",
        "connected_seconds",
    ]);
    for c in app.registry.all() {
        t.push(vec![
            c.id.to_string(),
            c.addr.to_string(),
            c.user.clone(),
            c.database.clone(),
            c.application.clone(),
            c.state().as_str().into(),
            c.server()
                .map(|(_, pid)| pid.to_string())
                .unwrap_or_default(),
            ago(c.connected),
        ]);
    }
    t
}

fn show_servers(app: &App) -> Table {
    let mut t = Table::new(&[
        "id",
        "database",
        "user",
        "state",
        "backend_pid",
        "client_id",
        "age_seconds",
    ]);
    for c in app.registry.all() {
        if let Some((id, pid)) = c.server() {
            t.push(vec![
                id.to_string(),
                c.database.clone(),
                c.user.clone(),
                "active".into(),
                pid.to_string(),
                c.id.to_string(),
                String::new(),
            ]);
        }
    }
    for p in app.pools.iter() {
        for (id, pid, age) in p.idle_servers() {
            t.push(vec![
                id.to_string(),
                p.database.clone(),
                p.user.clone(),
                "idle".into(),
                pid.to_string(),
                String::new(),
                format!("{:.1}", age.as_secs_f64()),
            ]);
        }
    }
    t
}

const KINDS: &[Kind] = &[
    Kind::Select,
    Kind::Insert,
    Kind::Update,
    Kind::Delete,
    Kind::Merge,
    Kind::Copy,
    Kind::Ddl,
    Kind::Transaction,
    Kind::Utility,
];

/// Per pool: statements and transactions of its (database, user), the mean
/// statement time of the whole database (`db_avg_query_ms`: the latency
/// histogram is labelled by database and kind only, SPEC §9) and the
/// pool's mean checkout wait.
fn show_stats(app: &App) -> Table {
    let m = &app.metrics;
    let mut t = Table::new(&[
        "database",
        "user",
        "queries",
        "transactions",
        "db_avg_query_ms",
        "pool_wait_avg_ms",
    ]);
    let mut keys: Vec<(String, String)> = app
        .pools
        .iter()
        .map(|p| (p.database.clone(), p.user.clone()))
        .collect();
    keys.sort();
    for (db, user) in keys {
        let queries: u64 = KINDS
            .iter()
            .map(|k| {
                m.queries_total
                    .with_label_values(&[&db, &user, k.as_str()])
                    .get()
            })
            .sum();
        let (mut sum, mut count) = (0.0, 0u64);
        for k in KINDS {
            let h = m
                .query_duration_seconds
                .with_label_values(&[&db, k.as_str()]);
            sum += h.get_sample_sum();
            count += h.get_sample_count();
        }
        let wait = m.pool_wait_seconds.with_label_values(&[&db, &user]);
        let avg = |s: f64, c: u64| if c == 0 { 0.0 } else { s * 1000.0 / c as f64 };
        t.push(vec![
            db.clone(),
            user.clone(),
            queries.to_string(),
            m.transactions_total
                .with_label_values(&[&db, &user])
                .get()
                .to_string(),
            format!("{:.3}", avg(sum, count)),
            format!("{:.3}", avg(wait.get_sample_sum(), wait.get_sample_count())),
        ]);
    }
    t
}

fn show_queries(app: &App) -> Table {
    let mut t = Table::new(&[
        "fingerprint",
        "query",
        "kind",
        "calls",
        "total_ms",
        "mean_ms",
        "rows",
        "errors",
        "cache_hits",
    ]);
    for q in app.sinks.queries.top(50) {
        t.push(vec![
            q.fingerprint,
            q.query,
            q.kind.into(),
            q.calls.to_string(),
            format!("{:.3}", q.total_ms),
            format!("{:.3}", q.mean_ms),
            q.rows.to_string(),
            q.errors.to_string(),
            q.cache_hits.to_string(),
        ]);
    }
    t
}

fn show_n_plus_one(app: &App) -> Table {
    let mut t = Table::new(&[
        "kind",
        "database",
        "application",
        "query",
        "parent_query",
        "occurrences",
        "max_repeats",
        "total_repeats",
        "total_ms",
        "suggestion",
    ]);
    for r in app.sinks.reports.reports() {
        t.push(vec![
            r.kind.as_str().into(),
            r.database,
            r.application,
            r.query,
            r.parent_query.unwrap_or_default(),
            r.occurrences.to_string(),
            r.max_repeats.to_string(),
            r.total_repeats.to_string(),
            format!("{:.3}", r.total_ms),
            r.suggestion,
        ]);
    }
    t
}

async fn show_cache(app: &App) -> Table {
    let config = app.config();
    let c = &config.cache;
    let mut t = Table::new(&[
        "backend",
        "status",
        "entries",
        "bytes",
        "hits",
        "misses",
        "bypasses",
        "rules",
        "default_ttl",
        "max_result_bytes",
    ]);
    let (status, entries, bytes) = match &app.cache {
        Some(cache) => {
            let status = if c.rules.is_empty() {
                "on, but no rule covers any table"
            } else if !cache.healthy() {
                "unhealthy: reads go to Postgres until the backend recovers"
            } else {
                "on"
            };
            let entries = cache
                .entries()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "shared".into());
            (status, entries, cache.bytes().await)
        }
        None => ("off", "0".into(), 0),
    };
    let count = |r: &str| -> u64 {
        config
            .databases
            .keys()
            .map(|db| {
                app.metrics
                    .cache_requests_total
                    .with_label_values(&[db, r])
                    .get()
            })
            .sum()
    };
    t.push(vec![
        c.backend.clone(),
        status.into(),
        entries,
        bytes.to_string(),
        count("hit").to_string(),
        count("miss").to_string(),
        count("bypass").to_string(),
        c.rules.len().to_string(),
        format!("{:?}", c.default_ttl),
        c.max_result_bytes.to_string(),
    ]);
    t
}

fn show_config(app: &App) -> Table {
    let c = app.config();
    let mut t = Table::new(&["key", "value"]);
    let mut kv = |k: &str, v: String| t.push(vec![k.to_owned(), v]);
    kv("listen", c.listen.clone());
    kv("shutdown_timeout", format!("{:?}", c.shutdown_timeout));
    kv("admin.listen", c.admin_listen.clone());
    kv("admin.users", c.admin_users.join(", "));
    kv(
        "tls.mode",
        c.tls
            .as_ref()
            .map(|t| format!("{:?}", t.mode).to_lowercase())
            .unwrap_or_else(|| "disabled".into()),
    );
    kv(
        "users",
        c.users.keys().cloned().collect::<Vec<_>>().join(", "),
    );
    for (name, d) in &c.databases {
        kv(
            &format!("databases.{name}"),
            format!(
                "{}:{}/{} {} pool_size={} min_pool_size={}",
                d.host,
                d.port,
                d.dbname,
                mode_name(d.pool_mode),
                d.pool_size,
                d.min_pool_size
            ),
        );
    }
    kv(
        "pool.connect_timeout",
        format!("{:?}", c.pool.connect_timeout),
    );
    kv(
        "pool.checkout_timeout",
        format!("{:?}", c.pool.checkout_timeout),
    );
    kv("pool.idle_timeout", format!("{:?}", c.pool.idle_timeout));
    kv(
        "pool.server_lifetime",
        format!("{:?}", c.pool.server_lifetime),
    );
    kv("pool.max_client_conn", c.pool.max_client_conn.to_string());
    kv(
        "pool.max_prepared_statements",
        c.pool.max_prepared_statements.to_string(),
    );
    kv(
        "pool.prepare_unnamed_statements",
        c.pool.prepare_unnamed_statements.to_string(),
    );
    kv(
        "pool.multiplex_servers",
        c.pool.multiplex_servers.to_string(),
    );
    kv(
        "pool.client_login_timeout",
        format!("{:?}", c.pool.client_login_timeout),
    );
    kv("pool.max_message_size", c.pool.max_message_size.to_string());
    kv("worker_threads", c.worker_threads.to_string());
    kv("busy_poll", format!("{:?}", c.busy_poll));
    kv("cache.backend", c.cache.backend.clone());
    kv("cache.redis_url", masked_url(&c.cache.redis_url));
    kv("cache.key_prefix", c.cache.key_prefix.clone());
    kv("cache.max_memory", c.cache.max_memory.to_string());
    kv("cache.default_ttl", format!("{:?}", c.cache.default_ttl));
    kv(
        "cache.max_result_bytes",
        c.cache.max_result_bytes.to_string(),
    );
    kv("cache.rules", c.cache.rules.len().to_string());
    kv("n_plus_one.enabled", c.n_plus_one.enabled.to_string());
    kv(
        "n_plus_one.min_repeats",
        c.n_plus_one.min_repeats.to_string(),
    );
    kv("n_plus_one.max_gap", format!("{:?}", c.n_plus_one.max_gap));
    kv("logging.level", c.logging.level.clone());
    kv("logging.format", c.logging.format.clone());
    kv(
        "logging.slow_statement",
        format!("{:?}", c.logging.slow_statement),
    );
    t
}

/// A URL (or comma-separated URLs) with any password replaced by `***`.
fn masked_url(urls: &str) -> String {
    urls.split(',')
        .map(|u| match url::Url::parse(u.trim()) {
            Ok(mut parsed) if parsed.password().is_some() => {
                let _ = parsed.set_password(Some("***"));
                parsed.to_string()
            }
            _ => u.trim().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_redis_urls_are_masked() {
        assert_eq!(
            masked_url("redis://:secret@10.0.0.5:6379/0"),
            "redis://:***@10.0.0.5:6379/0"
        );
        let nodes = masked_url("redis://u:pw@a:7000, redis://u:pw@b:7001");
        assert!(!nodes.contains("pw") && nodes.contains("a:7000") && nodes.contains("b:7001"));
        assert_eq!(
            masked_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(masked_url(""), "");
    }
}
