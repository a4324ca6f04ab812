//! The browser view: server-rendered pages over the relay's own mutual TLS
//! for the people who are not behind an integrated system: the clinician's
//! card (search), the local authority's inbox (notifications, acknowledge,
//! live updates), the auditor's access log (with CSV export) and the ops
//! overview. Like `service/` and `fhir/` it is an adapter: every rule (roles,
//! validation, notification, audit, rate limit) is the domain's, reached
//! through the same [`Relay`] methods; nothing here decides who may do what.
//!
//! - [`viewer`]: who is looking (the certificate, or the FHIR door's bearer
//!   token for the user) and the CSRF token bound to them;
//! - [`layout`]: the page shell, navigation and formatting shared by pages;
//! - [`card`], [`inbox`], [`audit`], [`ops`]: one page each;
//! - [`errors`]: every refusal as a page, in one place;
//! - [`assets`]: the stylesheet and the one small script, and the security
//!   headers every answer carries (strict CSP, HSTS, no caching).
//!
//! Personal data never goes into a URL (NHS numbers are POSTed), a log line
//! or a metric label. HTML is produced by maud, which escapes every value.
//!
//! [`Relay`]: crate::relay::Relay

pub mod assets;
pub mod audit;
pub mod card;
pub mod errors;
pub mod inbox;
pub mod layout;
pub mod ops;
pub mod viewer;

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
    routing::{get, post},
};
use tokio::{net::TcpListener, sync::watch};

pub use errors::WebError;
pub use viewer::Viewer;

use crate::{auth::token::TokenVerifier, edge::Edge, relay::Relay};

/// What `server::run` needs to open the browser view: a bound listener and,
/// optionally, the FHIR door's token verifier (for a user named by a bearer
/// token rather than by the certificate).
pub struct WebDoor {
    pub listener: TcpListener,
    pub tokens: Option<Arc<TokenVerifier>>,
}

/// The pages' shared state: the relay and what the server knows of itself.
#[derive(Clone)]
pub struct Web {
    pub(crate) relay: Relay,
    pub(crate) tokens: Option<Arc<TokenVerifier>>,
    /// Signs CSRF tokens; fresh per process (a form outlives no restart).
    pub(crate) csrf_key: Arc<[u8; 64]>,
    /// Shared with the other doors: the global search limit and draining.
    pub(crate) edge: Edge,
    /// The admin port's readiness (`/readyz`).
    pub(crate) ready: watch::Receiver<bool>,
    /// Where `/metrics` is, if the admin port is served.
    pub(crate) metrics_url: Option<String>,
    pub(crate) errors: Arc<ops::ErrorCounts>,
    /// `/ops` per organisation: a glance, not something to poll fast.
    pub(crate) ops_rate: Arc<crate::relay::rate::RateLimiter>,
}

/// What the server gives the browser view besides the relay.
pub struct WebSettings {
    pub tokens: Option<Arc<TokenVerifier>>,
    pub edge: Edge,
    pub ready: watch::Receiver<bool>,
    pub metrics_url: Option<String>,
}

/// Whether `serve` gives the browser view a bearer-token verifier: when it
/// is on and the FHIR door's JWKS is configured, or the development
/// certificates (and so the development JWKS) are in use. Otherwise users are
/// named by their certificates only, and a bearer token is refused.
pub(crate) fn takes_bearer_tokens(config: &crate::config::ServeConfig) -> bool {
    config.web_listen.is_some() && (config.fhir_jwks.is_some() || config.ca.is_none())
}

/// The browser view's routes over a relay.
pub fn router(relay: Relay, settings: WebSettings) -> Router {
    let mut csrf_key = [0u8; 64];
    rand::Rng::fill(&mut rand::rng(), &mut csrf_key);
    let web = Web {
        relay,
        tokens: settings.tokens,
        csrf_key: Arc::new(csrf_key),
        edge: settings.edge,
        ready: settings.ready,
        metrics_url: settings.metrics_url,
        errors: Arc::new(ops::ErrorCounts::new()),
        ops_rate: Arc::new(crate::relay::rate::RateLimiter::new(ops::RATE_PER_SECOND, ops::BURST)),
    };
    Router::new()
        .route("/", get(layout::home))
        .route("/card", get(card::form).post(card::search))
        .route("/inbox", get(inbox::page))
        .route("/inbox/ack", post(inbox::ack))
        .route("/inbox/events", get(inbox::events))
        .route("/audit", get(audit::form).post(audit::log))
        .route("/audit/access-log.csv", post(audit::csv))
        .route("/ops", get(ops::page))
        .route(assets::STYLESHEET_PATH, get(assets::stylesheet))
        .route(assets::SCRIPT_PATH, get(assets::script))
        .route("/favicon.ico", get(assets::favicon))
        .route_layer(axum::middleware::from_fn(crate::traces::https_doors::browser))
        .fallback(errors::not_found)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(axum::middleware::from_fn(log_and_secure))
        .with_state(web)
}

/// Adds the security headers to every answer and logs it by route, never
/// by the path a browser sent (which could hold anything typed into it).
async fn log_and_secure(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("(unknown)", |path| path.as_str()).to_owned();
    let method = request.method().clone();
    let mut response = next.run(request).await;
    assets::secure(&mut response);
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_millis() as u64;
    if status >= 500 || started.elapsed() >= crate::edge::SLOW_CALL {
        tracing::info!(%method, route, status, latency_ms, "web request");
    } else {
        tracing::debug!(%method, route, status, latency_ms, "web request");
    }
    response
}
