//! What a transaction-mode session reads from a client's SQL about its
//! session: the SET/RESET/DISCARD classifier and change tracking
//! (`frontend::settings::SettingsTracker`) and the recogniser of SQL
//! `DEALLOCATE name` (`frontend::pipeline::deallocated`).
//!
//! Input: bytes taken as the text of a Query, and of a Parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsift::frontend::pipeline::deallocated;
use pgsift::frontend::settings::SettingsTracker;
use std::collections::HashMap;

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fuzz_target!(|data: &[u8]| {
    let text: Vec<u8> = data.iter().copied().filter(|&b| b != 0).collect();
    let login = vec![("statement_timeout".to_string(), "100".to_string())];
    let mut tracker = SettingsTracker::new(&login);
    let mut settings = login.clone();
    let mut applied = HashMap::new();
    let mut q = text.clone();
    q.push(0);
    tracker.observe(b'Q', &message(b'Q', &q), true);
    let mut p = b"s1\0".to_vec();
    p.extend_from_slice(&q);
    p.extend_from_slice(&[0, 0]);
    tracker.observe(b'P', &message(b'P', &p), true);
    tracker.ready(b'I', &mut settings);
    tracker.mark_server(&mut applied);
    for (k, _) in &settings {
        assert!(!k.is_empty(), "a setting without a name");
    }
    if let Some(name) = deallocated(&text) {
        assert!(!name.is_empty());
        assert!(!name.eq_ignore_ascii_case(b"all"));
    }
});
