//! N+1 detection: a per-connection burst detector and the store that
//! aggregates finished bursts into reports for DBAs (SPEC §7).

pub mod detector;
pub mod example;
pub mod store;
pub mod suggest;

pub use detector::{Burst, BurstKind, Detector, Execution};
pub use store::{Report, ReportStore};
