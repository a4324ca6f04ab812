//! The webhook receiver of the `deliver` tests: a real HTTP (or HTTPS)
//! server on 127.0.0.1:0 that verifies every signature with the
//! `standardwebhooks` crate (Standard Webhooks' own Rust library, built on
//! hmac-sha256, not on the agent's hmac/sha2 code), answers as scripted and
//! reports each request, as it arrives, on a channel.

// Each test binary that includes this uses only part of it.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine;
use cpis_relay::deliver::payload::NotificationBody;
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
};

use crate::helpers::TestRelay;

pub const WAIT: Duration = Duration::from_secs(30);

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub webhook_id: String,
    pub signature_valid: bool,
    pub body: NotificationBody,
    /// The relay's acknowledged position for la-706 when the request arrived.
    pub acked_at_arrival: u64,
    pub at: Instant,
    pub answered: u16,
    /// The W3C `traceparent` header, when the agent sent one (traces on).
    pub traceparent: Option<String>,
}

/// What the receiver answers to the next request.
pub enum Reply {
    Status {
        status: u16,
        retry_after: Option<&'static str>,
        body: &'static str,
    },
    /// Answers 200 only once released: the request stays in flight.
    Hold(Arc<Notify>),
}

pub struct ReceiverState {
    secret: String,
    script: Mutex<VecDeque<Reply>>,
    arrivals: mpsc::UnboundedSender<Arrival>,
    acked: Box<dyn Fn() -> u64 + Send + Sync>,
}

pub struct Receiver {
    pub address: SocketAddr,
    pub arrivals: mpsc::UnboundedReceiver<Arrival>,
    /// Failed TLS handshakes (HTTPS receivers only).
    pub handshake_failures: mpsc::UnboundedReceiver<()>,
    pub state: Arc<ReceiverState>,
}

impl Receiver {
    /// A receiver on 127.0.0.1:0, HTTPS when `tls` is given.
    pub async fn start(relay: &TestRelay, secret: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let (sender, arrivals) = mpsc::unbounded_channel();
        let positions = relay.relay.clone();
        let state = Arc::new(ReceiverState {
            secret: secret.to_owned(),
            script: Mutex::default(),
            arrivals: sender,
            acked: Box::new(move || {
                positions.hub().positions().iter().find(|p| p.la_ods_code == "706").map_or(0, |p| p.acked_through)
            }),
        });
        let router = Router::new().route("/hook", post(hook)).with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (failed, handshake_failures) = mpsc::unbounded_channel();
        match tls {
            None => {
                tokio::spawn(async move { axum::serve(listener, router).await });
            }
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                tokio::spawn(async move {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else { return };
                        let (acceptor, router, failed) = (acceptor.clone(), router.clone(), failed.clone());
                        tokio::spawn(async move {
                            match acceptor.accept(tcp).await {
                                Err(_) => {
                                    let _ = failed.send(());
                                }
                                Ok(stream) => {
                                    let service = hyper_util::service::TowerToHyperService::new(router);
                                    let _ = hyper::server::conn::http1::Builder::new()
                                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                        .await;
                                }
                            }
                        });
                    }
                });
            }
        }
        Self { address, arrivals, handshake_failures, state }
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub async fn next(&mut self) -> Arrival {
        tokio::time::timeout(WAIT, self.arrivals.recv()).await.expect("a webhook request in time").unwrap()
    }

    pub fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}/hook", self.address.port())
    }
}

async fn hook(State(state): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> Response {
    let signature_valid = standardwebhooks::Webhook::new(&state.secret).unwrap().verify(&body, &headers).is_ok();
    let webhook_id = headers.get("webhook-id").and_then(|id| id.to_str().ok()).unwrap_or_default().to_owned();
    let parsed: NotificationBody = serde_json::from_slice(&body).expect("the documented JSON shape");
    let reply = state.script.lock().unwrap().pop_front();
    let answered = match &reply {
        Some(Reply::Status { status, .. }) => *status,
        _ => 200,
    };
    let acked_at_arrival = (state.acked)();
    let traceparent = headers.get("traceparent").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let arrival = Arrival {
        webhook_id,
        signature_valid,
        body: parsed,
        acked_at_arrival,
        at: Instant::now(),
        answered,
        traceparent,
    };
    let _ = state.arrivals.send(arrival);
    match reply {
        None => StatusCode::OK.into_response(),
        Some(Reply::Hold(release)) => {
            release.notified().await;
            StatusCode::OK.into_response()
        }
        Some(Reply::Status { status, retry_after, body }) => {
            let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
            if let Some(after) = retry_after {
                response.headers_mut().insert("retry-after", after.parse().unwrap());
            }
            response
        }
    }
}

/// A fresh Standard Webhooks secret, written to `dir/webhook.secret`.
pub fn secret(dir: &Path) -> (String, std::path::PathBuf) {
    let key: [u8; 32] = rand::random();
    let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key));
    let path = dir.join("webhook.secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    #[cfg(unix)]
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (secret, path)
}

pub fn https_receiver_tls(authority: &cpis_relay::certs::Authority) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let pair = authority.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    let chain = CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(cpis_relay::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}
