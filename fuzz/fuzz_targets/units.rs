//! `config::units::parse_duration` and `parse_size` on arbitrary text, as
//! config.yaml values (`5s`, `250ms`, `256MiB`) could hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsift::config::units::{parse_duration, parse_size};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);

    if let Ok(d) = parse_duration(&s) {
        assert!(d.as_secs_f64() <= 1e9 + 1.0, "{s:?} gave {d:?}, above the 1e9 s limit");
        // The same span written in whole microseconds is accepted too.
        let us = d.as_micros();
        assert!(parse_duration(&format!("{us}us")).is_ok(), "{us}us refused (from {s:?})");
    }

    if let Ok(n) = parse_size(&s) {
        // A plain byte count round-trips exactly.
        assert_eq!(parse_size(&n.to_string()), Ok(n), "from {s:?}");
        if n % (1 << 20) == 0 {
            assert_eq!(parse_size(&format!("{}MiB", n >> 20)), Ok(n), "from {s:?}");
        }
    }
});
