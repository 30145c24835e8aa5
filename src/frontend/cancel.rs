//! Cancel keys: every client gets a BackendKeyData key issued by pgsift. A
//! CancelRequest carrying it is forwarded, with the real server's key, to
//! whichever server is serving that client at the moment.

use crate::backend::mux::LaneCancel;
use crate::backend::socket::ServerAddr;
use dashmap::DashMap;
use parking_lot::Mutex;
use std::sync::Arc;

/// Where a client's statement runs.
#[derive(Debug, Clone)]
enum Running {
    /// on a server it holds
    Server(ServerAddr, i32, i32),
    /// as a batch on a multiplexed server
    Lane(LaneCancel),
}

/// The server a client is using right now, if any.
#[derive(Debug, Default)]
pub struct CancelTarget(Mutex<Option<Running>>);

impl CancelTarget {
    /// The client got a server.
    pub fn set(&self, addr: ServerAddr, pid: i32, secret: i32) {
        *self.0.lock() = Some(Running::Server(addr, pid, secret));
    }
    /// The client's batch went to a multiplexed server: a cancel request
    /// reaches the server only while the batch runs there (it is the oldest
    /// the server has not answered), so it never cancels another client's
    /// batch; a batch still waiting on the lane is cancelled by the lane.
    pub fn set_lane(&self, lane: LaneCancel) {
        *self.0.lock() = Some(Running::Lane(lane));
    }
    /// The client returned its server.
    pub fn clear(&self) {
        *self.0.lock() = None;
    }
    /// A cancel request for the client came: the server to send it on,
    /// if one runs the client's statement now. (A multiplexed batch that
    /// has not started yet is marked cancelled, and its lane cancels it.)
    pub fn cancel(&self) -> Option<(ServerAddr, i32, i32)> {
        match self.0.lock().clone()? {
            Running::Server(addr, pid, secret) => Some((addr, pid, secret)),
            Running::Lane(lane) => lane.cancel().map(|s| (s.addr, s.pid, s.secret)),
        }
    }
}

/// Issued keys → the client's current server.
#[derive(Default)]
pub struct CancelRegistry {
    keys: DashMap<(i32, i32), Arc<CancelTarget>>,
}

impl CancelRegistry {
    /// Issues a fresh, unused key for a client.
    pub fn issue(&self) -> ((i32, i32), Arc<CancelTarget>) {
        loop {
            let key = (rand::random::<i32>() & 0x7fff_ffff, rand::random::<i32>());
            let target = Arc::new(CancelTarget::default());
            if let dashmap::Entry::Vacant(v) = self.keys.entry(key) {
                v.insert(target.clone());
                return (key, target);
            }
        }
    }

    /// Forgets a key when its client leaves.
    pub fn remove(&self, key: (i32, i32)) {
        self.keys.remove(&key);
    }

    /// Cancels whatever the key's client is running; unknown keys and idle
    /// clients are ignored silently, as Postgres does.
    pub async fn cancel(&self, pid: i32, secret: &[u8]) {
        let Ok(secret) = <[u8; 4]>::try_from(secret) else {
            return;
        };
        let key = (pid, i32::from_be_bytes(secret));
        let target = self.keys.get(&key).and_then(|t| t.cancel());
        if let Some((addr, spid, ssecret)) = target {
            if let Err(e) = crate::backend::server::send_cancel(&addr, spid, ssecret).await {
                tracing::warn!(error = %e, "forwarding cancel request failed");
            }
        }
    }
}
