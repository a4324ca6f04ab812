//! Configuration of `deliver`: a TOML file (`--config`), then
//! `CPIS_DELIVER_*` environment variables, then flags, each overriding the
//! one before, then defaults, as `serve` does (see [`crate::config`]). One
//! struct is both the clap arguments and the file schema, so a key has the
//! same name everywhere (`--webhook-timeout-secs`,
//! `CPIS_DELIVER_WEBHOOK_TIMEOUT_SECS`, `webhook_timeout_secs`). Invalid
//! values name their key. No setting holds a secret: the webhook secret is
//! read from `secret_file`, never taken from a flag or variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;
use serde::{Deserialize, Deserializer, Serialize};

use super::{
    Agent, AgentOptions, Sink,
    files::{self, DeadLetters, OutboxSink},
    log_check::LogCheckOptions,
    retry::Backoff,
    webhook::{self, WebhookOptions, WebhookSecret, WebhookSink},
};
use crate::{
    config::ConfigError,
    tls::PemText,
    transparency::{
        VerifierKey,
        cosignature::{CosignerKey, key_text},
    },
};

fn error(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), reason: reason.into() }
}

/// Every `deliver` setting, optional at each layer.
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverSettings {
    /// Relay address; repeat (or comma-separate) for several, tried in turn [default: https://localhost:50051]
    #[arg(long, env = "CPIS_DELIVER_SERVER", value_delimiter = ',')]
    #[serde(default, deserialize_with = "one_or_many")]
    pub server: Vec<String>,
    /// A development identity in --certs-dir, for example la-706
    #[arg(long = "as", env = "CPIS_DELIVER_AS")]
    #[serde(rename = "as")]
    pub identity: Option<String>,
    /// Directory of development certificates [default: certs/dev]
    #[arg(long, env = "CPIS_DELIVER_CERTS_DIR")]
    pub certs_dir: Option<PathBuf>,
    /// CA certificate (PEM) that issued the relay's certificate
    #[arg(long, env = "CPIS_DELIVER_CA")]
    pub ca: Option<PathBuf>,
    /// The local authority's client certificate (PEM)
    #[arg(long, env = "CPIS_DELIVER_CERT")]
    pub cert: Option<PathBuf>,
    /// The local authority's client private key (PEM)
    #[arg(long, env = "CPIS_DELIVER_KEY")]
    pub key: Option<PathBuf>,
    /// Webhook URL: https, or http to localhost, 127.0.0.1 or ::1 only
    #[arg(long, env = "CPIS_DELIVER_WEBHOOK")]
    pub webhook: Option<String>,
    /// File holding the webhook signing secret, `whsec_` + base64
    #[arg(long, env = "CPIS_DELIVER_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the webhook receiver against, instead of the system's roots
    #[arg(long, env = "CPIS_DELIVER_WEBHOOK_CA")]
    pub webhook_ca: Option<PathBuf>,
    /// Seconds one webhook attempt may take [default: 30]
    #[arg(long, env = "CPIS_DELIVER_WEBHOOK_TIMEOUT_SECS")]
    pub webhook_timeout_secs: Option<u64>,
    /// Directory notifications refused by the webhook receiver are parked in [default: dead-letter]
    #[arg(long, env = "CPIS_DELIVER_DEAD_LETTER_DIR")]
    pub dead_letter_dir: Option<PathBuf>,
    /// Webhook attempts before a notification is parked as undeliverable; 0: retry forever [default: 0]
    #[arg(long, env = "CPIS_DELIVER_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// Outbox directory: one file per notification, named in sequence order
    #[arg(long, env = "CPIS_DELIVER_OUTBOX")]
    pub outbox: Option<PathBuf>,
    /// Also write an XML rendering of each notification to the outbox [default: false]
    #[arg(long, env = "CPIS_DELIVER_OUTBOX_XML", num_args = 0..=1, default_missing_value = "true")]
    pub outbox_xml: Option<bool>,
    /// Admin HTTP listen address: /healthz, /metrics [default: 127.0.0.1:9091]
    #[arg(long, env = "CPIS_DELIVER_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// First retry delay of a failed delivery, in milliseconds; doubles per attempt [default: 1000]
    #[arg(long, env = "CPIS_DELIVER_RETRY_INITIAL_MS")]
    pub retry_initial_ms: Option<u64>,
    /// Longest retry delay of a failed delivery, in seconds [default: 300]
    #[arg(long, env = "CPIS_DELIVER_RETRY_MAX_SECS")]
    pub retry_max_secs: Option<u64>,
    /// First delay before reconnecting to the relay, in milliseconds [default: 500]
    #[arg(long, env = "CPIS_DELIVER_RECONNECT_INITIAL_MS")]
    pub reconnect_initial_ms: Option<u64>,
    /// Longest delay before reconnecting to the relay, in seconds [default: 30]
    #[arg(long, env = "CPIS_DELIVER_RECONNECT_MAX_SECS")]
    pub reconnect_max_secs: Option<u64>,
    /// Seconds one notification may wait for delivery before /healthz says unhealthy [default: 300]
    #[arg(long, env = "CPIS_DELIVER_UNHEALTHY_AFTER_SECS")]
    pub unhealthy_after_secs: Option<u64>,
    /// OpenTelemetry traces: OTLP/gRPC collector endpoint, http://HOST:4317 or https://HOST:PORT; off without it [default: off]
    #[arg(long, env = "CPIS_DELIVER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded, 0 to 1; a notification whose search was traced follows that search's decision [default: 0.1]
    #[arg(long, env = "CPIS_DELIVER_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
    /// Check that each notification delivered is in the relay's access log [default: true]
    #[arg(long, env = "CPIS_DELIVER_LOG_CHECK", num_args = 0..=1, default_missing_value = "true")]
    pub log_check: Option<bool>,
    /// Directory the log check keeps its trusted checkpoint, unconfirmed notifications and evidence in [default: log-check]
    #[arg(long, env = "CPIS_DELIVER_LOG_STATE_DIR")]
    pub log_state_dir: Option<PathBuf>,
    /// The relay's access log verifier key (name+id+base64), or a file holding it; without it the first key the relay shows is pinned
    #[arg(long, env = "CPIS_DELIVER_LOG_VERIFIER_KEY")]
    pub log_verifier_key: Option<String>,
    /// A witness's cosigner key (or a file holding it) whose cosignature makes a checkpoint trusted; repeat for several
    #[arg(long = "witness-key", env = "CPIS_DELIVER_WITNESS_KEY", value_delimiter = ',')]
    #[serde(default, deserialize_with = "one_or_many")]
    pub witness_key: Vec<String>,
    /// How many of the witness keys must have cosigned a checkpoint [default: all of them]
    #[arg(long, env = "CPIS_DELIVER_WITNESS_QUORUM")]
    pub witness_quorum: Option<usize>,
    /// Seconds between checks of the access log [default: 5]
    #[arg(long, env = "CPIS_DELIVER_LOG_CHECK_INTERVAL_SECS")]
    pub log_check_interval_secs: Option<u64>,
    /// Seconds a delivered notification may wait for a trusted checkpoint covering its access before it is a problem [default: 60]
    #[arg(long, env = "CPIS_DELIVER_LOG_CONFIRM_WITHIN_SECS")]
    pub log_confirm_within_secs: Option<u64>,
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(server) => vec![server],
        OneOrMany::Many(servers) => servers,
    })
}

/// The effective settings.
#[derive(Clone, Debug, Serialize)]
pub struct DeliverConfig {
    pub server: Vec<String>,
    #[serde(rename = "as")]
    pub identity: Option<String>,
    pub certs_dir: PathBuf,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub webhook: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub webhook_ca: Option<PathBuf>,
    pub webhook_timeout_secs: u64,
    pub dead_letter_dir: PathBuf,
    pub max_attempts: u32,
    pub outbox: Option<PathBuf>,
    pub outbox_xml: bool,
    pub admin_listen: SocketAddr,
    pub retry_initial_ms: u64,
    pub retry_max_secs: u64,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_secs: u64,
    pub unhealthy_after_secs: u64,
    pub otlp_endpoint: Option<String>,
    pub trace_sample_ratio: f64,
    pub log_check: bool,
    pub log_state_dir: PathBuf,
    pub log_verifier_key: Option<String>,
    pub witness_key: Vec<String>,
    pub witness_quorum: Option<usize>,
    pub log_check_interval_secs: u64,
    pub log_confirm_within_secs: u64,
}

impl DeliverSettings {
    /// Reads a TOML file of these settings.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| error("config", format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| error("config", format!("{}: {}", path.display(), e.message().trim())))
    }

    /// Settings of `self` win; `lower` fills what `self` leaves unset.
    pub fn over(self, lower: Self) -> Self {
        Self {
            server: if self.server.is_empty() { lower.server } else { self.server },
            identity: self.identity.or(lower.identity),
            certs_dir: self.certs_dir.or(lower.certs_dir),
            ca: self.ca.or(lower.ca),
            cert: self.cert.or(lower.cert),
            key: self.key.or(lower.key),
            webhook: self.webhook.or(lower.webhook),
            secret_file: self.secret_file.or(lower.secret_file),
            webhook_ca: self.webhook_ca.or(lower.webhook_ca),
            webhook_timeout_secs: self.webhook_timeout_secs.or(lower.webhook_timeout_secs),
            dead_letter_dir: self.dead_letter_dir.or(lower.dead_letter_dir),
            max_attempts: self.max_attempts.or(lower.max_attempts),
            outbox: self.outbox.or(lower.outbox),
            outbox_xml: self.outbox_xml.or(lower.outbox_xml),
            admin_listen: self.admin_listen.or(lower.admin_listen),
            retry_initial_ms: self.retry_initial_ms.or(lower.retry_initial_ms),
            retry_max_secs: self.retry_max_secs.or(lower.retry_max_secs),
            reconnect_initial_ms: self.reconnect_initial_ms.or(lower.reconnect_initial_ms),
            reconnect_max_secs: self.reconnect_max_secs.or(lower.reconnect_max_secs),
            unhealthy_after_secs: self.unhealthy_after_secs.or(lower.unhealthy_after_secs),
            otlp_endpoint: self.otlp_endpoint.or(lower.otlp_endpoint),
            trace_sample_ratio: self.trace_sample_ratio.or(lower.trace_sample_ratio),
            log_check: self.log_check.or(lower.log_check),
            log_state_dir: self.log_state_dir.or(lower.log_state_dir),
            log_verifier_key: self.log_verifier_key.or(lower.log_verifier_key),
            witness_key: if self.witness_key.is_empty() { lower.witness_key } else { self.witness_key },
            witness_quorum: self.witness_quorum.or(lower.witness_quorum),
            log_check_interval_secs: self.log_check_interval_secs.or(lower.log_check_interval_secs),
            log_confirm_within_secs: self.log_confirm_within_secs.or(lower.log_confirm_within_secs),
        }
    }

    /// Applies defaults and checks every value that needs no file read.
    pub fn resolve(self) -> Result<DeliverConfig, ConfigError> {
        let positive =
            |key: &str, value: u64| if value == 0 { Err(error(key, "must be at least 1")) } else { Ok(value) };
        let traces = crate::traces::TraceConfig::resolve(
            self.otlp_endpoint.as_deref(),
            self.trace_sample_ratio,
            "otlp_endpoint",
            "trace_sample_ratio",
        )?;
        let config = DeliverConfig {
            server: if self.server.is_empty() { vec!["https://localhost:50051".to_owned()] } else { self.server },
            identity: self.identity,
            certs_dir: self.certs_dir.unwrap_or_else(|| PathBuf::from(crate::certs::DEV_DIR)),
            ca: self.ca,
            cert: self.cert,
            key: self.key,
            webhook: self.webhook,
            secret_file: self.secret_file,
            webhook_ca: self.webhook_ca,
            webhook_timeout_secs: positive("webhook_timeout_secs", self.webhook_timeout_secs.unwrap_or(30))?,
            dead_letter_dir: self.dead_letter_dir.unwrap_or_else(|| PathBuf::from("dead-letter")),
            max_attempts: self.max_attempts.unwrap_or(0),
            outbox: self.outbox,
            outbox_xml: self.outbox_xml.unwrap_or(false),
            admin_listen: self.admin_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9091))),
            retry_initial_ms: positive("retry_initial_ms", self.retry_initial_ms.unwrap_or(1000))?,
            retry_max_secs: positive("retry_max_secs", self.retry_max_secs.unwrap_or(300))?,
            reconnect_initial_ms: positive("reconnect_initial_ms", self.reconnect_initial_ms.unwrap_or(500))?,
            reconnect_max_secs: positive("reconnect_max_secs", self.reconnect_max_secs.unwrap_or(30))?,
            unhealthy_after_secs: positive("unhealthy_after_secs", self.unhealthy_after_secs.unwrap_or(300))?,
            otlp_endpoint: traces.as_ref().map(|traces| traces.endpoint.clone()),
            trace_sample_ratio: self.trace_sample_ratio.unwrap_or(crate::traces::DEFAULT_SAMPLE_RATIO),
            log_check: self.log_check.unwrap_or(true),
            log_state_dir: self.log_state_dir.unwrap_or_else(|| PathBuf::from("log-check")),
            log_verifier_key: self.log_verifier_key,
            witness_key: self.witness_key,
            witness_quorum: self.witness_quorum,
            log_check_interval_secs: positive("log_check_interval_secs", self.log_check_interval_secs.unwrap_or(5))?,
            log_confirm_within_secs: positive("log_confirm_within_secs", self.log_confirm_within_secs.unwrap_or(60))?,
        };
        if !config.log_check
            && (config.log_verifier_key.is_some() || !config.witness_key.is_empty() || config.witness_quorum.is_some())
        {
            return Err(error("log_check", "log_verifier_key and the witness keys need the log check on"));
        }
        match config.witness_quorum {
            Some(_) if config.witness_key.is_empty() => {
                return Err(error("witness_quorum", "no witness key is configured"));
            }
            Some(quorum) if quorum == 0 || quorum > config.witness_key.len() => {
                return Err(error(
                    "witness_quorum",
                    format!("must be 1 to {} (the witness keys configured)", config.witness_key.len()),
                ));
            }
            _ => {}
        }
        if config.server.iter().any(|server| server.trim().is_empty()) {
            return Err(error("server", "an address is empty"));
        }
        if config.webhook.is_none() && config.outbox.is_none() {
            return Err(error("webhook", "no sink: give --webhook URL (with --secret-file), --outbox DIR, or both"));
        }
        if let Some(url) = &config.webhook {
            webhook::parse_url(url).map_err(|reason| error("webhook", reason))?;
            if config.webhook_ca.is_some() && url.starts_with("http:") {
                return Err(error("webhook_ca", "needs an https webhook"));
            }
            if config.secret_file.is_none() {
                return Err(error("secret_file", "a webhook needs a signing secret file (whsec_...)"));
            }
        } else if config.secret_file.is_some() || config.webhook_ca.is_some() {
            return Err(error("webhook", "secret_file and webhook_ca need a webhook"));
        }
        if config.outbox_xml && config.outbox.is_none() {
            return Err(error("outbox_xml", "needs an outbox directory"));
        }
        if config.outbox.is_some() && config.outbox == Some(config.dead_letter_dir.clone()) && config.webhook.is_some()
        {
            return Err(error("dead_letter_dir", "must not be the outbox directory"));
        }
        match (&config.ca, &config.cert, &config.key) {
            (Some(_), Some(_), Some(_)) | (None, None, None) => {}
            _ => return Err(error("cert", "ca, cert and key go together")),
        }
        Ok(config)
    }
}

impl DeliverConfig {
    /// The trace exporter's settings; `None` (traces off) without an endpoint.
    pub fn traces(&self) -> Option<crate::traces::TraceConfig> {
        let endpoint = self.otlp_endpoint.clone()?;
        Some(crate::traces::TraceConfig { endpoint, sample_ratio: self.trace_sample_ratio })
    }

    /// The effective configuration as TOML (paths, never key or secret contents).
    pub(crate) fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|error| format!("# cannot render: {error}\n"))
    }

    pub(crate) fn retry_backoff(&self) -> Backoff {
        Backoff {
            initial: Duration::from_millis(self.retry_initial_ms),
            max: Duration::from_secs(self.retry_max_secs).max(Duration::from_millis(self.retry_initial_ms)),
        }
    }

    /// Reads the secret and CA files, prepares the directories and builds
    /// the agent that connects with `pem`.
    pub fn agent(&self, pem: PemText) -> Result<Agent, ConfigError> {
        let options = AgentOptions {
            servers: self.server.clone(),
            pem,
            reconnect: Backoff {
                initial: Duration::from_millis(self.reconnect_initial_ms),
                max: Duration::from_secs(self.reconnect_max_secs).max(Duration::from_millis(self.reconnect_initial_ms)),
            },
            read_ahead: 64,
        };
        let unhealthy_after = Duration::from_secs(self.unhealthy_after_secs);
        Agent::new(options, self.sinks()?, unhealthy_after, self.log_check_options()?)
            .map_err(|reason| error("log_state_dir", reason))
    }

    /// The log check's options, its keys read; `None` when it is off.
    fn log_check_options(&self) -> Result<Option<LogCheckOptions>, ConfigError> {
        if !self.log_check {
            return Ok(None);
        }
        let verifier = match &self.log_verifier_key {
            Some(given) => {
                let text = key_text(given, "log_verifier_key").map_err(|reason| error("log_verifier_key", reason))?;
                Some(VerifierKey::parse(&text).map_err(|reason| error("log_verifier_key", reason.to_string()))?)
            }
            None => None,
        };
        let witnesses = self
            .witness_key
            .iter()
            .map(|given| {
                let text = key_text(given, "witness_key").map_err(|reason| error("witness_key", reason))?;
                CosignerKey::parse(&text).map_err(|reason| error("witness_key", reason.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(LogCheckOptions {
            state_dir: self.log_state_dir.clone(),
            verifier,
            quorum: self.witness_quorum.unwrap_or(witnesses.len()),
            witnesses,
            interval: Duration::from_secs(self.log_check_interval_secs),
            confirm_within: Duration::from_secs(self.log_confirm_within_secs),
        }))
    }

    fn sinks(&self) -> Result<Vec<Sink>, ConfigError> {
        let backoff = self.retry_backoff();
        let mut sinks = Vec::new();
        if let (Some(url), Some(secret_file)) = (&self.webhook, &self.secret_file) {
            let url = webhook::parse_url(url).map_err(|reason| error("webhook", reason))?;
            warn_if_others_can_read(secret_file);
            let secret = std::fs::read_to_string(secret_file)
                .map_err(|e| error("secret_file", format!("{}: {e}", secret_file.display())))
                .and_then(|text| {
                    WebhookSecret::parse(&text)
                        .map_err(|reason| error("secret_file", format!("{}: {reason}", secret_file.display())))
                })?;
            let ca_pem = match &self.webhook_ca {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| error("webhook_ca", format!("{}: {e}", path.display())))?,
                ),
                None => None,
            };
            let tls = if url.scheme_str() == Some("https") {
                webhook::tls_config(ca_pem.as_deref()).map_err(|reason| error("webhook_ca", reason))?
            } else {
                // Plain local HTTP never uses TLS, so the system's roots need not exist.
                empty_tls().map_err(|reason| error("webhook", reason))?
            };
            files::prepare_dir(&self.dead_letter_dir)
                .map_err(|e| error("dead_letter_dir", format!("{}: {e}", self.dead_letter_dir.display())))?;
            let options = WebhookOptions {
                url,
                secret,
                tls,
                timeout: Duration::from_secs(self.webhook_timeout_secs),
                backoff,
                max_attempts: (self.max_attempts > 0).then_some(self.max_attempts),
            };
            let dead_letters = DeadLetters { dir: self.dead_letter_dir.clone(), backoff };
            sinks.push(Sink::Webhook(Box::new(WebhookSink::new(options, dead_letters))));
        }
        if let Some(dir) = &self.outbox {
            files::prepare_dir(dir).map_err(|e| error("outbox", format!("{}: {e}", dir.display())))?;
            sinks.push(Sink::Outbox(OutboxSink { dir: dir.clone(), xml: self.outbox_xml, backoff }));
        }
        Ok(sinks)
    }
}

/// The secret signs every notification: only the agent's user should read it.
fn warn_if_others_can_read(path: &std::path::Path) {
    #[cfg(unix)]
    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions());
        if mode & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{:o}", mode & 0o777), "the webhook secret file is readable by other users; chmod 600 it");
        }
    }
}

fn empty_tls() -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_text: &str) -> DeliverSettings {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file = settings("server = \"https://a:1\"\nwebhook = \"https://la.example.org/h\"\nsecret_file = \"s\"\n");
        let flags = DeliverSettings { retry_initial_ms: Some(5), ..DeliverSettings::default() };
        let config = flags.over(file).resolve().unwrap();
        assert_eq!(config.server, ["https://a:1"]);
        assert_eq!(config.retry_initial_ms, 5);
        assert_eq!(config.webhook_timeout_secs, 30);
        assert_eq!(config.max_attempts, 0);
        let many = settings("server = [\"https://a:1\", \"https://b:1\"]\noutbox = \"o\"\n").resolve().unwrap();
        assert_eq!(many.server.len(), 2);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let key = |text: &str| settings(text).resolve().unwrap_err().key;
        assert_eq!(key("as = \"la-706\"\n"), "webhook");
        assert_eq!(key("webhook = \"http://la.example.org/h\"\nsecret_file = \"s\"\n"), "webhook");
        assert_eq!(key("webhook = \"https://la.example.org/h\"\n"), "secret_file");
        assert_eq!(key("outbox = \"o\"\noutbox_xml = true\nretry_max_secs = 0\n"), "retry_max_secs");
        assert_eq!(key("outbox_xml = true\nwebhook = \"http://localhost/h\"\nsecret_file = \"s\"\n"), "outbox_xml");
        assert!(toml::from_str::<DeliverSettings>("outbox = \"o\"\nunknown = 1\n").is_err());
    }
}
