//! Enums of sockets (plain or TLS clients, TCP or Unix-domain servers) that
//! read and write as the socket of whichever variant they hold.

/// `$e` with `$s` bound to the socket of whichever of the variants `$v`
/// of `$t` `$this` is.
macro_rules! on_variant {
    ($t:ident [$($v:ident),+], $this:expr, $s:ident => $e:expr) => {
        match $this {
            $($t::$v($s) => $e,)+
        }
    };
}

/// AsyncRead for an enum of sockets, forwarded to the variant's socket.
macro_rules! forward_read {
    ($t:ident [$($v:ident),+]) => {
        impl tokio::io::AsyncRead for $t {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                on_variant!($t [$($v),+], self.get_mut(), s => std::pin::Pin::new(s).poll_read(cx, buf))
            }
        }
    };
}

/// AsyncWrite for an enum of sockets, forwarded to the variant's socket.
macro_rules! forward_write {
    ($t:ident [$($v:ident),+]) => {
        impl tokio::io::AsyncWrite for $t {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                on_variant!($t [$($v),+], self.get_mut(), s => std::pin::Pin::new(s).poll_write(cx, buf))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                on_variant!($t [$($v),+], self.get_mut(), s => std::pin::Pin::new(s).poll_flush(cx))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                on_variant!($t [$($v),+], self.get_mut(), s => std::pin::Pin::new(s).poll_shutdown(cx))
            }
            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                on_variant!($t [$($v),+], self.get_mut(), s => std::pin::Pin::new(s).poll_write_vectored(cx, bufs))
            }
            fn is_write_vectored(&self) -> bool {
                on_variant!($t [$($v),+], self, s => s.is_write_vectored())
            }
        }
    };
}
