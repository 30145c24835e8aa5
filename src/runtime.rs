//! Running pgsift: binding the listeners, the background upkeep of pools, the
//! readiness probe, signal handling (SIGHUP reload, SIGTERM/SIGINT drain; a
//! second SIGTERM/SIGINT ends the drain at once).

use crate::app::App;
use crate::config::Config;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Where the config came from, for reloads.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// a file, re-read on SIGHUP
    File(PathBuf),
    /// `--upstream URL`: nothing to reload
    Upstream,
}

/// Runs pgsift until a shutdown signal and the drain that follows.
pub async fn run(config: Config, source: ConfigSource) -> anyhow::Result<()> {
    let app = App::new(config.clone())?;
    if let ConfigSource::File(p) = &source {
        *app.config_path.write() = Some(p.clone());
    }
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listen: cannot bind {}: {e}", config.listen))?;
    let admin_listener = TcpListener::bind(&config.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen: cannot bind {}: {e}", config.admin_listen))?;
    tracing::info!(listen = %config.listen, admin = %config.admin_listen, "pgsift {} started", env!("CARGO_PKG_VERSION"));

    // axum uses tokio's timers itself. Without the session runtime's time
    // driver, the admin server runs on the control thread (its listener is
    // moved there). With it (the Redis backend), the server stays here: a
    // scrape's Redis call (the bytes gauge) must not open the Redis
    // connection on another thread, where every session's call would follow.
    if config.session_runtime_timers() {
        tokio::spawn(crate::admin::http::serve(app.clone(), admin_listener));
    } else {
        let admin_listener = admin_listener.into_std()?;
        let admin_app = app.clone();
        crate::timer::control().spawn(async move {
            match TcpListener::from_std(admin_listener) {
                Ok(l) => crate::admin::http::serve(admin_app, l).await,
                Err(e) => tracing::error!("admin.listen: {e}"),
            }
        });
    }
    tokio::spawn(upkeep(app.clone()));
    tokio::spawn(app.busy_poll.clone().run());
    tokio::spawn(probe_upstreams(app.clone()));
    let accept = tokio::spawn(crate::frontend::listener::serve(app.clone(), listener));

    let mut signals = Signals::install();
    let first = signals.stop(&app, &source).await;
    tracing::info!("{first}: shutting down");
    app.begin_shutdown();
    let _ = accept.await;
    let timeout = app.config().shutdown_timeout;
    let began = std::time::Instant::now();
    let active = app.clients.load(Ordering::SeqCst);
    tracing::info!(
        clients = active,
        "draining: waiting up to {:?} for in-flight transactions ({first} again stops at once)",
        timeout
    );
    tokio::select! {
        drained = crate::timer::timeout(timeout, app.all_clients_gone()) => {
            if drained.is_err() {
                tracing::warn!(
                    clients = app.clients.load(Ordering::SeqCst),
                    "shutdown_timeout reached; closing remaining clients"
                );
            }
        }
        second = signals.stop(&app, &source) => {
            tracing::warn!(
                clients = app.clients.load(Ordering::SeqCst),
                "{second} during the drain: closing remaining clients now"
            );
        }
    }
    // Sessions still open send FATAL 57P01 and close; clients waiting for
    // a server (a paused pool) get it from the closed pool.
    app.stop_now();
    for p in app.pools.iter() {
        p.close();
    }
    let _ = crate::timer::timeout(FAREWELL, app.all_clients_gone()).await;
    // An invalidation Redis did not record is known to this process only:
    // it keeps trying within shutdown_timeout (a start bumps every epoch,
    // should this instance come back).
    if let Some(cache) = &app.cache {
        cache.settle(timeout.saturating_sub(began.elapsed())).await;
    }
    tracing::info!("pgsift stopped");
    Ok(())
}

/// How long the sessions still open when the drain ends have to send
/// their clients the 57P01 error and close.
const FAREWELL: Duration = Duration::from_secs(3);

/// The signals that stop pgsift (SIGTERM, SIGINT) and reload it (SIGHUP).
#[cfg(unix)]
struct Signals(
    Option<(
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
    )>,
);

#[cfg(unix)]
impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Signals(Some((term, int, hup))),
            _ => {
                tracing::error!("cannot install signal handlers");
                Signals(None)
            }
        }
    }

    /// Waits for SIGTERM or SIGINT (and tells which), reloading on each
    /// SIGHUP meanwhile.
    async fn stop(&mut self, app: &Arc<App>, source: &ConfigSource) -> &'static str {
        let Some((term, int, hup)) = self.0.as_mut() else {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        };
        loop {
            tokio::select! {
                _ = term.recv() => return "SIGTERM",
                _ = int.recv() => return "SIGINT",
                _ = hup.recv() => reload(app, source),
            }
        }
    }
}

/// Ctrl-C stops pgsift.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Signals {
        Signals
    }

    async fn stop(&mut self, _app: &Arc<App>, _source: &ConfigSource) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// Re-reads the config file; an invalid one is logged and ignored.
pub fn reload(app: &App, source: &ConfigSource) {
    let ConfigSource::File(path) = source else {
        tracing::info!("reload requested, but pgsift runs from --upstream: nothing to reload");
        return;
    };
    match Config::load(path) {
        Ok(cfg) => match app.apply_config(cfg) {
            Ok(()) => tracing::info!(path = %path.display(), "configuration reloaded"),
            Err(e) => {
                tracing::error!(path = %path.display(), "reload rejected, old configuration stays: {e}")
            }
        },
        Err(e) => {
            for line in &e.0 {
                tracing::error!(path = %path.display(), "reload rejected, old configuration stays: {line}");
            }
        }
    }
}

/// Once a second: every pool closes what it should and opens min_pool_size.
async fn upkeep(app: Arc<App>) {
    let mut tick = crate::timer::interval(Duration::from_secs(1));
    let mut shutdown = app.shutdown_signal();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        app.close_unmapped_pools();
        // each pool in a task of its own: one whose upstream takes
        // connect_timeout to fail must not hold up the others
        for p in app.pools.iter() {
            p.value().spawn_upkeep();
        }
        // A pool with min_pool_size exists before any client asks for it
        // when its user is known in advance: the database's server_user, or
        // the only configured user. Otherwise a (database, user) pool opens
        // at its first client's login and is kept at min_pool_size from then.
        let config = app.config();
        let only_user = match config.users.len() {
            1 => config.users.keys().next(),
            _ => None,
        };
        for (db, d) in &config.databases {
            if d.min_pool_size > 0 {
                if let Some(user) = d.server_user.as_ref().or(only_user) {
                    app.pool(db, user);
                }
            }
        }
    }
}

/// Readiness: an upstream accepted a connection (or a login succeeded).
async fn probe_upstreams(app: Arc<App>) {
    while !app.upstream_answered.load(Ordering::Relaxed) && !app.is_shutting_down() {
        let config = app.config();
        for d in config.databases.values() {
            if let Ok(Ok(_)) = crate::timer::timeout(
                Duration::from_secs(1),
                crate::backend::socket::ServerStream::connect(&d.host, d.port),
            )
            .await
            {
                app.upstream_answered.store(true, Ordering::Relaxed);
                break;
            }
        }
        crate::timer::sleep(Duration::from_millis(250)).await;
    }
}
