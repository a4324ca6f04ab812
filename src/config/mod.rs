//! Configuration of `serve`: a TOML file (`--config`), then `CPIS_*`
//! environment variables, then flags, each overriding the one before, then
//! defaults. One struct serves as both the clap arguments and the file
//! schema, so a key has the same name everywhere (`--max-message-bytes`,
//! `CPIS_MAX_MESSAGE_BYTES`, `max_message_bytes`). Invalid values name their key.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{certs, fhir::token, relay::RelaySettings};

mod development;
mod listeners;
mod store_kind;
pub use store_kind::StoreKind;

/// A text setting, or its default; never empty.
fn text(key: &str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    match value {
        Some(value) if value.trim().is_empty() => Err(error(key, "must not be empty")),
        Some(value) => Ok(value.trim().to_owned()),
        None => Ok(default.to_owned()),
    }
}

/// Every `serve` setting, optional at each layer.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// gRPC (mutual TLS) listen address [default: 127.0.0.1:50051]
    #[arg(long, env = "CPIS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin HTTP listen address: /healthz, /readyz, /metrics [default: 127.0.0.1:9090]
    #[arg(long, env = "CPIS_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Directory of the embedded store [default: data]
    #[arg(long, env = "CPIS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store: embedded, memory (tests only) or postgres://USER@HOST[:PORT][,HOST2[:PORT]]/DB[?sslmode=verify-full&sslrootcert=CA.pem&target_session_attrs=read-write] [default: embedded]
    #[arg(long, env = "CPIS_STORE")]
    pub store: Option<StoreKind>,
    /// PostgreSQL: file holding the password, read when neither the URL nor PGPASSWORD gives one
    #[arg(long, env = "CPIS_STORE_PASSWORD_FILE")]
    pub store_password_file: Option<PathBuf>,
    /// PostgreSQL: allow sslmode=disable to a host other than this machine (plaintext on a network; never in production) [default: false]
    #[arg(long, env = "CPIS_STORE_ALLOW_PLAINTEXT", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub store_allow_plaintext: Option<bool>,
    /// PostgreSQL: connections per relay node [default: 16]
    #[arg(long, env = "CPIS_STORE_POOL_SIZE")]
    pub store_pool_size: Option<usize>,
    /// PostgreSQL: longest a batch of searches may take to commit before its notifications are held and retried [default: 5000]
    #[arg(long, env = "CPIS_STORE_WRITE_TIMEOUT_MS")]
    pub store_write_timeout_ms: Option<u64>,
    /// PostgreSQL: how often other nodes' changes are read even without a NOTIFY [default: 1000]
    #[arg(long, env = "CPIS_FEED_POLL_MS")]
    pub feed_poll_ms: Option<u64>,
    /// MiB of page cache for the embedded store, on top of the operating system's [default: 32]
    #[arg(long, env = "CPIS_STORE_CACHE_MB")]
    pub store_cache_mb: Option<u64>,
    /// CA certificate (PEM) whose client certificates are accepted
    #[arg(long, env = "CPIS_CA")]
    pub ca: Option<PathBuf>,
    /// Server certificate chain (PEM)
    #[arg(long, env = "CPIS_CERT")]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM)
    #[arg(long, env = "CPIS_KEY")]
    pub key: Option<PathBuf>,
    /// Certificate revocation list (PEM or DER) checked for client certificates; repeat for more. With any, a client certificate whose CA has no CRL among them is refused [default: none]
    #[arg(long, env = "CPIS_CRL", value_delimiter = ',')]
    pub crl: Option<Vec<PathBuf>>,
    /// Seconds between checks of the certificate, key, CA and CRL files; a change is loaded for new connections (SIGHUP loads at once) [default: 5]
    #[arg(long, env = "CPIS_TLS_RELOAD_INTERVAL_SECS")]
    pub tls_reload_interval_secs: Option<u64>,
    /// Development certificates used when no TLS option is set; created on first start [default: certs/dev]
    #[arg(long, env = "CPIS_CERTS_DIR")]
    pub certs_dir: Option<PathBuf>,
    /// Development mode off loopback (never in production): allow the development certificates, the development FHIR token key and the memory store when a listen address is not loopback [default: false]
    #[arg(long, env = "CPIS_DEV_CERTS", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub dev_certs: Option<bool>,
    /// Days acknowledged notifications are kept [default: 30]
    #[arg(long, env = "CPIS_NOTIFICATION_RETENTION_DAYS")]
    pub notification_retention_days: Option<u32>,
    /// Days access history is kept [default: 365]
    #[arg(long, env = "CPIS_ACCESS_RETENTION_DAYS")]
    pub access_retention_days: Option<u32>,
    /// Seconds between retention passes [default: 3600]
    #[arg(long, env = "CPIS_RETENTION_INTERVAL_SECS")]
    pub retention_interval_secs: Option<u64>,
    /// Ed25519 key (PKCS#8) the access log's checkpoints are signed with; created (mode 0600, public key beside it as access-log.pub) if missing [default: DATA_DIR/access-log.key]
    #[arg(long, env = "CPIS_LOG_KEY")]
    pub log_key: Option<PathBuf>,
    /// Name (origin) the access log's checkpoints are signed under: no spaces or '+' [default: cpis-relay/access-log]
    #[arg(long, env = "CPIS_LOG_NAME")]
    pub log_name: Option<String>,
    /// Seconds between signed checkpoints of the access log (when it grew) [default: 5]
    #[arg(long, env = "CPIS_CHECKPOINT_INTERVAL_SECS")]
    pub checkpoint_interval_secs: Option<u64>,
    /// Searches whose notifications may be held (spilled to the data directory) while the store fails; beyond it a search still answers but its notifications are refused [default: 100000]
    #[arg(long, env = "CPIS_MAX_HELD_NOTIFICATIONS")]
    pub max_held_notifications: Option<usize>,
    /// Searches per second allowed to one organisation (ODS code); over it a search is RESOURCE_EXHAUSTED with RetryInfo; 0 turns the limit off [default: 50]
    #[arg(long, env = "CPIS_SEARCH_RATE_PER_SECOND")]
    pub search_rate_per_second: Option<f64>,
    /// Searches one organisation may make at once above its rate [default: 200]
    #[arg(long, env = "CPIS_SEARCH_BURST")]
    pub search_burst: Option<u32>,
    /// Open notification subscriptions per local authority; one more is refused with RESOURCE_EXHAUSTED [default: 16]
    #[arg(long, env = "CPIS_MAX_SUBSCRIPTIONS_PER_LA")]
    pub max_subscriptions_per_la: Option<usize>,
    /// Seconds in-flight calls get to finish on shutdown [default: 20]
    #[arg(long, env = "CPIS_GRACE_PERIOD_SECS")]
    pub grace_period_secs: Option<u64>,
    /// Seconds a TLS handshake may take [default: 10]
    #[arg(long, env = "CPIS_HANDSHAKE_TIMEOUT_SECS")]
    pub handshake_timeout_secs: Option<u64>,
    /// Connections open at once per listener (handshaking or established); beyond it a new connection is closed at once. Keep it well under the descriptor limit [default: 4096]
    #[arg(long, env = "CPIS_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// TLS handshakes in progress at once per listener, less than max_connections; beyond it a new connection displaces the oldest handshake [default: 256]
    #[arg(long, env = "CPIS_MAX_HANDSHAKES")]
    pub max_handshakes: Option<usize>,
    /// Seconds a gRPC connection may have no call in progress (including one that never speaks HTTP/2) before it is closed [default: 300]
    #[arg(long, env = "CPIS_CONNECTION_IDLE_TIMEOUT_SECS")]
    pub connection_idle_timeout_secs: Option<u64>,
    /// Searches in progress across all connections; more are shed with RESOURCE_EXHAUSTED [default: 2048]
    #[arg(long, env = "CPIS_MAX_CONCURRENT_SEARCHES")]
    pub max_concurrent_searches: Option<usize>,
    /// Calls in progress per connection; more are shed [default: 256]
    #[arg(long, env = "CPIS_CONCURRENCY_PER_CONNECTION")]
    pub concurrency_per_connection: Option<usize>,
    /// HTTP/2 streams per connection [default: 512]
    #[arg(long, env = "CPIS_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Seconds a unary call may take [default: 30]
    #[arg(long, env = "CPIS_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Seconds between HTTP/2 keepalive pings [default: 30]
    #[arg(long, env = "CPIS_KEEPALIVE_INTERVAL_SECS")]
    pub keepalive_interval_secs: Option<u64>,
    /// Seconds to wait for a keepalive answer [default: 10]
    #[arg(long, env = "CPIS_KEEPALIVE_TIMEOUT_SECS")]
    pub keepalive_timeout_secs: Option<u64>,
    /// Seconds after which a connection is asked to reconnect, so clients rebalance [default: 1800]
    #[arg(long, env = "CPIS_MAX_CONNECTION_AGE_SECS")]
    pub max_connection_age_secs: Option<u64>,
    /// Seconds an upload (a client stream) may take; other calls get request_timeout_secs [default: 600]
    #[arg(long, env = "CPIS_UPLOAD_TIMEOUT_SECS")]
    pub upload_timeout_secs: Option<u64>,
    /// Most records one upload may carry; more are refused with RESOURCE_EXHAUSTED and nothing is loaded [default: 250000]
    #[arg(long, env = "CPIS_MAX_UPLOAD_RECORDS")]
    pub max_upload_records: Option<usize>,
    /// Uploads in progress across all connections; more are refused at once with RESOURCE_EXHAUSTED [default: 4]
    #[arg(long, env = "CPIS_MAX_CONCURRENT_UPLOADS")]
    pub max_concurrent_uploads: Option<usize>,
    /// A FULL_REFRESH that would remove more than this percentage of the LA's current plans is refused unless its header allows a large removal [default: 10]
    #[arg(long, env = "CPIS_MAX_REFRESH_REMOVAL_PERCENT")]
    pub max_refresh_removal_percent: Option<u32>,
    /// A FULL_REFRESH (of an LA holding plans) with more than this percentage of its records rejected is refused unless its header allows a large removal [default: 10]
    #[arg(long, env = "CPIS_MAX_REFRESH_REJECTED_PERCENT")]
    pub max_refresh_rejected_percent: Option<u32>,
    /// A user who searches more distinct people than this within one clock hour raises cpis_unusual_access_total and a warning [default: 100]
    #[arg(long, env = "CPIS_UNUSUAL_ACCESS_DISTINCT_PEOPLE_PER_HOUR")]
    pub unusual_access_distinct_people_per_hour: Option<usize>,
    /// Largest accepted message in bytes [default: 262144]
    #[arg(long, env = "CPIS_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// FHIR R4 door (CP-IS API, HTTPS with the same mutual TLS) listen address [default: off]
    #[arg(long, env = "CPIS_FHIR_LISTEN")]
    pub fhir_listen: Option<SocketAddr>,
    /// Browser view (HTTPS with the same mutual TLS; see README "The browser view") listen address [default: off]
    #[arg(long, env = "CPIS_WEB_LISTEN")]
    pub web_listen: Option<SocketAddr>,
    /// JWKS file of the keys that sign the FHIR door's bearer tokens [default: fhir-jwks.json in the development certificates, created on first start]
    #[arg(long, env = "CPIS_FHIR_JWKS")]
    pub fhir_jwks: Option<PathBuf>,
    /// Required `iss` of bearer tokens [default: cpis-relay-dev]
    #[arg(long, env = "CPIS_FHIR_ISSUER")]
    pub fhir_issuer: Option<String>,
    /// Required `aud` of bearer tokens [default: cpis-relay]
    #[arg(long, env = "CPIS_FHIR_AUDIENCE")]
    pub fhir_audience: Option<String>,
    /// Bearer token claim naming the user's id [default: sub]
    #[arg(long, env = "CPIS_FHIR_USER_ID_CLAIM")]
    pub fhir_user_id_claim: Option<String>,
    /// Bearer token claim naming the user [default: name]
    #[arg(long, env = "CPIS_FHIR_NAME_CLAIM")]
    pub fhir_name_claim: Option<String>,
    /// Bearer token claim giving the user's role code, optional in a token [default: role_code]
    #[arg(long, env = "CPIS_FHIR_ROLE_CODE_CLAIM")]
    pub fhir_role_code_claim: Option<String>,
    /// Bearer token claim giving the user's care setting (EMERGENCY_DEPARTMENT, OUT_OF_HOURS_GP, ...), optional in a token [default: care_setting]
    #[arg(long, env = "CPIS_FHIR_CARE_SETTING_CLAIM")]
    pub fhir_care_setting_claim: Option<String>,
    /// Care setting of each organisation's FHIR searches when the token names none, as ODS=SETTING (RR8=EMERGENCY_DEPARTMENT); a search with neither is refused [default: none]
    #[arg(long, env = "CPIS_FHIR_CARE_SETTINGS", value_delimiter = ',')]
    pub fhir_care_settings: Option<Vec<String>>,
}

/// A bad setting: the key and why.
#[derive(Debug, thiserror::Error)]
#[error("configuration {key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn error(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), reason: reason.into() }
}

/// The effective settings.
#[derive(Clone, Debug, Serialize)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store: StoreKind,
    pub store_password_file: Option<PathBuf>,
    pub store_allow_plaintext: bool,
    pub store_pool_size: usize,
    pub store_write_timeout_ms: u64,
    pub feed_poll_ms: u64,
    pub store_cache_mb: u64,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub crl: Vec<PathBuf>,
    pub tls_reload_interval_secs: u64,
    pub certs_dir: PathBuf,
    pub dev_certs: bool,
    pub notification_retention_days: u32,
    pub access_retention_days: u32,
    pub retention_interval_secs: u64,
    pub log_key: PathBuf,
    pub log_name: String,
    pub checkpoint_interval_secs: u64,
    pub max_held_notifications: usize,
    pub max_subscriptions_per_la: usize,
    pub search_rate_per_second: f64,
    pub search_burst: u32,
    pub grace_period_secs: u64,
    pub handshake_timeout_secs: u64,
    pub max_connections: usize,
    pub max_handshakes: usize,
    pub connection_idle_timeout_secs: u64,
    pub max_concurrent_searches: usize,
    pub concurrency_per_connection: usize,
    pub max_concurrent_streams: u32,
    pub request_timeout_secs: u64,
    pub keepalive_interval_secs: u64,
    pub keepalive_timeout_secs: u64,
    pub max_connection_age_secs: u64,
    pub upload_timeout_secs: u64,
    pub max_upload_records: usize,
    pub max_concurrent_uploads: usize,
    pub max_refresh_removal_percent: u32,
    pub max_refresh_rejected_percent: u32,
    pub unusual_access_distinct_people_per_hour: usize,
    pub max_message_bytes: usize,
    pub fhir_listen: Option<SocketAddr>,
    pub web_listen: Option<SocketAddr>,
    pub fhir_jwks: Option<PathBuf>,
    pub fhir_issuer: String,
    pub fhir_audience: String,
    pub fhir_user_id_claim: String,
    pub fhir_name_claim: String,
    pub fhir_role_code_claim: String,
    pub fhir_care_setting_claim: String,
    /// `ODS=SETTING` entries, each checked by `resolve`.
    pub fhir_care_settings: Vec<String>,
}

impl ServeSettings {
    /// Reads a TOML file of these settings.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| error("config", format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| error("config", format!("{}: {}", path.display(), e.message().trim())))
    }

    /// Settings of `self` win; `lower` fills what `self` leaves unset.
    pub fn over(self, lower: Self) -> Self {
        Self {
            listen: self.listen.or(lower.listen),
            admin_listen: self.admin_listen.or(lower.admin_listen),
            data_dir: self.data_dir.or(lower.data_dir),
            store: self.store.or(lower.store),
            store_password_file: self.store_password_file.or(lower.store_password_file),
            store_allow_plaintext: self.store_allow_plaintext.or(lower.store_allow_plaintext),
            store_pool_size: self.store_pool_size.or(lower.store_pool_size),
            store_write_timeout_ms: self.store_write_timeout_ms.or(lower.store_write_timeout_ms),
            feed_poll_ms: self.feed_poll_ms.or(lower.feed_poll_ms),
            store_cache_mb: self.store_cache_mb.or(lower.store_cache_mb),
            ca: self.ca.or(lower.ca),
            cert: self.cert.or(lower.cert),
            key: self.key.or(lower.key),
            crl: self.crl.or(lower.crl),
            tls_reload_interval_secs: self.tls_reload_interval_secs.or(lower.tls_reload_interval_secs),
            certs_dir: self.certs_dir.or(lower.certs_dir),
            dev_certs: self.dev_certs.or(lower.dev_certs),
            notification_retention_days: self.notification_retention_days.or(lower.notification_retention_days),
            access_retention_days: self.access_retention_days.or(lower.access_retention_days),
            retention_interval_secs: self.retention_interval_secs.or(lower.retention_interval_secs),
            log_key: self.log_key.or(lower.log_key),
            log_name: self.log_name.or(lower.log_name),
            checkpoint_interval_secs: self.checkpoint_interval_secs.or(lower.checkpoint_interval_secs),
            max_held_notifications: self.max_held_notifications.or(lower.max_held_notifications),
            max_subscriptions_per_la: self.max_subscriptions_per_la.or(lower.max_subscriptions_per_la),
            search_rate_per_second: self.search_rate_per_second.or(lower.search_rate_per_second),
            search_burst: self.search_burst.or(lower.search_burst),
            grace_period_secs: self.grace_period_secs.or(lower.grace_period_secs),
            handshake_timeout_secs: self.handshake_timeout_secs.or(lower.handshake_timeout_secs),
            max_connections: self.max_connections.or(lower.max_connections),
            max_handshakes: self.max_handshakes.or(lower.max_handshakes),
            connection_idle_timeout_secs: self.connection_idle_timeout_secs.or(lower.connection_idle_timeout_secs),
            max_concurrent_searches: self.max_concurrent_searches.or(lower.max_concurrent_searches),
            concurrency_per_connection: self.concurrency_per_connection.or(lower.concurrency_per_connection),
            max_concurrent_streams: self.max_concurrent_streams.or(lower.max_concurrent_streams),
            request_timeout_secs: self.request_timeout_secs.or(lower.request_timeout_secs),
            keepalive_interval_secs: self.keepalive_interval_secs.or(lower.keepalive_interval_secs),
            keepalive_timeout_secs: self.keepalive_timeout_secs.or(lower.keepalive_timeout_secs),
            max_connection_age_secs: self.max_connection_age_secs.or(lower.max_connection_age_secs),
            upload_timeout_secs: self.upload_timeout_secs.or(lower.upload_timeout_secs),
            max_upload_records: self.max_upload_records.or(lower.max_upload_records),
            max_concurrent_uploads: self.max_concurrent_uploads.or(lower.max_concurrent_uploads),
            max_refresh_removal_percent: self.max_refresh_removal_percent.or(lower.max_refresh_removal_percent),
            max_refresh_rejected_percent: self.max_refresh_rejected_percent.or(lower.max_refresh_rejected_percent),
            unusual_access_distinct_people_per_hour: self
                .unusual_access_distinct_people_per_hour
                .or(lower.unusual_access_distinct_people_per_hour),
            max_message_bytes: self.max_message_bytes.or(lower.max_message_bytes),
            fhir_listen: self.fhir_listen.or(lower.fhir_listen),
            web_listen: self.web_listen.or(lower.web_listen),
            fhir_jwks: self.fhir_jwks.or(lower.fhir_jwks),
            fhir_issuer: self.fhir_issuer.or(lower.fhir_issuer),
            fhir_audience: self.fhir_audience.or(lower.fhir_audience),
            fhir_user_id_claim: self.fhir_user_id_claim.or(lower.fhir_user_id_claim),
            fhir_name_claim: self.fhir_name_claim.or(lower.fhir_name_claim),
            fhir_role_code_claim: self.fhir_role_code_claim.or(lower.fhir_role_code_claim),
            fhir_care_setting_claim: self.fhir_care_setting_claim.or(lower.fhir_care_setting_claim),
            fhir_care_settings: self.fhir_care_settings.or(lower.fhir_care_settings),
        }
    }

    /// Applies defaults and checks every value.
    pub fn resolve(self) -> Result<ServeConfig, ConfigError> {
        let issuer_given = self.fhir_issuer.is_some();
        let positive =
            |key: &str, value: u64| if value == 0 { Err(error(key, "must be at least 1")) } else { Ok(value) };
        let percent = |key: &str, value: u32| {
            if value > 100 { Err(error(key, "must be a percentage, 0 to 100")) } else { Ok(value) }
        };
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from("data"));
        let mut config = ServeConfig {
            listen: self.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051))),
            admin_listen: self.admin_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090))),
            data_dir: data_dir.clone(),
            store: self.store.unwrap_or(StoreKind::Embedded),
            store_password_file: self.store_password_file,
            store_allow_plaintext: self.store_allow_plaintext.unwrap_or(false),
            store_pool_size: positive("store_pool_size", self.store_pool_size.unwrap_or(16) as u64)? as usize,
            store_write_timeout_ms: positive("store_write_timeout_ms", self.store_write_timeout_ms.unwrap_or(5000))?,
            feed_poll_ms: positive("feed_poll_ms", self.feed_poll_ms.unwrap_or(1000))?,
            store_cache_mb: positive(
                "store_cache_mb",
                self.store_cache_mb.unwrap_or((crate::store::embedded::DEFAULT_CACHE_BYTES >> 20) as u64),
            )?,
            ca: self.ca,
            cert: self.cert,
            key: self.key,
            crl: self.crl.unwrap_or_default(),
            tls_reload_interval_secs: positive("tls_reload_interval_secs", self.tls_reload_interval_secs.unwrap_or(5))?,
            certs_dir: self.certs_dir.unwrap_or_else(|| PathBuf::from(certs::DEV_DIR)),
            dev_certs: self.dev_certs.unwrap_or(false),
            notification_retention_days: positive(
                "notification_retention_days",
                self.notification_retention_days.unwrap_or(30).into(),
            )? as u32,
            access_retention_days: positive("access_retention_days", self.access_retention_days.unwrap_or(365).into())?
                as u32,
            retention_interval_secs: positive("retention_interval_secs", self.retention_interval_secs.unwrap_or(3600))?,
            log_key: self.log_key.unwrap_or_else(|| data_dir.join(crate::access_log::DEFAULT_KEY_FILE)),
            log_name: match self.log_name {
                Some(name) if !crate::transparency::key::is_valid_key_name(&name) => {
                    return Err(error("log_name", "must be non-empty, without spaces, control characters or '+'"));
                }
                Some(name) => name,
                None => crate::access_log::DEFAULT_LOG_NAME.to_owned(),
            },
            checkpoint_interval_secs: positive(
                "checkpoint_interval_secs",
                self.checkpoint_interval_secs.unwrap_or(crate::access_log::DEFAULT_CHECKPOINT_INTERVAL_SECS),
            )?,
            max_held_notifications: positive(
                "max_held_notifications",
                self.max_held_notifications.unwrap_or(100_000) as u64,
            )? as usize,
            max_subscriptions_per_la: positive(
                "max_subscriptions_per_la",
                self.max_subscriptions_per_la.unwrap_or(crate::relay::DEFAULT_MAX_SUBSCRIPTIONS_PER_LA) as u64,
            )? as usize,
            search_rate_per_second: match self
                .search_rate_per_second
                .unwrap_or(crate::relay::rate::DEFAULT_SEARCH_RATE_PER_SECOND)
            {
                rate if rate.is_finite() && rate >= 0.0 => rate,
                _ => return Err(error("search_rate_per_second", "must be a number of searches a second, 0 or more")),
            },
            search_burst: positive(
                "search_burst",
                self.search_burst.unwrap_or(crate::relay::rate::DEFAULT_SEARCH_BURST).into(),
            )? as u32,
            grace_period_secs: self.grace_period_secs.unwrap_or(20),
            handshake_timeout_secs: positive("handshake_timeout_secs", self.handshake_timeout_secs.unwrap_or(10))?,
            max_connections: positive("max_connections", self.max_connections.unwrap_or(4096) as u64)? as usize,
            max_handshakes: positive("max_handshakes", self.max_handshakes.unwrap_or(256) as u64)? as usize,
            connection_idle_timeout_secs: positive(
                "connection_idle_timeout_secs",
                self.connection_idle_timeout_secs.unwrap_or(300),
            )?,
            max_concurrent_searches: positive(
                "max_concurrent_searches",
                self.max_concurrent_searches.unwrap_or(2048) as u64,
            )? as usize,
            concurrency_per_connection: positive(
                "concurrency_per_connection",
                self.concurrency_per_connection.unwrap_or(256) as u64,
            )? as usize,
            max_concurrent_streams: positive(
                "max_concurrent_streams",
                self.max_concurrent_streams.unwrap_or(512).into(),
            )? as u32,
            request_timeout_secs: positive("request_timeout_secs", self.request_timeout_secs.unwrap_or(30))?,
            keepalive_interval_secs: positive("keepalive_interval_secs", self.keepalive_interval_secs.unwrap_or(30))?,
            keepalive_timeout_secs: positive("keepalive_timeout_secs", self.keepalive_timeout_secs.unwrap_or(10))?,
            max_connection_age_secs: positive("max_connection_age_secs", self.max_connection_age_secs.unwrap_or(1800))?,
            upload_timeout_secs: positive("upload_timeout_secs", self.upload_timeout_secs.unwrap_or(600))?,
            max_upload_records: positive(
                "max_upload_records",
                self.max_upload_records.unwrap_or(crate::relay::DEFAULT_MAX_UPLOAD_RECORDS) as u64,
            )? as usize,
            max_concurrent_uploads: positive("max_concurrent_uploads", self.max_concurrent_uploads.unwrap_or(4) as u64)?
                as usize,
            max_refresh_removal_percent: percent(
                "max_refresh_removal_percent",
                self.max_refresh_removal_percent.unwrap_or(10),
            )?,
            max_refresh_rejected_percent: percent(
                "max_refresh_rejected_percent",
                self.max_refresh_rejected_percent.unwrap_or(10),
            )?,
            unusual_access_distinct_people_per_hour: positive(
                "unusual_access_distinct_people_per_hour",
                self.unusual_access_distinct_people_per_hour.unwrap_or(crate::relay::DEFAULT_UNUSUAL_ACCESS_PEOPLE)
                    as u64,
            )? as usize,
            max_message_bytes: self.max_message_bytes.unwrap_or(256 * 1024),
            fhir_listen: self.fhir_listen,
            web_listen: self.web_listen,
            fhir_jwks: self.fhir_jwks,
            fhir_issuer: text("fhir_issuer", self.fhir_issuer, token::DEFAULT_ISSUER)?,
            fhir_audience: text("fhir_audience", self.fhir_audience, token::DEFAULT_AUDIENCE)?,
            fhir_user_id_claim: text("fhir_user_id_claim", self.fhir_user_id_claim, token::DEFAULT_USER_ID_CLAIM)?,
            fhir_name_claim: text("fhir_name_claim", self.fhir_name_claim, token::DEFAULT_NAME_CLAIM)?,
            fhir_role_code_claim: text(
                "fhir_role_code_claim",
                self.fhir_role_code_claim,
                token::DEFAULT_ROLE_CODE_CLAIM,
            )?,
            fhir_care_setting_claim: text(
                "fhir_care_setting_claim",
                self.fhir_care_setting_claim,
                crate::fhir::care_setting::DEFAULT_CLAIM,
            )?,
            fhir_care_settings: self.fhir_care_settings.unwrap_or_default(),
        };
        for entry in &config.fhir_care_settings {
            crate::fhir::care_setting::parse_entry(entry).map_err(|reason| error("fhir_care_settings", reason))?;
        }
        if config.max_handshakes >= config.max_connections {
            return Err(error(
                "max_handshakes",
                format!(
                    "must be less than max_connections ({}), leaving room for authenticated connections",
                    config.max_connections
                ),
            ));
        }
        if config.max_message_bytes < 4096 {
            return Err(error("max_message_bytes", "must be at least 4096"));
        }
        if config.access_retention_days < 365 {
            tracing::warn!(days = config.access_retention_days, "access history kept less than 12 months");
        }
        match (&config.ca, &config.cert, &config.key) {
            (Some(_), Some(_), Some(_)) | (None, None, None) => {}
            (ca, cert, key) => {
                let missing: Vec<&str> = [("ca", ca.is_none()), ("cert", cert.is_none()), ("key", key.is_none())]
                    .into_iter()
                    .filter(|(_, m)| *m)
                    .map(|(k, _)| k)
                    .collect();
                return Err(error(
                    missing[0],
                    format!("ca, cert and key go together (missing {})", missing.join(", ")),
                ));
            }
        }
        config.check_development_settings(issuer_given)?;
        if let StoreKind::Postgres(url) = &config.store {
            let url = if config.store_allow_plaintext { url.clone().allowing_plaintext() } else { url.clone() };
            url.check_plaintext().map_err(|reason| error("store", reason))?;
            config.store = StoreKind::Postgres(url);
        }
        Ok(config)
    }
}

impl ServeConfig {
    /// The listen addresses (gRPC, admin, FHIR door, browser view) that are not loopback
    /// (127.0.0.0/8 or ::1), as `key=address`.
    pub fn non_loopback_listeners(&self) -> Vec<String> {
        self.listeners()
            .into_iter()
            .filter_map(|(key, address)| {
                address.filter(|address| !address.ip().is_loopback()).map(|a| format!("{key}={a}"))
            })
            .collect()
    }

    pub fn relay_settings(&self) -> RelaySettings {
        RelaySettings {
            acked_notification_retention: chrono::Duration::days(self.notification_retention_days.into()),
            access_retention: chrono::Duration::days(self.access_retention_days.into()),
            retention_interval: Duration::from_secs(self.retention_interval_secs),
            max_upload_records: self.max_upload_records,
            max_refresh_removal_percent: self.max_refresh_removal_percent,
            max_refresh_rejected_percent: self.max_refresh_rejected_percent,
            // The memory store has no data directory: held notifications stay in memory only.
            // With PostgreSQL the data directory holds only the spill.
            spill_dir: (self.store != StoreKind::Memory).then(|| self.data_dir.clone()),
            max_held_notifications: self.max_held_notifications,
            feed_poll_interval: Duration::from_millis(self.feed_poll_ms),
            max_subscriptions_per_la: self.max_subscriptions_per_la,
            search_rate_per_second: self.search_rate_per_second,
            search_burst: self.search_burst,
            unusual_access_distinct_people_per_hour: self.unusual_access_distinct_people_per_hour,
            checkpoint_interval: Duration::from_secs(self.checkpoint_interval_secs),
            ..RelaySettings::default()
        }
    }

    /// A PostgreSQL store's settings, if that is the store.
    pub fn postgres_options(&self) -> Option<crate::store::postgres::PostgresOptions> {
        let StoreKind::Postgres(url) = &self.store else { return None };
        Some(crate::store::postgres::PostgresOptions {
            connect: crate::store::postgres::ConnectOptions {
                url: url.clone(),
                password_file: self.store_password_file.clone(),
                pool_size: self.store_pool_size,
            },
            write_timeout: Duration::from_millis(self.store_write_timeout_ms),
        })
    }

    /// What bearer tokens of the FHIR door must say.
    pub fn token_settings(&self) -> token::TokenSettings {
        token::TokenSettings {
            issuer: self.fhir_issuer.clone(),
            audience: self.fhir_audience.clone(),
            user_id_claim: self.fhir_user_id_claim.clone(),
            name_claim: self.fhir_name_claim.clone(),
            role_code_claim: self.fhir_role_code_claim.clone(),
            care_settings: crate::fhir::care_setting::CareSettings {
                claim: self.fhir_care_setting_claim.clone(),
                by_organisation: self
                    .fhir_care_settings
                    .iter()
                    .filter_map(|entry| crate::fhir::care_setting::parse_entry(entry).ok())
                    .collect(),
            },
            ..token::TokenSettings::default()
        }
    }

    /// The effective configuration as TOML. No setting holds a secret in
    /// clear: the key and the store's password file are paths, never their
    /// contents, and a store URL is shown with its password redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|error| format!("# cannot render: {error}\n"))
    }
}
