//! Who is connected: one small record per client, shared with the admin
//! console (SHOW CLIENTS, SHOW SERVERS). The session updates its state when
//! it waits for, gets and returns a server.

use dashmap::DashMap;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// A client's state towards the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// holds no server and waits for nothing
    Idle,
    /// holds a server
    Active,
    /// queued for a server
    Waiting,
}

impl ClientState {
    /// As shown in SHOW CLIENTS.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        }
    }
}

/// One connected client.
#[derive(Debug)]
pub struct ClientInfo {
    /// process-unique id
    pub id: u64,
    /// peer address
    pub addr: SocketAddr,
    /// role
    pub user: String,
    /// client-facing database
    pub database: String,
    /// application_name at startup
    pub application: String,
    /// when it connected
    pub connected: SystemTime,
    state: AtomicU8,
    server: Mutex<Option<(u64, i32)>>,
}

impl ClientInfo {
    /// The current state.
    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            _ => ClientState::Idle,
        }
    }

    /// Sets the state and the server held (id, backend pid).
    pub fn set(&self, state: ClientState, server: Option<(u64, i32)>) {
        self.state.store(
            match state {
                ClientState::Idle => 0,
                ClientState::Active => 1,
                ClientState::Waiting => 2,
            },
            Ordering::Relaxed,
        );
        *self.server.lock() = server;
    }

    /// The server held, if any.
    pub fn server(&self) -> Option<(u64, i32)> {
        *self.server.lock()
    }
}

/// All connected clients.
#[derive(Default)]
pub struct ClientRegistry {
    clients: DashMap<u64, Arc<ClientInfo>>,
    next: AtomicU64,
}

impl ClientRegistry {
    /// Registers a logged-in client.
    pub fn add(
        &self,
        addr: SocketAddr,
        user: &str,
        database: &str,
        application: &str,
    ) -> Arc<ClientInfo> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(ClientInfo {
            id,
            addr,
            user: user.to_owned(),
            database: database.to_owned(),
            application: application.to_owned(),
            connected: SystemTime::now(),
            state: AtomicU8::new(0),
            server: Mutex::new(None),
        });
        self.clients.insert(id, info.clone());
        info
    }

    /// Forgets a client that left.
    pub fn remove(&self, id: u64) {
        self.clients.remove(&id);
    }

    /// A snapshot, oldest first.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.clients.iter().map(|c| c.value().clone()).collect();
        v.sort_by_key(|c| c.id);
        v
    }
}
