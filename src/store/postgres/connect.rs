//! Reaching PostgreSQL: the store URL (several hosts and
//! `target_session_attrs=read-write`, so a relay follows a failover), the
//! password (in the URL, `PGPASSWORD` or a file; never shown: [`StoreUrl`]
//! prints itself redacted), TLS with rustls and the ring provider, and the
//! connection pool.
//!
//! `sslmode` takes libpq's values. Certificates are always verified against
//! `sslrootcert` (or the system's roots): `prefer` and `require` check the
//! chain, `verify-ca` too, and `verify-full` also checks the host name. This
//! is stricter than libpq, whose `require` accepts any certificate: a relay
//! carrying children's details never talks to a server it cannot verify.

use std::{path::PathBuf, sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// A `postgres://` store URL as the operator wrote it. `Display` and `Debug`
/// hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// Whether `text` names a PostgreSQL store.
    pub fn is_postgres(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }

    /// Checks the URL's form (hosts, options, `sslmode`) without connecting.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !Self::is_postgres(text) {
            return Err("must start with postgres:// or postgresql://".into());
        }
        let url = Self(text.to_owned());
        url.split()?;
        Ok(url)
    }

    /// The URL as written, password included: only for handing it to a
    /// process the operator starts (never for a log or an error).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        let text = &self.0;
        let Some(scheme_end) = text.find("://").map(|at| at + 3) else { return text.clone() };
        let authority_end = text[scheme_end..].find(['/', '?']).map_or(text.len(), |at| scheme_end + at);
        let mut out = text[..scheme_end].to_owned();
        let authority = &text[scheme_end..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let user_info = &authority[..at];
                match user_info.find(':') {
                    Some(colon) => out.push_str(&format!("{}:***{}", &user_info[..colon], &authority[at..])),
                    None => out.push_str(authority),
                }
            }
            None => out.push_str(authority),
        }
        let rest = &text[authority_end..];
        match rest.find('?') {
            Some(query_at) => {
                out.push_str(&rest[..=query_at]);
                let params: Vec<String> = rest[query_at + 1..]
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some(("password", _)) => "password=***".to_owned(),
                        _ => pair.to_owned(),
                    })
                    .collect();
                out.push_str(&params.join("&"));
            }
            None => out.push_str(rest),
        }
        out
    }

    /// The URL as tokio-postgres takes it (without the TLS options it does
    /// not know), and the TLS settings taken out of it.
    fn split(&self) -> Result<(tokio_postgres::Config, TlsSettings), String> {
        let (base, query) = match self.0.split_once('?') {
            Some((base, query)) => (base, query),
            None => (self.0.as_str(), ""),
        };
        let mut kept = Vec::new();
        let mut tls = TlsSettings { mode: TlsMode::Prefer, root_cert: None };
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned();
            match key {
                "sslmode" => {
                    tls.mode = match value.as_str() {
                        "disable" => TlsMode::Disable,
                        "prefer" => TlsMode::Prefer,
                        "require" => TlsMode::Require,
                        "verify-ca" => TlsMode::VerifyCa,
                        "verify-full" => TlsMode::VerifyFull,
                        other => {
                            return Err(format!(
                                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                            ));
                        }
                    }
                }
                "sslrootcert" => tls.root_cert = Some(PathBuf::from(value)),
                _ => kept.push(pair),
            }
        }
        let text = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        let mut config: tokio_postgres::Config = text.parse().map_err(|error| format!("{error}"))?;
        config.ssl_mode(match tls.mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        if config.get_hosts().is_empty() {
            return Err("names no host".into());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("cpis-relay");
        }
        Ok((config, tls))
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({})", self.redacted())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

struct TlsSettings {
    mode: TlsMode,
    root_cert: Option<PathBuf>,
}

/// How to reach the database.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub url: StoreUrl,
    /// Read when neither the URL nor `PGPASSWORD` gives a password.
    pub password_file: Option<PathBuf>,
    /// Connections in the pool.
    pub pool_size: usize,
}

/// A configuration ready to open connections.
#[derive(Clone)]
pub struct Connector {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

impl Connector {
    pub fn new(options: &ConnectOptions) -> Result<Self, StoreError> {
        let (mut config, tls) = options.url.split().map_err(|error| StoreError::Io(format!("store URL: {error}")))?;
        if config.get_password().is_none() {
            if let Some(password) = std::env::var_os("PGPASSWORD") {
                config.password(password.as_encoded_bytes());
            } else if let Some(path) = &options.password_file {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    StoreError::Io(format!("cannot read the password file {}: {error}", path.display()))
                })?;
                config.password(text.trim_end_matches(['\n', '\r']));
            }
        }
        Ok(Self { config, tls: MakeRustlsConnect::new(client_tls(&tls)?) })
    }

    pub fn pool(&self, size: usize) -> Result<Pool, StoreError> {
        let manager = Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        Pool::builder(manager)
            .max_size(size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|error| StoreError::Io(format!("connection pool: {error}")))
    }
}

fn client_tls(settings: &TlsSettings) -> Result<rustls::ClientConfig, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match &settings.root_cert {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|error| StoreError::Io(format!("sslrootcert {}: {error}", path.display())))?;
            for cert in rustls_pemfile_certs(&pem) {
                roots.add(cert).map_err(|error| StoreError::Io(format!("sslrootcert {}: {error}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = crate::tls::provider();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .map_err(|error| StoreError::Io(format!("TLS to PostgreSQL: {error}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match settings.mode {
        TlsMode::VerifyFull => verifier,
        _ => Arc::new(ChainOnly(verifier)),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| StoreError::Io(format!("TLS to PostgreSQL: {error}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect()
}

/// Verifies the chain and signatures, not the host name (`verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let url =
            StoreUrl::parse("postgres://relay:s3cret@db1:5432,db2:5433/cpis?target_session_attrs=read-write").unwrap();
        assert_eq!(url.to_string(), "postgres://relay:***@db1:5432,db2:5433/cpis?target_session_attrs=read-write");
        assert!(!format!("{url:?}").contains("s3cret"));
        let url = StoreUrl::parse("postgresql://relay@db/cpis?password=s3cret&sslmode=verify-full").unwrap();
        assert_eq!(url.to_string(), "postgresql://relay@db/cpis?password=***&sslmode=verify-full");
    }

    #[test]
    fn tls_options_are_understood_and_bad_ones_refused() {
        let url = StoreUrl::parse("postgres://relay@db/cpis?sslmode=verify-full&sslrootcert=/etc/ca.pem").unwrap();
        let (config, tls) = url.split().unwrap();
        assert_eq!((tls.mode, tls.root_cert), (TlsMode::VerifyFull, Some(PathBuf::from("/etc/ca.pem"))));
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert!(StoreUrl::parse("postgres://relay@db/cpis?sslmode=sometimes").unwrap_err().contains("sslmode"));
        assert!(StoreUrl::parse("mysql://db/cpis").is_err());
        assert!(StoreUrl::parse("postgres://db/cpis?no_such_option=1").is_err());
    }
}
