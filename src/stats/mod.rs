//! Statistics pgsift keeps about the traffic it proxies.

pub mod queries;

pub use queries::{QueryRow, QueryStats, Tally};
