//! pgsift logging in to a Postgres server: the startup message, then
//! whichever authentication the server asks for (trust, cleartext, md5,
//! SCRAM-SHA-256), then ParameterStatus and BackendKeyData up to the first
//! ReadyForQuery.

use crate::protocol::io::{read_message, ReadError};
use crate::protocol::messages::{parse_error_fields, ErrorFields};
use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// The password pgsift presents upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSecret {
    /// cleartext: every method works
    Plain(String),
    /// an md5 verifier (`md5…`): enough for md5 authentication only
    Md5(String),
}

/// What the server told pgsift while it logged in.
#[derive(Debug, Clone, Default)]
pub struct ServerHello {
    /// BackendKeyData process id
    pub pid: i32,
    /// BackendKeyData secret
    pub secret: i32,
    /// ParameterStatus values
    pub params: HashMap<String, String>,
}

/// Why pgsift could not log in upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamAuthError {
    /// socket error or the server closed
    #[error("{0}")]
    Read(#[from] ReadError),
    /// the server refused with an ErrorResponse
    #[error("{}", .0.message)]
    Refused(ErrorFields),
    /// the server asked for something pgsift cannot answer
    #[error("{0}")]
    Unsupported(String),
}

const MAX_LOGIN_MESSAGE: usize = 1 << 20;

/// Performs the startup and authentication exchange on a fresh connection.
pub async fn login<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    user: &str,
    database: &str,
    secret: Option<&UpstreamSecret>,
) -> Result<ServerHello, UpstreamAuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    frontend::startup_message([("user", user), ("database", database)], &mut out)
        .map_err(|e| UpstreamAuthError::Unsupported(e.to_string()))?;
    stream.write_all(&out).await.map_err(ReadError::Io)?;
    let mut scram: Option<ScramSha256> = None;
    // the server's SASLFinal signature checked out: it knows the password
    let mut scram_verified = false;
    let mut hello = ServerHello::default();
    loop {
        let (tag, msg) = read_message(stream, rbuf, MAX_LOGIN_MESSAGE).await?;
        let body = &msg[5..];
        out.clear();
        match tag {
            b'R' => {
                if body.len() < 4 {
                    return Err(UpstreamAuthError::Unsupported(
                        "malformed authentication request".into(),
                    ));
                }
                let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let data = &body[4..];
                match code {
                    // Once SCRAM has begun, AuthenticationOk counts only
                    // after a SASLFinal with a valid server signature, as
                    // tokio-postgres insists: without one, pgsift cannot
                    // tell the server from an impostor.
                    0 if scram.is_some() && !scram_verified => {
                        return Err(UpstreamAuthError::Unsupported(
                            "server sent AuthenticationOk before completing SCRAM-SHA-256 authentication".into(),
                        ));
                    }
                    0 => {}
                    3 => {
                        let p = plain(secret, "cleartext")?;
                        frontend::password_message(p.as_bytes(), &mut out).map_err(unsupported)?;
                    }
                    5 => {
                        let salt: [u8; 4] = data.try_into().map_err(|_| {
                            UpstreamAuthError::Unsupported("malformed md5 salt".into())
                        })?;
                        let hash = match secret {
                            Some(UpstreamSecret::Plain(p)) => {
                                md5_hash(user.as_bytes(), p.as_bytes(), salt)
                            }
                            Some(UpstreamSecret::Md5(h)) => {
                                let mut v = h.as_bytes()[3..].to_vec();
                                v.extend_from_slice(&salt);
                                format!("md5{:x}", md5::compute(v))
                            }
                            None => return Err(no_password("md5")),
                        };
                        frontend::password_message(hash.as_bytes(), &mut out)
                            .map_err(unsupported)?;
                    }
                    10 => {
                        let offers_scram = data
                            .split(|&b| b == 0)
                            .any(|m| m == SCRAM_SHA_256.as_bytes());
                        if !offers_scram {
                            return Err(UpstreamAuthError::Unsupported(
                                "server offers no supported SASL mechanism".into(),
                            ));
                        }
                        let p = plain(secret, "SCRAM-SHA-256")?;
                        let s = ScramSha256::new(p.as_bytes(), ChannelBinding::unsupported());
                        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                            .map_err(unsupported)?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or_else(|| {
                            UpstreamAuthError::Unsupported("unexpected SASL continue".into())
                        })?;
                        s.update(data).map_err(unsupported)?;
                        frontend::sasl_response(s.message(), &mut out).map_err(unsupported)?;
                    }
                    12 => {
                        let s = scram.as_mut().ok_or_else(|| {
                            UpstreamAuthError::Unsupported("unexpected SASL final".into())
                        })?;
                        s.finish(data).map_err(unsupported)?;
                        scram_verified = true;
                    }
                    other => {
                        return Err(UpstreamAuthError::Unsupported(format!(
                            "unsupported authentication method {other}"
                        )));
                    }
                }
                if !out.is_empty() {
                    stream.write_all(&out).await.map_err(ReadError::Io)?;
                }
            }
            b'S' => {
                let mut parts = body.split(|&b| b == 0);
                if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                    hello.params.insert(
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    );
                }
            }
            b'K' if body.len() >= 8 => {
                hello.pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                hello.secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            }
            b'E' => return Err(UpstreamAuthError::Refused(parse_error_fields(body))),
            b'Z' => return Ok(hello),
            b'N' | b'v' => {}
            other => {
                return Err(UpstreamAuthError::Unsupported(format!(
                    "unexpected message type {} during login",
                    char::from(other).escape_default()
                )))
            }
        }
    }
}

fn unsupported(e: std::io::Error) -> UpstreamAuthError {
    UpstreamAuthError::Unsupported(e.to_string())
}

fn no_password(method: &str) -> UpstreamAuthError {
    UpstreamAuthError::Unsupported(format!(
        "server requested {method} authentication but no password is configured"
    ))
}

fn plain<'a>(
    secret: Option<&'a UpstreamSecret>,
    method: &str,
) -> Result<&'a str, UpstreamAuthError> {
    match secret {
        Some(UpstreamSecret::Plain(p)) => Ok(p),
        Some(UpstreamSecret::Md5(_)) => Err(UpstreamAuthError::Unsupported(format!(
            "server requested {method} authentication but only an md5 verifier is configured; set server_password"
        ))),
        None => Err(no_password(method)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// An authentication request message: `code` and its data.
    fn auth(code: u32, data: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&((8 + data.len()) as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(data);
        m
    }

    /// A server that runs SCRAM up to the client's final message and then
    /// says AuthenticationOk, without the SASLFinal whose signature proves
    /// that it knows the password: an impostor, refused as tokio-postgres
    /// refuses it.
    #[tokio::test]
    async fn authentication_ok_before_the_scram_server_signature_is_refused() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let fake = tokio::spawn(async move {
            let mut len = [0u8; 4];
            server.read_exact(&mut len).await.unwrap();
            let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            server.read_exact(&mut startup).await.unwrap();
            server
                .write_all(&auth(10, b"SCRAM-SHA-256\0\0"))
                .await
                .unwrap();
            let mut rbuf = BytesMut::new();
            let (tag, msg) = read_message(&mut server, &mut rbuf, 1 << 16).await.unwrap();
            assert_eq!(tag, b'p', "SASLInitialResponse");
            let first = String::from_utf8_lossy(&msg[5..]).into_owned();
            let nonce = first.rsplit("r=").next().unwrap().to_owned();
            let reply = format!("r={nonce}fake,s=c2FsdHNhbHRzYWx0c2FsdA==,i=4096");
            server.write_all(&auth(11, reply.as_bytes())).await.unwrap();
            let (tag, _) = read_message(&mut server, &mut rbuf, 1 << 16).await.unwrap();
            assert_eq!(tag, b'p', "SASLResponse");
            server.write_all(&auth(0, b"")).await.unwrap();
            server.write_all(b"Z\0\0\0\x05I").await.unwrap();
            server
        });
        let mut rbuf = BytesMut::new();
        let secret = UpstreamSecret::Plain("pw".into());
        let result = login(&mut client, &mut rbuf, "u", "db", Some(&secret)).await;
        assert!(
            matches!(result, Err(UpstreamAuthError::Unsupported(_))),
            "{result:?}"
        );
        drop(fake.await.unwrap());
    }
}
