//! `cpis-relay witness`: one C2SP tlog-witness (c2sp.org/tlog-witness), run
//! by a party other than the relay's operator (a local authority, NHS
//! England, a regulator). It cosigns a relay's access log checkpoints only
//! when each extends the last one it cosigned ([`state`]), so an operator
//! who rewrites or cuts the log cannot get the rewritten history cosigned.
//!
//! HTTP, on its own listener:
//! - `POST /add-checkpoint`: the tlog-witness request; 200 with the
//!   cosignature line, 400, 403, 404, 409 (`text/x.tlog.size`), 422 as the spec sets.
//! - `GET /checkpoint?origin=ORIGIN`: the latest checkpoint cosigned for a
//!   log, with the cosignature: what `audit verify --trusted-checkpoint` takes.
//! - `GET /healthz`.
//!
//! HTTPS when the configuration names a certificate (`tls_cert`, `tls_key`;
//! [`https`]), plain HTTP otherwise: the requests carry only signed
//! checkpoints and proofs and everything answered is signed, so TLS adds
//! confidentiality (which logs it witnesses), not integrity.
//! This module owns the server and its settings; it holds no relay state.

pub mod https;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

pub use state::{Answer, Witness, WitnessError};

use crate::transparency::{VerifierKey, cosignature::Cosigner};

/// A witness's configuration file (TOML); every path relative to the working directory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WitnessConfig {
    /// The witness's name (its cosignatures' key name), e.g. `witness.la.example/cpis`.
    pub name: String,
    /// Its Ed25519 key (PKCS#8, owner-only), made by `cpis-relay witness init-key`.
    pub key: PathBuf,
    /// Where it keeps what it cosigned, and the evidence of refused forks.
    pub state_dir: PathBuf,
    /// Listen address [default: 127.0.0.1:7380].
    pub listen: Option<SocketAddr>,
    /// The logs it witnesses: each log's verifier key (`name+id+key`; the name is its origin).
    pub logs: Vec<String>,
    /// Serve HTTPS with this certificate chain (PEM) and `tls_key`; both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl WitnessConfig {
    pub(crate) fn from_file(path: &std::path::Path) -> Result<Self, WitnessError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| WitnessError::Io { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|error| WitnessError::Config { key: "config", reason: error.to_string() })
    }

    /// The listen address.
    pub(crate) fn listen(&self) -> SocketAddr {
        self.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7380)))
    }

    /// The TLS configuration, when `tls_cert` and `tls_key` are given. Blocks.
    pub(crate) fn tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, WitnessError> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => {
                return Err(WitnessError::Config { key: "tls_key", reason: "tls_cert needs tls_key".into() });
            }
            (None, Some(_)) => {
                return Err(WitnessError::Config { key: "tls_cert", reason: "tls_key needs tls_cert".into() });
            }
        };
        let read = |path: &PathBuf, key: &'static str| {
            std::fs::read_to_string(path)
                .map_err(|error| WitnessError::Config { key, reason: format!("{}: {error}", path.display()) })
        };
        crate::tls::server_config_without_client_auth(&read(cert, "tls_cert")?, &read(key, "tls_key")?)
            .map(Some)
            .map_err(|error| WitnessError::Config { key: "tls_cert", reason: error.to_string() })
    }

    /// Loads the key and the state. Blocks.
    pub(crate) fn open(&self) -> Result<Witness, WitnessError> {
        let cosigner = Cosigner::from_key_file(&self.name, &self.key)
            .map_err(|error| WitnessError::Config { key: "key", reason: error.to_string() })?;
        if self.logs.is_empty() {
            return Err(WitnessError::Config { key: "logs", reason: "name at least one log's verifier key".into() });
        }
        let keys = self
            .logs
            .iter()
            .map(|text| VerifierKey::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| WitnessError::Config { key: "logs", reason: error.to_string() })?;
        Witness::open(cosigner, &self.state_dir, keys)
    }
}

/// The witness's HTTP routes.
pub fn router(witness: Arc<Witness>) -> Router {
    Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .route("/checkpoint", get(latest))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(witness)
}

/// Serves `witness` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    witness: Arc<Witness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(witness)).with_graceful_shutdown(shutdown).await
}

async fn add_checkpoint(State(witness): State<Arc<Witness>>, body: String) -> Response {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let answer =
        tokio::task::spawn_blocking(move || witness.add_checkpoint(&body, now)).await.unwrap_or(Answer::Failed);
    let text = |status: StatusCode, body: String| (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body);
    match answer {
        Answer::Cosigned(lines) => text(StatusCode::OK, lines).into_response(),
        Answer::BadRequest(reason) => text(StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response(),
        Answer::Forbidden => {
            text(StatusCode::FORBIDDEN, "no signature of a key this witness trusts verifies\n".into()).into_response()
        }
        Answer::UnknownLog => text(StatusCode::NOT_FOUND, "unknown log\n".into()).into_response(),
        Answer::Conflict(size) => {
            (StatusCode::CONFLICT, [(header::CONTENT_TYPE, "text/x.tlog.size")], format!("{size}\n")).into_response()
        }
        Answer::Inconsistent(reason) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{reason}\n")).into_response(),
        Answer::Failed => {
            text(StatusCode::INTERNAL_SERVER_ERROR, "the witness could not keep its state\n".into()).into_response()
        }
    }
}

#[derive(Deserialize)]
struct LatestQuery {
    origin: String,
}

async fn latest(State(witness): State<Arc<Witness>>, Query(query): Query<LatestQuery>) -> Response {
    match witness.latest(&query.origin) {
        Some(note) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response(),
        None => (StatusCode::NOT_FOUND, "no checkpoint cosigned for this log\n").into_response(),
    }
}
