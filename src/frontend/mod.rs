//! The client side: accepting connections, the startup handshake (TLS,
//! protocol negotiation, authentication), and the session that forwards a
//! client's messages to the server it holds, in session or transaction mode.

pub mod batch_ends;
pub mod caching;
pub mod cancel;
pub mod handshake;
pub mod listener;
pub mod observer;
pub mod pipeline;
pub mod registry;
pub mod session;
pub mod settings;
pub mod source;
pub mod stream;
pub mod tls;
