//! The client listener: accepts connections, enforces `max_client_conn`, and
//! runs each client's handshake (startup and authentication under the login
//! timeout), login and session in its own task. Stops accepting when
//! shutdown begins.

use super::handshake::{admit, answer_ssl_request, handshake, HandshakeEnd};
use super::session::Session;
use super::stream::ClientStream;
use crate::app::App;
use crate::protocol::messages::{self, Severity};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// Accepts clients until shutdown begins.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    app.listening.store(true, Ordering::Relaxed);
    let mut shutdown = app.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "accept failed");
                crate::timer::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        socket.set_nodelay(true).ok();
        crate::backend::socket::keepalive(&socket);
        let app = app.clone();
        match app.try_client_slot() {
            Some(slot) => {
                tokio::spawn(async move {
                    let _slot = slot;
                    let _counted = app.client_connected();
                    serve_client(app, socket, peer).await;
                });
            }
            None => {
                tokio::spawn(async move { refuse_too_many(app, socket).await });
            }
        }
    }
    tracing::info!("stopped accepting clients");
}

async fn serve_client(app: Arc<App>, socket: TcpStream, peer: std::net::SocketAddr) {
    let login_timeout = app.config().pool.client_login_timeout;
    // Like Postgres at authentication_timeout, a client that has not
    // authenticated in time is closed without a word: it may be in the
    // middle of an exchange where an ErrorResponse is not expected. The wait
    // for a server after that has limits and errors of its own.
    let handshake = handshake(&app, ClientStream::Plain(socket));
    let login = match crate::timer::timeout(login_timeout, handshake).await {
        Err(_) => {
            tracing::info!(client = %peer, "client did not log in within client_login_timeout");
            return;
        }
        Ok(Ok(client)) => admit(&app, client).await,
        Ok(Err(end)) => Err(end),
    };
    let login = match login {
        Err(HandshakeEnd::Done) => return,
        Err(HandshakeEnd::Admin(admin)) => {
            tracing::info!(client = %peer, user = %admin.user, "admin console login");
            crate::admin::console::run(app, *admin).await;
            return;
        }
        Err(HandshakeEnd::Refused(code, msg)) => {
            tracing::info!(client = %peer, code = %code, "login refused: {msg}");
            return;
        }
        Ok(login) => login,
    };
    tracing::debug!(client = %peer, user = %login.client.user, database = %login.client.database, application = %login.client.application_name, "client logged in");
    let info = app.registry.add(
        peer,
        &login.client.user,
        &login.client.database,
        &login.client.application_name,
    );
    let span = tracing::info_span!(
        "client",
        conn = info.id,
        addr = %peer,
        database = %info.database,
        user = %info.user,
        application = %info.application
    );
    Session::run(app.clone(), login, info.clone())
        .instrument(span)
        .await;
    app.registry.remove(info.id);
}

/// Over max_client_conn: read the startup packet (so the client is listening)
/// and answer with Postgres's own 53300 error, inside TLS when the client
/// asked for it and TLS is configured (as Postgres does: a client that
/// requires TLS would otherwise report a server without SSL rather than
/// the limit). A CancelRequest is honoured
/// all the same, as Postgres does (it reads cancel packets before it checks
/// its connection limit): the clients that fill the limit are the ones
/// whose queries may need cancelling.
async fn refuse_too_many(app: Arc<App>, socket: TcpStream) {
    let timeout = app.config().pool.client_login_timeout;
    let _ = crate::timer::timeout(timeout, async {
        let mut stream = ClientStream::Plain(socket);
        let mut len = [0u8; 4];
        loop {
            stream.read_exact(&mut len).await?;
            let n = crate::protocol::startup::body_len(len).map_err(std::io::Error::other)?;
            let mut body = vec![0u8; n];
            stream.read_exact(&mut body).await?;
            match crate::protocol::startup::parse(&body) {
                Ok(crate::protocol::startup::StartupPacket::SslRequest) => {
                    match answer_ssl_request(&app, stream).await {
                        Some((s, _)) => stream = s,
                        None => return Ok(()),
                    }
                }
                Ok(crate::protocol::startup::StartupPacket::GssEncRequest) => {
                    stream.write_all(b"N").await?
                }
                Ok(crate::protocol::startup::StartupPacket::Cancel { pid, secret }) => {
                    // nothing is sent back for a cancel request
                    app.cancels.cancel(pid, &secret).await;
                    return Ok(());
                }
                _ => break,
            }
        }
        // (counted here: a cancel request over the limit is no refusal)
        app.metrics.error("too_many_clients");
        let err =
            messages::error_bytes(Severity::Fatal, "53300", "sorry, too many clients already");
        stream.write_all(&err).await?;
        stream.flush().await
    })
    .await;
}
