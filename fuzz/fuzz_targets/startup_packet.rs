//! The startup phase of a client connection, as `frontend::handshake` reads
//! it: a 4-byte length word, checked by `startup::body_len`, then that many
//! body bytes, decoded by `startup::parse`. The input is the raw byte stream
//! from the client, so it may hold several packets in a row (an SSLRequest
//! followed by the StartupMessage, say); the loop stops where the real one
//! would stop reading. The `options` parameter goes through
//! `startup::parse_options`, and so does the whole input taken as text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsift::protocol::startup::{
    body_len, parse, parse_options, StartupError, StartupPacket, MAX_STARTUP_LEN,
};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    while stream.len() >= 4 {
        let word = [stream[0], stream[1], stream[2], stream[3]];
        let announced = u32::from_be_bytes(word) as usize;
        let n = match body_len(word) {
            Ok(n) => n,
            Err(e) => {
                assert_eq!(e, StartupError::BadLength);
                assert!(!(8..=MAX_STARTUP_LEN).contains(&announced));
                break;
            }
        };
        assert_eq!(n + 4, announced);
        assert!((4..=MAX_STARTUP_LEN - 4).contains(&n));
        let rest = &stream[4..];
        if rest.len() < n {
            // The client would be waiting for more bytes: nothing to parse.
            break;
        }
        let (body, next) = rest.split_at(n);
        check_body(body);
        stream = next;
    }

    // parse_options on arbitrary text, too.
    check_options(&String::from_utf8_lossy(data));
});

/// Parses one body and checks that the decoded packet is exactly what the
/// bytes said.
fn check_body(body: &[u8]) {
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    match parse(body) {
        Ok(StartupPacket::SslRequest) => assert_eq!(code, SSL_REQUEST),
        Ok(StartupPacket::GssEncRequest) => assert_eq!(code, GSSENC_REQUEST),
        Ok(StartupPacket::Cancel { pid, secret }) => {
            assert_eq!(code, CANCEL_REQUEST);
            assert!((4..=256).contains(&secret.len()), "secret of {} bytes", secret.len());
            let mut again = code.to_be_bytes().to_vec();
            again.extend_from_slice(&pid.to_be_bytes());
            again.extend_from_slice(&secret);
            assert_eq!(again, body, "cancel request does not re-encode to its body");
        }
        Ok(StartupPacket::Startup { major, minor, params }) => {
            assert!(![SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST].contains(&code));
            assert_eq!(major, 3, "only protocol 3 gets its parameters parsed");
            assert_eq!((u32::from(major) << 16) | u32::from(minor), code);
            // The parameter list is parsed exactly: re-encoding gives the body.
            let mut again = code.to_be_bytes().to_vec();
            for (k, v) in &params {
                assert!(!k.contains('\0') && !v.contains('\0'));
                again.extend_from_slice(k.as_bytes());
                again.push(0);
                again.extend_from_slice(v.as_bytes());
                again.push(0);
            }
            again.push(0);
            assert_eq!(again, body, "startup message does not re-encode to its body");
            for (k, v) in &params {
                if k == "options" {
                    check_options(v);
                }
            }
        }
        Err(StartupError::BadCancel) => assert_eq!(code, CANCEL_REQUEST),
        Err(StartupError::BadLayout) | Err(StartupError::BadEncoding) => {
            assert!(![SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST].contains(&code));
            assert_eq!(code >> 16, 3, "a layout is checked for protocol 3 only");
        }
        Err(StartupError::UnsupportedProtocol { major, minor }) => {
            assert!(![SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST].contains(&code));
            assert_ne!(major, 3);
            assert_eq!((u32::from(major) << 16) | u32::from(minor), code);
        }
        Err(StartupError::BadLength) => panic!("body of {} bytes refused as BadLength", body.len()),
    }
}

fn check_options(options: &str) {
    for (k, v) in parse_options(options) {
        assert!(!k.contains('-'), "setting name {k:?} still has a dash");
        // A setting comes from one whitespace-separated word holding `=`.
        assert!(k.len() + v.len() < options.len(), "{k:?}={v:?} longer than {options:?}");
    }
}
