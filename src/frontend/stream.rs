//! A client socket that is either plain TCP or TLS after an SSLRequest.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

/// `$e` with `$s` bound to the socket of whichever variant `$this` is.
macro_rules! on_socket {
    ($t:ident, $this:expr, $s:ident => $e:expr) => {
        match $this {
            $t::Plain($s) => $e,
            $t::Tls($s) => $e,
        }
    };
}

/// AsyncRead for an enum of sockets, forwarded to the variant's socket.
macro_rules! forward_read {
    ($t:ident) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                on_socket!($t, self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
            }
        }
    };
}

/// AsyncWrite for an enum of sockets, forwarded to the variant's socket.
macro_rules! forward_write {
    ($t:ident) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                on_socket!($t, self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                on_socket!($t, self.get_mut(), s => Pin::new(s).poll_flush(cx))
            }
            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                on_socket!($t, self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
            }
            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                on_socket!($t, self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
            }
            fn is_write_vectored(&self) -> bool {
                on_socket!($t, self, s => s.is_write_vectored())
            }
        }
    };
}

forward_read!(ClientStream);
forward_write!(ClientStream);

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

forward_read!(ClientReader);

impl ClientWriter {
    /// The TCP socket when no TLS is in between (for non-blocking writes).
    pub fn plain(&self) -> Option<&tokio::net::tcp::OwnedWriteHalf> {
        match self {
            ClientWriter::Plain(w) => Some(w),
            ClientWriter::Tls(_) => None,
        }
    }
}

forward_write!(ClientWriter);
