//! Configuration of `serve`: a TOML file (`--config`), then `CPIS_*`
//! environment variables, then flags, each overriding the one before, then
//! defaults. One struct ([`ServeSettings`], in `settings`) serves as both
//! the clap arguments and the file schema, so a key has the same name
//! everywhere (`--max-message-bytes`, `CPIS_MAX_MESSAGE_BYTES`,
//! `max_message_bytes`); here it is resolved into the effective
//! [`ServeConfig`]. Invalid values name their key.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use serde::Serialize;

use crate::{auth::token, certs, relay::RelaySettings};

mod development;
pub mod error;
mod listeners;
mod settings;
mod store_kind;
pub use error::ConfigError;
pub use settings::ServeSettings;
pub use store_kind::StoreKind;

/// A text setting, or its default; never empty.
fn text(key: &str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    match value {
        Some(value) if value.trim().is_empty() => Err(error(key, "must not be empty")),
        Some(value) => Ok(value.trim().to_owned()),
        None => Ok(default.to_owned()),
    }
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
    pub create_log_key: bool,
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
    /// `KEY@URL` of each witness, checked by `resolve`.
    pub witnesses: Vec<String>,
    pub witness_quorum: Option<usize>,
    pub witness_ca: Option<PathBuf>,
    /// Traces are off without it.
    pub otlp_endpoint: Option<String>,
    pub trace_sample_ratio: f64,
}

impl ServeSettings {
    /// Applies defaults and checks every value.
    pub fn resolve(self) -> Result<ServeConfig, ConfigError> {
        let issuer_given = self.fhir_issuer.is_some();
        let positive =
            |key: &str, value: u64| if value == 0 { Err(error(key, "must be at least 1")) } else { Ok(value) };
        let percent = |key: &str, value: u32| {
            if value > 100 { Err(error(key, "must be a percentage, 0 to 100")) } else { Ok(value) }
        };
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from("data"));
        let traces = crate::traces::TraceConfig::resolve(
            self.otlp_endpoint.as_deref(),
            self.trace_sample_ratio,
            "otlp_endpoint",
            "trace_sample_ratio",
        )?;
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
            create_log_key: self.create_log_key.unwrap_or(false),
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
                crate::auth::care_setting::DEFAULT_CLAIM,
            )?,
            fhir_care_settings: self.fhir_care_settings.unwrap_or_default(),
            witnesses: self.witnesses.unwrap_or_default(),
            witness_quorum: self.witness_quorum,
            witness_ca: self.witness_ca,
            otlp_endpoint: traces.as_ref().map(|traces| traces.endpoint.clone()),
            trace_sample_ratio: self.trace_sample_ratio.unwrap_or(crate::traces::DEFAULT_SAMPLE_RATIO),
        };
        crate::access_log::WitnessPolicy::parse(&config.witnesses, config.witness_quorum).map_err(|reason| {
            let key = if reason.starts_with("witness_quorum") { "witness_quorum" } else { "witnesses" };
            error(key, reason)
        })?;
        if let Some(path) = &config.witness_ca {
            let pem =
                std::fs::read_to_string(path).map_err(|e| error("witness_ca", format!("{}: {e}", path.display())))?;
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| error("witness_ca", format!("{}: {e}", path.display())))?;
            if certificates.is_empty() {
                return Err(error("witness_ca", format!("{}: no PEM certificate found", path.display())));
            }
        }
        for entry in &config.fhir_care_settings {
            crate::auth::care_setting::parse_entry(entry).map_err(|reason| error("fhir_care_settings", reason))?;
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
    pub(crate) fn non_loopback_listeners(&self) -> Vec<String> {
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
            // Checked by `resolve`.
            witnesses: crate::access_log::WitnessPolicy::parse(&self.witnesses, self.witness_quorum)
                .ok()
                .flatten()
                .map(|policy| crate::access_log::WitnessPolicy {
                    ca_pem: self.witness_ca.as_ref().and_then(|path| std::fs::read_to_string(path).ok()),
                    ..policy
                })
                .map(Arc::new),
            ..RelaySettings::default()
        }
    }

    /// A PostgreSQL store's settings, if that is the store.
    pub(crate) fn postgres_options(&self) -> Option<crate::store::postgres::PostgresOptions> {
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

    /// The trace exporter's settings; `None` (traces off) without an endpoint.
    pub fn traces(&self) -> Option<crate::traces::TraceConfig> {
        let endpoint = self.otlp_endpoint.clone()?;
        Some(crate::traces::TraceConfig { endpoint, sample_ratio: self.trace_sample_ratio })
    }

    /// What bearer tokens of the FHIR door must say.
    pub(crate) fn token_settings(&self) -> token::TokenSettings {
        token::TokenSettings {
            issuer: self.fhir_issuer.clone(),
            audience: self.fhir_audience.clone(),
            user_id_claim: self.fhir_user_id_claim.clone(),
            name_claim: self.fhir_name_claim.clone(),
            role_code_claim: self.fhir_role_code_claim.clone(),
            care_settings: crate::auth::care_setting::CareSettings {
                claim: self.fhir_care_setting_claim.clone(),
                by_organisation: self
                    .fhir_care_settings
                    .iter()
                    .filter_map(|entry| crate::auth::care_setting::parse_entry(entry).ok())
                    .collect(),
            },
            ..token::TokenSettings::default()
        }
    }

    /// The effective configuration as TOML. No setting holds a secret in
    /// clear: the key and the store's password file are paths, never their
    /// contents, and a store URL is shown with its password redacted.
    pub(crate) fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|error| format!("# cannot render: {error}\n"))
    }
}
