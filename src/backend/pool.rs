//! A pool of server connections for one (database, user): a FIFO queue of
//! clients waiting for a slot (tokio's fair semaphore), the idle servers
//! (handed out most recently used first), and
//! the upkeep task that closes idle and aged servers, keeps `min_pool_size`
//! open, and retries an unreachable upstream with backoff.

use super::server::{ServerConnection, ServerError, UpstreamTarget};
use crate::config::PoolMode;
use crate::metrics::Metrics;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// (client-facing database name, client user name)
pub type PoolKey = (String, String);

/// The settings a pool runs with; replaced as a whole on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// session or transaction
    pub mode: PoolMode,
    /// most server connections
    pub size: usize,
    /// fewest server connections kept open
    pub min_size: usize,
    /// connect + login limit
    pub connect_timeout: Duration,
    /// longest wait in the queue
    pub checkout_timeout: Duration,
    /// idle servers above min_size close after this (0: never)
    pub idle_timeout: Duration,
    /// servers are recycled when idle after this (0: never)
    pub server_lifetime: Duration,
    /// most servers shared by autocommit statements (transaction mode; 0: none)
    pub multiplex: usize,
}

impl PoolSettings {
    /// True for a server idle since `last_used` longer than idle_timeout.
    /// 0 turns the timeout off, as in PgBouncer (otherwise every upkeep
    /// round would close every idle server).
    fn idle_too_long(&self, last_used: Instant) -> bool {
        !self.idle_timeout.is_zero() && last_used.elapsed() >= self.idle_timeout
    }

    /// True for a server opened at `created` longer than server_lifetime
    /// ago. 0 turns the limit off, as in PgBouncer (otherwise no server
    /// would ever go back to the pool).
    fn too_old(&self, created: Instant) -> bool {
        !self.server_lifetime.is_zero() && created.elapsed() >= self.server_lifetime
    }
}

/// Why a client got no server.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// waited longer than checkout_timeout
    #[error("no server connection available in pool \"{db}/{user}\" within {waited:?} (pool_size {size})")]
    Timeout {
        /// database
        db: String,
        /// user
        user: String,
        /// how long the client waited
        waited: Duration,
        /// the pool's size
        size: usize,
    },
    /// connecting failed
    #[error("pool \"{db}/{user}\": {source}")]
    Server {
        /// database
        db: String,
        /// user
        user: String,
        /// cause
        source: ServerError,
    },
    /// the pool was closed (reload removed it, or shutdown)
    #[error("pool \"{0}\" is closed")]
    Closed(String),
}

impl PoolError {
    /// SQLSTATE for the client.
    pub fn code(&self) -> String {
        match self {
            PoolError::Timeout { .. } => "53300".into(),
            PoolError::Server { source, .. } => source.code(),
            PoolError::Closed(_) => "57P01".into(),
        }
    }
}

/// Live counts for SHOW POOLS and /api/pools.
#[derive(Debug, Default)]
pub struct PoolCounts {
    /// servers checked out by clients
    pub active: AtomicUsize,
    /// servers being opened
    pub connecting: AtomicUsize,
    /// clients queued for a server
    pub waiting: AtomicUsize,
    /// clients connected to this pool
    pub clients: AtomicUsize,
}

/// Backoff state after failed connects and refused logins (server_login_retry
/// in PgBouncer): clients fail fast with the last attempt's error while it
/// lasts.
#[derive(Debug, Default)]
struct Backoff {
    until: Option<Instant>,
    delay: Duration,
    /// SQLSTATE and text of the last attempt's error
    last_error: (String, String),
}

/// One (database, user) pool.
pub struct Pool {
    /// client-facing database name
    pub database: String,
    /// client user name
    pub user: String,
    target: Mutex<UpstreamTarget>,
    /// moves each time a reload changes `target`: servers opened to an
    /// older one are closed instead of going back to the pool
    target_generation: AtomicU64,
    settings: Mutex<PoolSettings>,
    idle: Mutex<VecDeque<Box<ServerConnection>>>,
    slots: Arc<Semaphore>,
    /// ParameterStatus of a fresh server: what "default" means for settings
    defaults: Mutex<Option<Arc<HashMap<String, String>>>>,
    /// settings (name → values) a server of this pool has accepted: a login
    /// with only these needs no server to try them
    accepted_settings: Mutex<HashMap<String, HashSet<String>>>,
    backoff: Mutex<Backoff>,
    upstream_answered: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    wait: prometheus::Histogram,
    paused: tokio::sync::watch::Sender<bool>,
    /// set while a round of upkeep runs (see [`Pool::spawn_upkeep`])
    upkeep_running: AtomicBool,
    /// live counts
    pub counts: PoolCounts,
    /// servers shared by many clients' autocommit statements
    pub mux: super::mux::Mux,
}

/// A server checked out of a pool. Dropping it without [`Pool::checkin`]
/// closes the server and frees its slot.
pub struct Checkout {
    /// the server (boxed: it moves between the pool and a session once per
    /// transaction in transaction mode, and a box moves as one pointer)
    pub server: Box<ServerConnection>,
    _slot: OwnedSemaphorePermit,
    /// counts the server as active until the checkout is dropped, however
    /// it ends: checked in, discarded, or dropped with a future that was
    /// cancelled (during `sync_settings`, say)
    _active: Active,
    /// time spent waiting in the queue
    pub waited: Duration,
}

impl Checkout {
    /// Sends a cancel request for what the server is running, without
    /// waiting for it.
    pub fn cancel_in_background(&self) {
        let s = &self.server;
        let (addr, pid, secret) = (s.addr.clone(), s.pid, s.secret);
        tokio::spawn(async move {
            let _ = super::server::send_cancel(&addr, pid, secret).await;
        });
    }
}

/// One of a pool's live counts, raised while the guard lives: a future
/// dropped half-way (a cancelled task, a departed client) lowers it again.
struct Raised<'a>(&'a AtomicUsize);

impl<'a> Raised<'a> {
    fn new(count: &'a AtomicUsize) -> Raised<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Raised(count)
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A server counted in its pool's `active` while a [`Checkout`] holds it.
struct Active(Arc<Pool>);

impl Active {
    fn new(pool: &Arc<Pool>) -> Active {
        pool.counts.active.fetch_add(1, Ordering::Relaxed);
        Active(pool.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.counts.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client counted in its pool's `clients` while the guard lives. A
/// session keeps it, and takes a new one when a reload moves it to another
/// pool, so that its count moves with it.
pub struct CountedClient(Arc<Pool>);

impl Drop for CountedClient {
    fn drop(&mut self) {
        self.0.counts.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most settings a pool remembers as accepted; past this it forgets them
/// all, and logins try them again.
const MAX_ACCEPTED_SETTINGS: usize = 1024;

const MAX_BACKOFF: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);

impl Pool {
    /// A pool with no servers yet.
    /// `upstream_answered` is set whenever a server login succeeds (readiness).
    pub fn new(
        database: String,
        user: String,
        target: UpstreamTarget,
        settings: PoolSettings,
        upstream_answered: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Arc<Pool> {
        let wait = metrics
            .pool_wait_seconds
            .with_label_values(&[&database, &user]);
        Arc::new(Pool {
            metrics,
            wait,
            paused: tokio::sync::watch::channel(false).0,
            upkeep_running: AtomicBool::new(false),
            database,
            user,
            target: Mutex::new(target),
            target_generation: AtomicU64::new(0),
            slots: Arc::new(Semaphore::new(settings.size)),
            settings: Mutex::new(settings),
            idle: Mutex::new(VecDeque::new()),
            defaults: Mutex::new(None),
            accepted_settings: Mutex::new(HashMap::new()),
            backoff: Mutex::new(Backoff::default()),
            upstream_answered,
            counts: PoolCounts::default(),
            mux: Default::default(),
        })
    }

    /// Counts a client of this pool until the guard is dropped.
    pub fn count_client(self: &Arc<Self>) -> CountedClient {
        self.counts.clients.fetch_add(1, Ordering::Relaxed);
        CountedClient(self.clone())
    }

    /// The current settings.
    pub fn settings(&self) -> PoolSettings {
        self.settings.lock().clone()
    }

    /// Idle servers: id, backend pid, age.
    pub fn idle_servers(&self) -> Vec<(u64, i32, Duration)> {
        self.idle
            .lock()
            .iter()
            .map(|s| (s.id, s.pid, s.created.elapsed()))
            .collect()
    }

    /// Number of idle servers.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }

    /// Who the cache knows this pool's results by: the upstream database
    /// (`dbname@host:port`, so that every name a configuration gives one
    /// database shares its versions and invalidations) and the upstream
    /// role the statements run as.
    pub fn cache_identity(&self) -> (Arc<str>, Arc<str>) {
        let t = self.target.lock();
        (
            crate::cache::upstream_database(&t.dbname, &t.host, t.port),
            t.user.as_str().into(),
        )
    }

    /// The parameter values of a fresh server, once one has connected.
    pub fn defaults(&self) -> Arc<HashMap<String, String>> {
        self.defaults.lock().clone().unwrap_or_default()
    }

    /// Whether a server of this pool has accepted each of these settings
    /// (name, value) before.
    pub fn settings_accepted<'a>(
        &self,
        mut settings: impl Iterator<Item = &'a (String, String)>,
    ) -> bool {
        let accepted = self.accepted_settings.lock();
        settings.all(|(k, v)| accepted.get(k).is_some_and(|vs| vs.contains(v)))
    }

    /// Remembers settings `server` has just accepted, if it is one of the
    /// pool's current upstream (a reload may have moved the pool since it
    /// was opened, and the new upstream may refuse them).
    pub fn note_accepted_settings<'a>(
        &self,
        server: &ServerConnection,
        settings: impl Iterator<Item = &'a (String, String)>,
    ) {
        let mut accepted = self.accepted_settings.lock();
        if server.target_generation != self.target_generation.load(Ordering::Acquire) {
            return;
        }
        for (k, v) in settings {
            if accepted.get(k).is_some_and(|vs| vs.contains(v)) {
                continue;
            }
            if accepted.values().map(HashSet::len).sum::<usize>() >= MAX_ACCEPTED_SETTINGS {
                accepted.clear();
            }
            accepted.entry(k.clone()).or_default().insert(v.clone());
        }
    }

    /// Whether a server opened at `created` to the upstream target of
    /// `target_generation` should take no more work: a reload has moved the
    /// pool since, or it is older than server_lifetime. (A checked-out
    /// server is turned away when it comes back; a shared one, which may
    /// not come back for a long time, asks.)
    pub fn is_obsolete(&self, target_generation: u64, created: Instant) -> bool {
        target_generation != self.target_generation.load(Ordering::Acquire)
            || self.settings.lock().too_old(created)
    }

    /// PAUSE: new transactions wait until [`Pool::resume`].
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// RESUME.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// True when a client could get a server without waiting in the queue.
    pub fn has_free_slot(&self) -> bool {
        self.slots.available_permits() > 0 && !self.is_paused()
    }

    /// Waits (FIFO, at most checkout_timeout) for a slot, then hands out an
    /// idle server or opens a new one.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        let settings = self.settings();
        let start = Instant::now();
        // a guard, not a decrement after the wait: a caller's future may
        // be dropped while it waits here (a paused pool waits without limit)
        let waiting = Raised::new(&self.counts.waiting);
        if self.is_paused() {
            // Paused: wait (without a time limit, as the operator asked) for
            // RESUME, or for the pool to close (a reload removed it, or
            // shutdown), which wakes the paused too.
            let mut rx = self.paused.subscribe();
            let _ = rx.wait_for(|p| !*p || self.slots.is_closed()).await;
        }
        if self.slots.is_closed() {
            return Err(PoolError::Closed(format!(
                "{}/{}",
                self.database, self.user
            )));
        }
        // A free slot is taken without arming a timer (in transaction mode
        // this runs once per transaction). The semaphore hands released
        // slots to queued waiters first, so this never jumps the queue.
        let acquired = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok(Ok(slot)),
            Err(_) => {
                crate::timer::timeout(
                    settings.checkout_timeout,
                    self.slots.clone().acquire_owned(),
                )
                .await
            }
        };
        drop(waiting);
        let slot = match acquired {
            Err(_) => {
                self.metrics.error("checkout_timeout");
                return Err(PoolError::Timeout {
                    db: self.database.clone(),
                    user: self.user.clone(),
                    waited: start.elapsed(),
                    size: settings.size,
                });
            }
            Ok(Err(_)) => {
                return Err(PoolError::Closed(format!(
                    "{}/{}",
                    self.database, self.user
                )))
            }
            Ok(Ok(slot)) => slot,
        };
        let waited = start.elapsed();
        self.wait.observe(waited.as_secs_f64());
        let server = match self.take_idle(&settings) {
            Some(s) => s,
            // boxed: connecting is rare, and its future would otherwise
            // size every session's task (idle ones included)
            None => Box::pin(self.open(&settings)).await?,
        };
        Ok(Checkout {
            server,
            _slot: slot,
            _active: Active::new(self),
            waited,
        })
    }

    fn take_idle(&self, settings: &PoolSettings) -> Option<Box<ServerConnection>> {
        loop {
            // last in, first out: the server used most recently is the one
            // whose backend (and its caches) is warm; under light load the
            // others stay idle and idle_timeout closes them
            let mut s = self.idle.lock().pop_back()?;
            if settings.too_old(s.created) || s.is_broken_while_idle() {
                tracing::debug!(server = s.id, "closing aged or broken idle server");
                continue;
            }
            return Some(s);
        }
    }

    async fn open(&self, settings: &PoolSettings) -> Result<Box<ServerConnection>, PoolError> {
        let err = |source| PoolError::Server {
            db: self.database.clone(),
            user: self.user.clone(),
            source,
        };
        {
            let b = self.backoff.lock();
            if let Some(retry_in) = b
                .until
                .and_then(|u| u.checked_duration_since(Instant::now()))
            {
                let (code, last) = b.last_error.clone();
                return Err(err(ServerError::BackingOff {
                    code,
                    last,
                    retry_in,
                }));
            }
        }
        let (target, generation) = {
            let t = self.target.lock();
            (t.clone(), self.target_generation.load(Ordering::Acquire))
        };
        let connecting = Raised::new(&self.counts.connecting);
        let result = ServerConnection::connect(&target, settings.connect_timeout).await;
        drop(connecting);
        match result {
            Ok(mut server) => {
                server.target_generation = generation;
                *self.backoff.lock() = Backoff::default();
                let mut d = self.defaults.lock();
                if d.is_none() {
                    *d = Some(Arc::new(server.params.clone()));
                }
                self.upstream_answered.store(true, Ordering::Relaxed);
                Ok(Box::new(server))
            }
            Err(e) => {
                // Every failure starts (or lengthens) a backoff, refused
                // logins included: a full server (53300), one starting up
                // or shutting down (57P03), a wrong server password (28P01)
                // or a missing database (3D000) refuse the next attempt
                // too, and each attempt costs the server a process start.
                // The login is the pool's (its upstream user and database),
                // never a client's own, so the refusal holds for every
                // client of the pool.
                {
                    let mut b = self.backoff.lock();
                    b.delay = (b.delay * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
                    b.until = Some(Instant::now() + b.delay);
                    b.last_error = (e.code(), e.to_string());
                }
                self.metrics.error("upstream_connect");
                tracing::warn!(database = %self.database, user = %self.user, error = %e, "server connection failed");
                Err(err(e))
            }
        }
    }

    /// Returns a clean server (ReadyForQuery `I`, nothing in flight).
    pub fn checkin(&self, checkout: Checkout) {
        let Checkout { mut server, .. } = checkout;
        server.last_used = Instant::now();
        let settings = self.settings.lock().clone();
        if !settings.too_old(server.created)
            && !self.slots.is_closed()
            && server.target_generation == self.target_generation.load(Ordering::Acquire)
        {
            let mut idle = self.idle.lock();
            // (this server is still counted active)
            if idle.len() + self.open_elsewhere() <= settings.size {
                idle.push_back(server);
            } else {
                tracing::debug!(server = server.id, "closing a server above pool_size");
            }
        }
        // the slot is released (and the server no longer counted active)
        // when the rest of `checkout` drops here, after the server is idle:
        // the waiter that gets the slot finds it
    }

    /// Servers of the pool that are not idle: checked out, or being opened.
    /// With the idle ones, more than pool_size only after a reload lowered
    /// it; the surplus is closed as it comes back (and by the upkeep), as
    /// PgBouncer does, instead of staying open until idle_timeout.
    fn open_elsewhere(&self) -> usize {
        self.counts.active.load(Ordering::Relaxed) + self.counts.connecting.load(Ordering::Relaxed)
    }

    /// Takes back a server whose `sync_settings` failed. One that answered
    /// with an ErrorResponse (and then ReadyForQuery) is as it was before:
    /// it was idle, and the RESETs and set_config of the failed statement
    /// ran in one implicit transaction that the error rolled back. It goes
    /// back to the pool; after any other failure the server is closed.
    pub fn checkin_after_sync_error(&self, checkout: Checkout, error: &ServerError) {
        match error {
            ServerError::Statement(_) => self.checkin(checkout),
            ServerError::Unresponsive(_) => {
                // stuck (on a lock, say): cancelled, its backend ends the
                // statement and sees the connection closed, instead of
                // holding an upstream connection beside its replacement
                checkout.cancel_in_background();
                self.discard(checkout)
            }
            _ => self.discard(checkout),
        }
    }

    /// Closes a server that is in an unknown state.
    pub fn discard(&self, checkout: Checkout) {
        tracing::debug!(server = checkout.server.id, "discarding server connection");
        drop(checkout);
    }

    /// Runs a round of [`Pool::upkeep`] in a task of its own, unless the
    /// last one is still running: an upstream that takes connect_timeout to
    /// fail holds up its own pool's upkeep only, not every other pool's.
    pub fn spawn_upkeep(self: &Arc<Self>) {
        if self.upkeep_running.swap(true, Ordering::AcqRel) {
            return;
        }
        /// Clears the flag however the round ends.
        struct Running(Arc<Pool>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.upkeep_running.store(false, Ordering::Release);
            }
        }
        let running = Running(self.clone());
        tokio::spawn(async move {
            running.0.upkeep().await;
            drop(running);
        });
    }

    /// One round of upkeep: close idle servers past idle_timeout (above
    /// min_pool_size) or past server_lifetime, and open servers up to
    /// min_pool_size unless the pool is paused (as PgBouncer does: a pause
    /// is often for upstream maintenance).
    pub async fn upkeep(self: &Arc<Self>) {
        let settings = self.settings();
        {
            let mut idle = self.idle.lock();
            let active = self.counts.active.load(Ordering::Relaxed);
            let elsewhere = self.open_elsewhere();
            let mut keep = VecDeque::with_capacity(idle.len());
            // least recently used first
            while let Some(mut s) = idle.pop_front() {
                let total = keep.len() + idle.len() + active + 1;
                let expired_idle = settings.idle_too_long(s.last_used) && total > settings.min_size;
                let above_size = keep.len() + idle.len() + elsewhere + 1 > settings.size;
                if expired_idle
                    || above_size
                    || settings.too_old(s.created)
                    || s.is_broken_while_idle()
                {
                    continue;
                }
                keep.push_back(s);
            }
            *idle = keep;
        }
        while !self.is_paused() {
            let total = self.idle_count()
                + self.counts.active.load(Ordering::Relaxed)
                + self.counts.connecting.load(Ordering::Relaxed);
            if total >= settings.min_size {
                break;
            }
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            match self.open(&settings).await {
                Ok(s) => {
                    self.idle.lock().push_back(s);
                    drop(slot);
                }
                Err(_) => break,
            }
        }
    }

    /// Applies new settings and upstream target (reload).
    pub fn reconfigure(&self, target: UpstreamTarget, settings: PoolSettings) {
        let mut cur = self.settings.lock();
        if settings.size > cur.size {
            self.slots.add_permits(settings.size - cur.size);
        } else if settings.size < cur.size {
            let shrink = cur.size - settings.size;
            let slots = self.slots.clone();
            // Take the surplus permits out of circulation as they come free.
            tokio::spawn(async move {
                if let Ok(p) = slots.acquire_many_owned(shrink as u32).await {
                    p.forget();
                }
            });
        }
        let mut current = self.target.lock();
        if *current != target {
            *current = target;
            self.target_generation.fetch_add(1, Ordering::AcqRel);
            drop(current);
            // Servers of the old target finish their work, then close
            // (checkin turns them away).
            self.idle.lock().clear();
            // and the new one may take other settings
            self.accepted_settings.lock().clear();
            // a new address or password is tried at once
            *self.backoff.lock() = Backoff::default();
        }
        *cur = settings;
    }

    /// Whether the pool was closed (its database or user left the config).
    pub fn is_closed(&self) -> bool {
        self.slots.is_closed()
    }

    /// Closes the pool: waiting clients get an error, idle servers close.
    pub fn close(&self) {
        self.slots.close();
        // clients waiting in a paused pool wait on `paused`, not on the
        // slots: they are woken to see the pool closed
        self.paused.send_modify(|_| {});
        self.idle.lock().clear();
    }
}
