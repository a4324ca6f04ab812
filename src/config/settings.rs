//! The layers of `serve`'s configuration: [`ServeSettings`], every setting
//! optional, is both the clap arguments (flags and `CPIS_*` variables) and
//! the schema of the TOML file, and one layer is put over another key by key.
//! Defaults and checks are applied afterwards, once (`ServeSettings::resolve`).

use std::{net::SocketAddr, path::PathBuf};

use clap::Args;
use serde::Deserialize;

use super::{ConfigError, StoreKind, error};

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
    /// Ed25519 key (PKCS#8) the access log's checkpoints are signed with, one for the whole deployment (every node), kept outside the data directory; made by `cpis-relay audit init-key`, or created at start with --create-log-key (or in development: every listener on loopback, or --dev-certs) [default: DATA_DIR/access-log.key]
    #[arg(long, env = "CPIS_LOG_KEY")]
    pub log_key: Option<PathBuf>,
    /// Create the access log's key (mode 0600, public key beside it as access-log.pub) if log_key does not exist; without it a node outside development refuses to start with no key [default: false]
    #[arg(long, env = "CPIS_CREATE_LOG_KEY", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub create_log_key: Option<bool>,
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
    /// Browser view (HTTPS with the same mutual TLS; see docs/browser.md) listen address [default: off]
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
    /// Witnesses each checkpoint is sent to (C2SP tlog-witness), as KEY@URL: the witness's public key (`name+id+base64(0x04||key)`, from `cpis-relay witness init-key`) and its URL [default: none]
    #[arg(long = "witness", env = "CPIS_WITNESSES", value_delimiter = ',')]
    pub witnesses: Option<Vec<String>>,
    /// How many of the witnesses must cosign a checkpoint for it to count as published [default: all of them]
    #[arg(long, env = "CPIS_WITNESS_QUORUM")]
    pub witness_quorum: Option<usize>,
    /// CA certificates (PEM) that https:// witnesses are checked against instead of the system's roots [default: the system's]
    #[arg(long, env = "CPIS_WITNESS_CA")]
    pub witness_ca: Option<PathBuf>,
    /// OpenTelemetry traces: OTLP/gRPC collector endpoint, http://HOST:4317 or https://HOST:PORT (system trust roots); traces are off without it [default: off]
    #[arg(long, env = "CPIS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded, 0 to 1; a request whose traceparent is sampled is always recorded, one that is not never [default: 0.1]
    #[arg(long, env = "CPIS_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
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
            create_log_key: self.create_log_key.or(lower.create_log_key),
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
            witnesses: self.witnesses.or(lower.witnesses),
            witness_quorum: self.witness_quorum.or(lower.witness_quorum),
            witness_ca: self.witness_ca.or(lower.witness_ca),
            otlp_endpoint: self.otlp_endpoint.or(lower.otlp_endpoint),
            trace_sample_ratio: self.trace_sample_ratio.or(lower.trace_sample_ratio),
        }
    }
}
