//! A logged-in client's session: one task that moves messages between the
//! client and the server it holds, framing them by header only.
//!
//! The task waits on four things at once — client readable, server readable,
//! client writable, server writable — so neither direction can stall the
//! other (a big COPY or pipeline never deadlocks), and each direction has a
//! bounded queue for backpressure. It counts the ReadyForQuery messages the
//! server owes (one per Query, Sync and FunctionCall) and remembers the last
//! transaction status, which is all it needs to know when a server may go
//! back to the pool: in transaction mode at ReadyForQuery `I` with nothing
//! owed, in session mode when the client leaves.

use super::batch_ends::BatchEnds;
use super::caching::{self, SessionCache};
use super::cancel::CancelTarget;
use super::handshake::{Authenticated, Login};
use super::observer::Observer;
use super::pipeline::Pipeline;
use super::registry::{ClientInfo, ClientState};
use super::settings::SettingsTracker;
use super::source::Source;
use super::stream::ClientStream;
use crate::app::App;
use crate::backend::server::note_parameter_status;
use crate::backend::server::ServerConnection;
use crate::backend::socket::TryWrite;
use crate::backend::{mux, Checkout, Pool};
use crate::cache::{Lookup, Miss};
use crate::clock::Mono;
use crate::config::PoolMode;
use crate::metrics::ByteCounters;
use crate::nplus1::store::Origin;
use crate::nplus1::Detector;
use crate::protocol::extended::PARSE_COMPLETE;
use crate::protocol::frame::{
    frontend_limit, is_backend_type, is_frontend_type, missing_bytes, peek_frame, valid_ready,
    FrameError, MAX_SERVER_MESSAGE,
};
use crate::protocol::messages::{self, Severity};
use crate::sql::Kind;
use bytes::{Buf, Bytes, BytesMut};
use prometheus::IntCounter;
use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Queue bound per direction before pgsift stops reading the sender.
const HIGH_WATER: usize = 1 << 20;
/// Longest wait for another session's fetch of the same cache key.
const SINGLE_FLIGHT_WAIT: Duration = Duration::from_secs(5);
/// How long cleanup statements may take before the server is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);
/// How long what a client sent before its Terminate may run before it is
/// cancelled and the server closed.
const TERMINATE_GRACE: Duration = Duration::from_secs(5);

/// What pgsift knows about the protocol state of a server it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerState {
    /// ReadyForQuery messages still owed
    pub pending: usize,
    /// extended-protocol messages sent since the last Sync
    pub unsynced: bool,
    /// transaction status of the last ReadyForQuery
    pub tx: u8,
    /// which client messages the server answers with ReadyForQuery
    pub ends: BatchEnds,
    /// the server is in copy-in mode (from its CopyInResponse until its
    /// CommandComplete, ErrorResponse or ReadyForQuery): an
    /// extended-protocol COPY owes no ReadyForQuery meanwhile (the Sync
    /// sent with its Execute was ignored), yet it is in flight
    pub copy_in: bool,
}

impl ServerState {
    /// Nothing in flight, outside a transaction.
    pub fn idle() -> ServerState {
        ServerState {
            pending: 0,
            unsynced: false,
            tx: b'I',
            ends: BatchEnds::default(),
            copy_in: false,
        }
    }

    /// A client message is on its way to the server.
    fn client_sent(&mut self, tag: u8) {
        let ends = self.ends.client_sent(tag);
        if ends {
            self.pending += 1;
        }
        match tag {
            b'S' if ends => self.unsynced = false,
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.unsynced = true,
            _ => {}
        }
    }

    /// CopyInResponse: Syncs sent since the COPY's Execute owe nothing.
    /// The server ignored them, so it still needs a Sync after the copy
    /// (the extended protocol's messages are unsynced again).
    #[cold]
    fn copy_in_started(&mut self) {
        self.copy_in = true;
        let settled = self.ends.synced_after_copy();
        let ignored = self.ends.copy_in_started();
        if ignored > 0 {
            self.pending = self.pending.saturating_sub(ignored);
            // (unless the client already ended the copy and synced after)
            self.unsynced |= !settled;
        }
    }

    /// A server message that ends copy-in mode (CommandComplete,
    /// ErrorResponse, ReadyForQuery; a server in copy-in mode sends none
    /// of them before it has left it).
    #[inline]
    fn copy_over(&mut self, tag: u8) {
        self.copy_in = false;
        self.ends.server_sent(tag);
    }

    /// A ReadyForQuery with transaction status `status` arrived; true when
    /// it ended a transaction (status `I`).
    fn ready(&mut self, status: u8) -> bool {
        self.tx = status;
        self.pending = self.pending.saturating_sub(1);
        status == b'I'
    }

    /// True when no reply is owed, nothing is half-sent and no COPY is
    /// under way.
    pub fn quiet(&self) -> bool {
        self.pending == 0 && !self.unsynced && !self.copy_in
    }
}

/// The parts of a session that every server message updates, whichever
/// path framed it (plain, pipelined or multiplexed): the observer, the
/// cache, the transaction state and the settings tracker.
struct ServerSide<'a> {
    observer: &'a mut Observer,
    cache: &'a mut Option<SessionCache>,
    state: &'a mut ServerState,
    settings_changes: &'a mut SettingsTracker,
    settings: &'a mut Vec<(String, String)>,
    transactions: &'a IntCounter,
}

/// A session's [`ServerSide`]: a borrow of those fields only, so that the
/// session's server may stay borrowed beside it.
macro_rules! server_side {
    ($session:expr) => {
        ServerSide {
            observer: &mut $session.observer,
            cache: &mut $session.cache,
            state: &mut $session.state,
            settings_changes: &mut $session.settings_changes,
            settings: &mut $session.settings,
            transactions: &$session.transactions,
        }
    };
}

/// What a server message was, for the framing path's own bookkeeping.
enum Seen {
    /// ReadyForQuery; `ended`: it ended a transaction (status `I`);
    /// `settings_changed`: the client's settings changed with it
    Ready {
        ended: bool,
        settings_changed: bool,
    },
    /// ParameterStatus
    Parameter,
    /// a ReadyForQuery that is not one: the server is out of its mind
    BadReady,
    Other,
}

impl ServerSide<'_> {
    #[inline(always)]
    fn message(&mut self, tag: u8, msg: &[u8], now: Mono) -> Seen {
        self.observer.server_message(tag, msg, now);
        if let Some(sc) = self.cache.as_mut() {
            sc.take_effects(&mut self.observer.effects);
            sc.server_message(tag, msg, self.state.pending <= 1);
        }
        match tag {
            b'G' => self.state.copy_in_started(),
            b'C' => self.state.copy_over(tag),
            b'Z' => {
                if !valid_ready(msg) {
                    return Seen::BadReady;
                }
                self.state.copy_over(tag);
                let ended = self.state.ready(msg[5]);
                if ended {
                    self.transactions.inc();
                }
                let settings_changed = self.settings_changes.ready(msg[5], self.settings);
                if self.state.quiet() {
                    self.settings_changes.settled();
                }
                return Seen::Ready {
                    ended,
                    settings_changed,
                };
            }
            b'E' => {
                self.state.copy_over(tag);
                self.settings_changes.failed()
            }
            b'S' => {
                let body = &msg[5..];
                self.settings_changes.reported(body, self.settings);
                if body.starts_with(b"application_name\0") {
                    application_changed(self.observer, body);
                }
                return Seen::Parameter;
            }
            _ => {}
        }
        Seen::Other
    }
}

/// The server reported the session's application_name (a SET, a RESET):
/// the observer's reports and counts carry it from now on.
#[cold]
#[inline(never)]
fn application_changed(observer: &mut Observer, body: &[u8]) {
    let value = &body[b"application_name\0".len()..];
    let value = value.strip_suffix(b"\0").unwrap_or(value);
    observer.set_application(&String::from_utf8_lossy(value));
}

/// Hands a server back after its client is done with it: a server with work
/// in flight is cancelled and closed; one inside a transaction is rolled
/// back; in session mode it also gets `DISCARD ALL`. Anything that fails or
/// takes too long closes the server instead of returning it.
pub async fn return_server(pool: &Pool, mut co: Checkout, state: ServerState, mode: PoolMode) {
    if !state.quiet() {
        co.cancel_in_background();
        pool.discard(co);
        return;
    }
    let reset = async {
        let mut tx = state.tx;
        if tx != b'I' {
            tx = co.server.run_simple("ROLLBACK").await?;
        }
        if mode == PoolMode::Session {
            tx = co.server.run_simple("DISCARD ALL").await?;
            co.server.applied.clear();
            co.server.synced = None;
        }
        Ok::<u8, crate::backend::ServerError>(tx)
    };
    match crate::timer::timeout(RESET_TIMEOUT, reset).await {
        Ok(Ok(b'I')) => pool.checkin(co),
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => pool.discard(co),
    }
}

/// Why a session ended.
enum End {
    /// the client closed its socket
    ClientGone,
    /// the client sent Terminate: what it sent before it still runs
    Terminated,
    /// the client broke the protocol; it gets an 08P01 error
    ClientProtocol(FrameError),
    /// the server connection failed
    ServerLost(String),
    /// the server sent something that is not a backend message
    ServerProtocol(String),
    /// no server could be had
    NoServer(String, String),
    /// shutdown while the client was idle
    Shutdown,
}

enum Event {
    ClientRead(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    ServerWrote(std::io::Result<usize>),
    /// replies from a multiplexed server
    Mux(Option<mux::Reply>),
    Shutdown,
    BurstDeadline,
}

/// A queue of byte chunks waiting for a socket.
#[derive(Default)]
struct Outbox {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Outbox {
    fn push(&mut self, b: Bytes) {
        self.len += b.len();
        self.chunks.push_back(b);
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The queued chunks, as many as fit in `out`: one `writev` sends them
    /// all (one wake-up of the peer instead of one per chunk).
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        let mut n = 0;
        for (slot, c) in out.iter_mut().zip(self.chunks.iter()) {
            *slot = IoSlice::new(c);
            n += 1;
        }
        n
    }
    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(f) = self.chunks.front_mut() else {
                break;
            };
            if n < f.len() {
                f.advance(n);
                break;
            }
            n -= f.len();
            self.chunks.pop_front();
        }
    }
    fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }
}

/// Reads what `r` has into `buf`, with room for at least half of `room`
/// bytes more. Only when less is free is room made for `room` bytes: the
/// buffer's consumed front is reclaimed (or it grows) once in many reads,
/// not at every read after a message left it.
fn poll_read<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    room: usize,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < room / 2 {
        buf.reserve(room);
    }
    tokio_util::io::poll_read_buf(std::pin::Pin::new(r), cx, buf)
}

/// Chunks handed to one `writev`.
const MAX_SLICES: usize = 16;

/// Writes as much of `outbox` as the socket takes, in one call.
fn poll_write_outbox<W: AsyncWrite + Unpin>(
    w: &mut W,
    outbox: &Outbox,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<std::io::Result<usize>> {
    let w = std::pin::Pin::new(w);
    if outbox.chunks.len() == 1 {
        return w.poll_write(cx, &outbox.chunks[0]);
    }
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let n = outbox.slices(&mut slices);
    w.poll_write_vectored(cx, &slices[..n])
}

async fn write_outbox<W: AsyncWrite + Unpin>(w: &mut W, outbox: &Outbox) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| poll_write_outbox(w, outbox, cx)).await
}

/// Sends what the socket takes right now, without waiting: a request or a
/// reply goes out in the wake-up that produced it instead of the next trip
/// through the event loop. Errors are left for the regular write to meet.
fn send_now<W: TryWrite>(w: Option<&W>, outbox: &mut Outbox, sent: &IntCounter) {
    let Some(w) = w else {
        return;
    };
    if outbox.is_empty() {
        return;
    }
    let n = if outbox.chunks.len() == 1 {
        // send(2): cheaper in the kernel than writev(2) of one slice
        w.try_write(&outbox.chunks[0]).unwrap_or(0)
    } else {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let k = outbox.slices(&mut slices);
        w.try_write_vectored(&slices[..k]).unwrap_or(0)
    };
    if n > 0 {
        sent.inc_by(n as u64);
        outbox.advance(n);
    }
}

/// Sends what the socket takes now of `buf[..len]` (complete messages with
/// nothing queued before them) and drops it from `buf`: no chunk is split
/// off, frozen and queued for the common case of a socket that takes it all.
/// Returns how much went; the rest is left at the front of `buf`.
fn send_from_buffer<W: TryWrite>(
    w: Option<&W>,
    buf: &mut BytesMut,
    len: usize,
    sent_counter: &IntCounter,
) -> usize {
    let Some(w) = w else {
        return 0;
    };
    let n = w.try_write(&buf[..len]).unwrap_or(0);
    if n > 0 {
        sent_counter.inc_by(n as u64);
        buf.advance(n);
    }
    n
}

/// The forwarding state of one client.
pub struct Session {
    app: Arc<App>,
    pool: Arc<Pool>,
    /// the client counted in `pool` (it moves with the session)
    counted: crate::backend::pool::CountedClient,
    /// the client's socket, for noticing its departure while waiting for
    /// a paused pool (set when forwarding starts)
    #[cfg(unix)]
    client_fd: Option<std::os::fd::RawFd>,
    /// the (database, user) the client logged in as, for finding its pool
    /// again after a reload
    login: (Arc<str>, Arc<str>),
    mode: PoolMode,
    settings: Vec<(String, String)>,
    cancel: Arc<CancelTarget>,
    cancel_key: (i32, i32),
    max_message: usize,
    max_prepared: usize,
    server: Option<Checkout>,
    state: ServerState,
    pipeline: Pipeline,
    settings_changes: SettingsTracker,
    observer: Observer,
    cache: Option<SessionCache>,
    bytes: ByteCounters,
    transactions: IntCounter,
    /// transactions this client ran on multiplexed servers
    multiplexed: IntCounter,
    info: Arc<ClientInfo>,
    /// the config generation this session last applied
    generation: u64,
    /// servers of the pool shared by autocommit statements (0: none)
    multiplex: usize,
    /// while a batch is on a multiplexed server (until its ReadyForQuery),
    /// where its replies come (a channel per batch: if the lane is gone, so
    /// is its sender, and the client hears of it instead of waiting)
    mux_replies: Option<tokio::sync::mpsc::UnboundedReceiver<mux::Reply>>,
    /// pgsift's reply to the batch's first message, sent with the server's
    /// first replies (one wake-up of the client)
    mux_prefix: Option<Bytes>,
    /// reads of the server socket (reset for each server attached)
    server_source: Source,
    /// a reload came while the session held a server: the pool it maps
    /// to (and the cache identity) are looked up at its next checkout
    follow_pending: bool,
}

impl Session {
    /// Runs a logged-in client until it leaves.
    pub async fn run(app: Arc<App>, login: Login, info: Arc<ClientInfo>) {
        let peer = info.addr;
        let Login {
            client:
                Authenticated {
                    stream,
                    rbuf,
                    settings,
                    pool,
                    user,
                    database,
                    application_name,
                },
            server,
            cancel_key,
            cancel,
        } = login;
        let mode = pool.settings().mode;
        let config = app.config();
        let n1 = &config.n_plus_one;
        let detector = n1
            .enabled
            .then(|| Detector::new(n1.min_repeats, n1.max_gap));
        let observer_db: Arc<str> = database.as_str().into();
        let login_key: (Arc<str>, Arc<str>) = (observer_db.clone(), user.as_str().into());
        let origin = Origin {
            database,
            user,
            application: application_name,
            client_addr: peer.ip().to_string(),
        };
        let transactions = app
            .metrics
            .transactions_total
            .with_label_values(&[&origin.database, &origin.user]);
        let multiplexed = app
            .metrics
            .multiplexed_transactions_total
            .with_label_values(&[&origin.database, &origin.user]);
        let bytes = app.metrics.bytes.clone();
        let mut observer = Observer::new(app.sinks.clone(), origin, detector);
        observer.slow = config.logging.slow_statement;
        if let Some(co) = &server {
            info.set(ClientState::Active, Some((co.server.id, co.server.pid)));
        }
        let generation = app.generation.load(std::sync::atomic::Ordering::SeqCst);
        // Every session records its writes' invalidations, even while no
        // rule allows caching: rules can be added by a reload.
        let cache = app.cache.as_ref().map(|c| {
            let identity = pool.cache_identity();
            if !config.cache.rules.is_empty() {
                c.volatility.load(identity.0.clone(), pool.clone());
            }
            let counter = app
                .metrics
                .cache_invalidations_total
                .with_label_values(&[&observer_db]);
            SessionCache::new(c.clone(), identity, observer_db.clone(), counter)
        });
        if let Some(c) = &cache {
            observer.effects_of = Some((c.cache.volatility.clone(), c.db.clone()));
        }
        let settings_changes = SettingsTracker::new(&settings, &pool.defaults());
        let mut session = Session {
            login: login_key,
            cache,
            generation,
            info,
            observer,
            bytes,
            transactions,
            multiplexed,
            max_message: config.pool.max_message_size,
            max_prepared: config.pool.max_prepared_statements,
            app,
            counted: pool.count_client(),
            #[cfg(unix)]
            client_fd: None,
            pool,
            mode,
            settings,
            cancel,
            cancel_key,
            server,
            state: ServerState::idle(),
            pipeline: Pipeline::new(
                config.pool.prepare_unnamed_statements,
                mode == PoolMode::Transaction,
            ),
            settings_changes,
            multiplex: 0,
            mux_replies: None,
            mux_prefix: None,
            server_source: Source::new(),
            follow_pending: false,
        };
        session.multiplex = session.multiplex_servers();
        session.forward(stream, rbuf).await;
    }

    async fn forward(&mut self, stream: ClientStream, mut cbuf: BytesMut) {
        #[cfg(unix)]
        {
            self.client_fd = Some(stream.raw_fd());
        }
        let (mut cr, mut cw) = stream.into_split();
        let mut to_client = Outbox::default();
        let mut to_server = Outbox::default();
        let mut shutdown = self.app.shutdown_signal();
        let mut draining = *shutdown.borrow();
        // The shutdown signal is polled once, which leaves this task's waker
        // with it; after that every wake-up checks a flag, which is cheaper
        // than polling the signal in every select.
        let mut shutdown_signal = std::pin::pin!(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
        // the same for the end of the drain, when a session still open
        // closes whatever it is doing
        let mut stop_now = self.app.stop_now_signal();
        let mut stop_now_signal = std::pin::pin!(async move {
            let _ = stop_now.wait_for(|s| *s).await;
        });
        std::future::poll_fn(|cx| {
            if std::future::Future::poll(shutdown_signal.as_mut(), cx).is_ready() {
                draining = true;
            }
            let _ = std::future::Future::poll(stop_now_signal.as_mut(), cx);
            std::task::Poll::Ready(())
        })
        .await;
        // the shutdown flag is checked on every pass (the signal above
        // wakes the task)
        let app = self.app.clone();
        // The N+1 burst timer: one for the session, armed when the session
        // goes quiet with a burst open and left alone while it is armed, so
        // statements in quick succession cost no timer work. It may fire
        // early (bursts went on); then only the bursts whose gap really
        // passed end, and it is armed again.
        let mut burst_timer = std::pin::pin!(crate::timer::sleep(Duration::from_secs(3600)));
        let mut timer_at: Option<Mono> = None;
        // Once polled, the armed timer holds this task's waker and wakes it
        // when it fires; until then `is_elapsed` answers without a poll.
        let mut timer_registered = false;
        // Bytes already buffered during the handshake are handled first.
        let mut pending_input = !cbuf.is_empty();
        let client_source = Source::new();

        let end = loop {
            if self.mode == PoolMode::Transaction
                && to_server.is_empty()
                && self.idle_outside_transaction()
            {
                if let Some(co) = self.server.take() {
                    self.cancel.clear();
                    self.info.set(ClientState::Idle, None);
                    if let Some(why) = self.pipeline.take_unusable() {
                        tracing::warn!("{why}; closing that server");
                        self.pool.discard(co);
                    } else if std::mem::take(&mut self.settings_changes.dirtied) {
                        // session state the next client must not inherit:
                        // DISCARD ALL first (off this session's path)
                        let pool = self.pool.clone();
                        tokio::spawn(async move {
                            return_server(&pool, co, ServerState::idle(), PoolMode::Session).await
                        });
                    } else {
                        self.pool.checkin(co);
                    }
                    if cbuf.is_empty() {
                        // an idle client keeps no read buffer
                        cbuf = BytesMut::new();
                    }
                }
            }
            if draining
                && ((to_client.is_empty()
                    && to_server.is_empty()
                    && self.idle_outside_transaction())
                    || app.is_stopping_now())
            {
                break End::Shutdown;
            }

            let event = if pending_input {
                pending_input = false;
                Event::ClientRead(Ok(cbuf.len()))
            } else {
                let (mut sr, mut sw) = match self.server.as_mut() {
                    Some(co) => (
                        Some((&mut co.server.reader, &mut co.server.rbuf)),
                        Some(&mut co.server.writer),
                    ),
                    None => (None, None),
                };
                // Bursts end by idleness only: while a statement is in flight there is
                // no gap, so no timer is armed (a timer per wake-up is not free)
                // and an armed one is not polled.
                let quiet = self.state.quiet() && to_server.is_empty();
                if quiet {
                    if let Some(d) = self.observer.deadline() {
                        if timer_at.is_none_or(|t| d < t) {
                            burst_timer.as_mut().reset(d.to_instant().into());
                            timer_at = Some(d);
                            timer_registered = false;
                        }
                    }
                }
                // a client waits for its multiplexed batch's replies before
                // its next batch goes anywhere (replies stay in order)
                let mux_pending = self.mux_replies.is_some();
                // a read is polled only when its socket may have something
                // (its source checks that when polled)
                let read_client = to_server.len < HIGH_WATER && !mux_pending;
                let mut mux_rx = self.mux_replies.as_mut();
                let read_server = to_client.len < HIGH_WATER;
                let server_source = &self.server_source;
                let poll_timer =
                    timer_at.is_some() && quiet && (!timer_registered || burst_timer.is_elapsed());
                // One poll function instead of a `select!`, which built a
                // future for each of its seven branches on every pass, in
                // a fixed order (no random draw per wake-up): the burst
                // timer first (so that an enabled one is surely polled, and
                // registered), then writes, then replies, then requests.
                let event = std::future::poll_fn(|cx| {
                    use std::task::Poll;
                    // unconstrained: a poll that returned Pending has surely
                    // left the waker with the timer (the budget check comes first)
                    if poll_timer
                        && std::pin::pin!(tokio::task::unconstrained(&mut burst_timer))
                            .poll(cx)
                            .is_ready()
                    {
                        return Poll::Ready(Event::BurstDeadline);
                    }
                    if !to_client.is_empty() {
                        if let Poll::Ready(r) = poll_write_outbox(&mut cw, &to_client, cx) {
                            return Poll::Ready(Event::ClientWrote(r));
                        }
                    }
                    if !to_server.is_empty() {
                        if let Some(w) = sw.as_deref_mut() {
                            if let Poll::Ready(r) = poll_write_outbox(w, &to_server, cx) {
                                return Poll::Ready(Event::ServerWrote(r));
                            }
                        }
                    }
                    if read_server {
                        if let Some((r, buf)) = sr.as_mut() {
                            let polled = server_source.poll(cx, |cx| {
                                poll_read(*r, buf, missing_bytes(buf).clamp(16 * 1024, 1 << 20), cx)
                            });
                            if let Poll::Ready(r) = polled {
                                return Poll::Ready(Event::ServerRead(r));
                            }
                        }
                        if let Some(rx) = mux_rx.as_deref_mut() {
                            if let Poll::Ready(r) = rx.poll_recv(cx) {
                                return Poll::Ready(Event::Mux(r));
                            }
                        }
                    }
                    if read_client {
                        let polled =
                            client_source.poll(cx, |cx| poll_read(&mut cr, &mut cbuf, 8192, cx));
                        if let Poll::Ready(r) = polled {
                            return Poll::Ready(Event::ClientRead(r));
                        }
                    }
                    if app.is_shutting_down() && (!draining || app.is_stopping_now()) {
                        return Poll::Ready(Event::Shutdown);
                    }
                    Poll::Pending
                })
                .await;
                timer_registered |= poll_timer;
                event
            };

            self.app.busy_poll.touch();
            match event {
                Event::Shutdown => draining = true,
                Event::BurstDeadline => {
                    timer_at = None;
                    timer_registered = false;
                    // a statement in flight is no gap: the timer is armed
                    // again when the session is quiet
                    if self.state.quiet() && to_server.is_empty() {
                        self.observer.tick(Mono::now());
                    }
                }
                Event::ClientWrote(Ok(n)) if n > 0 => {
                    self.bytes.client_out.inc_by(n as u64);
                    to_client.advance(n);
                    if to_client.is_empty() && cw.flush().await.is_err() {
                        break End::ClientGone;
                    }
                }
                Event::ClientWrote(_) => break End::ClientGone,
                Event::ServerWrote(Ok(n)) if n > 0 => {
                    self.bytes.server_out.inc_by(n as u64);
                    to_server.advance(n);
                }
                Event::ServerWrote(Ok(_)) => {
                    break End::ServerLost("server closed the connection".into())
                }
                Event::ServerWrote(Err(e)) => break End::ServerLost(e.to_string()),
                Event::ClientRead(Ok(0)) | Event::ClientRead(Err(_)) => break End::ClientGone,
                Event::ClientRead(Ok(n)) => {
                    self.bytes.client_in.inc_by(n as u64);
                    match self
                        .client_input(&mut cbuf, &mut to_server, &mut to_client)
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => break End::Terminated,
                        Err(end) => break end,
                    }
                    let server = self.server.as_ref().map(|co| &co.server.writer);
                    send_now(server, &mut to_server, &self.bytes.server_out);
                    send_now(cw.plain(), &mut to_client, &self.bytes.client_out);
                }
                Event::Mux(Some(Ok(chunk))) => {
                    self.bytes.server_in.inc_by(chunk.len() as u64);
                    if let Err(end) = self.mux_input(chunk, &mut to_client) {
                        break end;
                    }
                    if let Some(sc) = self.cache.as_mut().filter(|sc| sc.must_record()) {
                        sc.record().await;
                    }
                    send_now(cw.plain(), &mut to_client, &self.bytes.client_out);
                }
                Event::Mux(Some(Err((code, e)))) => break End::NoServer(code, e),
                Event::Mux(None) => break End::ServerLost("multiplexed server gone".into()),
                Event::ServerRead(Ok(0)) => {
                    break End::ServerLost("server closed the connection unexpectedly".into())
                }
                Event::ServerRead(Err(e)) => break End::ServerLost(e.to_string()),
                Event::ServerRead(Ok(n)) => {
                    self.bytes.server_in.inc_by(n as u64);
                    if let Err(end) = self.server_input(&mut to_client, cw.plain()) {
                        break end;
                    }
                    if let Some(sc) = self.cache.as_mut().filter(|sc| sc.must_record()) {
                        // a write's acknowledgement is queued: the client
                        // sees it only once its invalidation is recorded
                        sc.record().await;
                    }
                    send_now(cw.plain(), &mut to_client, &self.bytes.client_out);
                }
            }
        };

        #[cfg(unix)]
        {
            // (the socket closes when this function returns)
            self.client_fd = None;
        }
        // Tell the client why, when it is still there to hear it.
        match &end {
            End::ClientProtocol(_) => self.app.metrics.error("client_protocol"),
            End::ServerProtocol(_) => self.app.metrics.error("server_protocol"),
            End::ServerLost(_) => self.app.metrics.error("server_lost"),
            _ => {}
        }
        let farewell = match &end {
            End::ClientGone | End::Terminated => None,
            End::ClientProtocol(e) => Some(("08P01".to_owned(), e.to_string())),
            End::ServerLost(e) => {
                Some(("08006".to_owned(), format!("server connection lost: {e}")))
            }
            End::ServerProtocol(e) => Some((
                "08P01".to_owned(),
                format!("server sent an invalid message: {e}"),
            )),
            End::NoServer(code, e) => Some((code.clone(), e.clone())),
            End::Shutdown => Some((
                "57P01".to_owned(),
                "terminating connection because pgsift is shutting down".to_owned(),
            )),
        };
        if let Some((code, msg)) = farewell {
            let mut b = BytesMut::new();
            messages::error_response(&mut b, Severity::Fatal, &code, &msg);
            to_client.push(b.freeze());
            let flush = async {
                while !to_client.is_empty() {
                    match write_outbox(&mut cw, &to_client).await {
                        Ok(n) if n > 0 => to_client.advance(n),
                        _ => break,
                    }
                }
                let _ = cw.flush().await;
            };
            let _ = crate::timer::timeout(Duration::from_secs(2), flush).await;
        }
        let _ = cw.shutdown().await;
        to_client.clear();

        if matches!(end, End::Terminated) {
            // Postgres runs everything a client sent before its Terminate
            self.finish_before_terminate(&mut to_server).await;
        }
        self.observer.finish();
        if self.cache.is_some() && self.mux_replies.is_some() {
            self.drain_multiplexed().await;
        }
        let server_lost = matches!(end, End::ServerLost(_) | End::ServerProtocol(_));
        let in_flight = self.server.is_some()
            && (!to_server.is_empty() || !self.pipeline.is_empty() || !self.state.quiet());
        // Statements still in flight may commit after the session has
        // recorded its invalidations: their effects are recorded again once
        // the server is known to be done with them.
        let mut doubt = None;
        if let Some(sc) = self.cache.as_mut() {
            if (in_flight && !server_lost) || self.mux_replies.is_some() {
                self.observer.in_flight_effects();
                sc.take_effects(&mut self.observer.effects);
                doubt = Some(sc.finish_in_doubt().await);
            } else {
                sc.take_effects(&mut self.observer.effects);
                sc.finish().await;
            }
        }
        self.app.cancels.remove(self.cancel_key);
        self.cancel.clear();
        if let Some(co) = self.server.take() {
            let in_flight = in_flight || self.pipeline.take_unusable().is_some();
            let state = if server_lost || in_flight {
                ServerState {
                    pending: 1,
                    ..self.state
                }
            } else {
                self.state
            };
            if server_lost {
                self.pool.discard(co);
            } else if let Some(effects) = doubt.as_ref() {
                if let Some(mut server) = Self::await_server_end(co).await {
                    // still running: its effects are recorded once more
                    // when it ends
                    if let Some(sc) = self.cache.as_ref() {
                        let gone = async move { server_gone(&mut server).await };
                        sc.record_when_done(gone, effects.clone());
                    }
                }
            } else {
                // a dirty server gets DISCARD ALL, as in session mode
                let mode = if self.settings_changes.dirtied {
                    PoolMode::Session
                } else {
                    self.mode
                };
                return_server(&self.pool, co, state, mode).await;
            }
        }
        if let (Some(sc), Some(effects)) = (self.cache.as_mut(), doubt) {
            if let Some(mut rx) = self.mux_replies.take() {
                // a multiplexed batch still running: the mux drops its end
                // of the channel once the batch is answered
                let answered = async move { while rx.recv().await.is_some() {} };
                sc.record_when_done(answered, effects.clone());
            }
            sc.record_again(effects).await;
        }
    }

    /// The client sent Terminate after other messages (in one write, or
    /// before their replies came): they are sent and their replies awaited
    /// (and dropped), for up to [`TERMINATE_GRACE`], as Postgres runs them
    /// before it reads the Terminate. The server then goes back to the pool
    /// as after any other departure; if they have not finished by then,
    /// it is cancelled and closed.
    async fn finish_before_terminate(&mut self, to_server: &mut Outbox) {
        let finish = async {
            let mut sink = Outbox::default();
            loop {
                let Some(co) = self.server.as_mut() else {
                    return;
                };
                // done when nothing more will come: no reply owed (an
                // unsynced tail is never answered, and is rolled back), or
                // a COPY the client left in copy-in mode (the server waits
                // for data that will not come)
                if to_server.is_empty()
                    && ((self.state.pending == 0
                        && (self.pipeline.is_empty() || self.state.unsynced))
                        || self.state.ends.awaiting_copy_data())
                {
                    return;
                }
                let server = &mut co.server;
                let read = tokio::select! {
                    w = write_outbox(&mut server.writer, to_server), if !to_server.is_empty() => {
                        match w {
                            Ok(n) if n > 0 => {
                                self.bytes.server_out.inc_by(n as u64);
                                to_server.advance(n);
                                continue;
                            }
                            _ => return,
                        }
                    }
                    r = tokio::io::AsyncReadExt::read_buf(&mut server.reader, &mut server.rbuf) => r,
                };
                match read {
                    Ok(n) if n > 0 => self.bytes.server_in.inc_by(n as u64),
                    _ => return,
                }
                if self.server_input(&mut sink, None).is_err() {
                    return;
                }
                if let Some(sc) = self.cache.as_mut().filter(|sc| sc.must_record()) {
                    sc.record().await;
                }
                sink.clear();
            }
        };
        if crate::timer::timeout(TERMINATE_GRACE, finish)
            .await
            .is_err()
        {
            tracing::info!(
                "what the client sent before its Terminate was still running after {} s; \
                 cancelling it",
                TERMINATE_GRACE.as_secs()
            );
        }
    }

    /// The client left while a multiplexed batch of its was running: its
    /// replies are still observed (and dropped), for up to [`RESET_TIMEOUT`],
    /// so that what it wrote is invalidated after it took effect.
    async fn drain_multiplexed(&mut self) {
        let drain = async {
            let mut sink = Outbox::default();
            while let Some(rx) = self.mux_replies.as_mut() {
                match rx.recv().await {
                    Some(Ok(chunk)) => {
                        if self.mux_input(chunk, &mut sink).is_err() {
                            break;
                        }
                        sink.clear();
                        if let Some(sc) = self.cache.as_mut().filter(|sc| sc.must_record()) {
                            sc.record().await;
                        }
                    }
                    _ => break,
                }
            }
        };
        let _ = crate::timer::timeout(RESET_TIMEOUT, drain).await;
    }

    /// Closes a server that still has statements of a departed client in
    /// flight, and waits (up to [`RESET_TIMEOUT`]) until its backend is
    /// gone: they are cancelled, the write side is shut so that the backend
    /// reads end-of-file once they are done, and the backend closes its
    /// socket only after its transaction has ended, committed or not. Only
    /// then is it certain that nothing more of theirs takes effect. A server
    /// still running then leaves the pool (its slot is free again) and is
    /// returned, so that the wait can go on without the session.
    async fn await_server_end(mut co: Checkout) -> Option<Box<ServerConnection>> {
        co.cancel_in_background();
        let pid = co.server.pid;
        let _ = co.server.writer.shutdown().await;
        let Checkout { mut server, .. } = co;
        if crate::timer::timeout(RESET_TIMEOUT, server_gone(&mut server))
            .await
            .is_ok()
        {
            return None;
        }
        tracing::warn!(
            pid,
            "a departed client's statement was still running after {} s; \
             its invalidations are recorded now and again when it ends",
            RESET_TIMEOUT.as_secs()
        );
        Some(server)
    }

    /// Client messages go through `pipeline`: transaction mode, or session
    /// mode with unnamed statements kept prepared (a session-mode session
    /// keeps its start value of that setting: replies already owed were not
    /// booked).
    fn pipelined(&self) -> bool {
        self.mode == PoolMode::Transaction || self.pipeline.promote_unnamed
    }

    /// How many servers of the pool this session's autocommit statements
    /// may share with other clients'.
    fn multiplex_servers(&self) -> usize {
        // making room for a batch's statements must never evict one of them
        let room = self.max_prepared == 0 || self.max_prepared >= 8;
        match self.mode {
            PoolMode::Transaction if room => self.pool.settings().multiplex,
            _ => 0,
        }
    }

    /// Hands a batch to a multiplexed server when it is one such a server
    /// runs (see `backend::mux`). True when it was taken.
    fn try_multiplex(&mut self, chunk: &Bytes) -> bool {
        // a client that changed what pgsift does not follow (a role,
        // set_config, a temporary table) keeps to servers of its own
        if self.settings_changes.unmodeled {
            return false;
        }
        let Some(req) = self.pipeline.mux_request(chunk) else {
            return false;
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let len: usize = req.batch.iter().map(|b| b.len()).sum();
        let made_parse = req.made_parse;
        let request = mux::Request {
            needs: req.needs,
            batch: req.batch,
            reply: tx,
        };
        let key = crate::backend::server::settings_key(&self.settings, &self.pool.defaults());
        match mux::submit(
            &self.pool,
            key,
            &self.settings,
            self.multiplex,
            self.max_prepared,
            request,
        ) {
            Ok(lane) => {
                self.mux_replies = Some(rx);
                self.mux_prefix = made_parse.then(|| Bytes::from_static(PARSE_COMPLETE));
                self.bytes.server_out.inc_by(len as u64);
                let ids = lane.server().map(|s| (s.id, s.pid));
                self.info.set(ClientState::Active, ids);
                self.cancel.set_lane(lane);
                true
            }
            Err(_) => false,
        }
    }

    /// Replies from a multiplexed server: like a server's own, they are
    /// observed, checked for the end of the batch, and queued for the client.
    fn mux_input(&mut self, chunk: Bytes, to_client: &mut Outbox) -> Result<(), End> {
        if let Some(made) = self.mux_prefix.take() {
            if let Some(sc) = self.cache.as_mut() {
                sc.client_bound(&made);
            }
            to_client.push(made);
        }
        let now = Mono::now();
        let mut pos = 0;
        while let Some((tag, total)) = peek_frame(&chunk[pos..], MAX_SERVER_MESSAGE)
            .map_err(|e| End::ServerProtocol(e.to_string()))?
        {
            let msg = &chunk[pos..pos + total];
            match server_side!(self).message(tag, msg, now) {
                Seen::Ready { ended, .. } => {
                    if ended {
                        self.multiplexed.inc();
                    }
                    self.mux_replies = None;
                    self.cancel.clear();
                    self.info.set(ClientState::Idle, None);
                }
                Seen::BadReady => {
                    return Err(End::ServerProtocol(FrameError::BadReady.to_string()))
                }
                _ => {}
            }
            pos += total;
        }
        if let Some(sc) = self.cache.as_mut() {
            sc.client_bound(&chunk);
        }
        to_client.push(chunk);
        Ok(())
    }

    /// Queries and FunctionCalls the server skipped after an error (the
    /// pipeline saw it) owe no ReadyForQuery.
    fn take_skipped_ready(&mut self) {
        let skipped = std::mem::take(&mut self.pipeline.skipped_ready);
        self.state.pending = self.state.pending.saturating_sub(skipped);
    }

    /// True when the server owes nothing and no transaction is open.
    fn idle_outside_transaction(&self) -> bool {
        self.state.quiet() && self.state.tx == b'I' && self.pipeline.is_empty()
    }

    /// Frames what the client sent and queues it for the server, checking out
    /// a server first when the client holds none. `Ok(false)`: Terminate.
    async fn client_input(
        &mut self,
        cbuf: &mut BytesMut,
        to_server: &mut Outbox,
        to_client: &mut Outbox,
    ) -> Result<bool, End> {
        let mut end = 0;
        let mut terminate = false;
        let transaction_mode = self.mode == PoolMode::Transaction;
        let generation = self
            .app
            .generation
            .load(std::sync::atomic::Ordering::Relaxed);
        if generation != self.generation {
            // a reload happened: take up the new N+1 and logging thresholds
            self.generation = generation;
            let config = self.app.config();
            self.observer
                .reconfigure(&config.n_plus_one, config.logging.slow_statement);
            self.follow_pool();
            // (a session holding a server takes it up when it next
            // checks one out)
            self.follow_pending = true;
            if self.mode == PoolMode::Transaction {
                self.pipeline.promote_unnamed = config.pool.prepare_unnamed_statements;
            }
            self.multiplex = self.multiplex_servers();
        }
        let now = Mono::now();
        let pipelined = self.pipelined();
        if pipelined {
            self.pipeline.salt = super::pipeline::search_path_salt(&self.settings);
        }
        // SET/RESET seen in the client's statements matter where a client's
        // settings outlive its server (transaction mode), name statements
        // kept prepared (pipelined) or key cached results. A session-mode
        // client owns its server, which keeps them itself.
        let track_settings = transaction_mode || pipelined || self.cache.is_some();
        // nothing in flight before this batch: a cache hit may answer it
        let idle_before = self.state.quiet() && to_server.is_empty() && self.pipeline.is_empty();
        let mut messages = 0;
        while let Some(&tag) = cbuf.get(end) {
            // Postgres's own limit for the message's type, where smaller: a
            // server would drop the connection on a longer one without a
            // word, and pgsift might have handed it to someone else by then.
            // Checked on the header, before the body is buffered.
            if !is_frontend_type(tag) {
                return Err(End::ClientProtocol(FrameError::UnknownType(tag)));
            }
            let limit = self.max_message.min(frontend_limit(tag));
            let total = match peek_frame(&cbuf[end..], limit) {
                Ok(Some((_, total))) => total,
                Ok(None) => break,
                Err(e) => return Err(End::ClientProtocol(e)),
            };
            match tag {
                b'X' => {
                    terminate = true;
                    break;
                }
                t => self.state.client_sent(t),
            }
            if track_settings && matches!(tag, b'Q' | b'P') {
                let msg = &cbuf[end..end + total];
                if self.settings_changes.observe(tag, msg, transaction_mode) {
                    self.app.metrics.error("session_only_feature");
                }
                if let Some(sc) = self.cache.as_mut() {
                    sc.strict_isolation |= caching::strict_isolation(msg);
                }
                // (a text with a backslash is read as the server reads it
                // only with standard_conforming_strings on)
                self.observer.lax_strings = self.settings_changes.lax_strings();
                self.pipeline.lax_strings = self.observer.lax_strings;
            }
            self.observer
                .client_message(tag, &cbuf[end..end + total], now);
            end += total;
            messages += 1;
        }
        if messages == 1 && idle_before && cbuf[0] == b'Q' && self.cache.is_some() {
            let msg = cbuf.split_to(end).freeze();
            let body = &msg[5..];
            let sql = body.strip_suffix(&[0]).unwrap_or(body);
            if self.try_cache_hit(sql, &[], None, now, to_client).await {
                // on a server, this query would have dropped the unnamed statement
                self.pipeline.forget_unnamed();
                return Ok(!terminate);
            }
            // a miss: forward the query as usual
            return self
                .forward_chunk(msg, to_server, to_client, transaction_mode, terminate)
                .await;
        }
        // (with a Terminate too: what comes before it runs, as in Postgres;
        // the session waits for it before it returns the server)
        if end > 0 && !pipelined && self.cache.is_none() && to_server.is_empty() {
            // session mode, plain path: the client's server is attached
            if let Some(co) = self.server.as_ref() {
                let sent =
                    send_from_buffer(Some(&co.server.writer), cbuf, end, &self.bytes.server_out);
                if sent < end {
                    to_server.push(cbuf.split_to(end - sent).freeze());
                }
                return Ok(!terminate);
            }
        }
        if end > 0 {
            let chunk = cbuf.split_to(end).freeze();
            if messages >= 3 && idle_before && !terminate && self.cache.is_some() {
                if let Some(read) = caching::extended_read(&chunk) {
                    // session mode has no statement mapping: a Parse pgsift
                    // answered itself would be missing on the server
                    let named_parse = read.parse.is_some() && !read.statement.is_empty();
                    // the text as sent, and for a batch without its Parse,
                    // the parameter types of the Parse that prepared it
                    let mut extra = read.extra;
                    let text = match read.text {
                        Some(t) => Some(t),
                        None => self.observer.statement_parse(&read.statement).map(|sent| {
                            let end = sent.iter().position(|&b| b == 0).unwrap_or(sent.len());
                            extra.push(0xfd);
                            extra.extend_from_slice(sent.get(end + 1..).unwrap_or_default());
                            sent[..end].to_vec()
                        }),
                    };
                    if let (Some(text), true) = (text, transaction_mode || !named_parse) {
                        let parse = if named_parse {
                            read.parse.clone()
                        } else {
                            None
                        };
                        if self
                            .try_cache_hit(&text, &extra, parse, now, to_client)
                            .await
                        {
                            if read.parse.is_some() && !named_parse {
                                // the client's unnamed statement is now this one
                                self.pipeline.forget_unnamed();
                            }
                            return Ok(true);
                        }
                    }
                }
            }
            return self
                .forward_chunk(chunk, to_server, to_client, transaction_mode, terminate)
                .await;
        }
        Ok(!terminate)
    }

    /// Answers a single simple-query SELECT from the cache when it may be;
    /// on a miss of a cacheable one, arranges for the reply to be stored.
    /// Returns true when the client has been answered.
    async fn try_cache_hit(
        &mut self,
        sql: &[u8],
        extra: &[u8],
        parse: Option<Bytes>,
        now: Mono,
        to_client: &mut Outbox,
    ) -> bool {
        let app = self.app.clone();
        let Some(sc) = self.cache.as_mut() else {
            return false;
        };
        let text = String::from_utf8_lossy(sql);
        let a = app.sinks.analyzer.analyze(&text).analysis;
        if a.kind != Kind::Select {
            return false;
        }
        let db = sc.label.clone();
        let result = |r: &str| {
            app.metrics
                .cache_requests_total
                .with_label_values(&[&db, r])
                .inc()
        };
        let config = app.config();
        if config.cache.rules.is_empty() {
            return false;
        }
        let facts = sc.cache.volatility.get(&sc.db);
        let ttl = crate::cache::rules::covering_ttl(&config.cache.rules, &a.reads);
        let eligible = a.read_only
            && !self.settings_changes.unmodeled
            && !self.settings_changes.misreads(sql)
            && !self.settings_changes.has_pending()
            && !sc.strict_isolation
            && !sc.wrote_in_transaction()
            && self.state.tx != b'E'
            && facts.as_ref().is_some_and(|f| {
                !f.strict_isolation
                    && a.functions.iter().all(|n| f.immutable.contains(n))
                    && f.cacheable_reads(&a.reads)
            });
        let (true, Some(ttl)) = (eligible, ttl) else {
            if let Some(f) = facts.as_ref().filter(|f| f.stale_for(&a.functions)) {
                tracing::debug!(database = %sc.db, loaded = ?f.loaded, "a statement calls a function the catalog facts do not know: reading them again");
                sc.cache.volatility.forget(&sc.db);
                sc.cache.volatility.load(sc.db.clone(), self.pool.clone());
            } else if facts.is_none() {
                sc.cache.volatility.load(sc.db.clone(), self.pool.clone());
            }
            result("bypass");
            return false;
        };
        let key = caching::key(&sc.db, &sc.role, sql, extra, &self.settings);
        let mut found = sc.cache.lookup(key, &sc.db, &a.reads).await;
        let mut flight = None;
        if matches!(found, Lookup::Miss(_)) {
            match sc.cache.miss(key) {
                Miss::Lead(f) => flight = Some(f),
                Miss::Wait(mut rx) => {
                    // another session is fetching the same result: wait for
                    // it (bounded), then look again
                    let _ =
                        crate::timer::timeout(SINGLE_FLIGHT_WAIT, rx.wait_for(|done| *done)).await;
                    found = sc.cache.lookup(key, &sc.db, &a.reads).await;
                }
            }
        }
        let bytes = match found {
            Lookup::Hit(bytes) => bytes,
            Lookup::Miss(snapshot) => {
                result("miss");
                sc.begin_capture(
                    key,
                    snapshot,
                    ttl,
                    config.cache.max_result_bytes as usize,
                    flight,
                );
                return false;
            }
            Lookup::Unavailable => {
                result("error");
                return false;
            }
            Lookup::Skip => {
                sc.cache.volatility.load(sc.db.clone(), self.pool.clone());
                result("bypass");
                return false;
            }
        };
        result("hit");
        let mut data_rows = 0;
        let _ = crate::protocol::frame::scan(&bytes, usize::MAX >> 1, |t, _| {
            data_rows += (t == b'D') as u64
        });
        for b in SessionCache::hit_reply(bytes, self.state.tx) {
            to_client.push(b);
        }
        // the Query or Sync was counted as owing a ReadyForQuery: it does not
        self.state.pending = self.state.pending.saturating_sub(1);
        if let Some(p) = parse {
            // the client now has this statement; servers get it at first use
            self.pipeline.register_parse(&p);
        }
        self.observer.served_from_cache(now, data_rows);
        true
    }

    /// Sends a batch of complete client messages to the server, checking
    /// one out first when the client holds none.
    async fn forward_chunk(
        &mut self,
        chunk: Bytes,
        to_server: &mut Outbox,
        to_client: &mut Outbox,
        transaction_mode: bool,
        terminate: bool,
    ) -> Result<bool, End> {
        {
            if self.server.is_none()
                && self.multiplex > 0
                && !terminate
                && self.try_multiplex(&chunk)
            {
                return Ok(true);
            }
            if self.server.is_none() {
                if transaction_mode && !self.pool.has_free_slot() {
                    if let Some(replies) = self.pipeline.acknowledge_prepares(&chunk) {
                        self.state = ServerState::idle();
                        // its Sync's ReadyForQuery is pgsift's own
                        self.observer.batch_ended();
                        replies.into_iter().for_each(|b| to_client.push(b));
                        return Ok(!terminate);
                    }
                }
                self.attach_server().await?;
            }
            let pipelined = self.pipelined();
            match self.server.as_mut() {
                Some(co) if pipelined => {
                    let mut out = Vec::new();
                    self.pipeline.failed_transaction = self.state.tx == b'E';
                    self.pipeline.client_messages(
                        &chunk,
                        &mut co.server,
                        self.max_prepared,
                        &mut out,
                    );
                    self.settings_changes.dirtied |= std::mem::take(&mut self.pipeline.dirtied);
                    self.take_skipped_ready();
                    out.into_iter().for_each(|b| to_server.push(b));
                    let mut made = Vec::new();
                    self.pipeline.emit_made_unless_server_follows(&mut made);
                    for b in made {
                        if let Some(sc) = self.cache.as_mut() {
                            sc.client_bound(&b);
                        }
                        to_client.push(b);
                    }
                }
                _ => to_server.push(chunk),
            }
        }
        Ok(!terminate)
    }

    /// Checks out a server and brings its settings in line with the client's.
    /// Between transactions, takes up the pool the client maps to now: a
    /// reload may have given its database another `server_user` (its pool
    /// is then another) or closed its pool.
    fn follow_pool(&mut self) {
        if self.server.is_some() || self.mux_replies.is_some() {
            return;
        }
        if let Some(p) = self.app.pool(&self.login.0, &self.login.1) {
            if !Arc::ptr_eq(&p, &self.pool) {
                self.counted = p.count_client();
                self.pool = p;
            }
        }
        // a reload may have given the database another upstream (host,
        // dbname, server_user): keys and invalidations follow it
        if let Some(sc) = self.cache.as_mut() {
            let (db, role) = self.pool.cache_identity();
            if db != sc.db {
                sc.db = db;
                if let Some((_, observed)) = self.observer.effects_of.as_mut() {
                    *observed = sc.db.clone();
                }
            }
            sc.role = role;
        }
    }

    async fn attach_server(&mut self) -> Result<(), End> {
        if self.pool.is_closed() || std::mem::take(&mut self.follow_pending) {
            self.follow_pool();
        }
        self.info.set(ClientState::Waiting, None);
        let checkout = self.pool.checkout();
        // A paused pool waits without a time limit, and nothing reads the
        // client meanwhile: one that gives up leaves the queue at once
        // (its client slot free), as at login.
        #[cfg(unix)]
        let hangup = self
            .client_fd
            .filter(|_| self.pool.is_paused())
            .and_then(super::stream::hangup);
        #[cfg(not(unix))]
        let hangup: Option<std::future::Pending<()>> = None;
        let checkout = match hangup {
            Some(hangup) => tokio::select! {
                co = checkout => co,
                _ = hangup => return Err(End::ClientGone),
            },
            None => checkout.await,
        };
        self.info.set(ClientState::Idle, None);
        let mut co = checkout.map_err(|e| End::NoServer(e.code(), e.to_string()))?;
        if let Err(e) = co
            .server
            .sync_settings(&self.settings, &self.pool.defaults())
            .await
        {
            let msg = e.to_string();
            let code = e.code();
            self.pool.checkin_after_sync_error(co, &e);
            return Err(End::NoServer(code, msg));
        }
        self.cancel
            .set(co.server.addr.clone(), co.server.pid, co.server.secret);
        self.info
            .set(ClientState::Active, Some((co.server.id, co.server.pid)));
        self.server = Some(co);
        self.server_source.reset();
        Ok(())
    }

    /// Frames what the server sent, tracks ReadyForQuery and ParameterStatus,
    /// and queues complete messages for the client. On the plain path (no
    /// statement mapping, no cache) they go to `client` straight from the
    /// read buffer when nothing is queued before them.
    fn server_input(
        &mut self,
        to_client: &mut Outbox,
        client: Option<&tokio::net::tcp::OwnedWriteHalf>,
    ) -> Result<(), End> {
        let pipelined = self.pipelined();
        let Some(co) = self.server.as_mut() else {
            return Ok(());
        };
        if pipelined {
            let mut out = Vec::new();
            let mut side = server_side!(self);
            let now = Mono::now();
            let mut changed = false;
            let routed = self
                .pipeline
                .server_messages(&mut co.server, &mut out, |tag, msg| {
                    if let Seen::Ready {
                        settings_changed, ..
                    } = side.message(tag, msg, now)
                    {
                        changed |= settings_changed;
                    }
                });
            if changed {
                self.settings_changes.mark_server(&mut co.server.applied);
                co.server.synced = None;
            }
            self.take_skipped_ready();
            for b in out {
                if let Some(sc) = self.cache.as_mut() {
                    sc.client_bound(&b);
                }
                to_client.push(b);
            }
            return routed.map_err(|e| End::ServerProtocol(e.to_string()));
        }
        let server = &mut co.server;
        let mut side = server_side!(self);
        let mut end = 0;
        let now = Mono::now();
        // the buffer is read in place: one slice for the whole batch, each
        // message a window of it
        let buf: &[u8] = &server.rbuf;
        while let Some((tag, total)) = peek_frame(&buf[end..], MAX_SERVER_MESSAGE)
            .map_err(|e| End::ServerProtocol(e.to_string()))?
        {
            let msg = &buf[end..end + total];
            end += total;
            match side.message(tag, msg, now) {
                Seen::Ready {
                    settings_changed: true,
                    ..
                } => {
                    side.settings_changes.mark_server(&mut server.applied);
                    server.synced = None;
                }
                Seen::Parameter => {
                    server.synced = None;
                    note_parameter_status(&mut server.params, &mut server.applied, &msg[5..])
                }
                Seen::Other if !is_backend_type(tag) => {
                    return Err(End::ServerProtocol(
                        FrameError::UnknownType(tag).to_string(),
                    ))
                }
                Seen::BadReady => {
                    return Err(End::ServerProtocol(FrameError::BadReady.to_string()))
                }
                _ => {}
            }
        }
        if end > 0 {
            // the cache must see the bytes and may hold them back (a write's
            // acknowledgement waits for its invalidation): it takes the queue
            let direct = client.filter(|_| self.cache.is_none() && to_client.is_empty());
            let sent = send_from_buffer(direct, &mut server.rbuf, end, &self.bytes.client_out);
            if sent < end {
                let chunk = server.rbuf.split_to(end - sent).freeze();
                if let Some(sc) = self.cache.as_mut() {
                    sc.client_bound(&chunk);
                }
                to_client.push(chunk);
            }
        }
        Ok(())
    }
}

/// Reads (and drops) what `server` sends until its backend closes the
/// connection: Postgres does that only once the transaction it was running
/// has ended.
pub(crate) async fn server_gone(server: &mut ServerConnection) {
    let mut scratch = vec![0u8; 8192];
    loop {
        match tokio::io::AsyncReadExt::read(&mut server.reader, &mut scratch).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the server says, as the session sees it.
    fn server_sends(state: &mut ServerState, tags: &[u8]) {
        for &tag in tags {
            match tag {
                b'G' => state.copy_in_started(),
                b'C' | b'E' => state.copy_over(tag),
                b'Z' => {
                    state.copy_over(tag);
                    state.ready(b'I');
                }
                _ => {}
            }
        }
    }

    #[test]
    fn an_extended_protocol_copy_is_in_flight_until_it_ends() {
        let mut s = ServerState::idle();
        // tokio-postgres copy_in, libpq PQexecParams: Bind, Execute and
        // Sync in one batch; the server ignores that Sync in copy-in mode
        for tag in [b'B', b'E', b'S'] {
            s.client_sent(tag);
        }
        server_sends(&mut s, b"2G");
        assert!(!s.quiet(), "mid-copy");
        s.client_sent(b'd');
        assert!(!s.quiet(), "mid-copy");
        s.client_sent(b'c');
        s.client_sent(b'S');
        server_sends(&mut s, b"C");
        assert!(!s.quiet(), "the last Sync is owed its ReadyForQuery");
        server_sends(&mut s, b"Z");
        assert!(s.quiet());
        // the whole copy sent before the server's CopyInResponse: the Sync
        // after the CopyDone is the one the server answers
        let mut s = ServerState::idle();
        for tag in [b'B', b'E', b'S', b'd', b'c', b'S'] {
            s.client_sent(tag);
        }
        server_sends(&mut s, b"2GC");
        assert!(!s.quiet(), "the last Sync is owed its ReadyForQuery");
        server_sends(&mut s, b"Z");
        assert!(s.quiet(), "{s:?}");
        // the copy ended before the response, its Sync not sent yet
        let mut s = ServerState::idle();
        for tag in [b'B', b'E', b'S', b'd', b'c'] {
            s.client_sent(tag);
        }
        server_sends(&mut s, b"2GC");
        assert!(!s.quiet(), "a Sync is still needed");
        s.client_sent(b'S');
        server_sends(&mut s, b"Z");
        assert!(s.quiet(), "{s:?}");
    }

    #[test]
    fn a_failed_simple_query_copy_leaves_the_next_sync_counted() {
        let mut s = ServerState::idle();
        s.client_sent(b'Q');
        server_sends(&mut s, b"G");
        s.client_sent(b'd');
        // the data is rejected: no CopyDone from the client
        server_sends(&mut s, b"EZ");
        assert!(s.quiet());
        for tag in [b'P', b'B', b'E', b'S'] {
            s.client_sent(tag);
        }
        server_sends(&mut s, b"12CZ");
        assert!(s.quiet(), "{s:?}");
    }
}
