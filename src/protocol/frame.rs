//! Header-only framing: a message is a type byte and a big-endian length that
//! counts itself. The forwarding path only ever looks at these five bytes, so
//! DataRow and CopyData bodies are never decoded or copied.

/// Bytes in a message header: the type byte and the 4-byte length.
pub const HEADER_LEN: usize = 5;

/// The longest message pgsift accepts from a server. Postgres's own limit
/// on a field is 1 GiB; anything near this is a broken or hostile upstream,
/// whose bytes must not be buffered without bound.
pub const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// Why a byte stream cannot be framed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is smaller than the length field itself.
    #[error("invalid message length {0}")]
    BadLength(u32),
    /// The message is longer than the configured maximum.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// announced length
        len: usize,
        /// configured limit
        max: usize,
    },
    /// A ReadyForQuery without its one status byte, or with a status no
    /// server sends.
    #[error("invalid ReadyForQuery message")]
    BadReady,
    /// A type byte that this side of the protocol never sends.
    #[error("invalid message type \"{}\"", char::from(*.0).escape_default())]
    UnknownType(u8),
}

/// Looks at the start of `buf` and, if a whole message is buffered, returns
/// its type byte and its total size including the header. `Ok(None)` means
/// more bytes are needed; nothing is consumed either way.
#[inline]
pub fn peek_frame(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let len = len as usize;
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let total = len + 1;
    if buf.len() < total {
        Ok(None)
    } else {
        Ok(Some((buf[0], total)))
    }
}

/// How many more bytes are needed before the message at the start of `buf`
/// is complete (a hint for reserving buffer space); 0 when unknown.
#[inline]
pub fn missing_bytes(buf: &[u8]) -> usize {
    if buf.len() < HEADER_LEN {
        return HEADER_LEN - buf.len();
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    (len + 1).saturating_sub(buf.len())
}

/// True for the message types a frontend may send after startup.
/// PasswordMessage (`p`) is not one of them: it belongs to authentication,
/// and Postgres ends a session that sends it later.
#[inline]
pub fn is_frontend_type(tag: u8) -> bool {
    matches!(
        tag,
        b'B' | b'C' | b'd' | b'c' | b'f' | b'D' | b'E' | b'H' | b'F' | b'P' | b'Q' | b'S' | b'X'
    )
}

/// Postgres's limit on the length (the length field's value) of a frontend
/// message that carries no data: Close, Describe, Execute, Flush, Sync,
/// Terminate, CopyDone and CopyFail. A server closes a connection that sends
/// a longer one, without a word, so pgsift refuses it first.
pub const SMALL_MESSAGE_LIMIT: usize = 10_000;

/// The most bytes (the length field's value) Postgres accepts in a frontend
/// message of type `tag`: [`SMALL_MESSAGE_LIMIT`] for the small ones,
/// otherwise no limit of its own beyond the configured maximum.
#[inline]
pub fn frontend_limit(tag: u8) -> usize {
    match tag {
        b'C' | b'D' | b'E' | b'H' | b'S' | b'X' | b'c' | b'f' => SMALL_MESSAGE_LIMIT,
        _ => usize::MAX,
    }
}

/// True when `msg`, a whole ReadyForQuery, has its one status byte and the
/// status is one Postgres sends (`I`, `T`, `E`).
#[inline]
pub fn valid_ready(msg: &[u8]) -> bool {
    msg.len() == 6 && matches!(msg[5], b'I' | b'T' | b'E')
}

/// True for the message types a backend may send.
#[inline]
pub fn is_backend_type(tag: u8) -> bool {
    matches!(
        tag,
        b'R' | b'K'
            | b'2'
            | b'3'
            | b'C'
            | b'd'
            | b'c'
            | b'G'
            | b'H'
            | b'W'
            | b'D'
            | b'I'
            | b'E'
            | b'V'
            | b'n'
            | b'N'
            | b'A'
            | b't'
            | b'S'
            | b'1'
            | b's'
            | b'Z'
            | b'T'
            | b'v'
    )
}

/// Walks every complete message at the start of `buf`, calling `visit` with
/// the type byte and the whole message, and returns how many bytes they span.
/// Stops at the first incomplete message. Used by tests and the fuzzer.
pub fn scan<F>(buf: &[u8], max_len: usize, mut visit: F) -> Result<usize, FrameError>
where
    F: FnMut(u8, &[u8]),
{
    let mut pos = 0;
    while let Some((tag, total)) = peek_frame(&buf[pos..], max_len)? {
        visit(tag, &buf[pos..pos + total]);
        pos += total;
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_header_needs_more_bytes() {
        assert_eq!(peek_frame(b"Q\0\0", 100), Ok(None));
        assert_eq!(missing_bytes(b"Q\0\0"), 2);
    }

    #[test]
    fn complete_message_is_framed_by_header_only() {
        let msg = b"Q\0\0\0\x09abc\0rest";
        assert_eq!(peek_frame(msg, 100), Ok(Some((b'Q', 10))));
    }

    #[test]
    fn length_below_four_is_rejected() {
        assert_eq!(
            peek_frame(b"Q\0\0\0\x03", 100),
            Err(FrameError::BadLength(3))
        );
    }

    #[test]
    fn oversized_length_is_rejected_before_buffering() {
        let msg = [b'd', 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            peek_frame(&msg, 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn scan_stops_at_partial_message() {
        let buf = b"S\0\0\0\x04H\0\0\0\x04Q\0\0";
        let mut tags = vec![];
        let used = scan(buf, 100, |t, _| tags.push(t)).unwrap();
        assert_eq!(tags, vec![b'S', b'H']);
        assert_eq!(used, 10);
    }
}
