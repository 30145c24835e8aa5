//! pgsift: a transparent PostgreSQL wire-protocol proxy that pools upstream
//! connections (session and transaction mode), and — in the issues that
//! build on this foundation — fingerprints statements, reports N+1 bursts,
//! caches SELECTs and exports metrics.
//!
//! Data flows one way: socket → [`protocol`] frames → [`frontend`] session →
//! [`backend`] pool → server, and back. [`app::App`] holds the shared state.

#[macro_use]
mod io_enum;
pub mod admin;
pub mod app;
pub mod auth;
pub mod backend;
pub mod busy_poll;
pub mod cache;
pub mod clock;
pub mod config;
pub mod frontend;
pub mod logging;
pub mod metrics;
pub mod nplus1;
pub mod protocol;
pub mod runtime;
pub mod sql;
pub mod stats;
pub mod timer;
