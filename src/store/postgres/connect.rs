//! Reaching PostgreSQL: the store URL (several hosts and
//! `target_session_attrs=read-write`, so a relay follows a failover), the
//! password (in the URL, `PGPASSWORD` or a file; never shown: [`StoreUrl`]
//! prints itself redacted), TLS with rustls and the ring provider, and the
//! connection pool.
//!
//! `sslmode` takes libpq's values, safer than libpq's defaults. Without one
//! the relay uses `verify-full` (libpq's default, `prefer`, falls back to
//! plaintext when the server or anyone between declines TLS). Certificates are
//! always verified against `sslrootcert` (or the system's roots): `prefer`
//! means `require`, which like `verify-ca` checks the chain, and `verify-full`
//! also checks the host name. This is stricter than libpq, whose `require`
//! accepts any certificate: a relay carrying children's details never talks to
//! a server it cannot verify. `disable` is refused unless every host is this
//! machine (loopback or a Unix socket) or the operator allows plaintext
//! explicitly (`store_allow_plaintext`).
//!
//! Every session carries server-side limits ([`SESSION_LIMITS`]) and TCP
//! keepalives, so a batch whose client gave up (a timeout, a dead node, a
//! network partition) cannot leave an LA's sequence row locked on the server.
//!
//! A connection that stopped answering is abandoned, not waited on
//! ([`Abandon`]): after a partition heals, TCP resends what it holds only when
//! its retransmission timer (doubled at each loss, to minutes) fires, so a
//! query left on a connection from before the cut can wait far longer than
//! the cut lasted, while a new connection answers at once.

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

/// Server-side limits set on every session (as libpq's `options=-c ...`),
/// unless the URL's own `options` sets the same one:
/// - `idle_in_transaction_session_timeout`: a session that opened a
///   transaction and went quiet (its client timed out, hung or died) is ended
///   and its locks released;
/// - `lock_timeout`: a statement waiting for a row lock (an LA's sequence row)
///   fails instead of queueing behind a stuck writer;
/// - `statement_timeout`: bounds any one statement; generous, since loading
///   every plan at start-up is one statement.
pub const SESSION_LIMITS: [(&str, &str); 3] =
    [("idle_in_transaction_session_timeout", "30s"), ("lock_timeout", "10s"), ("statement_timeout", "5min")];
/// TCP keepalives on every connection: a peer that vanished (a failed-over
/// primary, a cut network) is noticed in about a minute, not hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;
/// A connection whose sent data stays unacknowledged this long (a peer gone
/// mid-query, which keepalives do not cover) is closed by the kernel.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// When the database last stopped answering: the pool hands out no
/// connection opened before then (its pre-recycle hook drops them), so
/// queries after a timeout go over new connections instead of queueing
/// behind one that TCP is still retrying.
#[derive(Clone, Debug, Default)]
pub struct Abandon(Arc<std::sync::Mutex<Option<std::time::Instant>>>);

impl Abandon {
    /// Abandons every connection opened before `at`.
    pub fn opened_before(&self, at: std::time::Instant) {
        let mut cutoff = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *cutoff = Some(cutoff.map_or(at, |held| held.max(at)));
    }

    /// Whether a connection opened at `opened` may still be used.
    fn keeps(&self, opened: std::time::Instant) -> bool {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_none_or(|cutoff| opened > cutoff)
    }
}

/// A `postgres://` store URL as the operator wrote it. `Display` and `Debug`
/// hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    text: String,
    /// `sslmode=disable` to another machine is allowed (`store_allow_plaintext`).
    allow_plaintext: bool,
}

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
        let url = Self { text: text.to_owned(), allow_plaintext: false };
        url.split()?;
        Ok(url)
    }

    /// The same URL, allowed to talk plaintext (`sslmode=disable`) to
    /// another machine: the operator's explicit choice, never a default.
    pub fn allowing_plaintext(mut self) -> Self {
        self.allow_plaintext = true;
        self
    }

    /// Refuses `sslmode=disable` to a host other than this machine, unless
    /// plaintext was allowed explicitly.
    pub fn check_plaintext(&self) -> Result<(), String> {
        let (config, tls) = self.split()?;
        if tls.mode != TlsMode::Disable || self.allow_plaintext {
            return Ok(());
        }
        let remote: Vec<String> = config
            .get_hosts()
            .iter()
            .filter_map(|host| match host {
                tokio_postgres::config::Host::Tcp(name) if !is_loopback_name(name) => Some(name.clone()),
                _ => None,
            })
            .chain(config.get_hostaddrs().iter().filter(|address| !address.is_loopback()).map(|a| a.to_string()))
            .collect();
        if remote.is_empty() {
            return Ok(());
        }
        Err(format!(
            "sslmode=disable sends children's details unencrypted to {}: use sslmode=verify-full (the default), \
             or allow plaintext explicitly with store_allow_plaintext (--store-allow-plaintext)",
            remote.join(", ")
        ))
    }

    /// The URL as written, password included: only for handing it to a
    /// process the operator starts (never for a log or an error).
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        let text = &self.text;
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
        let (base, query) = match self.text.split_once('?') {
            Some((base, query)) => (base, query),
            None => (self.text.as_str(), ""),
        };
        let mut kept = Vec::new();
        let mut tls = TlsSettings { mode: TlsMode::VerifyFull, root_cert: None };
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned();
            match key {
                "sslmode" => {
                    tls.mode = match value.as_str() {
                        "disable" => TlsMode::Disable,
                        // Never a fallback to plaintext: `prefer` is `require`.
                        "prefer" | "require" => TlsMode::Require,
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
        let mut options = config.get_options().unwrap_or_default().to_owned();
        for (name, value) in SESSION_LIMITS {
            if !options.contains(name) {
                options = format!("{options} -c {name}={value}").trim_start().to_owned();
            }
        }
        config.options(&options);
        config.keepalives(true);
        config.keepalives_idle(KEEPALIVE_IDLE);
        config.keepalives_interval(KEEPALIVE_INTERVAL);
        config.keepalives_retries(KEEPALIVE_RETRIES);
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
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

/// `localhost` or a loopback address (127.0.0.0/8, ::1).
fn is_loopback_name(name: &str) -> bool {
    name == "localhost"
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
    Disable,
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
        options.url.check_plaintext().map_err(|error| StoreError::Io(format!("store URL: {error}")))?;
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

    /// A pool of `size` connections; none opened before `abandon`'s cutoff is handed out.
    pub fn pool(&self, size: usize, abandon: &Abandon) -> Result<Pool, StoreError> {
        let abandon = abandon.clone();
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
            .pre_recycle(deadpool_postgres::Hook::sync_fn(move |_, metrics| {
                if abandon.keeps(metrics.created) {
                    Ok(())
                } else {
                    Err(deadpool_postgres::HookError::message("opened before the database stopped answering"))
                }
            }))
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
    let provider = crate::crypto::provider();
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

    #[test]
    fn tls_is_verified_by_default_and_prefer_never_falls_back_to_plaintext() {
        let (config, tls) = StoreUrl::parse("postgres://relay@db/cpis").unwrap().split().unwrap();
        assert_eq!((tls.mode, config.get_ssl_mode()), (TlsMode::VerifyFull, SslMode::Require));
        let (config, tls) = StoreUrl::parse("postgres://relay@db/cpis?sslmode=prefer").unwrap().split().unwrap();
        assert_eq!((tls.mode, config.get_ssl_mode()), (TlsMode::Require, SslMode::Require));
    }

    #[test]
    fn plaintext_only_to_this_machine_unless_allowed() {
        let plaintext = |url: &str| StoreUrl::parse(url).unwrap().check_plaintext();
        for local in [
            "postgres://relay@127.0.0.1:5432/cpis?sslmode=disable",
            "postgres://relay@localhost,[::1]:5433/cpis?sslmode=disable",
            "postgres://relay@%2Frun%2Fpostgresql/cpis?sslmode=disable",
            "postgres://relay@db.example/cpis?sslmode=verify-full",
        ] {
            assert_eq!(plaintext(local), Ok(()), "{local}");
        }
        for remote in [
            "postgres://relay@db.example/cpis?sslmode=disable",
            "postgres://relay@127.0.0.1,10.0.0.2/cpis?sslmode=disable",
            "postgres://relay@localhost/cpis?sslmode=disable&hostaddr=10.0.0.2",
        ] {
            let refused = plaintext(remote).unwrap_err();
            assert!(refused.contains("store_allow_plaintext"), "{remote}: {refused}");
        }
        let allowed = StoreUrl::parse("postgres://relay@db.example/cpis?sslmode=disable").unwrap().allowing_plaintext();
        assert_eq!(allowed.check_plaintext(), Ok(()));
    }

    #[test]
    fn every_session_carries_its_limits_and_keepalives_unless_the_url_sets_them() {
        let (config, _) = StoreUrl::parse("postgres://relay@db/cpis").unwrap().split().unwrap();
        let options = config.get_options().unwrap();
        for (name, value) in SESSION_LIMITS {
            assert!(options.contains(&format!("-c {name}={value}")), "{options}");
        }
        assert!(config.get_keepalives());
        let (config, _) =
            StoreUrl::parse("postgres://relay@db/cpis?options=-c%20lock_timeout%3D1s").unwrap().split().unwrap();
        let options = config.get_options().unwrap();
        assert!(options.contains("lock_timeout=1s") && !options.contains("lock_timeout=10s"), "{options}");
    }
}
