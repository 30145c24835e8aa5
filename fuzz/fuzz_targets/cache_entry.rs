//! `cache::remote::decode` on arbitrary bytes: entries come from a Redis that
//! other programs may write to, so anything must be refused without a panic,
//! and what `encode` wrote must come back exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsift::cache::remote::{decode, encode};
use pgsift::cache::Snapshot;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let db: Arc<str> = "db".into();
    let versions = vec![((db.clone(), "posts".to_string()), 3), ((db, "users".to_string()), 0)];
    let _ = decode(data, 7, &versions);
    let snapshot = Snapshot { versions, epoch: 7 };
    let stored = encode(&snapshot, data);
    assert_eq!(decode(&stored, 7, &snapshot.versions).as_deref(), Some(data));
    assert_eq!(decode(&stored, 8, &snapshot.versions), None);
});
