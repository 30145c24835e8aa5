//! The startup handshake of a client connection: SSLRequest / GSSENCRequest,
//! CancelRequest, protocol version negotiation, the startup parameters,
//! authentication, and the greeting (ParameterStatus, BackendKeyData,
//! ReadyForQuery). [`handshake`] (startup and authentication) runs under
//! the login timeout; [`admit`] (the wait for a server, the greeting) does
//! not: the pool's own timeouts bound it, and their errors reach the client.

use super::session::ServerState;
use super::stream::ClientStream;
use crate::app::App;
use crate::auth::client::{authenticate, ClientAuthError};
use crate::backend::{Checkout, Pool, PoolError};
use crate::config::{PoolMode, TlsMode};
use crate::protocol::io::ReadError;
use crate::protocol::messages::{self, Severity};
use crate::protocol::startup::{self, StartupPacket};
use bytes::BytesMut;
use pgwire::api::auth::sasl::scram::ScramServerAuth;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Startup parameters that are not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Settings Postgres takes whatever their value (it cleans up an odd
/// application_name rather than refuse it): no login needs a server to try
/// them, however many different values clients send.
const ALWAYS_ACCEPTED: &[&str] = &["application_name"];

/// A client that has authenticated, before it gets a server and its
/// greeting.
pub struct Authenticated {
    /// the socket, possibly TLS
    pub stream: ClientStream,
    /// bytes already read past authentication
    pub rbuf: BytesMut,
    /// role name
    pub user: String,
    /// client-facing database name
    pub database: String,
    /// application_name at startup
    pub application_name: String,
    /// the client's own settings (startup parameters and `options -c`)
    pub settings: Vec<(String, String)>,
    /// the pool serving this client
    pub pool: Arc<Pool>,
}

/// A client that has logged in.
pub struct Login {
    /// who it is, its socket and its pool
    pub client: Authenticated,
    /// the server of a session-mode client, held from login on
    pub server: Option<Checkout>,
    /// the key given in BackendKeyData
    pub cancel_key: (i32, i32),
    /// where the client's server is, for cancel requests
    pub cancel: Arc<super::cancel::CancelTarget>,
}

/// Why a handshake ended without a login. The client has been told.
#[derive(Debug)]
pub enum HandshakeEnd {
    /// a cancel request was handled, or the client left
    Done,
    /// refused with an ErrorResponse
    Refused(String, String),
    /// an admin logged in to the `pgsift` console database
    Admin(Box<AdminLogin>),
}

/// An admin logged in to the console.
#[derive(Debug)]
pub struct AdminLogin {
    /// the socket
    pub stream: ClientStream,
    /// bytes read past the handshake
    pub rbuf: BytesMut,
    /// who
    pub user: String,
}

/// The name of the admin console's virtual database.
pub const ADMIN_DATABASE: &str = "pgsift";

async fn refuse(stream: &mut ClientStream, code: &str, message: String) -> HandshakeEnd {
    let err = messages::error_bytes(Severity::Fatal, code, &message);
    let _ = stream.write_all(&err).await;
    let _ = stream.flush().await;
    HandshakeEnd::Refused(code.to_owned(), message)
}

/// Answers an SSLRequest: `S` and the TLS handshake when TLS is configured
/// and the connection is still plain, else `N`. Returns the stream and, for
/// a TLS session, the SCRAM authenticator bound to its certificate; `None`
/// when the client is gone or its TLS handshake failed.
pub async fn answer_ssl_request(
    app: &App,
    stream: ClientStream,
) -> Option<(ClientStream, Option<ScramServerAuth>)> {
    let (tls, mut tcp) = match (app.client_tls(), stream) {
        (Some(t), ClientStream::Plain(tcp)) => (t, tcp),
        (_, mut stream) => {
            stream.write_all(b"N").await.ok()?;
            return Some((stream, None));
        }
    };
    tcp.write_all(b"S").await.ok()?;
    match tls.acceptor.accept(tcp).await {
        Ok(conn) => Some((ClientStream::Tls(Box::new(conn)), tls.binding)),
        Err(e) => {
            tracing::info!(error = %e, "client TLS handshake failed");
            None
        }
    }
}

/// Runs startup and authentication on a fresh connection.
pub async fn handshake(
    app: &Arc<App>,
    mut stream: ClientStream,
) -> Result<Authenticated, HandshakeEnd> {
    let config = app.config();
    let tls_mode = config
        .tls
        .as_ref()
        .map(|t| t.mode)
        .unwrap_or(TlsMode::Disable);
    // SCRAM bound to the certificate of this client's TLS session, if any
    let mut binding = None;
    let (minor, params) = loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).await.is_err() {
            return Err(HandshakeEnd::Done);
        }
        let body_len = match startup::body_len(len) {
            Ok(n) => n,
            Err(e) => return Err(refuse(&mut stream, "08P01", e.to_string()).await),
        };
        let mut body = vec![0u8; body_len];
        if stream.read_exact(&mut body).await.is_err() {
            return Err(HandshakeEnd::Done);
        }
        match startup::parse(&body) {
            Err(e) => return Err(refuse(&mut stream, e.code(), e.to_string()).await),
            Ok(StartupPacket::SslRequest) => match answer_ssl_request(app, stream).await {
                Some((s, b)) => {
                    stream = s;
                    binding = b;
                }
                None => return Err(HandshakeEnd::Done),
            },
            Ok(StartupPacket::GssEncRequest) => {
                if stream.write_all(b"N").await.is_err() {
                    return Err(HandshakeEnd::Done);
                }
            }
            Ok(StartupPacket::Cancel { pid, secret }) => {
                app.cancels.cancel(pid, &secret).await;
                return Err(HandshakeEnd::Done);
            }
            Ok(StartupPacket::Startup { minor, params, .. }) => break (minor, params),
        }
    };

    let unrecognized: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    if minor > 0 || !unrecognized.is_empty() {
        let mut b = BytesMut::new();
        messages::negotiate_protocol_version(&mut b, 0, &unrecognized);
        if stream.write_all(&b).await.is_err() {
            return Err(HandshakeEnd::Done);
        }
    }

    let lookup: HashMap<&str, &str> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let Some(user) = lookup
        .get("user")
        .map(|s| s.to_string())
        .filter(|u| !u.is_empty())
    else {
        return Err(refuse(
            &mut stream,
            "28000",
            "no PostgreSQL user name specified in startup packet".into(),
        )
        .await);
    };
    let database = lookup
        .get("database")
        .filter(|d| !d.is_empty())
        .map(|s| s.to_string())
        .unwrap_or_else(|| user.clone());
    if lookup
        .get("replication")
        .is_some_and(|r| !matches!(*r, "false" | "off" | "no" | "0"))
    {
        return Err(refuse(
            &mut stream,
            "08P01",
            "pgsift does not proxy replication connections".into(),
        )
        .await);
    }
    if tls_mode == TlsMode::Require && !stream.is_tls() {
        return Err(refuse(
            &mut stream,
            "28000",
            format!("pgsift requires TLS: connection for user \"{user}\", database \"{database}\" is not encrypted"),
        )
        .await);
    }

    let mut settings: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_."))
        .cloned()
        .collect();
    if let Some(opts) = lookup.get("options") {
        settings.extend(startup::parse_options(opts));
    }
    let application_name = lookup
        .get("application_name")
        .map(|s| s.to_string())
        .unwrap_or_default();

    let mut rbuf = BytesMut::with_capacity(8192);
    let creds = app.credentials();
    if let Err(e) = authenticate(&mut stream, &mut rbuf, &creds, &user, binding.as_ref()).await {
        return Err(match e {
            // a malformed or oversized message gets 08P01 (SPEC §11); only
            // a client that is gone hears nothing
            ClientAuthError::Read(ReadError::Frame(e)) => {
                app.metrics.error("client_protocol");
                refuse(&mut stream, "08P01", e.to_string()).await
            }
            ClientAuthError::Read(_) => HandshakeEnd::Done,
            e => {
                app.metrics.error("auth");
                refuse(&mut stream, e.code(), e.to_string()).await
            }
        });
    }

    if database == ADMIN_DATABASE {
        if !config.admin_users.contains(&user) {
            return Err(refuse(
                &mut stream,
                "28000",
                format!("user \"{user}\" is not allowed into the pgsift admin console"),
            )
            .await);
        }
        return Err(HandshakeEnd::Admin(Box::new(AdminLogin {
            stream,
            rbuf,
            user,
        })));
    }

    let Some(pool) = app.pool(&database, &user) else {
        return Err(refuse(
            &mut stream,
            "3D000",
            format!("database \"{database}\" does not exist"),
        )
        .await);
    };
    Ok(Authenticated {
        stream,
        rbuf,
        user,
        database,
        application_name,
        settings,
        pool,
    })
}

/// Most bytes an authenticated client may send ahead while it waits for a
/// server; beyond them pgsift stops reading (and watching) it until the
/// wait ends.
const AHEAD_WHILE_WAITING: usize = 1 << 20;

/// Waits for a server of `pool` while watching the client: one that leaves
/// (EOF, a socket error) gives up its place in the queue (`None`), instead
/// of holding its client slot while a paused pool waits without limit.
/// What the client sends meanwhile (a first query it did not wait to send)
/// is kept in `rbuf`.
async fn checkout_watching(
    pool: &Arc<Pool>,
    stream: &mut ClientStream,
    rbuf: &mut BytesMut,
) -> Option<Result<Checkout, PoolError>> {
    let checkout = pool.checkout();
    tokio::pin!(checkout);
    while rbuf.len() < AHEAD_WHILE_WAITING {
        tokio::select! {
            co = &mut checkout => return Some(co),
            // cancel-safe: bytes are in rbuf once the read returns
            read = stream.read_buf(rbuf) => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
    Some(checkout.await)
}

/// Gives an authenticated client its server (session mode) and its
/// greeting. The wait for a server is bounded by `checkout_timeout` and
/// `connect_timeout`, and their errors (53300, 08006) reach the client.
pub async fn admit(app: &Arc<App>, client: Authenticated) -> Result<Login, HandshakeEnd> {
    let Authenticated {
        mut stream,
        mut rbuf,
        user,
        database,
        application_name,
        settings,
        pool,
    } = client;
    // A session-mode client holds a server from now on; a transaction-mode
    // client needs one only to learn the server's parameters the first time,
    // and to try settings no server of the pool has accepted yet: one that
    // the server refuses fails the login, as it would in Postgres, rather
    // than the client's first statement.
    let mode = pool.settings().mode;
    let defaults = pool.defaults();
    let mut server = None;
    let mut reported: HashMap<String, String> = (*defaults).clone();
    let tried = || {
        settings
            .iter()
            .filter(|(k, _)| !ALWAYS_ACCEPTED.iter().any(|a| a.eq_ignore_ascii_case(k)))
    };
    // (the trial of new settings only takes a server that is free at once:
    // a login must not wait, or fail with 53300, for want of one; the first
    // statement tries them otherwise)
    let trial = || !pool.settings_accepted(tried()) && pool.has_free_slot();
    if mode == PoolMode::Session || defaults.is_empty() || trial() {
        let mut co = match checkout_watching(&pool, &mut stream, &mut rbuf).await {
            Some(Ok(co)) => co,
            Some(Err(e)) => return Err(refuse(&mut stream, &e.code(), e.to_string()).await),
            None => return Err(HandshakeEnd::Done),
        };
        if let Err(e) = co.server.sync_settings(&settings, &pool.defaults()).await {
            let code = e.code();
            pool.checkin_after_sync_error(co, &e);
            return Err(refuse(&mut stream, &code, e.to_string()).await);
        }
        pool.note_accepted_settings(&co.server, tried());
        reported = co.server.params.clone();
        if mode == PoolMode::Session {
            server = Some(co);
        } else {
            pool.checkin(co);
        }
    } else {
        for (k, v) in &settings {
            if let Some(slot) = reported
                .iter_mut()
                .find(|(rk, _)| rk.eq_ignore_ascii_case(k))
                .map(|(_, v)| v)
            {
                *slot = v.clone();
            }
        }
    }

    let (cancel_key, cancel) = app.cancels.issue();
    if let Some(co) = &server {
        cancel.set(co.server.addr.clone(), co.server.pid, co.server.secret);
    }
    let mut greeting = BytesMut::with_capacity(512);
    let mut names: Vec<&String> = reported.keys().collect();
    names.sort();
    for k in names {
        messages::parameter_status(&mut greeting, k, &reported[k]);
    }
    messages::backend_key_data(&mut greeting, cancel_key.0, cancel_key.1);
    messages::ready_for_query(&mut greeting, b'I');
    if stream.write_all(&greeting).await.is_err() || stream.flush().await.is_err() {
        app.cancels.remove(cancel_key);
        if let Some(co) = server {
            super::session::return_server(&pool, co, ServerState::idle(), PoolMode::Session).await;
        }
        return Err(HandshakeEnd::Done);
    }
    Ok(Login {
        client: Authenticated {
            stream,
            rbuf,
            user,
            database,
            application_name,
            settings,
            pool,
        },
        server,
        cancel_key,
        cancel,
    })
}
