//! `messages::parse_error_fields` on ErrorResponse/NoticeResponse bodies as a
//! server might send them, plus a round trip through pgsift's own encoders
//! (`error_response`, `notice_response`) with fuzzed strings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsift::protocol::frame::peek_frame;
use pgsift::protocol::messages::{
    error_response, notice_response, parse_error_fields, Severity,
};

fuzz_target!(|data: &[u8]| {
    // 1. An arbitrary body from a server.
    let f = parse_error_fields(data);
    for v in [&f.severity, &f.code, &f.message] {
        assert!(!v.contains('\0'), "field value holds a NUL: {v:?}");
        // Lossy decoding never makes a value longer than 3x its bytes.
        assert!(v.len() <= 3 * data.len());
    }

    // 2. Encode fuzzed strings ourselves and parse them back.
    let Some((&sel, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let (code, message) = text.split_once('\n').unwrap_or((&text, ""));
    let (severity, name) = match sel & 3 {
        0 => (Severity::Error, "ERROR"),
        1 => (Severity::Fatal, "FATAL"),
        2 => (Severity::Notice, "NOTICE"),
        _ => (Severity::Warning, "WARNING"),
    };
    let mut buf = bytes::BytesMut::new();
    if sel & 4 == 0 {
        error_response(&mut buf, severity, code, message);
        assert_eq!(buf[0], b'E');
    } else {
        notice_response(&mut buf, severity, code, message);
        assert_eq!(buf[0], b'N');
    }
    // The encoded message frames as exactly one message.
    assert_eq!(peek_frame(&buf, usize::MAX), Ok(Some((buf[0], buf.len()))));
    let back = parse_error_fields(&buf[5..]);
    assert_eq!(back.severity, name);
    assert_eq!(back.code, code.replace('\0', ""));
    assert_eq!(back.message, message.replace('\0', ""));
});
