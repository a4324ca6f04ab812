//! Mutual TLS. One rustls crypto provider (ring) chosen explicitly, server
//! and client configurations from PEM files (with certificate revocation
//! lists for client certificates), the reloadable server configuration
//! (`reload`) and the accepted-connection stream (`accept`) that verifies
//! client certificates during the handshake and reads the caller's identity
//! once per connection.
//!
//! A client without a certificate, with one from another CA, or with a
//! revoked one, fails the handshake and never reaches a service; a peer whose
//! certificate expires, or that a reloaded CRL revokes, loses its open
//! connections (and so its calls and subscriptions) too (`accept`).
//!
//! [`https`] serves HTTP/1.1 over the same TLS for the FHIR door and the
//! browser view.

mod accept;
mod activity;
pub mod https;
mod limits;
mod reload;
mod standing;

pub use accept::{AuthenticatedStream, PeerInfo, incoming};
pub use activity::{CallGuard, ConnectionActivity};
pub use limits::{ConnectionLimits, HANDSHAKE_FAILURE_REASONS};
pub use reload::{Alpn, RELOAD_OUTCOMES, ServerTls, ServerTlsFiles};
pub use standing::PEER_ENDED_REASONS;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

pub use crate::crypto::{install_crypto_provider, provider};

/// PEM material of one party: its trust anchor, certificate chain and key.
#[derive(Clone, Debug)]
pub struct PemFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl PemFiles {
    /// `ca.pem`, `NAME.pem` and `NAME.key` in `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self { ca: dir.join("ca.pem"), cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
    }

    pub fn read(&self) -> Result<PemText, TlsError> {
        Ok(PemText { ca: read_text(&self.ca)?, cert: read_text(&self.cert)?, key: read_text(&self.key)? })
    }
}

/// PEM text of one party.
#[derive(Clone)]
pub struct PemText {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|error| TlsError::File { path: path.to_owned(), message: error.to_string() })
}

/// The server side: client certificates required and verified against `pem.ca`.
pub fn server_config(pem: &PemText) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_crls(pem, Vec::new())
}

/// [`server_config`] refusing client certificates that `crls` revoke. Only
/// the client's own (end-entity) certificate is checked; when CRLs are given,
/// a client certificate whose issuer has none among them is refused (fail
/// closed). A CRL past its next update still counts.
pub(crate) fn server_config_with_crls(
    pem: &PemText,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_verifier(pem, client_verifier(pem, crls)?)
}

/// The verifier of client certificates: the CA of `pem`, and `crls` (see [`server_config_with_crls`]).
fn client_verifier(
    pem: &PemText,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let config_error = |error: rustls::Error| TlsError::Config(error.to_string());
    let mut roots = RootCertStore::empty();
    for ca in certificates(&pem.ca, "CA")? {
        roots.add(ca).map_err(config_error)?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .build()
        .map_err(|error| TlsError::Config(error.to_string()))
}

fn server_config_with_verifier(
    pem: &PemText,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let config_error = |error: rustls::Error| TlsError::Config(error.to_string());
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
        .map_err(|error| TlsError::Config(format!("server key: {error}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(&pem.cert, "server certificate")?, key)
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A server that asks no client certificate (a witness: anyone may submit a
/// signed checkpoint), HTTP/1.1 only: its certificate chain and key, PEM.
pub fn server_config_without_client_auth(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let config_error = |error: rustls::Error| TlsError::Config(error.to_string());
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|error| TlsError::Config(format!("server key: {error}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(certificates(cert_pem, "server certificate")?, key)
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CRLs in a file: PEM (one or more `X509 CRL` blocks) or a single DER CRL.
pub fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes =
        std::fs::read(path).map_err(|error| TlsError::File { path: path.to_owned(), message: error.to_string() })?;
    parse_crls(&bytes).map_err(|message| TlsError::File { path: path.to_owned(), message })
}

fn parse_crls(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let is_pem = bytes.trim_ascii_start().starts_with(b"-----BEGIN");
    if !is_pem {
        // DER: an ASN.1 SEQUENCE; the verifier checks the rest when it is built.
        return match bytes.first() {
            Some(0x30) => Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]),
            _ => Err("neither a PEM nor a DER certificate revocation list".into()),
        };
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("certificate revocation list: {error}"))?;
    if crls.is_empty() {
        return Err("no PEM `X509 CRL` block found".into());
    }
    Ok(crls)
}

fn certificates(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Config(format!("{what}: {error}")))?;
    if certificates.is_empty() {
        return Err(TlsError::Config(format!("{what}: no PEM certificate found")));
    }
    Ok(certificates)
}

/// The client side, for tonic channels: trusts `pem.ca`, presents `pem.cert`.
pub(crate) fn client_config(pem: &PemText, server_name: &str) -> tonic::transport::ClientTlsConfig {
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pem.ca))
        .identity(tonic::transport::Identity::from_pem(&pem.cert, &pem.key))
        .domain_name(server_name)
}
