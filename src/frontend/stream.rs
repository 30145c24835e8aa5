//! A client socket that is either plain TCP or TLS after an SSLRequest.

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client connection, plain or encrypted.
#[derive(Debug)]
pub enum ClientStream {
    /// plain TCP
    Plain(TcpStream),
    /// TLS over TCP
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    /// True after a TLS handshake.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// The TCP socket's descriptor (under TLS too).
    #[cfg(unix)]
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            ClientStream::Plain(s) => s.as_raw_fd(),
            ClientStream::Tls(s) => s.get_ref().0.as_raw_fd(),
        }
    }
}

/// Resolves once the client has closed its end of the socket (or the
/// socket failed), without reading anything it sent: for waits that do not
/// read the client (a paused pool), so that a client that gave up leaves.
/// Watches a duplicate of the descriptor, registered on its own; `None`
/// when that cannot be had.
#[cfg(unix)]
pub fn hangup(fd: std::os::fd::RawFd) -> Option<impl std::future::Future<Output = ()>> {
    use tokio::io::Interest;
    // SAFETY: `fd` is the session's own client socket, open while the
    // session (which awaits the returned future) lives
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let dup = rustix::io::dup(fd).ok()?;
    let socket = TcpStream::from_std(std::net::TcpStream::from(dup)).ok()?;
    Some(async move {
        loop {
            match socket.ready(Interest::READABLE).await {
                Ok(r) if !r.is_read_closed() => {
                    // bytes to read, which are the session's: wait for
                    // the next event (the socket is edge-triggered)
                    let _ = socket.try_io(Interest::READABLE, || {
                        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                    });
                }
                _ => return,
            }
        }
    })
}

forward_read!(ClientStream[Plain, Tls]);
forward_write!(ClientStream[Plain, Tls]);

/// The read half of a client connection.
pub enum ClientReader {
    /// plain TCP: no lock between the halves
    Plain(tokio::net::tcp::OwnedReadHalf),
    /// TLS: the halves share the session state
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of a client connection.
pub enum ClientWriter {
    /// plain TCP
    Plain(tokio::net::tcp::OwnedWriteHalf),
    /// TLS
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

impl ClientStream {
    /// Splits the connection so that reading and writing can wait at once.
    pub fn into_split(self) -> (ClientReader, ClientWriter) {
        match self {
            ClientStream::Plain(s) => {
                let (r, w) = s.into_split();
                (ClientReader::Plain(r), ClientWriter::Plain(w))
            }
            ClientStream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ClientReader::Tls(r), ClientWriter::Tls(w))
            }
        }
    }
}

forward_read!(ClientReader[Plain, Tls]);

impl ClientWriter {
    /// The TCP socket when no TLS is in between (for non-blocking writes).
    pub fn plain(&self) -> Option<&tokio::net::tcp::OwnedWriteHalf> {
        match self {
            ClientWriter::Plain(w) => Some(w),
            ClientWriter::Tls(_) => None,
        }
    }
}

forward_write!(ClientWriter[Plain, Tls]);
