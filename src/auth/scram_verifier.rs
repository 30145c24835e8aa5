//! Postgres's stored SCRAM-SHA-256 verifier format:
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64).

use base64::{engine::general_purpose::STANDARD, Engine};

/// A decoded SCRAM-SHA-256 verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count
    pub iterations: usize,
    /// salt bytes
    pub salt: Vec<u8>,
    /// SHA256(ClientKey)
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key")
    pub server_key: Vec<u8>,
}

impl ScramVerifier {
    /// Decodes a verifier string, naming what is wrong with a bad one.
    pub fn parse(s: &str) -> Result<ScramVerifier, String> {
        let bad = || {
            "invalid SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)".to_string()
        };
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iter, salt) = params.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let iterations: usize = iter.parse().map_err(|_| bad())?;
        let dec = |x: &str| STANDARD.decode(x).map_err(|_| bad());
        let v = ScramVerifier {
            iterations,
            salt: dec(salt)?,
            stored_key: dec(stored)?,
            server_key: dec(server)?,
        };
        if v.iterations == 0 || v.stored_key.len() != 32 || v.server_key.len() != 32 {
            return Err(bad());
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_generated_verifier_decodes() {
        // SELECT rolpassword for a role whose password is 'blogpw'
        let v = ScramVerifier::parse("SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$6o6fEsiTSFwaTPGOfK4GC0JjrP2ZImKMUU/sStYjZP4=:qH7OTPTnv/ZjPVJ7T3LZi/Pw/ZkQr+K6vqbTsFTGaXc=").unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt, b"saltsaltsaltsalt");
    }

    #[test]
    fn truncated_verifier_is_rejected() {
        assert!(ScramVerifier::parse("SCRAM-SHA-256$4096:abc").is_err());
    }
}
