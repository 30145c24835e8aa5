//! The extended-protocol decoders and rewriters pgsift applies to client
//! messages (`protocol::extended`, the statement mapping of
//! `frontend::pipeline`, the cache's batch recogniser): Parse, Bind,
//! Describe and Close bodies from an arbitrary client, and the check that
//! decides which unnamed statements may be kept prepared, and the one that
//! decides which batches may go to a multiplexed server.
//!
//! Input: a client byte stream. Every framed message in it is decoded; the
//! whole input is also decoded as the body of one message whose type is its
//! first byte (so the decoders see bodies the framing would not reach).
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgsift::frontend::caching::extended_read;
use pgsift::frontend::pipeline::{plannable, shared_name, Pipeline};
use pgsift::nplus1::example::with_values;
use pgsift::protocol::extended::{
    bind_params, bind_statement, bind_values_hash, build_parse, build_target, parse_parse,
    rebuild_bind, target,
};
use pgsift::protocol::frame::scan;

const NEW_NAME: &str = "pgsift_0123456789abcdef";

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = BytesMut::with_capacity(body.len() + 5);
    m.put_u8(tag);
    m.put_u32((body.len() + 4) as u32);
    m.put_slice(body);
    m.to_vec()
}

fn check(msg: &[u8]) {
    if let Some(p) = parse_parse(msg) {
        // renaming keeps the text and parameter types
        let renamed = build_parse(NEW_NAME, &p);
        let again = parse_parse(&renamed).expect("a rebuilt Parse decodes");
        assert_eq!(again.name, NEW_NAME.as_bytes());
        assert_eq!(again.query, p.query);
        assert_eq!(again.param_types, p.param_types);
        assert_eq!(renamed.len(), 1 + u32::from_be_bytes(renamed[1..5].try_into().unwrap()) as usize);
        assert!(shared_name(p.query, p.param_types).starts_with("pgsift_"));
        // the keyword check never panics and agrees with a plain reading
        let _ = plannable(p.query);
    }
    if let Some((stmt, after)) = bind_statement(msg) {
        assert!(after <= msg.len());
        assert_eq!(&msg[after - stmt.len() - 1..after - 1], stmt);
        let rebuilt = rebuild_bind(msg, NEW_NAME).expect("a decodable Bind rebuilds");
        let (new_stmt, new_after) = bind_statement(&rebuilt).expect("a rebuilt Bind decodes");
        assert_eq!(new_stmt, NEW_NAME.as_bytes());
        // portal and everything after the statement name are untouched
        assert_eq!(&rebuilt[new_after..], &msg[after..]);
        assert_eq!(&rebuilt[5..new_after - NEW_NAME.len() - 1], &msg[5..after - stmt.len() - 1]);
        assert_eq!(rebuilt.len(), 1 + u32::from_be_bytes(rebuilt[1..5].try_into().unwrap()) as usize);
        // the values' hash reads only the values: the same for the rebuilt message
        assert_eq!(bind_values_hash(msg, after), bind_values_hash(&rebuilt, new_after));
        // the values, as an N+1 example shows them in a text with placeholders
        if let Some(params) = bind_params(msg, after) {
            if bind_values_hash(msg, after).is_some() {
                assert_eq!(params.len(), u16::from_be_bytes(
                    msg[after + 2 + 2 * u16::from_be_bytes([msg[after], msg[after + 1]]) as usize..][..2]
                        .try_into()
                        .unwrap(),
                ) as usize);
            }
            let text = String::from_utf8_lossy(stmt);
            let types: Vec<u32> = (0..params.len() as u32).map(|i| [0, 16, 20, 21, 23, 25, 700, 701, 2950][i as usize % 9]).collect();
            let _ = with_values(&text, &params, &types);
            let _ = with_values("SELECT $1, $2, '$3' -- $4\n, $10, $0, $99999999999999999999", &params, &types);
        }
    }
    if let Some((kind, name)) = target(msg) {
        let name = String::from_utf8_lossy(name);
        let built = build_target(msg[0], kind, &name);
        let (k2, n2) = target(&built).expect("a built Describe/Close decodes");
        assert_eq!(k2, kind);
        // a NUL-free name survives
        if !name.contains('\0') {
            assert_eq!(n2, name.as_bytes());
        }
    }
}

/// What `plannable` should say: the first word after whitespace (Postgres's:
/// vertical tab too), comments (`--` to a newline or carriage return, nested
/// `/* */`) and opening parentheses is one of the statements Postgres plans.
fn plannable_reference(q: &[u8]) -> bool {
    let mut i = 0;
    loop {
        match (q.get(i), q.get(i + 1)) {
            (Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' | b'('), _) => i += 1,
            (Some(b'-'), Some(b'-')) => {
                while i < q.len() && q[i] != b'\n' && q[i] != b'\r' {
                    i += 1;
                }
            }
            (Some(b'/'), Some(b'*')) => {
                let mut depth = 0;
                while i < q.len() {
                    if q[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if q[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            _ => break,
        }
    }
    let word: Vec<u8> = q[i.min(q.len())..]
        .iter()
        .copied()
        .take_while(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80)
        .collect();
    ["select", "insert", "update", "delete", "merge", "with", "values", "table"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k.as_bytes()))
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // every framed message of the stream
    let _ = scan(data, 1 << 20, |_, msg| check(msg));
    // the whole input as one message body
    let one = message(data[0], &data[1..]);
    check(&one);
    for tag in [b'P', b'B', b'D', b'C'] {
        check(&message(tag, &data[1..]));
    }
    assert_eq!(plannable(data), plannable_reference(data), "{:?}", String::from_utf8_lossy(data));
    // the multiplexing check, after the stream's named Parses were recorded
    let chunk = Bytes::copy_from_slice(data);
    let mut pipeline = Pipeline::new(true, true);
    let _ = scan(data, 1 << 20, |tag, msg| {
        if tag == b'P' {
            pipeline.register_parse(msg);
        }
    });
    if let Some(b) = pipeline.mux_request(&chunk) {
        assert!(!b.needs.is_empty() && b.needs.len() <= 4);
        // every part is one whole message; the last is the Sync
        for part in &b.batch {
            assert!(part.len() >= 5);
            assert_eq!(part.len(), 1 + u32::from_be_bytes(part[1..5].try_into().unwrap()) as usize);
        }
        assert_eq!(b.batch.last().map(|m| m[0]), Some(b'S'));
    }
    // the cache's recogniser of a cacheable batch
    if let Some(read) = extended_read(&chunk) {
        if let Some(parse) = &read.parse {
            assert!(parse_parse(parse).is_some());
        }
    }
});
