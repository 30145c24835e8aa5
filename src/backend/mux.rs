//! Statement multiplexing (transaction mode, `pool.multiplex_servers`).
//!
//! A client's batch that runs already prepared statements outside a
//! transaction (Bind/Execute/Sync, as `pgbench -M prepared` and every driver
//! with a statement cache send) is a transaction of its own that ends at its
//! Sync. Such batches of many clients can share one server connection at
//! the same time: they are written one after another without waiting for
//! the replies, and the replies, which come back in the same order, are
//! routed to their clients by counting ReadyForQuery messages. The server
//! then reads many transactions per wake-up and pgsift writes and reads
//! them in one system call each, where checking a server out per
//! transaction costs a round trip of its own.
//!
//! A *lane* is one such shared server with a task of its own. Lanes are
//! opened on demand (at most `multiplex_servers` per pool, taken from its
//! `pool_size`), serve only clients whose tracked settings match the
//! settings the lane's server was brought to, and give the server back to
//! the pool after a short idle time. A lane is retired (no new batches,
//! then its server leaves) when a statement changed a setting
//! (ParameterStatus), its plan went stale, or the server said something the
//! lane did not expect.
//!
//! A client's cancel request reaches the lane's server only while the
//! client's batch is the one the server runs ([`LaneCancel`]); the lane
//! answers a cancelled batch it has not written itself, and cancels one it
//! has written when the server starts it.

use super::pool::{Checkout, Pool};
use super::socket::{ServerAddr, TryWrite};
use crate::protocol::frame::{is_backend_type, peek_frame, valid_ready, MAX_SERVER_MESSAGE};
use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;

/// A lane without work this long gives its server back.
const LANE_IDLE: Duration = Duration::from_millis(100);
/// A lane whose oldest request has been running this long takes no new
/// ones: a slow statement holds up only the requests already behind it.
const LANE_STALLED: Duration = Duration::from_millis(10);

/// Microseconds since the first call: a clock that fits an atomic.
fn now_micros() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// What a client gets back: complete server messages (its replies, in
/// order, up to and including its ReadyForQuery, possibly in several
/// chunks), or why the lane failed (SQLSTATE, message).
pub type Reply = Result<Bytes, (String, String)>;

/// One client batch for a lane.
pub struct Request {
    /// statements the batch uses, by shared name, with the Parse that
    /// prepares each on a server that lacks it
    pub needs: Vec<(Arc<str>, Bytes)>,
    /// the batch, statement names already rewritten to shared ones
    pub batch: Vec<Bytes>,
    /// where the replies go
    pub reply: UnboundedSender<Reply>,
}

/// A request on its way through a lane, with its progress.
struct Queued {
    req: Request,
    state: Arc<BatchState>,
}

/// How far a batch has got on its lane, and whether its client asked to
/// cancel it. Both the lane and the client's cancel request set bits with
/// one atomic operation each, so that exactly one of them acts on a
/// cancel: the client's side sends a CancelRequest while the batch runs;
/// the lane drops a batch it has not written yet, and sends the
/// CancelRequest itself when a batch it has written starts to run.
#[derive(Debug, Default)]
struct BatchState(AtomicU8);

/// written to the server (or about to be)
const WRITTEN: u8 = 1;
/// the oldest batch the server has not answered: the one it runs
const RUNNING: u8 = 2;
/// answered in full (or failed)
const DONE: u8 = 4;
/// its client sent a cancel request
const CANCEL: u8 = 8;

impl BatchState {
    /// The lane is about to write the batch, which the server runs at once
    /// when `first` (nothing written before it is unanswered); false when
    /// it was cancelled before (it is then not written).
    fn write(&self, first: bool) -> bool {
        let bits = if first { WRITTEN | RUNNING } else { WRITTEN };
        self.0.fetch_or(bits, Ordering::SeqCst) & CANCEL == 0
    }

    /// The batch is the one the server runs now; true when its client
    /// asked to cancel it before (the lane then sends the CancelRequest).
    fn start(&self) -> bool {
        self.0.fetch_or(RUNNING, Ordering::SeqCst) & CANCEL != 0
    }

    /// The server is done with the batch: a cancel request of its client
    /// must not reach the server any more, which runs other clients'
    /// batches next (the client's session clears its cancel target only
    /// when it has read the ReadyForQuery, which a slow reader reads late).
    fn finish(&self) {
        self.0.fetch_or(DONE, Ordering::SeqCst);
    }

    fn cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst) & CANCEL != 0
    }
}

/// What a cancel request of a client whose batch went to a lane reaches.
#[derive(Debug, Clone)]
pub struct LaneCancel {
    server: Arc<OnceLock<LaneServer>>,
    state: Arc<BatchState>,
    wake: Arc<Notify>,
}

impl LaneCancel {
    /// The lane's server, once it has one.
    pub fn server(&self) -> Option<&LaneServer> {
        self.server.get()
    }

    /// The client asked to cancel its batch. Returns the server to send a
    /// CancelRequest to when the batch runs now. A batch still waiting on
    /// the lane is the lane's to cancel (`None`): one not yet written is
    /// answered with 57014 without running, one written is cancelled when
    /// it starts. A batch the server is done with is left alone, as
    /// Postgres ignores a cancel request that comes after its statement.
    pub fn cancel(&self) -> Option<LaneServer> {
        let before = self.state.0.fetch_or(CANCEL, Ordering::SeqCst);
        if before & DONE != 0 {
            return None;
        }
        if before & RUNNING != 0 {
            return self.server.get().cloned();
        }
        if before & WRITTEN == 0 {
            // it waits for the lane's server, or for another batch's Parse
            self.wake.notify_one();
        }
        None
    }
}

/// The server a lane runs on (for cancel requests and SHOW CLIENTS).
#[derive(Debug, Clone)]
pub struct LaneServer {
    /// address for cancel requests
    pub addr: ServerAddr,
    /// backend process id
    pub pid: i32,
    /// cancel secret
    pub secret: i32,
    /// pgsift's server id
    pub id: u64,
    /// which of its pool's upstream targets it was opened to
    pub target_generation: u64,
    /// when it was opened
    pub created: Instant,
}

struct LaneHandle {
    tx: UnboundedSender<Queued>,
    /// requests submitted and not yet answered in full
    outstanding: Arc<AtomicUsize>,
    /// settings key the lane serves
    key: u64,
    /// no new requests (set under the registry lock)
    closed: Arc<AtomicBool>,
    server: Arc<OnceLock<LaneServer>>,
    /// when the oldest unanswered request became the oldest ([`now_micros`];
    /// 0: none)
    head_since: Arc<AtomicU64>,
    /// wakes the lane to answer a cancelled request it has not written
    wake: Arc<Notify>,
}

impl LaneHandle {
    fn stalled(&self, now: u64) -> bool {
        let since = self.head_since.load(Ordering::Relaxed);
        since != 0 && now.saturating_sub(since) > LANE_STALLED.as_micros() as u64
    }
}

/// A pool's lanes.
#[derive(Default)]
pub struct Mux {
    lanes: Mutex<Vec<LaneHandle>>,
}

impl Mux {
    /// Lanes open now.
    pub fn lanes(&self) -> usize {
        self.lanes.lock().len()
    }
}

/// Queues `req` on the least loaded lane serving `key` (the client's
/// settings), opening a lane when every one is busy and fewer than `max`
/// exist. Gives the request back when no lane can take it (all `max` lanes
/// serve other settings or are stalled). On success returns what a cancel
/// request of the client reaches.
pub fn submit(
    pool: &Arc<Pool>,
    key: u64,
    settings: &[(String, String)],
    max: usize,
    max_prepared: usize,
    req: Request,
) -> Result<LaneCancel, Request> {
    if pool.is_paused() {
        // PAUSE: new transactions wait for a server like everyone else's
        return Err(req);
    }
    let mut lanes = pool.mux.lanes.lock();
    lanes.retain(|l| {
        // a server a reload made obsolete, or past server_lifetime, takes
        // no new batches (its lane sees it too, and leaves once it has
        // answered the ones it has)
        let obsolete = l
            .server
            .get()
            .is_some_and(|s| pool.is_obsolete(s.target_generation, s.created));
        if obsolete {
            l.closed.store(true, Ordering::Relaxed);
        }
        !l.closed.load(Ordering::Relaxed)
    });
    let now = now_micros();
    let best = lanes
        .iter()
        .filter(|l| l.key == key && !l.stalled(now))
        .min_by_key(|l| l.outstanding.load(Ordering::Relaxed));
    let lane = match best {
        Some(l) if l.outstanding.load(Ordering::Relaxed) == 0 || lanes.len() >= max => l,
        _ if lanes.len() < max => {
            let (tx, rx) = unbounded_channel();
            let handle = LaneHandle {
                tx,
                outstanding: Arc::new(AtomicUsize::new(0)),
                key,
                closed: Arc::new(AtomicBool::new(false)),
                server: Arc::new(OnceLock::new()),
                head_since: Arc::new(AtomicU64::new(0)),
                wake: Arc::new(Notify::new()),
            };
            let lane = Lane {
                pool: pool.clone(),
                outstanding: handle.outstanding.clone(),
                closed: handle.closed.clone(),
                server_info: handle.server.clone(),
                head_since: handle.head_since.clone(),
                wake: handle.wake.clone(),
                max_prepared,
                rx,
                waiting: Vec::new(),
                pending: VecDeque::new(),
                held: Vec::new(),
                unconfirmed: Default::default(),
                retiring: false,
                discard: false,
                broken: None,
            };
            tokio::spawn(lane.run(settings.to_vec()));
            lanes.push(handle);
            lanes.last().expect("just pushed")
        }
        _ => return Err(req),
    };
    lane.outstanding.fetch_add(1, Ordering::Relaxed);
    let cancel = LaneCancel {
        server: lane.server.clone(),
        state: Arc::default(),
        wake: lane.wake.clone(),
    };
    let queued = Queued {
        req,
        state: cancel.state.clone(),
    };
    if let Err(e) = lane.tx.send(queued) {
        // the lane's task is gone (it panicked): never use it again
        lane.outstanding.fetch_sub(1, Ordering::Relaxed);
        lane.closed.store(true, Ordering::Relaxed);
        return Err(e.0.req);
    }
    Ok(cancel)
}

/// A request written to the server and not yet answered in full.
struct Pending {
    reply: UnboundedSender<Reply>,
    state: Arc<BatchState>,
    /// replies to messages pgsift added (ParseComplete `1`), dropped in
    /// order; the name is the statement a Parse prepared
    swallow: VecDeque<(u8, Option<Arc<str>>)>,
}

struct Lane {
    pool: Arc<Pool>,
    outstanding: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    server_info: Arc<OnceLock<LaneServer>>,
    head_since: Arc<AtomicU64>,
    wake: Arc<Notify>,
    max_prepared: usize,
    rx: UnboundedReceiver<Queued>,
    /// requests that came while the lane had no server yet
    waiting: Vec<Queued>,
    pending: VecDeque<Pending>,
    /// requests that use a statement whose Parse (another request's) is
    /// still unanswered: written once it is answered, so that its failure
    /// is reported to the client that sent it, not to everyone after it
    held: Vec<Queued>,
    /// statements prepared by a Parse still unanswered
    unconfirmed: rustc_hash::FxHashSet<Arc<str>>,
    /// take no new requests; leave once the queued ones are answered
    retiring: bool,
    /// when retiring, close the server rather than give it back
    discard: bool,
    /// the server is unusable (why): fail everything, close it
    broken: Option<String>,
}

impl Lane {
    async fn run(mut self, settings: Vec<(String, String)>) {
        // a request cancelled while the lane waits for a server is answered
        // at once
        let pool = self.pool.clone();
        let checkout = pool.checkout();
        tokio::pin!(checkout);
        let checkout = loop {
            tokio::select! {
                co = &mut checkout => break co,
                _ = self.wake.notified() => {
                    while let Ok(q) = self.rx.try_recv() {
                        self.waiting.push(q);
                    }
                    let waiting = std::mem::take(&mut self.waiting);
                    self.waiting = self.answer_cancelled(waiting);
                }
            }
        };
        let mut co = match checkout {
            Ok(mut co) => match co
                .server
                .sync_settings(&settings, &self.pool.defaults())
                .await
            {
                Ok(()) => co,
                Err(e) => {
                    self.pool.checkin_after_sync_error(co, &e);
                    return self.fail_all((e.code(), e.to_string()));
                }
            },
            Err(e) => return self.fail_all((e.code(), e.to_string())),
        };
        // statements whose plan went stale under a regular client are
        // closed before anything here can use them
        for name in std::mem::take(&mut co.server.stale_statements) {
            let sql = format!("DEALLOCATE {}", super::server::quote_ident(&name));
            if let Err(e) = co.server.run_simple(&sql).await {
                if !matches!(e, super::server::ServerError::Statement(_)) {
                    self.pool.discard(co);
                    return self.fail_all((e.code(), e.to_string()));
                }
            }
        }
        let _ = self.server_info.set(LaneServer {
            addr: co.server.addr.clone(),
            pid: co.server.pid,
            secret: co.server.secret,
            id: co.server.id,
            target_generation: co.server.target_generation,
            created: co.server.created,
        });
        let co = self.serve(co).await;
        match self.broken.take() {
            Some(why) => {
                tracing::warn!(server = co.server.id, "multiplexed server closed: {why}");
                self.pool.discard(co);
                self.fail_all(("08006".into(), format!("server connection lost: {why}")));
            }
            None if self.discard => {
                // a statement changed a setting or a plan went stale: the
                // server leaves the pool rather than carry that along
                self.pool.discard(co);
            }
            None => self.pool.checkin(co),
        }
    }

    /// Closes the lane to new requests and answers the queued ones with an error.
    fn fail_all(&mut self, why: (String, String)) {
        self.close();
        for p in self.pending.drain(..) {
            p.state.finish();
            let _ = p.reply.send(Err(why.clone()));
        }
        let mut unwritten: Vec<Queued> = self.waiting.drain(..).collect();
        unwritten.append(&mut self.held);
        while let Ok(q) = self.rx.try_recv() {
            unwritten.push(q);
        }
        for q in unwritten {
            q.state.finish();
            let _ = q.req.reply.send(Err(why.clone()));
        }
        self.outstanding.store(0, Ordering::Relaxed);
    }

    /// Answers the requests among `queued` whose clients cancelled them
    /// (none of them written): they end as a batch Postgres cancels before
    /// it has answered any of its messages would. Returns the others.
    fn answer_cancelled(&mut self, queued: Vec<Queued>) -> Vec<Queued> {
        let mut rest = Vec::with_capacity(queued.len());
        for q in queued {
            if q.state.cancelled() {
                self.answer_unwritten(q);
            } else {
                rest.push(q);
            }
        }
        rest
    }

    /// Answers a cancelled request that was never written: ErrorResponse
    /// 57014 and ReadyForQuery `I`.
    fn answer_unwritten(&mut self, q: Queued) {
        let mut out = BytesMut::new();
        crate::protocol::messages::error_response(
            &mut out,
            crate::protocol::messages::Severity::Error,
            "57014",
            "canceling statement due to user request",
        );
        crate::protocol::messages::ready_for_query(&mut out, b'I');
        q.state.finish();
        let _ = q.req.reply.send(Ok(out.freeze()));
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    fn close(&self) {
        let _lanes = self.pool.mux.lanes.lock();
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Closes the lane when nothing is outstanding; false when a request
    /// came in meanwhile.
    fn close_if_idle(&self) -> bool {
        let _lanes = self.pool.mux.lanes.lock();
        if self.outstanding.load(Ordering::Relaxed) == 0 {
            self.closed.store(true, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Adds a request to the bytes for the server: Closes of statements
    /// evicted to make room first (a Close cannot fail, so no error can
    /// make the server skip one), then Parses of the statements the server
    /// lacks, then the batch.
    fn enqueue(&mut self, q: Queued, co: &mut Checkout, wbuf: &mut BytesMut) {
        if q.req
            .needs
            .iter()
            .any(|(n, _)| self.unconfirmed.contains(n))
        {
            self.held.push(q);
            return;
        }
        let first = self.pending.is_empty();
        if !q.state.write(first) {
            return self.answer_unwritten(q);
        }
        let Queued { req, state } = q;
        let mut swallow = VecDeque::new();
        let mut parses = Vec::new();
        for (name, parse) in req.needs {
            if co.server.prepared.touch(&name) {
                continue;
            }
            if let Some(victim) = co.server.prepared.insert(name.clone(), self.max_prepared) {
                wbuf.extend_from_slice(&crate::protocol::extended::build_target(
                    b'C', b'S', &victim,
                ));
                swallow.push_back((b'3', None));
            }
            parses.push((name, parse));
        }
        for (name, parse) in parses {
            wbuf.extend_from_slice(&parse);
            self.unconfirmed.insert(name.clone());
            swallow.push_back((b'1', Some(name)));
        }
        for b in &req.batch {
            wbuf.extend_from_slice(b);
        }
        if first {
            self.head_since.store(now_micros(), Ordering::Relaxed);
        }
        self.pending.push_back(Pending {
            reply: req.reply,
            state,
            swallow,
        });
    }

    /// Takes no new requests from now on; `discard`: the server is closed
    /// at the end instead of going back to the pool.
    fn retire(&mut self, discard: bool) {
        self.retiring = true;
        self.discard |= discard;
        self.close();
    }

    /// Requests held for a Parse that has been answered now.
    fn release_held(&mut self, co: &mut Checkout, wbuf: &mut BytesMut) {
        if self.held.is_empty() {
            return;
        }
        for q in std::mem::take(&mut self.held) {
            self.enqueue(q, co, wbuf);
        }
    }

    /// Runs until idle, retired or broken; returns the server.
    async fn serve(&mut self, mut co: Checkout) -> Checkout {
        let mut wbuf = BytesMut::with_capacity(8 * 1024);
        // bytes at the front of the server's buffer scanned and belonging
        // to the first pending request
        let mut scanned = 0;
        for q in std::mem::take(&mut self.waiting) {
            self.enqueue(q, &mut co, &mut wbuf);
        }
        loop {
            // (a retiring lane is closed to new requests; queued ones are served)
            while let Ok(q) = self.rx.try_recv() {
                self.enqueue(q, &mut co, &mut wbuf);
            }
            self.release_held(&mut co, &mut wbuf);
            if !self.retiring && self.pool.is_paused() {
                self.retire(false);
            }
            // a busy lane never idles long enough to give its server back,
            // where the pool would turn away one that a reload moved off
            // the pool's upstream or that outlived server_lifetime: it
            // retires instead (the server then finishes what it was sent,
            // and the pool closes it)
            if !self.retiring
                && self
                    .pool
                    .is_obsolete(co.server.target_generation, co.server.created)
            {
                self.retire(false);
            }
            if !wbuf.is_empty() {
                match TryWrite::try_write(&co.server.writer, &wbuf) {
                    Ok(n) => wbuf.advance(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        self.broken = Some(e.to_string());
                        return co;
                    }
                }
            }
            if self.pending.is_empty() && wbuf.is_empty() && self.held.is_empty() {
                if self.retiring {
                    self.close();
                    if self.outstanding.load(Ordering::Relaxed) == 0 {
                        return co;
                    }
                }
                match crate::timer::timeout(LANE_IDLE, self.rx.recv()).await {
                    Ok(Some(q)) => {
                        self.enqueue(q, &mut co, &mut wbuf);
                        continue;
                    }
                    Ok(None) => return co,
                    Err(_) => {
                        if self.close_if_idle() {
                            return co;
                        }
                        continue;
                    }
                }
            }
            let server = &mut co.server;
            if server.rbuf.capacity() - server.rbuf.len() < 4096 {
                server.rbuf.reserve(16 * 1024);
            }
            tokio::select! {
                biased;
                r = server.reader.read_buf(&mut server.rbuf) => match r {
                    Ok(0) => {
                        self.broken = Some("server closed the connection".into());
                        return co;
                    }
                    Err(e) => {
                        self.broken = Some(e.to_string());
                        return co;
                    }
                    Ok(_) => {
                        self.route(&mut co, &mut scanned);
                        if self.broken.is_some() {
                            return co;
                        }
                    }
                },
                r = server.writer.writable(), if !wbuf.is_empty() => {
                    if let Err(e) = r {
                        self.broken = Some(e.to_string());
                        return co;
                    }
                }
                // (a retiring lane takes nothing new: those sent before it
                // closed are taken at the loop's top; and once the handles
                // are gone, recv would return at once, every time)
                q = self.rx.recv(), if !self.retiring => match q {
                    Some(q) => self.enqueue(q, &mut co, &mut wbuf),
                    None => self.retire(false),
                },
                _ = self.wake.notified() => {
                    // a request held for another's Parse may have been
                    // cancelled (those in `rx` are seen at the loop's top)
                    let held = std::mem::take(&mut self.held);
                    self.held = self.answer_cancelled(held);
                }
            }
        }
    }

    /// Hands complete server messages to the requests they answer.
    fn route(&mut self, co: &mut Checkout, scanned: &mut usize) {
        let server = &mut co.server;
        let mut retire = false;
        loop {
            let (tag, total) = match peek_frame(&server.rbuf[*scanned..], MAX_SERVER_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    self.broken = Some(format!("server sent an invalid message: {e}"));
                    return;
                }
            };
            if !is_backend_type(tag) {
                self.broken = Some(format!("server sent an unknown message type {tag}"));
                return;
            }
            let Some(head) = self.pending.front_mut() else {
                self.broken = Some("server sent a reply nobody asked for".into());
                return;
            };
            let at = *scanned;
            let msg = &server.rbuf[at..at + total];
            match tag {
                b'1' | b'3' if head.swallow.front().is_some_and(|(t, _)| *t == tag) => {
                    if let Some((_, Some(name))) = head.swallow.pop_front() {
                        self.unconfirmed.remove(&name);
                    }
                    // what came before goes on; the made-up reply is dropped
                    let before = server.rbuf.split_to(at).freeze();
                    server.rbuf.advance(total);
                    *scanned = 0;
                    if !before.is_empty() {
                        let _ = head.reply.send(Ok(before));
                    }
                    continue;
                }
                b'E' => {
                    // Postgres skips to the Sync: an added Parse that failed
                    // and the ones after it prepared nothing
                    let mut failed = false;
                    for (t, name) in head.swallow.drain(..) {
                        if t == b'1' {
                            failed = true;
                        }
                        if let Some(n) = name.filter(|_| failed) {
                            server.prepared.remove(&n);
                            self.unconfirmed.remove(&n);
                        }
                    }
                    retire |= crate::frontend::pipeline::is_stale_plan_error(msg);
                }
                b'S' => {
                    let body = msg[5..].to_vec();
                    server.note_parameter_status(&body);
                    retire = true;
                }
                b'Z' => {
                    let status = if valid_ready(msg) { msg[5] } else { 0 };
                    let done = server.rbuf.split_to(at + total).freeze();
                    *scanned = 0;
                    let head = self.pending.pop_front().expect("head exists");
                    // before the client can see the end: from now on its
                    // cancel request must not reach the server
                    head.state.finish();
                    let _ = head.reply.send(Ok(done));
                    self.outstanding.fetch_sub(1, Ordering::Relaxed);
                    let next = match self.pending.front() {
                        Some(p) => {
                            // the server goes on to it (written already):
                            // a cancel its client asked for meanwhile is
                            // sent now
                            if p.state.start() {
                                cancel_in_background(server);
                            }
                            now_micros()
                        }
                        None => 0,
                    };
                    self.head_since.store(next, Ordering::Relaxed);
                    if status != b'I' || !head.swallow.is_empty() {
                        self.broken = Some(format!(
                            "a multiplexed batch left the server in state {}",
                            (status as char).escape_default()
                        ));
                        return;
                    }
                    continue;
                }
                _ => {}
            }
            *scanned += total;
        }
        if retire {
            self.retire(true);
        }
        if *scanned > 0 {
            // the first request's replies so far: they go on now (a large
            // result streams through instead of piling up here)
            let part = server.rbuf.split_to(*scanned).freeze();
            *scanned = 0;
            if let Some(head) = self.pending.front() {
                let _ = head.reply.send(Ok(part));
            }
        }
    }
}

/// Sends a CancelRequest for what `server` runs, without waiting for it.
fn cancel_in_background(server: &super::server::ServerConnection) {
    let (addr, pid, secret) = (server.addr.clone(), server.pid, server.secret);
    tokio::spawn(async move {
        if let Err(e) = super::server::send_cancel(&addr, pid, secret).await {
            tracing::warn!(error = %e, "forwarding cancel request failed");
        }
    });
}
