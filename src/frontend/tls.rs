//! Client-facing TLS with rustls: the acceptor built from the configured PEM
//! certificate chain and private key, and the SCRAM authenticator bound to
//! that certificate (SCRAM-SHA-256-PLUS).

use crate::config::TlsConfig;
use anyhow::Context;
use pgwire::api::auth::sasl::scram::ScramServerAuth;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// Client-facing TLS as one configuration: the acceptor, and the SCRAM
/// authenticator for channel binding to its certificate. Taken together,
/// so that a reload between a client's TLS handshake and its
/// authentication cannot bind it to another certificate.
#[derive(Clone)]
pub struct ClientTls {
    /// accepts TLS connections
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// SCRAM with `tls-server-end-point` channel binding to the
    /// certificate; `None` when its signature algorithm defines no hash
    /// for that binding (then only SCRAM-SHA-256 is offered, as Postgres
    /// does)
    pub binding: Option<ScramServerAuth>,
}

/// Builds the acceptor and the channel-binding authenticator, both from
/// one reading of the certificate file (a file replaced in between must not
/// give the binding another certificate than the one TLS presents).
pub fn client_tls(cfg: &TlsConfig) -> anyhow::Result<ClientTls> {
    let pem = read_cert(cfg)?;
    let acceptor = acceptor_from(cfg, &pem)?;
    let mut scram = ScramServerAuth::new();
    let binding = scram.configure_certificate(&pem).ok().map(|()| scram);
    Ok(ClientTls { acceptor, binding })
}

fn read_cert(cfg: &TlsConfig) -> anyhow::Result<Vec<u8>> {
    std::fs::read(&cfg.cert).with_context(|| format!("tls.cert: cannot read \"{}\"", cfg.cert))
}

/// Builds the TLS acceptor. An error starts with the key of the file that
/// is wrong (`tls.cert: …`, `tls.key: …`), so config validation reports it
/// as it is.
pub fn acceptor(cfg: &TlsConfig) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    acceptor_from(cfg, &read_cert(cfg)?)
}

fn acceptor_from(cfg: &TlsConfig, cert_pem: &[u8]) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls.cert: invalid PEM in \"{}\"", cfg.cert))?;
    if certs.is_empty() {
        anyhow::bail!("tls.cert: no PEM certificate in \"{}\"", cfg.cert);
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .with_context(|| format!("tls.key: cannot read a private key from \"{}\"", cfg.key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("tls: protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                anyhow::anyhow!("tls.cert: invalid certificate in \"{}\": {e}", cfg.cert)
            }
            rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
                "tls.key: the key in \"{}\" does not match the certificate in \"{}\"",
                cfg.key,
                cfg.cert
            ),
            e => anyhow::anyhow!("tls.key: unusable private key in \"{}\": {e}", cfg.key),
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
