//! A server socket: TCP, or a Unix-domain socket when the upstream host is a
//! directory. As with libpq, a host that starts with `/` names the directory
//! holding the server's socket file `.s.PGSQL.<port>`. A pgsift on the
//! database's own machine saves the TCP stack's work on every message it
//! forwards to the server that way.

use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    /// host:port
    Tcp(SocketAddr),
    /// the socket file
    Unix(Arc<Path>),
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp(a) => a.fmt(f),
            ServerAddr::Unix(p) => p.display().fmt(f),
        }
    }
}

/// True when `host` names a socket directory rather than a host.
pub fn is_socket_dir(host: &str) -> bool {
    host.starts_with('/')
}

/// The socket file of a server listening in `dir` on `port`.
pub fn socket_path(dir: &str, port: u16) -> PathBuf {
    Path::new(dir).join(format!(".s.PGSQL.{port}"))
}

/// `host:port`, or the socket file for a socket directory (for messages).
pub fn describe(host: &str, port: u16) -> String {
    if is_socket_dir(host) {
        socket_path(host, port).display().to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// A connected server socket.
#[derive(Debug)]
pub enum ServerStream {
    /// TCP (no Nagle delay)
    Tcp(TcpStream),
    /// Unix-domain socket
    Unix(UnixStream),
}

/// The read half of a server socket.
#[derive(Debug)]
pub enum ServerReader {
    /// TCP
    Tcp(tcp::OwnedReadHalf),
    /// Unix-domain socket
    Unix(unix::OwnedReadHalf),
}

/// The write half of a server socket.
#[derive(Debug)]
pub enum ServerWriter {
    /// TCP
    Tcp(tcp::OwnedWriteHalf),
    /// Unix-domain socket
    Unix(unix::OwnedWriteHalf),
}

/// Turns on TCP keepalive (with the system's timings, as Postgres and
/// PgBouncer do by default): a peer that vanished without a FIN or RST (a
/// host that died, a NAT or firewall that forgot the flow) is noticed in the
/// end instead of holding its connection, and a pool slot, for ever.
pub fn keepalive(s: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_keepalive(s, true);
}

impl ServerStream {
    /// Connects to `host` (a name, an address or a socket directory).
    pub async fn connect(host: &str, port: u16) -> io::Result<(ServerStream, ServerAddr)> {
        if is_socket_dir(host) {
            let path: Arc<Path> = socket_path(host, port).into();
            let s = UnixStream::connect(&path).await?;
            return Ok((ServerStream::Unix(s), ServerAddr::Unix(path)));
        }
        // an IPv6 address may come in brackets, as in a URL
        let name = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let s = TcpStream::connect((name, port)).await?;
        s.set_nodelay(true).ok();
        keepalive(&s);
        let peer = s.peer_addr()?;
        Ok((ServerStream::Tcp(s), ServerAddr::Tcp(peer)))
    }

    /// Connects to a server's address again (a cancel request goes over a
    /// connection of its own).
    pub async fn reconnect(addr: &ServerAddr) -> io::Result<ServerStream> {
        Ok(match addr {
            ServerAddr::Tcp(a) => ServerStream::Tcp(TcpStream::connect(a).await?),
            ServerAddr::Unix(p) => ServerStream::Unix(UnixStream::connect(p).await?),
        })
    }

    /// Splits the socket so that reading and writing can wait at once.
    pub fn into_split(self) -> (ServerReader, ServerWriter) {
        match self {
            ServerStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ServerReader::Tcp(r), ServerWriter::Tcp(w))
            }
            ServerStream::Unix(s) => {
                let (r, w) = s.into_split();
                (ServerReader::Unix(r), ServerWriter::Unix(w))
            }
        }
    }
}

impl ServerReader {
    /// Reads what is there without waiting.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        on_variant!(ServerReader[Tcp, Unix], self, s => s.try_read(buf))
    }
}

/// Writes that never wait: the ones the forwarding loop makes right after
/// it produced something to send.
pub trait TryWrite {
    /// Writes what the socket takes now (`WouldBlock` when nothing).
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// The same, gathered from several buffers.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

impl TryWrite for tcp::OwnedWriteHalf {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        tcp::OwnedWriteHalf::try_write(self, buf)
    }
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        tcp::OwnedWriteHalf::try_write_vectored(self, bufs)
    }
}

impl ServerWriter {
    /// Waits until the socket takes more bytes.
    pub async fn writable(&self) -> io::Result<()> {
        on_variant!(ServerWriter[Tcp, Unix], self, s => s.writable().await)
    }
}

impl TryWrite for ServerWriter {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        on_variant!(ServerWriter[Tcp, Unix], self, s => s.try_write(buf))
    }
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        on_variant!(ServerWriter[Tcp, Unix], self, s => s.try_write_vectored(bufs))
    }
}

forward_read!(ServerStream[Tcp, Unix]);
forward_write!(ServerStream[Tcp, Unix]);
forward_read!(ServerReader[Tcp, Unix]);
forward_write!(ServerWriter[Tcp, Unix]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_starting_with_a_slash_is_a_socket_directory() {
        assert!(is_socket_dir("/var/run/postgresql"));
        assert!(!is_socket_dir("127.0.0.1"));
        assert!(!is_socket_dir("db.internal"));
        assert_eq!(
            socket_path("/var/run/postgresql", 5433),
            PathBuf::from("/var/run/postgresql/.s.PGSQL.5433")
        );
        assert_eq!(describe("/tmp", 5432), "/tmp/.s.PGSQL.5432");
        assert_eq!(describe("db", 6543), "db:6543");
    }

    #[tokio::test]
    async fn a_unix_socket_carries_bytes_both_ways_through_the_halves() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path().to_str().unwrap(), 7777);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 5];
            tokio::io::AsyncReadExt::read_exact(&mut s, &mut b)
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut s, &b)
                .await
                .unwrap();
        });
        let (stream, addr) = ServerStream::connect(dir.path().to_str().unwrap(), 7777)
            .await
            .unwrap();
        assert_eq!(addr, ServerAddr::Unix(path.clone().into()));
        let (mut r, w) = stream.into_split();
        // a fresh socket's buffer takes five bytes at once
        assert_eq!(TryWrite::try_write(&w, b"hello").unwrap(), 5);
        let mut back = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut r, &mut back)
            .await
            .unwrap();
        assert_eq!(&back, b"hello");
        echo.await.unwrap();
    }
}
