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
