//! The startup packet: the only untyped message in the protocol. It opens
//! every connection as a protocol version request, an SSL or GSSAPI
//! encryption request, or a cancel request.

/// Longest startup packet accepted, as in Postgres (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// A decoded startup packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// SSLRequest: the client asks for TLS before the real startup packet.
    SslRequest,
    /// GSSENCRequest: the client asks for GSSAPI encryption.
    GssEncRequest,
    /// CancelRequest with the key the client got in BackendKeyData.
    Cancel {
        /// process id half of the key
        pid: i32,
        /// secret half of the key (4 bytes in protocol 3.0, longer in 3.2)
        secret: Vec<u8>,
    },
    /// StartupMessage with its protocol version and parameters.
    Startup {
        /// major protocol version (always 3: others are refused)
        major: u16,
        /// minor protocol version
        minor: u16,
        /// name/value pairs in the order sent
        params: Vec<(String, String)>,
    },
}

/// Why a startup packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    /// The length word is outside 8..=10,000.
    #[error("invalid length of startup packet")]
    BadLength,
    /// The body is not a well-formed list of name/value strings.
    #[error("invalid startup packet layout: expected terminator as last byte")]
    BadLayout,
    /// A parameter name or value is not valid UTF-8.
    #[error("invalid byte sequence in startup packet")]
    BadEncoding,
    /// A cancel request of the wrong size.
    #[error("invalid length of cancel request")]
    BadCancel,
    /// A protocol version other than 3.x (checked before the parameters).
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol {
        /// major version asked for
        major: u16,
        /// minor version asked for
        minor: u16,
    },
}

impl StartupError {
    /// The SQLSTATE Postgres refuses such a packet with.
    pub fn code(&self) -> &'static str {
        match self {
            StartupError::BadEncoding => "22021",
            StartupError::UnsupportedProtocol { .. } => "0A000",
            _ => "08P01",
        }
    }
}

/// Validates the length word that opens a startup packet and returns the
/// number of body bytes that follow it.
pub fn body_len(len_word: [u8; 4]) -> Result<usize, StartupError> {
    let len = u32::from_be_bytes(len_word) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(StartupError::BadLength);
    }
    Ok(len - 4)
}

/// Decodes a startup packet body (everything after the length word).
pub fn parse(body: &[u8]) -> Result<StartupPacket, StartupError> {
    if body.len() < 4 {
        return Err(StartupError::BadLength);
    }
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            if rest.len() < 8 || rest.len() > 4 + 256 {
                return Err(StartupError::BadCancel);
            }
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            Ok(StartupPacket::Cancel {
                pid,
                secret: rest[4..].to_vec(),
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            // as in Postgres: the version first, then the layout
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupPacket::Startup {
                major,
                minor,
                params: parse_params(rest)?,
            })
        }
    }
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        match rest {
            [0] => return Ok(params),
            // an empty name is the terminator, which must be the last byte
            [] | [0, ..] => return Err(StartupError::BadLayout),
            _ => {}
        }
        let (name, after) = take_cstr(rest)?;
        let (value, after) = take_cstr(after)?;
        params.push((name, value));
        rest = after;
    }
}

fn take_cstr(buf: &[u8]) -> Result<(String, &[u8]), StartupError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::BadLayout)?;
    let s = std::str::from_utf8(&buf[..end]).map_err(|_| StartupError::BadEncoding)?;
    Ok((s.to_owned(), &buf[end + 1..]))
}

/// Splits the `options` startup parameter (`-c name=value --name=value`)
/// into settings, honouring backslash escapes of spaces as libpq does.
pub fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
        } else if let Some(s) = w.strip_prefix("--") {
            Some(s.to_owned())
        } else {
            w.strip_prefix("-c").map(str::to_owned)
        };
        if let Some((k, v)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut b = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in params {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn startup_message_yields_version_and_params() {
        let p = parse(&startup(&[("user", "blog"), ("database", "blog")])).unwrap();
        assert_eq!(
            p,
            StartupPacket::Startup {
                major: 3,
                minor: 0,
                params: vec![
                    ("user".into(), "blog".into()),
                    ("database".into(), "blog".into())
                ]
            }
        );
    }

    #[test]
    fn missing_terminator_is_rejected() {
        let mut b = startup(&[("user", "x")]);
        b.pop();
        assert_eq!(parse(&b), Err(StartupError::BadLayout));
    }

    #[test]
    fn an_empty_parameter_name_before_the_last_byte_is_rejected() {
        let mut b = 196_608u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"user\0bob\0\0x\0\0");
        assert_eq!(parse(&b), Err(StartupError::BadLayout));
    }

    #[test]
    fn an_unsupported_protocol_version_is_refused_before_its_layout_is_read() {
        let mut b = (2u32 << 16).to_be_bytes().to_vec();
        b.extend_from_slice(b"user\0");
        assert_eq!(
            parse(&b).unwrap_err().to_string(),
            "unsupported frontend protocol 2.0: server supports 3.0 to 3.0"
        );
    }

    #[test]
    fn lengths_outside_postgres_limits_are_rejected() {
        assert_eq!(body_len(3u32.to_be_bytes()), Err(StartupError::BadLength));
        assert_eq!(
            body_len(20_000u32.to_be_bytes()),
            Err(StartupError::BadLength)
        );
        assert_eq!(body_len(8u32.to_be_bytes()), Ok(4));
    }

    #[test]
    fn ssl_and_cancel_requests_are_recognised() {
        assert_eq!(
            parse(&SSL_REQUEST.to_be_bytes()),
            Ok(StartupPacket::SslRequest)
        );
        let mut c = CANCEL_REQUEST.to_be_bytes().to_vec();
        c.extend_from_slice(&7i32.to_be_bytes());
        c.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            parse(&c),
            Ok(StartupPacket::Cancel {
                pid: 7,
                secret: vec![1, 2, 3, 4]
            })
        );
    }

    #[test]
    fn options_parameter_is_split_into_settings() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5s -cTimeZone=UTC"),
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("TimeZone".into(), "UTC".into())
            ]
        );
    }
}
