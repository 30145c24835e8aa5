//! Client-facing TLS with rustls: the acceptor built from the configured PEM
//! certificate chain and private key.

use crate::config::TlsConfig;
use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// Builds the TLS acceptor, naming the file that is wrong.
pub fn acceptor(cfg: &TlsConfig) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .with_context(|| format!("tls.cert: cannot read \"{}\"", cfg.cert))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls.cert: invalid PEM in \"{}\"", cfg.cert))?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .with_context(|| format!("tls.key: cannot read a private key from \"{}\"", cfg.key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("tls: protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls: certificate and key do not match")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
