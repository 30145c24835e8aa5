//! One connection to a Postgres server: its split socket, its read buffer,
//! what the server reported (ParameterStatus, BackendKeyData) and what pgsift
//! changed on it, plus the few statements pgsift runs itself (parameter sync,
//! ROLLBACK, DISCARD ALL).

use super::socket::{ServerAddr, ServerReader, ServerStream, ServerWriter};
use crate::auth::upstream::{login, UpstreamAuthError, UpstreamSecret};
use crate::protocol::frame::{FrameError, MAX_SERVER_MESSAGE};
use crate::protocol::io::{read_message, ReadError};
use crate::protocol::messages::{self, parse_error_fields, ErrorFields};
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Where and as whom a pool logs in upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// server host name or address, or (starting with `/`) the directory
    /// of its Unix-domain socket
    pub host: String,
    /// server port
    pub port: u16,
    /// upstream database name
    pub dbname: String,
    /// upstream role
    pub user: String,
    /// upstream password, if any
    pub secret: Option<UpstreamSecret>,
}

/// Why a server connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// could not connect or log in within connect_timeout
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    /// socket-level failure
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        /// host:port or socket file
        addr: String,
        /// cause
        source: std::io::Error,
    },
    /// login refused or failed
    #[error("{0}")]
    Login(#[from] UpstreamAuthError),
    /// a statement pgsift ran failed
    #[error("{}", .0.message)]
    Statement(ErrorFields),
    /// a RESET pgsift ran to bring the server back to the pool's defaults
    /// (no client asked for it) failed: the server is in a state pgsift
    /// cannot undo and is closed
    #[error("could not reset the server's session: {}", .0.message)]
    Reset(ErrorFields),
    /// the connection broke
    #[error("server connection lost: {0}")]
    Read(#[from] ReadError),
    /// a statement pgsift ran got no answer in time: the server (or the
    /// network to it) is stuck, and the connection is no longer usable
    #[error("server did not answer within {0:?}")]
    Unresponsive(Duration),
    /// no attempt was made: the last one failed moments ago, and pgsift
    /// waits (backoff) before it tries again; the client gets that
    /// attempt's error, with its SQLSTATE
    #[error("{last} (the last server connection attempt failed; pgsift tries again in {} ms)", .retry_in.as_millis())]
    BackingOff {
        /// SQLSTATE of the last attempt's error
        code: String,
        /// the last attempt's error
        last: String,
        /// until the next attempt
        retry_in: Duration,
    },
}

/// How long a statement pgsift runs itself on a server (settings, ROLLBACK,
/// DISCARD ALL, DEALLOCATE) may take. Each is quick; a server that has not
/// answered by then is stuck, and waiting longer would hold its client and
/// its pool slot.
pub const OWN_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The same for pgsift's catalog queries (the cache's function facts),
/// which read more.
pub const OWN_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

impl ServerError {
    /// The SQLSTATE a client should see for this failure.
    pub fn code(&self) -> String {
        match self {
            ServerError::Login(UpstreamAuthError::Refused(f))
            | ServerError::Statement(f)
            | ServerError::Reset(f) => f.code.clone(),
            ServerError::BackingOff { code, .. } => code.clone(),
            _ => "08006".to_owned(),
        }
    }
}

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// A logged-in server connection.
#[derive(Debug)]
pub struct ServerConnection {
    /// process-unique id for logs and SHOW SERVERS
    pub id: u64,
    /// socket read half
    pub reader: ServerReader,
    /// socket write half
    pub writer: ServerWriter,
    /// bytes read from the server not yet handled
    pub rbuf: BytesMut,
    /// server address (for cancel requests)
    pub addr: ServerAddr,
    /// BackendKeyData process id
    pub pid: i32,
    /// BackendKeyData secret
    pub secret: i32,
    /// ParameterStatus values as the server last reported them
    pub params: HashMap<String, String>,
    /// settings pgsift changed with set_config (lower-case name → value)
    pub applied: HashMap<String, String>,
    /// the explicit settings (as [`settings_key`]) this server was last
    /// brought in line with; `None` after anything that may have changed its
    /// settings since (a ParameterStatus, a DISCARD, a client's SET)
    pub synced: Option<u64>,
    /// when the connection was opened
    pub created: Instant,
    /// when it was last returned to the pool
    pub last_used: Instant,
    /// pgsift's shared prepared statements on this server
    pub prepared: super::prepared::PreparedOnServer,
    /// shared statements whose cached plan went stale: closed on the
    /// server before the next client batch
    pub stale_statements: Vec<std::sync::Arc<str>>,
    /// the client (its pipeline's number) whose unnamed statement the
    /// server may hold: another client's use of the unnamed statement must
    /// not find it (0: none; [`ANOTHER_CLIENT`]: not known whose)
    pub unnamed_of: u64,
    /// which of its pool's upstream targets it was opened to (a reload
    /// that moves the pool's database makes the older ones obsolete)
    pub target_generation: u64,
}

/// [`ServerConnection::unnamed_of`] when the server may hold an unnamed
/// statement of a client not known.
pub const ANOTHER_CLIENT: u64 = u64::MAX;

impl ServerConnection {
    /// Connects and logs in, all within `timeout`.
    pub async fn connect(
        target: &UpstreamTarget,
        timeout: Duration,
    ) -> Result<ServerConnection, ServerError> {
        let addr = super::socket::describe(&target.host, target.port);
        crate::timer::timeout(timeout, Self::connect_inner(target, &addr))
            .await
            .map_err(|_| ServerError::ConnectTimeout(addr.clone()))?
    }

    async fn connect_inner(
        target: &UpstreamTarget,
        addr: &str,
    ) -> Result<ServerConnection, ServerError> {
        let (mut stream, peer) = ServerStream::connect(&target.host, target.port)
            .await
            .map_err(|source| ServerError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let mut rbuf = BytesMut::with_capacity(16 * 1024);
        let hello = login(
            &mut stream,
            &mut rbuf,
            &target.user,
            &target.dbname,
            target.secret.as_ref(),
        )
        .await?;
        let (reader, writer) = stream.into_split();
        let now = Instant::now();
        Ok(ServerConnection {
            id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
            reader,
            writer,
            rbuf,
            addr: peer,
            pid: hello.pid,
            secret: hello.secret,
            params: hello.params,
            applied: HashMap::new(),
            synced: None,
            created: now,
            last_used: now,
            prepared: Default::default(),
            stale_statements: Vec::new(),
            unnamed_of: 0,
            target_generation: 0,
        })
    }

    /// Records a ParameterStatus body (name NUL value NUL).
    pub fn note_parameter_status(&mut self, body: &[u8]) {
        self.synced = None;
        note_parameter_status(&mut self.params, &mut self.applied, body);
    }

    /// The reported value of a parameter, matched case-insensitively.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Runs a simple query that pgsift issued itself and consumes its replies
    /// up to ReadyForQuery. Returns the transaction status. An ErrorResponse
    /// is returned as an error after the ReadyForQuery has been read, so the
    /// connection stays usable. A server that has not answered within
    /// [`OWN_STATEMENT_TIMEOUT`] is unusable ([`ServerError::Unresponsive`]).
    pub async fn run_simple(&mut self, sql: &str) -> Result<u8, ServerError> {
        crate::timer::timeout(OWN_STATEMENT_TIMEOUT, self.run_simple_unbounded(sql))
            .await
            .unwrap_or(Err(ServerError::Unresponsive(OWN_STATEMENT_TIMEOUT)))
    }

    async fn run_simple_unbounded(&mut self, sql: &str) -> Result<u8, ServerError> {
        // a simple query drops the unnamed statement
        self.unnamed_of = 0;
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        self.writer.write_all(&out).await.map_err(ReadError::Io)?;
        let mut error = None;
        loop {
            let (tag, msg) =
                read_message(&mut self.reader, &mut self.rbuf, MAX_SERVER_MESSAGE).await?;
            match tag {
                b'E' => error = Some(parse_error_fields(&msg[5..])),
                b'S' => self.note_parameter_status(&msg[5..]),
                b'C' if is_discard_tag(&msg[5..]) => self.prepared.clear(),
                b'Z' => {
                    if !crate::protocol::frame::valid_ready(&msg) {
                        return Err(ReadError::Frame(FrameError::BadReady).into());
                    }
                    let status = msg[5];
                    return match error {
                        Some(e) => Err(ServerError::Statement(e)),
                        None => Ok(status),
                    };
                }
                _ => {}
            }
        }
    }

    /// Makes the server's settings match a client's: `explicit` are the
    /// client's own settings (startup parameters, later plain SETs);
    /// everything else must be at the pool's defaults. Runs one round trip,
    /// and none when nothing differs.
    pub async fn sync_settings(
        &mut self,
        explicit: &[(String, String)],
        defaults: &Arc<HashMap<String, String>>,
    ) -> Result<(), ServerError> {
        // In transaction mode this runs on every checkout: when the server
        // was last synced to the same settings and nothing changed since,
        // there is nothing to compare.
        let key = settings_key(explicit, defaults);
        if self.synced == Some(key) {
            return Ok(());
        }
        self.synced = None;
        let is_explicit = |name: &str| explicit.iter().any(|(e, _)| e.eq_ignore_ascii_case(name));
        // what the server reports and the client did not ask for goes back
        // to the pool's defaults, each the way it can: most with a RESET of
        // its own; the role (reported through is_superuser) and the session
        // authorization with theirs. Read-only parameters (server_version,
        // in_hot_standby, …) are never reset: no statement can change them
        let mut resets: Vec<String> = Vec::new();
        for (k, v) in &self.params {
            if is_explicit(k) || defaults.get(k).is_none_or(|d| d == v) {
                continue;
            }
            match restore_reported(k) {
                Restore::Reset(name) => resets.push(name.to_owned()),
                Restore::Role if !is_explicit("role") && !is_explicit(SESSION_AUTHORIZATION) => {
                    resets.push("role".to_owned())
                }
                Restore::Role | Restore::Never => {}
            }
        }
        // the session authorization's RESET resets the role too: a role the
        // client asks for is then set again
        let auth_reset = resets.iter().any(|r| r == SESSION_AUTHORIZATION);
        let mut sets = Vec::new();
        for (k, v) in explicit {
            let lk = k.to_ascii_lowercase();
            let current = if auth_reset && lk == "role" {
                None
            } else {
                self.applied
                    .get(&lk)
                    .map(String::as_str)
                    .or_else(|| self.param(k))
            };
            if current != Some(v.as_str()) {
                sets.push((k.as_str(), v.as_str()));
            }
        }
        resets.extend(self.applied.keys().filter(|lk| !is_explicit(lk)).cloned());
        if sets.is_empty() && resets.is_empty() {
            self.synced = Some(key);
            return Ok(());
        }
        // the identity first: the RESETs after it run as the login role
        // (one of a superuser-only setting fails as any other role)
        resets.sort_by_key(|r| (r != SESSION_AUTHORIZATION, r != "role", r.clone()));
        resets.dedup();
        let mut sql = String::new();
        for r in &resets {
            sql.push_str("RESET ");
            sql.push_str(&quote_ident(r));
            sql.push(';');
        }
        if !sets.is_empty() {
            sql.push_str("SELECT ");
            for (i, (k, v)) in sets.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str("pg_catalog.set_config(");
                sql.push_str(&quote_literal(k));
                sql.push(',');
                sql.push_str(&quote_literal(v));
                sql.push_str(",false)");
            }
        }
        // boxed: rare, and it would otherwise size every session's task.
        // An error rolls back every RESET and set_config of the statement
        // (one implicit transaction): `applied` then stays as it was.
        match Box::pin(self.run_simple(&sql)).await {
            Ok(_) => {}
            Err(ServerError::Statement(e)) if !resets.is_empty() => {
                return Err(Box::pin(self.after_failed_sync(e, &resets, sets.is_empty())).await)
            }
            Err(e) => return Err(e),
        }
        self.note_resets(&resets);
        for (k, v) in sets {
            self.applied.insert(k.to_ascii_lowercase(), v.to_owned());
        }
        // what the server reported while running the SETs cleared `synced`;
        // it now holds exactly `explicit`
        self.synced = Some(key);
        Ok(())
    }

    /// `sync_settings`' statement of RESETs and set_configs failed with
    /// `error`. When only the RESETs (pgsift's own, no client asked for
    /// them) fail, the server is in a state pgsift cannot undo:
    /// [`ServerError::Reset`], and it must not serve anyone again.
    /// Otherwise the error was the client's setting's.
    async fn after_failed_sync(
        &mut self,
        error: ErrorFields,
        resets: &[String],
        only_resets: bool,
    ) -> ServerError {
        if only_resets {
            return ServerError::Reset(error);
        }
        let mut sql = String::new();
        for r in resets {
            sql.push_str("RESET ");
            sql.push_str(&quote_ident(r));
            sql.push(';');
        }
        match self.run_simple(&sql).await {
            Ok(_) => {
                self.note_resets(resets);
                ServerError::Statement(error)
            }
            Err(ServerError::Statement(e)) => ServerError::Reset(e),
            Err(e) => e,
        }
    }

    /// Settings pgsift reset are no longer its own on the server.
    fn note_resets(&mut self, resets: &[String]) {
        for r in resets {
            self.applied.remove(r);
            if r == SESSION_AUTHORIZATION {
                // its RESET resets the role too
                self.applied.remove("role");
            }
        }
    }

    /// Runs a query pgsift issued itself and returns its rows as text. A
    /// server that has not answered within [`OWN_QUERY_TIMEOUT`] is unusable
    /// ([`ServerError::Unresponsive`]).
    pub async fn query_rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        crate::timer::timeout(OWN_QUERY_TIMEOUT, self.query_rows_unbounded(sql))
            .await
            .unwrap_or(Err(ServerError::Unresponsive(OWN_QUERY_TIMEOUT)))
    }

    async fn query_rows_unbounded(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        // a simple query drops the unnamed statement
        self.unnamed_of = 0;
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        self.writer.write_all(&out).await.map_err(ReadError::Io)?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, msg) =
                read_message(&mut self.reader, &mut self.rbuf, MAX_SERVER_MESSAGE).await?;
            match tag {
                b'D' => rows.push(decode_text_row(&msg[5..])),
                b'E' => error = Some(parse_error_fields(&msg[5..])),
                b'S' => self.note_parameter_status(&msg[5..]),
                b'Z' => {
                    return match error {
                        Some(e) => Err(ServerError::Statement(e)),
                        None => Ok(rows),
                    }
                }
                _ => {}
            }
        }
    }

    /// True when the server has sent something while idle (an error before
    /// a shutdown, or EOF): such a connection must not be handed out.
    pub fn is_broken_while_idle(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self.reader.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => !self.rbuf.is_empty(),
            _ => true,
        }
    }
}

/// The setting behind `SET SESSION AUTHORIZATION`, which Postgres reports.
const SESSION_AUTHORIZATION: &str = "session_authorization";

/// How a parameter the server reports is brought back to the pool's
/// default when a client did not ask for another value.
#[derive(Debug, PartialEq, Eq)]
enum Restore {
    /// a setting any client may change: its own RESET
    Reset(&'static str),
    /// follows the role (`is_superuser`): RESET role
    Role,
    /// read-only (`server_version`, `server_encoding`, `integer_datetimes`,
    /// `in_hot_standby`) or not known to be settable: left alone, since a
    /// RESET of it would fail (and Postgres changes it only itself)
    Never,
}

/// The parameters Postgres reports (GUC_REPORT) that a client can change,
/// as lower-case names (`search_path` is reported from Postgres 18 on).
const RESETTABLE_REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "default_transaction_read_only",
    "intervalstyle",
    "scram_iterations",
    "search_path",
    SESSION_AUTHORIZATION,
    "standard_conforming_strings",
    "timezone",
];

/// How to bring the reported parameter `name` back to its default.
fn restore_reported(name: &str) -> Restore {
    if name.eq_ignore_ascii_case("is_superuser") {
        return Restore::Role;
    }
    match RESETTABLE_REPORTED
        .iter()
        .find(|r| r.eq_ignore_ascii_case(name))
    {
        Some(r) => Restore::Reset(r),
        None => Restore::Never,
    }
}

/// Identifies a client's explicit settings together with the pool's
/// defaults they are compared against (see [`ServerConnection::synced`]).
pub fn settings_key(explicit: &[(String, String)], defaults: &Arc<HashMap<String, String>>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    explicit.hash(&mut h);
    (Arc::as_ptr(defaults) as usize).hash(&mut h);
    h.finish()
}

/// Records a ParameterStatus body in a server's maps: the server now reports
/// the value itself, so pgsift's own record of it is dropped.
pub fn note_parameter_status(
    params: &mut HashMap<String, String>,
    applied: &mut HashMap<String, String>,
    body: &[u8],
) {
    let mut parts = body.split(|&b| b == 0);
    if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        let k = String::from_utf8_lossy(k).into_owned();
        let v = String::from_utf8_lossy(v).into_owned();
        applied.remove(&k.to_ascii_lowercase());
        params.insert(k, v);
    }
}

/// Decodes a DataRow body of text values.
fn decode_text_row(body: &[u8]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    if body.len() < 2 {
        return out;
    }
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut pos = 2;
    for _ in 0..n {
        let Some(len) = body.get(pos..pos + 4) else {
            break;
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        pos += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let end = (pos + len as usize).min(body.len());
        out.push(Some(String::from_utf8_lossy(&body[pos..end]).into_owned()));
        pos = end;
    }
    out
}

/// True for the CommandComplete tags after which a server holds no prepared
/// statements any more.
pub fn is_discard_tag(body: &[u8]) -> bool {
    body.starts_with(b"DISCARD ALL\0") || body.starts_with(b"DEALLOCATE ALL\0")
}

/// Quotes a string as an SQL literal.
pub fn quote_literal(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    if s.contains('\\') {
        q.push('E');
    }
    q.push('\'');
    for c in s.chars() {
        match c {
            '\'' => q.push_str("''"),
            '\\' => q.push_str("\\\\"),
            c => q.push(c),
        }
    }
    q.push('\'');
    q
}

/// Quotes an identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Sends a CancelRequest for a server process.
pub async fn send_cancel(addr: &ServerAddr, pid: i32, secret: i32) -> std::io::Result<()> {
    let mut stream = crate::timer::timeout(Duration::from_secs(5), ServerStream::reconnect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel connect timed out")
        })??;
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(pid, secret, &mut buf);
    stream.write_all(&buf).await?;
    // Postgres closes the connection after reading the request.
    let mut sink = [0u8; 16];
    let _ = crate::timer::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read(&mut stream, &mut sink),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settable_reported_parameters_are_reset() {
        assert_eq!(restore_reported("TimeZone"), Restore::Reset("timezone"));
        assert_eq!(restore_reported("DateStyle"), Restore::Reset("datestyle"));
        assert_eq!(
            restore_reported("session_authorization"),
            Restore::Reset(SESSION_AUTHORIZATION)
        );
        assert_eq!(restore_reported("is_superuser"), Restore::Role);
        for read_only in [
            "server_version",
            "server_encoding",
            "integer_datetimes",
            "in_hot_standby",
            "some_future_parameter",
        ] {
            assert_eq!(restore_reported(read_only), Restore::Never, "{read_only}");
        }
    }

    #[test]
    fn literals_are_quoted_safely() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(quote_ident("Time\"Zone"), "\"Time\"\"Zone\"");
    }
}
