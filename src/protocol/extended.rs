//! The extended-query messages pgsift rewrites in transaction mode: Parse,
//! Bind, Describe and Close carry statement names, which pgsift maps from
//! the client's names to names shared by every client on a server.
//! Decoders return `None` on a malformed body; the caller passes such a
//! message through untouched and lets the server reject it.

use bytes::{BufMut, Bytes, BytesMut};

fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}

/// The parts of a Parse message (`msg` is the whole message with header).
pub struct ParseMsg<'a> {
    /// statement name
    pub name: &'a [u8],
    /// query text
    pub query: &'a [u8],
    /// everything after the query text (parameter type count and OIDs)
    pub param_types: &'a [u8],
}

/// Decodes a Parse message.
pub fn parse_parse(msg: &[u8]) -> Option<ParseMsg<'_>> {
    let (name, rest) = cstr(msg.get(5..)?)?;
    let (query, param_types) = cstr(rest)?;
    Some(ParseMsg {
        name,
        query,
        param_types,
    })
}

/// The statement name of a Bind message and the offset where the bytes after
/// it begin.
pub fn bind_statement(msg: &[u8]) -> Option<(&[u8], usize)> {
    let body = msg.get(5..)?;
    let (_portal, rest) = cstr(body)?;
    let (stmt, _) = cstr(rest)?;
    let after = msg.len() - rest.len() + stmt.len() + 1;
    Some((stmt, after))
}

/// A hash of a Bind message's parameter values, `after` being where its
/// bytes after the statement name begin ([`bind_statement`]): each value
/// with its format (text or binary), however the message spells the
/// formats (none listed, one for all, or one each). The result formats,
/// which a driver may change between executions of the same values (a
/// prepared statement asking for binary rows), are left out. No values
/// hash to 0, as a text without literals does ([`crate::sql::shape`]): a
/// driver that sends a statement without parameters as a simple query
/// first and prepared later (psycopg 3) runs it with the same values.
/// `None` for a malformed body.
pub fn bind_values_hash(msg: &[u8], after: usize) -> Option<u64> {
    let mut b = msg.get(after..)?;
    let n_formats = take_u16(&mut b)? as usize;
    let formats = b.get(..2 * n_formats)?;
    b = &b[2 * n_formats..];
    let n_params = take_u16(&mut b)? as usize;
    if n_params == 0 {
        return Some(0);
    }
    // one one-shot hash per value, chained through the seed (cheaper than
    // a streaming hasher for the few short values of a typical Bind)
    let mut h = 0u64;
    for i in 0..n_params {
        let format = match n_formats {
            0 => 0,
            1 => u16::from_be_bytes([formats[0], formats[1]]),
            _ if i < n_formats => u16::from_be_bytes([formats[2 * i], formats[2 * i + 1]]),
            _ => return None,
        };
        let len = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
        b = &b[4..];
        let value = if len > 0 {
            let v = b.get(..len as usize)?;
            b = &b[len as usize..];
            v
        } else {
            &[]
        };
        let seed = h.rotate_left(29) ^ (u64::from(format) << 32 | u64::from(len as u32));
        h = xxhash_rust::xxh3::xxh3_64_with_seed(value, seed);
    }
    Some(h)
}

/// A bound parameter: its format code (0 text, 1 binary) and bytes
/// (`None`: NULL).
pub type BoundValue<'a> = (u16, Option<&'a [u8]>);

/// A Bind message's parameter values, `after` being where its bytes after
/// the statement name begin ([`bind_statement`]).
pub fn bind_params(msg: &[u8], after: usize) -> Option<Vec<BoundValue<'_>>> {
    let mut b = msg.get(after..)?;
    let n_formats = take_u16(&mut b)? as usize;
    let formats = b.get(..2 * n_formats)?;
    b = &b[2 * n_formats..];
    let n_params = take_u16(&mut b)? as usize;
    let mut out = Vec::with_capacity(n_params);
    for i in 0..n_params {
        let format = match n_formats {
            0 => 0,
            1 => u16::from_be_bytes([formats[0], formats[1]]),
            _ if i < n_formats => u16::from_be_bytes([formats[2 * i], formats[2 * i + 1]]),
            _ => return None,
        };
        let len = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
        b = &b[4..];
        let value = if len >= 0 {
            let v = b.get(..len as usize)?;
            b = &b[len as usize..];
            Some(v)
        } else {
            None
        };
        out.push((format, value));
    }
    Some(out)
}

fn take_u16(b: &mut &[u8]) -> Option<u16> {
    let v = u16::from_be_bytes(b.get(..2)?.try_into().ok()?);
    *b = &b[2..];
    Some(v)
}

/// The kind (`S` or `P`) and name of a Describe or Close message.
pub fn target(msg: &[u8]) -> Option<(u8, &[u8])> {
    let kind = *msg.get(5)?;
    let (name, _) = cstr(msg.get(6..)?)?;
    Some((kind, name))
}

fn finish(mut b: BytesMut) -> Bytes {
    let len = (b.len() - 1) as u32;
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// A Parse message with another statement name.
pub fn build_parse(name: &str, p: &ParseMsg<'_>) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + name.len() + p.query.len() + p.param_types.len());
    b.put_u8(b'P');
    b.put_u32(0);
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    b.put_slice(p.query);
    b.put_u8(0);
    b.put_slice(p.param_types);
    finish(b)
}

/// The Bind message `msg` with its statement name replaced.
pub fn rebuild_bind(msg: &[u8], stmt: &str) -> Option<Bytes> {
    let (old, after) = bind_statement(msg)?;
    let portal_end = after - old.len() - 1;
    let mut b = BytesMut::with_capacity(msg.len() + stmt.len());
    b.put_slice(&msg[..portal_end]);
    b.put_slice(stmt.as_bytes());
    b.put_u8(0);
    b.put_slice(&msg[after..]);
    Some(finish(b))
}

/// A Describe (`D`) or Close (`C`) message for a statement or portal.
pub fn build_target(tag: u8, kind: u8, name: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(7 + name.len());
    b.put_u8(tag);
    b.put_u32(0);
    b.put_u8(kind);
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    finish(b)
}

/// ParseComplete.
pub const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
/// CloseComplete.
pub const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::frontend;

    #[test]
    fn parse_is_decoded_and_rebuilt_with_a_new_name() {
        let mut m = BytesMut::new();
        frontend::parse("s1", "SELECT $1", [23u32], &mut m).unwrap();
        let p = parse_parse(&m).unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.query, b"SELECT $1");
        let rebuilt = build_parse("pgsift_x", &p);
        let q = parse_parse(&rebuilt).unwrap();
        assert_eq!(q.name, b"pgsift_x");
        assert_eq!(q.query, b"SELECT $1");
        assert_eq!(q.param_types, p.param_types);
        let mut expected = BytesMut::new();
        frontend::parse("pgsift_x", "SELECT $1", [23u32], &mut expected).unwrap();
        assert_eq!(&rebuilt[..], &expected[..]);
    }

    /// A Bind of `values` (text) with these parameter and result formats.
    fn bind_of(values: &[&str], formats: &[i16], results: &[i16]) -> BytesMut {
        let mut m = BytesMut::new();
        frontend::bind(
            "",
            "s",
            formats.iter().copied(),
            values.iter().copied(),
            |v: &str, buf: &mut BytesMut| {
                buf.put_slice(v.as_bytes());
                Ok::<_, Box<dyn std::error::Error + Sync + Send>>(postgres_protocol::IsNull::No)
            },
            results.iter().copied(),
            &mut m,
        )
        .map_err(|_| ())
        .unwrap();
        m
    }

    fn values_hash(m: &[u8]) -> Option<u64> {
        let (_, after) = bind_statement(m).unwrap();
        bind_values_hash(m, after)
    }

    #[test]
    fn bind_values_hash_sees_the_values_not_how_formats_are_spelled_or_rows_asked_for() {
        let plain = values_hash(&bind_of(&["7", "x"], &[], &[])).unwrap();
        assert_eq!(
            plain,
            values_hash(&bind_of(&["7", "x"], &[0], &[1])).unwrap()
        );
        assert_eq!(
            plain,
            values_hash(&bind_of(&["7", "x"], &[0, 0], &[0, 1])).unwrap()
        );
        assert_ne!(plain, values_hash(&bind_of(&["8", "x"], &[], &[])).unwrap());
        assert_ne!(
            plain,
            values_hash(&bind_of(&["7", "x"], &[1], &[])).unwrap()
        );
        // no values: 0, as for a text without literals
        assert_eq!(values_hash(&bind_of(&[], &[], &[])), Some(0));
        assert_eq!(values_hash(&bind_of(&[], &[], &[1])), Some(0));
        assert_eq!(
            crate::sql::shape::scan(b"SELECT count(*) FROM posts", None).values,
            0
        );
        // formats that do not match the values' count, a cut message
        assert_eq!(values_hash(&bind_of(&["7", "x", "y"], &[0, 0], &[])), None);
        let whole = bind_of(&["7"], &[], &[]);
        assert_eq!(values_hash(&whole[..whole.len() - 3]), None);
    }

    #[test]
    fn bind_gets_a_new_statement_name_and_keeps_everything_else() {
        let mut m = BytesMut::new();
        frontend::bind(
            "portal",
            "s1",
            [1i16],
            [7i32],
            |v: i32, buf: &mut BytesMut| {
                buf.put_i32(v);
                Ok::<_, Box<dyn std::error::Error + Sync + Send>>(postgres_protocol::IsNull::No)
            },
            [1i16],
            &mut m,
        )
        .map_err(|_| ())
        .unwrap();
        let (stmt, _) = bind_statement(&m).unwrap();
        assert_eq!(stmt, b"s1");
        let rebuilt = rebuild_bind(&m, "pgsift_abc").unwrap();
        assert_eq!(bind_statement(&rebuilt).unwrap().0, b"pgsift_abc");
        let mut expected = BytesMut::new();
        frontend::bind(
            "portal",
            "pgsift_abc",
            [1i16],
            [7i32],
            |v: i32, buf: &mut BytesMut| {
                buf.put_i32(v);
                Ok::<_, Box<dyn std::error::Error + Sync + Send>>(postgres_protocol::IsNull::No)
            },
            [1i16],
            &mut expected,
        )
        .map_err(|_| ())
        .unwrap();
        assert_eq!(&rebuilt[..], &expected[..]);
    }

    #[test]
    fn describe_and_close_targets_round_trip() {
        let d = build_target(b'D', b'S', "pgsift_1");
        assert_eq!(target(&d), Some((b'S', &b"pgsift_1"[..])));
        let mut m = BytesMut::new();
        frontend::close(b'P', "p", &mut m).unwrap();
        assert_eq!(target(&m), Some((b'P', &b"p"[..])));
    }

    #[test]
    fn truncated_messages_decode_to_none() {
        assert!(parse_parse(b"P\0\0\0\x06ab").is_none());
        assert!(bind_statement(b"B\0\0\0\x05\0").is_none());
        assert!(target(b"D\0\0\0\x04").is_none());
    }
}
