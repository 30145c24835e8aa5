//! Authentication on both sides of the proxy: clients log in to pgsift with
//! SCRAM-SHA-256 or md5 against `users` (the server-side SCRAM state machine
//! is pgwire's), and pgsift logs in to Postgres with whatever the server asks
//! for (SCRAM-SHA-256 via postgres-protocol, md5, cleartext, trust).

pub mod client;
pub mod scram_verifier;
pub mod upstream;

pub use client::{ClientAuthError, Credentials};
