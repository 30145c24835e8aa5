//! `config::Config::parse` on arbitrary text: config.yaml is read at start
//! and on reload, and must be refused with errors, never with a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsift::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text) {
        Ok(cfg) => {
            // What validation promises to the rest of pgsift.
            assert!(cfg.pool.max_message_size >= 1024);
            assert!(!cfg.pool.connect_timeout.is_zero());
            assert!(!cfg.pool.checkout_timeout.is_zero());
            assert!(!cfg.pool.client_login_timeout.is_zero());
            assert!(cfg.pool.max_client_conn >= 1);
            assert!(cfg.n_plus_one.min_repeats >= 2);
            for (name, db) in &cfg.databases {
                assert_ne!(name, "pgsift");
                assert!(db.pool_size >= 1);
                assert!(db.min_pool_size <= db.pool_size);
                assert_ne!(db.port, 0);
            }
            assert!(matches!(cfg.logging.format.as_str(), "text" | "json"));
        }
        Err(errors) => assert!(!errors.0.is_empty(), "Err with no messages"),
    }
});
