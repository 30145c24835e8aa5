//! Statement analysis: for every statement pgsift sees, its normalized text,
//! a 64-bit fingerprint (identical for statements that differ only in
//! constants, whitespace, comments, keyword case or IN-list length, and for
//! the inlined-literal and `$n` forms of one query), its kind, and the tables
//! it reads and writes. The real Postgres parser (libpg_query) does the work
//! once per statement shape; a lexical pass ([`shape`]) and two bounded
//! memo tables keep it off the per-execution path.

pub mod analysis;
pub mod comments;
pub mod shape;
pub mod template;
pub mod temporary;

pub use analysis::{Analysis, Analyzer, Kind};
