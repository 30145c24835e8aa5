//! Client authentication: pgsift plays the server. SCRAM-SHA-256 is the
//! default (plaintext passwords and SCRAM verifiers), md5 is used when only an
//! md5 verifier is configured. Unknown users go through a mock SCRAM exchange
//! so that they fail exactly like a wrong password, as in Postgres.

use super::scram_verifier::ScramVerifier;
use crate::config::{Password, UserConfig};
use crate::protocol::io::{read_message, ReadError};
use crate::protocol::messages;
use bytes::BytesMut;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramSecret, ScramServerAuth};
use pgwire::error::PgWireError;
use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

const SCRAM_ITERATIONS: usize = 4096;
/// Authentication messages are small; anything bigger is an attack.
const MAX_AUTH_MESSAGE: usize = 8192;

/// What pgsift checks a client's login against.
#[derive(Clone)]
enum Secret {
    Trust,
    Scram {
        salt: Vec<u8>,
        iterations: usize,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
    },
    Md5 {
        /// hex(md5(password || user))
        inner: String,
    },
}

/// The login secrets of every configured user, derived once per config
/// (PBKDF2 is deliberately slow, so it is not run per login).
#[derive(Clone, Default)]
pub struct Credentials {
    secrets: HashMap<String, Secret>,
}

impl Credentials {
    /// Derives the secrets of all users.
    pub fn new<'a>(users: impl IntoIterator<Item = &'a UserConfig>) -> Credentials {
        let secrets = users
            .into_iter()
            .map(|u| {
                let s = match &u.password {
                    None => Secret::Trust,
                    Some(Password::Plain(p)) => {
                        let salt: [u8; 16] = rand::random();
                        let salted = gen_salted_password(p, &salt, SCRAM_ITERATIONS);
                        scram_from_salted(salt.to_vec(), salted, SCRAM_ITERATIONS)
                    }
                    Some(Password::Scram(v)) => match ScramVerifier::parse(v) {
                        Ok(v) => Secret::Scram {
                            salt: v.salt,
                            iterations: v.iterations,
                            stored_key: v.stored_key,
                            server_key: v.server_key,
                        },
                        Err(_) => mock_secret(&u.name),
                    },
                    Some(Password::Md5(h)) => Secret::Md5 {
                        inner: h[3..].to_owned(),
                    },
                };
                (u.name.clone(), s)
            })
            .collect();
        Credentials { secrets }
    }

    /// True when the user is configured.
    pub fn knows(&self, user: &str) -> bool {
        self.secrets.contains_key(user)
    }
}

fn scram_from_salted(salt: Vec<u8>, salted: Vec<u8>, iterations: usize) -> Secret {
    match ScramSecret::verifier_from_salted_password(salt, salted, iterations) {
        ScramSecret::Verifier {
            salt,
            iterations,
            stored_key,
            server_key,
        } => Secret::Scram {
            salt,
            iterations,
            stored_key,
            server_key,
        },
        ScramSecret::SaltedPassword { .. } => mock_secret(""),
    }
}

/// A secret no password matches: unknown users fail like wrong passwords.
/// Its salt is the same at every login of `user`, as a configured user's
/// is: a fresh one each time would tell a client which users exist (as
/// in Postgres, which derives it from the user name and a nonce of the
/// cluster).
fn mock_secret(user: &str) -> Secret {
    Secret::Scram {
        salt: mock_salt(user),
        iterations: SCRAM_ITERATIONS,
        stored_key: rand::random::<[u8; 32]>().to_vec(),
        server_key: rand::random::<[u8; 32]>().to_vec(),
    }
}

/// HMAC-SHA-256 of the user name under a key drawn once per process,
/// cut to the length of a real salt.
fn mock_salt(user: &str) -> Vec<u8> {
    static KEY: std::sync::OnceLock<ring::hmac::Key> = std::sync::OnceLock::new();
    let key = KEY
        .get_or_init(|| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &rand::random::<[u8; 32]>()));
    ring::hmac::sign(key, user.as_bytes()).as_ref()[..16].to_vec()
}

/// Why a client could not log in.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    /// wrong password or unknown user (28P01)
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    /// malformed authentication exchange (08P01)
    #[error("{0}")]
    Protocol(String),
    /// the socket failed or the client went away
    #[error("{0}")]
    Read(#[from] ReadError),
}

impl ClientAuthError {
    /// SQLSTATE for the ErrorResponse the client gets.
    pub fn code(&self) -> &'static str {
        match self {
            ClientAuthError::Failed(_) => "28P01",
            ClientAuthError::Protocol(_) | ClientAuthError::Read(_) => "08P01",
        }
    }
}

/// Runs the authentication exchange for `user` and writes AuthenticationOk on
/// success. Failure messages are left to the caller. `binding`: SCRAM bound
/// to the certificate of the client's TLS session, if it has one; then
/// SCRAM-SHA-256-PLUS is offered too, as Postgres does over TLS.
pub async fn authenticate<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    creds: &Credentials,
    user: &str,
    binding: Option<&ScramServerAuth>,
) -> Result<(), ClientAuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let secret = creds
        .secrets
        .get(user)
        .cloned()
        .unwrap_or_else(|| mock_secret(user));
    let known = creds.knows(user);
    let mut out = BytesMut::new();
    match secret {
        Secret::Trust => {}
        Secret::Md5 { inner } => {
            let salt: [u8; 4] = rand::random();
            messages::auth_md5(&mut out, salt);
            stream.write_all(&out).await.map_err(ReadError::Io)?;
            out.clear();
            let body = read_password_message(stream, rbuf).await?;
            let got = body.strip_suffix(&[0]).unwrap_or(&body);
            let mut salted = inner.into_bytes();
            salted.extend_from_slice(&salt);
            let expected = format!("md5{:x}", md5::compute(salted));
            if got != expected.as_bytes() || !known {
                return Err(ClientAuthError::Failed(user.to_owned()));
            }
        }
        Secret::Scram {
            salt,
            iterations,
            stored_key,
            server_key,
        } => {
            let mechanisms: &[&str] = match binding {
                Some(_) => &[SCRAM_PLUS, SCRAM],
                None => &[SCRAM],
            };
            messages::auth_sasl(&mut out, mechanisms);
            stream.write_all(&out).await.map_err(ReadError::Io)?;
            out.clear();
            let body = read_password_message(stream, rbuf).await?;
            let first = sasl_initial_response(&body, mechanisms)?;
            // over TLS the bound authenticator checks the client's flag
            // either way: `y` (the client thinks the server cannot bind)
            // is a downgrade there
            let server = binding.cloned().unwrap_or_default();
            let secret = ScramSecret::Verifier {
                salt,
                iterations,
                stored_key,
                server_key,
            };
            let (server_first, waiting) = server
                .on_client_first_message_with_secret(first, secret)
                .map_err(|e| ClientAuthError::Protocol(format!("malformed SCRAM message: {e}")))?;
            messages::auth_sasl_continue(&mut out, server_first.as_bytes());
            stream.write_all(&out).await.map_err(ReadError::Io)?;
            out.clear();
            let final_msg = read_password_message(stream, rbuf).await?;
            match waiting.on_client_final_message(&final_msg) {
                Ok(server_final) if known => {
                    messages::auth_sasl_final(&mut out, server_final.as_bytes());
                }
                Ok(_) | Err(PgWireError::InvalidPassword(_)) => {
                    return Err(ClientAuthError::Failed(user.to_owned()))
                }
                Err(e) => {
                    return Err(ClientAuthError::Protocol(format!(
                        "malformed SCRAM message: {e}"
                    )))
                }
            }
        }
    }
    messages::auth_ok(&mut out);
    stream.write_all(&out).await.map_err(ReadError::Io)?;
    Ok(())
}

/// Reads a PasswordMessage / SASLResponse and returns its body.
async fn read_password_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
) -> Result<Vec<u8>, ClientAuthError> {
    let (tag, msg) = read_message(stream, rbuf, MAX_AUTH_MESSAGE).await?;
    if tag != b'p' {
        return Err(ClientAuthError::Protocol(format!(
            "expected password response, got message type {}",
            char::from(tag).escape_default()
        )));
    }
    Ok(msg[5..].to_vec())
}

const SCRAM: &str = "SCRAM-SHA-256";
const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// Splits SASLInitialResponse into mechanism and data, checking that the
/// mechanism is one of those `offered` and that the client's channel-binding
/// flag goes with it: `p` with the -PLUS mechanism, and only with it.
fn sasl_initial_response<'a>(
    body: &'a [u8],
    offered: &[&str],
) -> Result<&'a [u8], ClientAuthError> {
    let bad = || ClientAuthError::Protocol("malformed SASLInitialResponse".into());
    let nul = body.iter().position(|&b| b == 0).ok_or_else(bad)?;
    let mechanism = &body[..nul];
    if !offered.iter().any(|m| m.as_bytes() == mechanism) {
        return Err(ClientAuthError::Protocol(
            "client selected an invalid SASL authentication mechanism".into(),
        ));
    }
    let rest = &body[nul + 1..];
    if rest.len() < 4 {
        return Err(bad());
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err(bad());
    }
    let plus = mechanism == SCRAM_PLUS.as_bytes();
    if plus != data.starts_with(b"p=") {
        return Err(ClientAuthError::Protocol(if plus {
            "malformed SCRAM message: channel binding is required with SCRAM-SHA-256-PLUS".into()
        } else {
            "malformed SCRAM message: channel binding data without SCRAM-SHA-256-PLUS".into()
        }));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
        let mut b = mechanism.as_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(&(data.len() as i32).to_be_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn the_channel_binding_flag_goes_with_the_mechanism() {
        let both = [SCRAM_PLUS, SCRAM];
        let bound = b"p=tls-server-end-point,,n=,r=abc";
        let unbound = b"n,,n=,r=abc";
        assert!(sasl_initial_response(&initial(SCRAM_PLUS, bound), &both).is_ok());
        assert!(sasl_initial_response(&initial(SCRAM, unbound), &both).is_ok());
        assert!(sasl_initial_response(&initial(SCRAM, b"y,,n=,r=abc"), &both).is_ok());
        // binding data under the plain mechanism, or none under -PLUS
        assert!(sasl_initial_response(&initial(SCRAM, bound), &both).is_err());
        assert!(sasl_initial_response(&initial(SCRAM_PLUS, unbound), &both).is_err());
        // -PLUS where it was not offered (no TLS)
        assert!(sasl_initial_response(&initial(SCRAM_PLUS, bound), &[SCRAM]).is_err());
    }

    /// Starts a SCRAM login of `user` and returns the salt of the server's
    /// first message.
    async fn salt_offered(creds: &Credentials, user: &str) -> String {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let creds = creds.clone();
        let user = user.to_owned();
        let login = tokio::spawn(async move {
            let mut rbuf = BytesMut::new();
            let _ = authenticate(&mut server, &mut rbuf, &creds, &user, None).await;
        });
        let mut rbuf = BytesMut::new();
        let (tag, _) = read_message(&mut client, &mut rbuf, 1 << 16).await.unwrap();
        assert_eq!(tag, b'R', "AuthenticationSASL");
        let first = b"n,,n=,r=clientnonce";
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&(first.len() as i32).to_be_bytes());
        body.extend_from_slice(first);
        let mut msg = vec![b'p'];
        msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        msg.extend_from_slice(&body);
        client.write_all(&msg).await.unwrap();
        let (tag, msg) = read_message(&mut client, &mut rbuf, 1 << 16).await.unwrap();
        assert_eq!(tag, b'R', "AuthenticationSASLContinue");
        let text = String::from_utf8(msg[9..].to_vec()).unwrap();
        // the client leaves: the exchange ends with a read error
        drop(client);
        let _ = login.await;
        text.split(',')
            .find_map(|f| f.strip_prefix("s="))
            .unwrap()
            .to_owned()
    }

    #[tokio::test]
    async fn an_unknown_users_salt_is_the_same_at_every_login() {
        let users = [UserConfig {
            name: "blog".into(),
            password: Some(Password::Plain("blogpw".into())),
        }];
        let creds = Credentials::new(&users);
        let known = salt_offered(&creds, "blog").await;
        assert_eq!(known, salt_offered(&creds, "blog").await);
        let unknown = salt_offered(&creds, "mallory").await;
        assert_eq!(
            unknown,
            salt_offered(&creds, "mallory").await,
            "a fresh salt per login would mark the user unknown"
        );
        assert_ne!(unknown, salt_offered(&creds, "trudy").await);
        assert_ne!(unknown, known);
        // as long as a real one
        assert_eq!(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &unknown)
                .unwrap()
                .len(),
            16
        );
    }
}
