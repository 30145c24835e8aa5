//! The operator's side: the HTTP server on `admin.listen` (health, readiness,
//! pool status; metrics and reports join it in later issues).

pub mod console;
pub mod http;
pub mod pages;
