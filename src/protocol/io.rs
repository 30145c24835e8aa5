//! Reading whole messages from a stream during startup and authentication,
//! where message-at-a-time handling is simpler than the forwarding loop's
//! batch scanning.

use super::frame::{missing_bytes, peek_frame, FrameError};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// socket error
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// the peer sent bytes that are not a message
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// the peer closed the connection
    #[error("connection closed")]
    Eof,
}

/// Reads one complete message (type byte, length and body) into `buf` and
/// returns its type and the whole message. Bytes after it stay in `buf`.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<(u8, Bytes), ReadError> {
    loop {
        if let Some((tag, total)) = peek_frame(buf, max_len)? {
            return Ok((tag, buf.split_to(total).freeze()));
        }
        buf.reserve(missing_bytes(buf).max(1024));
        if r.read_buf(buf).await? == 0 {
            return Err(ReadError::Eof);
        }
    }
}
