//! The PostgreSQL v3 wire protocol as pgsift sees it: header-only framing of
//! the message stream, the untyped startup packet, and encoders for the few
//! messages pgsift writes itself. Everything else passes through as bytes.

pub mod extended;
pub mod frame;
pub mod io;
pub mod messages;
pub mod startup;

pub use frame::{peek_frame, FrameError};
