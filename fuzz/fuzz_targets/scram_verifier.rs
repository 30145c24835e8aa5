//! `auth::scram_verifier::ScramVerifier::parse` on arbitrary UTF-8, as a
//! `password:` value in config.yaml could hold.
#![no_main]

use base64::{engine::general_purpose::STANDARD, Engine};
use libfuzzer_sys::fuzz_target;
use pgsift::auth::scram_verifier::ScramVerifier;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    check(s);
    // Also with the prefix in place, so the fuzzer spends its time past it.
    if !s.starts_with("SCRAM-SHA-256$") {
        check(&format!("SCRAM-SHA-256${s}"));
    }
});

fn check(s: &str) {
    match ScramVerifier::parse(s) {
        Ok(v) => {
            assert!(s.starts_with("SCRAM-SHA-256$"));
            assert!(v.iterations > 0);
            assert_eq!(v.stored_key.len(), 32);
            assert_eq!(v.server_key.len(), 32);
            // Written back in canonical form, it parses to the same verifier.
            let canonical = format!(
                "SCRAM-SHA-256${}:{}${}:{}",
                v.iterations,
                STANDARD.encode(&v.salt),
                STANDARD.encode(&v.stored_key),
                STANDARD.encode(&v.server_key)
            );
            assert_eq!(ScramVerifier::parse(&canonical).as_ref(), Ok(&v), "{canonical}");
        }
        Err(msg) => assert!(msg.starts_with("invalid SCRAM-SHA-256 verifier")),
    }
}
