//! What a transaction-mode session reads from a client's SQL about its
//! session: the SET/RESET/DISCARD classifier and change tracking
//! (`frontend::settings::SettingsTracker`), the session-state recognisers
//! (`session_only_feature`, `runs_unseen_code`, temporary relations), the
//! recognisers of SQL `DEALLOCATE name` and DISCARD/DEALLOCATE ALL
//! (`frontend::pipeline`), and the comment reader they all use
//! (`sql::comments`).
//!
//! Input: bytes taken as the text of a Query, and of a Parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsift::frontend::pipeline::{deallocated, resets_statements};
use pgsift::frontend::settings::{leaves_session_state, SettingsTracker};
use pgsift::sql::comments::{blank_comments, first_word, skip_space_and_comments};
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
    // standard_conforming_strings off on the pool's servers when the input
    // starts with a backslash
    let mut server = HashMap::new();
    if text.first() == Some(&b'\\') {
        server.insert("standard_conforming_strings".to_string(), "off".to_string());
    }
    let mut tracker = SettingsTracker::new(&login, &server);
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
        // (`DEALLOCATE "ALL"` names a statement called ALL)
        assert!(!name.eq_ignore_ascii_case(b"all") || text.contains(&b'"'));
    }
    let _ = resets_statements(&text);
    let _ = leaves_session_state(&text);
    // comments: what is skipped is a prefix, the first word starts what is
    // left, and blanking is done in one pass (blanking again changes nothing)
    let rest = skip_space_and_comments(&text);
    assert!(text.ends_with(rest));
    assert!(rest.starts_with(first_word(&text)));
    let blank = blank_comments(&text);
    assert!(blank.len() <= text.len());
    assert_eq!(blank_comments(&blank), blank);
});
