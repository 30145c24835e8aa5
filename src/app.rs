//! The state every task shares, behind one `Arc`: the current config and
//! credentials, the pools, the cancel-key registry, TLS, the client limit and
//! the shutdown signal.

use crate::auth::upstream::UpstreamSecret;
use crate::auth::Credentials;
use crate::backend::pool::PoolSettings;
use crate::backend::{Pool, PoolKey, UpstreamTarget};
use crate::cache::QueryCache;
use crate::config::{Config, DatabaseConfig, Password};
use crate::frontend::cancel::CancelRegistry;
use crate::frontend::observer::Sinks;
use crate::frontend::registry::ClientRegistry;
use crate::metrics::Metrics;
use crate::nplus1::ReportStore;
use crate::sql::Analyzer;
use crate::stats::QueryStats;
use dashmap::DashMap;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// Shared state of a running pgsift.
pub struct App {
    config: RwLock<Arc<Config>>,
    credentials: RwLock<Arc<Credentials>>,
    /// pools by (database, user)
    pub pools: DashMap<PoolKey, Arc<Pool>>,
    /// pgsift-issued cancel keys
    pub cancels: CancelRegistry,
    /// client-facing TLS, when configured (replaced by a reload)
    tls: RwLock<Option<crate::frontend::tls::ClientTls>>,
    /// client connections holding a slot (at most `pool.max_client_conn`)
    client_slots: Arc<AtomicUsize>,
    shutdown: watch::Sender<bool>,
    /// the shutdown signal as a flag sessions check on every wake-up
    stopping: std::sync::atomic::AtomicBool,
    /// the end of the drain (shutdown_timeout, or a second signal):
    /// sessions still open say goodbye and close
    stop_now: watch::Sender<bool>,
    /// clients connected right now
    pub clients: AtomicUsize,
    clients_gone: Notify,
    /// set once any upstream server answered (readiness)
    pub upstream_answered: Arc<AtomicBool>,
    /// set once the client listener is bound (readiness)
    pub listening: AtomicBool,
    /// what sessions report statements and bursts to
    pub sinks: Sinks,
    /// the Prometheus metric families
    pub metrics: Arc<Metrics>,
    /// connected clients
    pub registry: ClientRegistry,
    /// the SELECT cache, when `cache.backend` asks for it
    pub cache: Option<Arc<QueryCache>>,
    /// busy polling while clients are active (`busy_poll`)
    pub busy_poll: Arc<crate::busy_poll::BusyPoll>,
    /// databases paused by the admin console
    pub paused: RwLock<Paused>,
    /// bumped on every reload, so sessions can pick up new thresholds
    pub generation: std::sync::atomic::AtomicU64,
    /// the config file, for RELOAD (None with --upstream)
    pub config_path: RwLock<Option<std::path::PathBuf>>,
}

impl App {
    /// Builds the shared state for a validated config.
    pub fn new(config: Config) -> anyhow::Result<Arc<App>> {
        let tls = tls_acceptor(&config)?;
        let (shutdown, _) = watch::channel(false);
        let cache = match config.cache.backend.as_str() {
            "memory" => Some(Arc::new(QueryCache::new(config.cache.max_memory))),
            "redis" => Some(Arc::new(
                QueryCache::redis(&config.cache.redis_url, &config.cache.key_prefix)
                    .map_err(|e| anyhow::anyhow!("cache.redis_url: {e}"))?,
            )),
            _ => None,
        };
        if let Some(c) = &cache {
            c.expect_databases(cache_databases(&config));
        }
        let metrics = Arc::new(Metrics::new());
        metrics.init_databases(config.databases.keys());
        let sinks = Sinks {
            metrics: metrics.clone(),
            analyzer: Arc::new(Analyzer::default()),
            queries: Arc::new(QueryStats::new(5000)),
            reports: Arc::new(ReportStore::new(
                config.n_plus_one.min_total_time,
                config.n_plus_one.report_file.as_deref(),
            )),
        };
        Ok(Arc::new(App {
            sinks,
            metrics,
            registry: ClientRegistry::default(),
            cache,
            busy_poll: crate::busy_poll::BusyPoll::new(config.busy_poll),
            config_path: RwLock::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            paused: RwLock::new(Default::default()),
            credentials: RwLock::new(Arc::new(Credentials::new(config.users.values()))),
            client_slots: Arc::new(AtomicUsize::new(0)),
            config: RwLock::new(Arc::new(config)),
            pools: DashMap::new(),
            cancels: CancelRegistry::default(),
            tls: RwLock::new(tls),
            shutdown,
            stopping: std::sync::atomic::AtomicBool::new(false),
            stop_now: watch::channel(false).0,
            clients: AtomicUsize::new(0),
            clients_gone: Notify::new(),
            upstream_answered: Arc::new(AtomicBool::new(false)),
            listening: AtomicBool::new(false),
        }))
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().clone()
    }

    /// The login secrets in force.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials.read().clone()
    }

    /// Closes the pools no client is given under the config in force (a
    /// login that raced a reload may have made one from the old config);
    /// the upkeep calls this every second.
    pub fn close_unmapped_pools(&self) {
        let config = self.config();
        self.pools
            .retain(|(db, user), pool| match pool_in_config(&config, db, user) {
                Some(_) => true,
                None => {
                    pool.close();
                    false
                }
            });
    }

    /// The client-facing TLS in force, with its channel-binding
    /// authenticator, if any.
    pub fn client_tls(&self) -> Option<crate::frontend::tls::ClientTls> {
        self.tls.read().clone()
    }

    /// A slot for a new client connection, while fewer than
    /// `pool.max_client_conn` hold one; it is given back when dropped.
    pub fn try_client_slot(&self) -> Option<ClientSlot> {
        let limit = self.config.read().pool.max_client_conn;
        let taken = self.client_slots.fetch_add(1, Ordering::AcqRel);
        let slot = ClientSlot(self.client_slots.clone());
        (taken < limit).then_some(slot)
    }

    /// Replaces the config (reload): users, pool sizes and timeouts take
    /// effect for existing pools, TLS for new connections, the client limit
    /// for new clients; connected clients stay. Keys that take effect only
    /// at start keep their running values (so SHOW CONFIG tells what runs),
    /// with a warning. A TLS certificate or key that cannot be loaded
    /// rejects the reload, and the old configuration stays.
    pub fn apply_config(&self, mut config: Config) -> Result<(), String> {
        let old = self.config();
        let tls = tls_acceptor(&config).map_err(|e| format!("tls: {e:#}"))?;
        for key in keep_start_only(&old, &mut config) {
            tracing::warn!("{key} changes only on restart; the running value stays");
        }
        *self.tls.write() = tls;
        if config.logging.level != old.logging.level {
            crate::logging::set_level(&config.logging.level);
        }
        self.metrics.init_databases(config.databases.keys());
        if let Some(c) = &self.cache {
            c.expect_databases(cache_databases(&config));
        }
        self.busy_poll.set_window(config.busy_poll);
        if old.n_plus_one.report_file != config.n_plus_one.report_file {
            self.sinks
                .reports
                .set_report_file(config.n_plus_one.report_file.as_deref());
        }
        self.sinks
            .reports
            .set_min_total(config.n_plus_one.min_total_time);
        *self.credentials.write() = Arc::new(Credentials::new(config.users.values()));
        // A pool stays while clients would still be given it.
        self.pools
            .retain(|(db, user), pool| match pool_in_config(&config, db, user) {
                Some(d) => {
                    pool.reconfigure(upstream_target(&config, d, user), pool_settings(&config, d));
                    true
                }
                None => {
                    pool.close();
                    false
                }
            });
        *self.config.write() = Arc::new(config);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The pool a client of (database, user) uses, created on first use:
    /// the pool of the database's server_user when it has one (its clients
    /// all log in upstream as that user, so they share it), otherwise the
    /// client user's own. `None` when the database is not configured.
    pub fn pool(&self, database: &str, user: &str) -> Option<Arc<Pool>> {
        let config = self.config();
        let d = config.databases.get(database)?;
        let user = d.server_user.as_deref().unwrap_or(user);
        let key = (database.to_owned(), user.to_owned());
        if let Some(p) = self.pools.get(&key) {
            return Some(p.clone());
        }
        let pool = self
            .pools
            .entry(key)
            .or_insert_with(|| {
                Pool::new(
                    database.to_owned(),
                    user.to_owned(),
                    upstream_target(&config, d, user),
                    pool_settings(&config, d),
                    self.upstream_answered.clone(),
                    self.metrics.clone(),
                )
            })
            .clone();
        if self.paused.read().contains(database) {
            pool.pause();
        }
        Some(pool)
    }

    /// A receiver of the shutdown signal.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Starts the graceful drain.
    pub fn begin_shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shutdown.send_replace(true);
    }

    /// Ends the drain: every session still open sends its client FATAL
    /// 57P01 and closes, in a transaction or not.
    pub fn stop_now(&self) {
        self.stop_now.send_replace(true);
    }

    /// A receiver of the [`App::stop_now`] signal.
    pub fn stop_now_signal(&self) -> watch::Receiver<bool> {
        self.stop_now.subscribe()
    }

    /// True once the drain has ended ([`App::stop_now`]).
    pub fn is_stopping_now(&self) -> bool {
        *self.stop_now.borrow()
    }

    /// True once shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a connected client; the guard uncounts it.
    pub fn client_connected(self: &Arc<Self>) -> ClientGuard {
        self.clients.fetch_add(1, Ordering::SeqCst);
        ClientGuard(self.clone())
    }

    /// Waits until every client has gone.
    pub async fn all_clients_gone(&self) {
        loop {
            let notified = self.clients_gone.notified();
            if self.clients.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// True once the listener is bound and an upstream has answered.
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
            && self.upstream_answered.load(Ordering::Relaxed)
            && !self.is_shutting_down()
    }
}

/// The databases the admin console paused: all of them after `PAUSE`
/// except those resumed by name since, and those paused by name. A pool
/// opened later for a paused database starts paused.
#[derive(Debug, Default)]
pub struct Paused {
    /// `PAUSE` without a database
    all: bool,
    /// resumed by name since `PAUSE`
    resumed: std::collections::HashSet<String>,
    /// paused by name
    named: std::collections::HashSet<String>,
}

impl Paused {
    /// `PAUSE [db]`.
    pub fn pause(&mut self, db: Option<&str>) {
        match db {
            None => {
                self.all = true;
                self.resumed.clear();
            }
            Some(d) => {
                self.resumed.remove(d);
                self.named.insert(d.to_owned());
            }
        }
    }

    /// `RESUME [db]`.
    pub fn resume(&mut self, db: Option<&str>) {
        match db {
            None => *self = Paused::default(),
            Some(d) => {
                self.named.remove(d);
                if self.all {
                    self.resumed.insert(d.to_owned());
                }
            }
        }
    }

    /// Whether `db`'s pools are paused.
    pub fn contains(&self, db: &str) -> bool {
        self.named.contains(db) || (self.all && !self.resumed.contains(db))
    }
}

/// Keeps a client counted while it lives.
pub struct ClientGuard(Arc<App>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if self.0.clients.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.clients_gone.notify_waiters();
        }
    }
}

/// The database config of a (database, user) pool when clients are given
/// that pool under `config`: its database is configured and its user is the
/// database's server_user or, when there is none, a configured user.
fn pool_in_config<'a>(config: &'a Config, db: &str, user: &str) -> Option<&'a DatabaseConfig> {
    config.databases.get(db).filter(|d| match &d.server_user {
        Some(su) => su == user,
        None => config.users.contains_key(user),
    })
}

/// The upstream databases a config's pools serve, as the cache knows them.
fn cache_databases(config: &Config) -> Vec<Arc<str>> {
    config
        .databases
        .values()
        .map(|d| crate::cache::upstream_database(&d.dbname, &d.host, d.port))
        .collect()
}

/// A client connection's slot under `pool.max_client_conn`.
pub struct ClientSlot(Arc<AtomicUsize>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The TLS acceptor a config asks for (none when TLS is off).
fn tls_acceptor(config: &Config) -> anyhow::Result<Option<crate::frontend::tls::ClientTls>> {
    match &config.tls {
        Some(t) if t.mode != crate::config::TlsMode::Disable => {
            Ok(Some(crate::frontend::tls::client_tls(t)?))
        }
        _ => Ok(None),
    }
}

/// Puts back the running values of the keys that take effect only at
/// start (listeners, threads, the cache's backend and bound, logging's
/// format) and returns the names of those the new config changed.
fn keep_start_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($($field:ident).+ => $name:literal) => {
            if new.$($field).+ != old.$($field).+ {
                new.$($field).+ = old.$($field).+.clone();
                kept.push($name);
            }
        };
    }
    keep!(listen => "listen");
    keep!(admin_listen => "admin.listen");
    keep!(worker_threads => "worker_threads");
    keep!(cache.backend => "cache.backend");
    keep!(cache.redis_url => "cache.redis_url");
    keep!(cache.key_prefix => "cache.key_prefix");
    keep!(cache.max_memory => "cache.max_memory");
    keep!(logging.format => "logging.format");
    kept
}

/// Where a (database, user) pool logs in: the database's server_user and
/// server_password when set, otherwise the client's own name and password.
pub fn upstream_target(config: &Config, d: &DatabaseConfig, user: &str) -> UpstreamTarget {
    let secret = match (
        &d.server_password,
        config.users.get(user).and_then(|u| u.password.as_ref()),
    ) {
        (Some(p), _) => Some(UpstreamSecret::Plain(p.clone())),
        (None, Some(Password::Plain(p))) if d.server_user.is_none() => {
            Some(UpstreamSecret::Plain(p.clone()))
        }
        (None, Some(Password::Md5(h))) if d.server_user.is_none() => {
            Some(UpstreamSecret::Md5(h.clone()))
        }
        _ => None,
    };
    UpstreamTarget {
        host: d.host.clone(),
        port: d.port,
        dbname: d.dbname.clone(),
        user: d.server_user.clone().unwrap_or_else(|| user.to_owned()),
        secret,
    }
}

/// A database's pool settings.
pub fn pool_settings(config: &Config, d: &DatabaseConfig) -> PoolSettings {
    PoolSettings {
        mode: d.pool_mode,
        size: d.pool_size,
        min_size: d.min_pool_size,
        connect_timeout: config.pool.connect_timeout,
        checkout_timeout: config.pool.checkout_timeout,
        idle_timeout: config.pool.idle_timeout,
        server_lifetime: config.pool.server_lifetime,
        multiplex: match d.pool_mode {
            crate::config::PoolMode::Transaction => {
                // one server at least stays for everything else
                config
                    .pool
                    .multiplex_servers
                    .min(d.pool_size.saturating_sub(1))
            }
            crate::config::PoolMode::Session => 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::Paused;

    #[test]
    fn resuming_one_database_after_pausing_all_leaves_the_others_paused() {
        let mut p = Paused::default();
        p.pause(None);
        p.resume(Some("app"));
        assert!(!p.contains("app"));
        assert!(p.contains("blog"));
        p.pause(Some("app"));
        assert!(p.contains("app"));
        p.resume(None);
        assert!(!p.contains("app") && !p.contains("blog"));
        p.pause(Some("blog"));
        p.resume(Some("app"));
        assert!(p.contains("blog") && !p.contains("app"));
    }
}
