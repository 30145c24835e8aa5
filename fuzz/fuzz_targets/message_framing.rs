//! Header-only framing of the message stream after startup
//! (`protocol::frame`): `peek_frame`, `scan`, `missing_bytes` and the
//! message-type predicates, with an arbitrary byte stream and an arbitrary
//! maximum message length.
//!
//! Input layout: 4 bytes choosing the maximum length and the chunk size used
//! to replay the stream as a proxy reading a socket would, then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsift::protocol::frame::{
    frontend_limit, is_backend_type, is_frontend_type, missing_bytes, peek_frame, scan,
    valid_ready, FrameError, HEADER_LEN, SMALL_MESSAGE_LIMIT,
};

/// Message types a frontend may send after startup, from the protocol docs.
const FRONTEND: &[u8] = b"BCdcfDEHFPQSX";
/// Message types a backend may send, from the protocol docs.
const BACKEND: &[u8] = b"RK23CdcGHWDIEVnNAtS1sZTv";

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let ctl = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let buf = &data[4..];
    let max_len = match ctl & 3 {
        0 => usize::MAX,
        1 => (ctl >> 2) as usize,          // anything up to 2^30
        2 => ((ctl >> 2) & 0xff) as usize, // small limits, including < 4
        _ => 256 << 20,                    // pool.max_message_size default
    };
    let chunk = ((ctl >> 24) as usize % 64) + 1;

    check_peek(buf, max_len);

    // scan: the messages it visits tile a prefix of the buffer.
    let mut visited: Vec<(u8, usize)> = Vec::new();
    let mut sum = 0usize;
    let result = scan(buf, max_len, |tag, msg| {
        assert!(msg.len() >= HEADER_LEN, "visited message of {} bytes", msg.len());
        assert_eq!(msg[0], tag);
        let field = u32::from_be_bytes([msg[1], msg[2], msg[3], msg[4]]) as usize;
        assert_eq!(field + 1, msg.len(), "length field + 1 != message slice length");
        assert!(field >= 4 && field <= max_len);
        // Contiguous: this message starts where the previous one ended.
        assert_eq!(msg.as_ptr(), buf[sum..].as_ptr());
        sum += msg.len();
        visited.push((tag, msg.len()));
        let _ = (is_frontend_type(tag), is_backend_type(tag));
    });
    match &result {
        Ok(n) => {
            assert!(*n <= buf.len(), "scan returned {n} for {} bytes", buf.len());
            assert_eq!(*n, sum, "scan length != sum of visited message sizes");
            // It stopped at an incomplete message.
            assert_eq!(peek_frame(&buf[*n..], max_len), Ok(None));
            assert!(missing_bytes(&buf[*n..]) > 0);
        }
        Err(e) => {
            assert!(sum <= buf.len());
            // The error is the one of the message where it stopped.
            assert_eq!(peek_frame(&buf[sum..], max_len).as_ref(), Err(e));
        }
    }

    // Replay the stream in chunks, framing after every read as the proxy does:
    // the same messages come out, and the same error, if any.
    let mut inbox: Vec<u8> = Vec::new();
    let mut replayed: Vec<(u8, usize)> = Vec::new();
    let mut replay_err: Option<FrameError> = None;
    'read: for piece in buf.chunks(chunk) {
        inbox.extend_from_slice(piece);
        loop {
            match peek_frame(&inbox, max_len) {
                Ok(Some((tag, total))) => {
                    assert!(total <= inbox.len());
                    replayed.push((tag, total));
                    inbox.drain(..total);
                }
                Ok(None) => {
                    assert!(missing_bytes(&inbox) > 0);
                    break;
                }
                Err(e) => {
                    replay_err = Some(e);
                    break 'read;
                }
            }
        }
    }
    assert_eq!(replayed, visited, "chunked framing differs from scan");
    assert_eq!(replay_err, result.err());

    for tag in [buf.first().copied().unwrap_or(0), ctl as u8] {
        assert_eq!(is_frontend_type(tag), FRONTEND.contains(&tag), "is_frontend_type({tag:#x})");
        assert_eq!(is_backend_type(tag), BACKEND.contains(&tag), "is_backend_type({tag:#x})");
        let small = b"CDEHSXcf".contains(&tag);
        assert_eq!(frontend_limit(tag) == SMALL_MESSAGE_LIMIT, small, "frontend_limit({tag:#x})");
        assert!(small || frontend_limit(tag) == usize::MAX);
    }
    // a ReadyForQuery is valid only as a whole 6-byte message with status I, T or E
    assert_eq!(
        valid_ready(buf),
        buf.len() == 6 && b"ITE".contains(&buf[5]),
        "valid_ready({buf:?})"
    );
});

fn check_peek(buf: &[u8], max_len: usize) {
    let missing = missing_bytes(buf);
    match peek_frame(buf, max_len) {
        Ok(Some((tag, total))) => {
            assert_eq!(tag, buf[0]);
            assert!(total >= HEADER_LEN && total <= buf.len());
            let field = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            assert_eq!(field + 1, total);
            assert_eq!(missing, 0);
        }
        Ok(None) => {
            assert!(missing > 0, "peek_frame wants more bytes but missing_bytes is 0");
            if buf.len() < HEADER_LEN {
                assert_eq!(missing, HEADER_LEN - buf.len());
            }
        }
        Err(FrameError::BadLength(len)) => {
            assert!(buf.len() >= HEADER_LEN && len < 4);
            assert_eq!(len, u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]));
        }
        Err(FrameError::TooLarge { len, max }) => {
            assert!(buf.len() >= HEADER_LEN && len > max && max == max_len);
        }
        Err(FrameError::UnknownType(t)) => panic!("peek_frame checks no types, got UnknownType({t})"),
        Err(FrameError::BadReady) => panic!("peek_frame checks no message contents, got BadReady"),
    }
}
