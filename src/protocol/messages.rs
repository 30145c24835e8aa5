//! Encoders for the backend messages pgsift writes itself (authentication,
//! errors, ParameterStatus, BackendKeyData, ReadyForQuery, result sets of the
//! admin console) and decoders for the few server messages it inspects.

use bytes::{BufMut, Bytes, BytesMut};

/// Starts a message: writes the tag and a placeholder length, returns the
/// offset of the length so [`finish`] can fill it in.
#[inline]
fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    at
}

#[inline]
fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside a string would end it early on the wire; drop it instead.
    buf.extend(s.bytes().filter(|&b| b != 0));
    buf.put_u8(0);
}

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// the statement failed; the session goes on
    Error,
    /// the session ends
    Fatal,
    /// informational
    Notice,
    /// informational
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
        }
    }
}

/// ErrorResponse with severity, SQLSTATE and message, as Postgres writes it.
pub fn error_response(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    report(buf, b'E', severity, code, message);
}

/// NoticeResponse (WARNING or NOTICE) with SQLSTATE and message.
pub fn notice_response(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    report(buf, b'N', severity, code, message);
}

/// The shared layout of ErrorResponse and NoticeResponse.
fn report(buf: &mut BytesMut, tag: u8, severity: Severity, code: &str, message: &str) {
    let at = begin(buf, tag);
    for field in [b'S', b'V'] {
        buf.put_u8(field);
        put_cstr(buf, severity.as_str());
    }
    buf.put_u8(b'C');
    put_cstr(buf, code);
    buf.put_u8(b'M');
    put_cstr(buf, message);
    buf.put_u8(0);
    finish(buf, at);
}

/// An ErrorResponse as a standalone buffer.
pub fn error_bytes(severity: Severity, code: &str, message: &str) -> Bytes {
    let mut b = BytesMut::new();
    error_response(&mut b, severity, code, message);
    b.freeze()
}

/// AuthenticationRequest with a sub-code and payload.
fn auth(buf: &mut BytesMut, code: u32, payload: &[u8]) {
    let at = begin(buf, b'R');
    buf.put_u32(code);
    buf.put_slice(payload);
    finish(buf, at);
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    auth(buf, 0, &[]);
}

/// AuthenticationMD5Password with its 4-byte salt.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    auth(buf, 5, &salt);
}

/// AuthenticationSASL listing the offered mechanisms.
pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let mut payload = BytesMut::new();
    for m in mechanisms {
        put_cstr(&mut payload, m);
    }
    payload.put_u8(0);
    auth(buf, 10, &payload);
}

/// AuthenticationSASLContinue carrying the server-first message.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, 11, data);
}

/// AuthenticationSASLFinal carrying the server-final message.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    auth(buf, 12, data);
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, b'S');
    put_cstr(buf, name);
    put_cstr(buf, value);
    finish(buf, at);
}

/// BackendKeyData with a 4-byte secret (protocol 3.0).
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    let at = begin(buf, b'K');
    buf.put_i32(pid);
    buf.put_i32(secret);
    finish(buf, at);
}

/// ReadyForQuery with a transaction status (`I`, `T` or `E`).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    let at = begin(buf, b'Z');
    buf.put_u8(status);
    finish(buf, at);
}

/// NegotiateProtocolVersion: the newest minor version supported and the
/// protocol options (`_pq_.*`) that were not recognised.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: u32, unrecognized: &[&str]) {
    let at = begin(buf, b'v');
    buf.put_u32(minor);
    buf.put_u32(unrecognized.len() as u32);
    for o in unrecognized {
        put_cstr(buf, o);
    }
    finish(buf, at);
}

/// RowDescription for text columns (used by the admin console).
pub fn row_description_text(buf: &mut BytesMut, columns: &[&str]) {
    let at = begin(buf, b'T');
    buf.put_u16(columns.len() as u16);
    for c in columns {
        put_cstr(buf, c);
        buf.put_u32(0); // table oid
        buf.put_u16(0); // column number
        buf.put_u32(25); // text
        buf.put_i16(-1);
        buf.put_i32(-1);
        buf.put_u16(0); // text format
    }
    finish(buf, at);
}

/// DataRow of optional text values.
pub fn data_row_text<S: AsRef<str>>(buf: &mut BytesMut, values: &[Option<S>]) {
    let at = begin(buf, b'D');
    buf.put_u16(values.len() as u16);
    for v in values {
        match v {
            Some(v) => {
                buf.put_u32(v.as_ref().len() as u32);
                buf.put_slice(v.as_ref().as_bytes());
            }
            None => buf.put_i32(-1),
        }
    }
    finish(buf, at);
}

/// CommandComplete with its tag (`SELECT 3`, `SHOW`, …).
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let at = begin(buf, b'C');
    put_cstr(buf, tag);
    finish(buf, at);
}

/// Simple Query message (used towards servers for hygiene statements).
pub fn query(buf: &mut BytesMut, sql: &str) {
    let at = begin(buf, b'Q');
    put_cstr(buf, sql);
    finish(buf, at);
}

/// The fields of an ErrorResponse or NoticeResponse that pgsift acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// S: localized severity
    pub severity: String,
    /// C: SQLSTATE
    pub code: String,
    /// M: primary message
    pub message: String,
    /// R: the server routine that raised it (never translated)
    pub routine: String,
}

/// Decodes an ErrorResponse/NoticeResponse body (after the 5-byte header).
pub fn parse_error_fields(body: &[u8]) -> ErrorFields {
    let mut out = ErrorFields::default();
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = after.iter().position(|&b| b == 0).unwrap_or(after.len());
        let value = String::from_utf8_lossy(&after[..end]).into_owned();
        match field {
            b'S' => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            b'R' => out.routine = value,
            _ => {}
        }
        rest = after.get(end + 1..).unwrap_or(&[]);
    }
    out
}

/// Reads NUL-terminated strings from a message body.
pub fn cstrings(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_round_trips_through_the_parser() {
        let mut b = BytesMut::new();
        error_response(
            &mut b,
            Severity::Fatal,
            "28P01",
            "password authentication failed",
        );
        assert_eq!(b[0], b'E');
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
        let f = parse_error_fields(&b[5..]);
        assert_eq!(f.code, "28P01");
        assert_eq!(f.severity, "FATAL");
        assert_eq!(f.message, "password authentication failed");
    }

    #[test]
    fn ready_for_query_is_six_bytes() {
        let mut b = BytesMut::new();
        ready_for_query(&mut b, b'I');
        assert_eq!(&b[..], b"Z\0\0\0\x05I");
    }
}
