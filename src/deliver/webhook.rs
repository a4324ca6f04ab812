//! The webhook sink: an HTTP POST of each notification's JSON, signed as the
//! Standard Webhooks specification says, so any Standard Webhooks library
//! verifies it:
//!
//! - `webhook-id`: the notification id (stable across redelivery; receivers
//!   dedupe on it);
//! - `webhook-timestamp`: unix seconds of this attempt (each retry is signed
//!   afresh, so a receiver's 5-minute tolerance holds however long retries last);
//! - `webhook-signature`: `v1,` + base64 of HMAC-SHA256 over
//!   `{id}.{timestamp}.{body}`, keyed with the base64 secret after `whsec_`.
//!
//! Answers: 2xx is delivered; 408, 429, 5xx, timeouts and connection or TLS
//! errors are retried in order with exponential backoff and jitter, never
//! sooner than a `Retry-After` (seconds or HTTP date), forever unless
//! `max_attempts` is set. Only 400 and 422, a refusal of this one message,
//! park the notification in the dead-letter directory so delivery goes on.
//! Any other answer (3xx since redirects are not followed, 401, 403, 404,
//! 410, ...) says the receiver is misconfigured (a rotated secret, a wrong
//! URL), not that the message is bad: dead-lettering would drain the whole
//! backlog, so it is retried with backoff, forever whatever `max_attempts`
//! says, nothing is acknowledged, and the agent turns unhealthy (and
//! `cpis_deliver_receiver_misconfigured` alerts) until the receiver takes
//! one. Logs carry the sequence, notification id and status, never the body
//! or the receiver's answer.

use std::time::{Duration, SystemTime};

use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use sha2::Sha256;
use tokio::sync::watch;
use tracing::Instrument;

use super::{
    Outcome,
    files::{DeadLetters, Rejection},
    metrics::{self, SinkKind, Status},
    payload::Delivery,
    retry::{self, Backoff},
};

/// The longest `Retry-After` obeyed as given; longer ones wait this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How much of a receiver's answer a dead letter keeps.
const EXCERPT_BYTES: usize = 1024;

/// A Standard Webhooks signing secret. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct WebhookSecret {
    /// HMAC-SHA256 keyed with the secret, cloned for each signature.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_` followed by base64 of 24 to 64 random bytes (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text.trim().strip_prefix("whsec_").ok_or("does not start with whsec_")?;
        let key = STANDARD.decode(encoded).map_err(|error| format!("not base64 after whsec_: {error}"))?;
        if key.len() < 24 {
            return Err(format!("the key is {} bytes; Standard Webhooks secrets are 24 to 64 random bytes", key.len()));
        }
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|error| error.to_string())?;
        Ok(Self { keyed })
    }

    /// `v1,` + base64(HMAC-SHA256(key, `{id}.{timestamp}.{body}`)).
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = self.keyed.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// Checks a webhook URL: HTTPS, or plain HTTP to this machine only
/// (`localhost`, `127.0.0.1`, `::1`), where nothing crosses a network.
pub(crate) fn parse_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text.parse().map_err(|error| format!("not a URL: {error}"))?;
    let host = uri.host().ok_or("has no host")?;
    // Credentials in the URL would be written to logs and dead letters.
    if uri.authority().is_some_and(|authority| authority.as_str().contains('@')) {
        return Err("must not carry a user name or password; the receiver authenticates the signature".into());
    }
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if matches!(host, "localhost" | "127.0.0.1" | "::1" | "[::1]") => Ok(uri),
        Some("http") => Err("plain http is allowed only to localhost, 127.0.0.1 or ::1; use https".into()),
        _ => Err("must be an https:// (or local http://) URL".into()),
    }
}

/// TLS for the receiver: its certificate verified against `ca_pem` alone
/// when given, else against the operating system's trusted roots.
pub fn tls_config(ca_pem: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let certificate = certificate.map_err(|error| format!("webhook CA: {error}"))?;
                roots.add(certificate).map_err(|error| format!("webhook CA: {error}"))?;
            }
            if roots.is_empty() {
                return Err("webhook CA: no PEM certificate found".into());
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(format!(
                    "no trusted CA certificates found on this system ({} errors); pass --webhook-ca",
                    native.errors.len()
                ));
            }
        }
    }
    // No ALPN here: the connector offers http/1.1 itself.
    Ok(rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Where and how to POST.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    pub url: Uri,
    pub secret: WebhookSecret,
    /// TLS settings for https URLs (see [`tls_config`]).
    pub tls: rustls::ClientConfig,
    /// Limit on one attempt: connect, send and read the answer.
    pub timeout: Duration,
    pub backoff: Backoff,
    /// Attempts before a notification is parked as undeliverable; `None`: retry forever.
    pub max_attempts: Option<u32>,
}

/// The webhook sink: a pooled HTTP/1.1 client and the dead-letter directory.
#[derive(Clone, Debug)]
pub struct WebhookSink {
    options: WebhookOptions,
    /// The URL without its query, which may hold a token, for logs and dead letters.
    destination: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    dead_letters: DeadLetters,
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    Refused {
        status: Option<u16>,
        excerpt: String,
    },
    /// `misconfigured`: the answer says the receiver is set up wrong, not that it is busy.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
        misconfigured: bool,
    },
}

impl WebhookSink {
    pub fn new(options: WebhookOptions, dead_letters: DeadLetters) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(options.timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(options.tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let destination = format!(
            "{}://{}{}",
            options.url.scheme_str().unwrap_or("https"),
            options.url.authority().map(|authority| authority.as_str()).unwrap_or(""),
            options.url.path()
        );
        Self { options, destination, client, dead_letters }
    }

    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// Delivers one notification: retries until the receiver takes or
    /// refuses it, attempts run out, or shutdown is asked for (an attempt
    /// already sent finishes first).
    pub async fn deliver(&self, delivery: &Delivery, shutdown: &mut watch::Receiver<bool>, status: &Status) -> Outcome {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (reason, retry_after, misconfigured) = match self.attempt(delivery).await {
                Attempt::Delivered => {
                    status.receiver_misconfigured(SinkKind::Webhook, None);
                    metrics::delivered(SinkKind::Webhook);
                    tracing::debug!(sequence = delivery.sequence, attempts, "webhook delivered");
                    return Outcome::Delivered;
                }
                Attempt::Refused { status, excerpt } => {
                    let rejection = Rejection {
                        status,
                        response_excerpt: excerpt,
                        reason: match status {
                            Some(status) => format!("the receiver answered HTTP {status}"),
                            None => "the request could not be built".into(),
                        },
                        attempts,
                    };
                    return self.park(delivery, &rejection, shutdown).await;
                }
                Attempt::Retry { reason, retry_after, misconfigured } => (reason, retry_after, misconfigured),
            };
            status.receiver_misconfigured(SinkKind::Webhook, misconfigured.then(|| reason.clone()));
            if !misconfigured && self.options.max_attempts.is_some_and(|max| attempts >= max) {
                let rejection = Rejection {
                    status: None,
                    response_excerpt: String::new(),
                    reason: format!("gave up after {attempts} attempts; the last: {reason}"),
                    attempts,
                };
                return self.park(delivery, &rejection, shutdown).await;
            }
            metrics::retried(SinkKind::Webhook);
            let backoff = self.options.backoff.delay(attempts);
            let delay = retry_after.map_or(backoff, |after| after.min(MAX_RETRY_AFTER).max(backoff));
            if misconfigured {
                tracing::error!(
                    sequence = delivery.sequence,
                    notification_id = %delivery.notification_id,
                    destination = %self.destination,
                    attempts,
                    %reason,
                    retry_in_ms = delay.as_millis() as u64,
                    "the webhook receiver looks misconfigured (secret, URL or access); not acknowledging, retrying"
                );
            } else {
                tracing::warn!(
                sequence = delivery.sequence,
                notification_id = %delivery.notification_id,
                destination = %self.destination,
                attempts,
                %reason,
                    retry_in_ms = delay.as_millis() as u64,
                    "webhook delivery failed; retrying"
                );
            }
            if !retry::wait(delay, shutdown).await {
                return Outcome::Interrupted;
            }
        }
    }

    async fn park(&self, delivery: &Delivery, rejection: &Rejection, shutdown: &mut watch::Receiver<bool>) -> Outcome {
        if self.dead_letters.park(SinkKind::Webhook, &self.destination, delivery, rejection, shutdown).await {
            Outcome::DeadLettered
        } else {
            Outcome::Interrupted
        }
    }

    /// One signed POST, bounded by the timeout, in a trace span of its own
    /// whose context goes to the receiver as `traceparent`.
    async fn attempt(&self, delivery: &Delivery) -> Attempt {
        let span = crate::traced_span!(
            "webhook",
            otel.name = "webhook POST",
            otel.kind = "client",
            http.request.method = "POST",
            http.response.status_code = tracing::field::Empty,
        );
        self.attempt_in_span(delivery, &span).instrument(span.clone()).await
    }

    async fn attempt_in_span(&self, delivery: &Delivery, span: &tracing::Span) -> Attempt {
        let timestamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let signature = self.options.secret.sign(&delivery.notification_id, timestamp, &delivery.json);
        let request = http::Request::post(self.options.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("cpis-relay-deliver/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", &delivery.notification_id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .body(Full::new(delivery.json.clone()));
        let mut request = match request {
            Ok(request) => request,
            // Only a notification id that cannot be a header value gets here.
            Err(error) => {
                return Attempt::Refused { status: None, excerpt: format!("cannot build the request: {error}") };
            }
        };
        crate::traces::inject(request.headers_mut());
        let exchange = async {
            let response = self.client.request(request).await.map_err(|error| super::error_chain(&error))?;
            let status = response.status();
            span.record("http.response.status_code", status.as_u16());
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| retry::parse_retry_after(value, SystemTime::now()));
            let excerpt = read_excerpt(response.into_body()).await;
            Ok::<_, String>((status, retry_after, excerpt))
        };
        match tokio::time::timeout(self.options.timeout, exchange).await {
            Err(_) => Attempt::Retry {
                reason: format!("no answer within {} ms", self.options.timeout.as_millis()),
                retry_after: None,
                misconfigured: false,
            },
            Ok(Err(reason)) => Attempt::Retry { reason, retry_after: None, misconfigured: false },
            Ok(Ok((status, retry_after, excerpt))) => classify(status, retry_after, excerpt),
        }
    }
}

/// What an HTTP answer means for the notification it answered.
fn classify(status: http::StatusCode, retry_after: Option<Duration>, excerpt: String) -> Attempt {
    let code = status.as_u16();
    match code {
        _ if status.is_success() => Attempt::Delivered,
        // This message is refused: park it and go on.
        400 | 422 => Attempt::Refused { status: Some(code), excerpt },
        408 | 429 | 500..=599 => Attempt::Retry { reason: format!("HTTP {code}"), retry_after, misconfigured: false },
        _ => Attempt::Retry { reason: format!("HTTP {code}"), retry_after, misconfigured: true },
    }
}

/// The first [`EXCERPT_BYTES`] of a body as lossy UTF-8; a body that fails
/// part-way keeps what arrived.
async fn read_excerpt(mut body: hyper::body::Incoming) -> String {
    let mut excerpt = Vec::new();
    while excerpt.len() < EXCERPT_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    excerpt.extend_from_slice(&data[..data.len().min(EXCERPT_BYTES - excerpt.len())]);
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&excerpt).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification and its reference libraries.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_enough_bytes() {
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(WebhookSecret::parse("whsec_not base64!").is_err());
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_err());
        assert!(
            format!("{:?}", WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap()).contains("..")
        );
    }

    #[test]
    fn plain_http_only_to_this_machine() {
        assert!(parse_url("https://la.example.org/hooks/cpis").is_ok());
        assert!(parse_url("http://localhost:8080/hook").is_ok());
        assert!(parse_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(parse_url("http://[::1]:8080/hook").is_ok());
        assert!(parse_url("http://la.example.org/hook").is_err());
        assert!(parse_url("http://127.0.0.2/hook").is_err());
        assert!(parse_url("ftp://localhost/hook").is_err());
        assert!(parse_url("https://user:secret@la.example.org/hook").is_err(), "credentials would be logged");
        assert!(parse_url("not a url").is_err());
    }
}
