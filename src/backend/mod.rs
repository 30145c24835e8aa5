//! The upstream side: server connections, the pool per (database, user) with
//! its FIFO checkout queue, and the upkeep that keeps pools within their
//! limits (idle timeout, server lifetime, min_pool_size, reconnect backoff).

pub mod mux;
pub mod pool;
pub mod prepared;
pub mod server;
pub mod socket;

pub use pool::{Checkout, Pool, PoolError, PoolKey};
pub use server::{ServerConnection, ServerError, UpstreamTarget};
