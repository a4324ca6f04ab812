//! What every door (gRPC in `service/` and `rpc`, the FHIR door in `fhir/`,
//! the browser view in `web/`) checks before the domain sees a request, in
//! one place: who is calling (the organisation from the connection's verified
//! certificate, the user from a bearer token), refusal with UNAVAILABLE once
//! the relay is draining, and the permits of the global limits (searches
//! across all doors count against one `max_concurrent_searches`; uploads,
//! gRPC only, against `max_concurrent_uploads`), refused at once with
//! RESOURCE_EXHAUSTED rather than queued.
//!
//! Refusals are the domain's [`Error`], so each door answers them through its
//! own single mapping (`error.rs`, `fhir/errors.rs`, `web/errors.rs`). The
//! wording a door has always used is kept per [`Door`]: the browser view
//! speaks to a person ("try again"), the others to a client's retry logic.
//!
//! Not here: role checks and validation (the domain's, `auth` and `relay`),
//! and the per-organisation search rate limit, which the domain applies to
//! every door's search (`relay::rate`).

use std::sync::Arc;

use http::{Extensions, HeaderMap, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::{
    auth::Identity,
    auth::token::{TokenUser, TokenVerifier},
    error::{Error, Result},
    tls::PeerInfo,
};

/// A request slower than this is logged at info whatever its outcome, at
/// every door (a quick success is logged at debug only).
pub(crate) const SLOW_CALL: std::time::Duration = std::time::Duration::from_millis(500);

/// The door a request came through; decides only the wording of refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    Grpc,
    Fhir,
    Browser,
}

impl Door {
    fn draining_message(self) -> &'static str {
        match self {
            Self::Grpc | Self::Fhir => "the relay is shutting down; retry, another node will answer",
            Self::Browser => "the relay is shutting down; try again in a moment",
        }
    }

    fn search_limit_message(self) -> &'static str {
        match self {
            Self::Grpc | Self::Fhir => "the relay is at its search limit; retry shortly",
            Self::Browser => "the relay is at its search limit; try again shortly",
        }
    }

    fn no_certificate_message(self) -> &'static str {
        match self {
            Self::Grpc => "no verified client certificate on this connection",
            Self::Fhir | Self::Browser => "no verified client certificate",
        }
    }

    /// The spellings of the Authorization scheme this door accepts. The FHIR
    /// door has always taken the lower-case one too; the browser view not.
    fn bearer_schemes(self) -> &'static [&'static str] {
        match self {
            Self::Grpc | Self::Fhir => &["Bearer ", "bearer "],
            Self::Browser => &["Bearer "],
        }
    }
}

/// The global limits the edge enforces.
#[derive(Clone, Copy, Debug)]
pub struct EdgeLimits {
    /// Searches in progress across every door.
    pub max_concurrent_searches: usize,
    /// Uploads in progress (gRPC).
    pub max_concurrent_uploads: usize,
}

/// A cheap handle shared by the doors: the global permits and whether the relay is draining.
#[derive(Clone)]
pub struct Edge {
    searches: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
    draining: watch::Receiver<bool>,
}

impl Edge {
    pub fn new(limits: EdgeLimits, draining: watch::Receiver<bool>) -> Self {
        Self {
            searches: Arc::new(Semaphore::new(limits.max_concurrent_searches)),
            uploads: Arc::new(Semaphore::new(limits.max_concurrent_uploads)),
            draining,
        }
    }

    /// UNAVAILABLE once the relay is draining, so clients go to another node.
    pub(crate) fn refuse_if_draining(&self, door: Door) -> Result<()> {
        if *self.draining.borrow() {
            return Err(Error::Unavailable(door.draining_message().into()));
        }
        Ok(())
    }

    /// One search's share of the global search limit, held until dropped.
    pub(crate) fn search_permit(&self, door: Door) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.searches)
            .try_acquire_owned()
            .map_err(|_| Error::ResourceExhausted(door.search_limit_message().into()))
    }

    /// One upload's share of the global upload limit, held until dropped.
    pub(crate) fn upload_permit(&self) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.uploads).try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted("the relay is at its limit of concurrent uploads; retry later".into())
        })
    }

    /// A search may start: the relay is not draining and a search permit is free.
    pub(crate) fn admit_search(&self, door: Door) -> Result<OwnedSemaphorePermit> {
        self.refuse_if_draining(door)?;
        self.search_permit(door)
    }
}

/// The calling organisation, only from the connection's verified certificate
/// (the [`PeerInfo`] the TLS acceptor puts on every request).
pub fn identity(extensions: &Extensions, door: Door) -> Result<Arc<Identity>> {
    let peer =
        extensions.get::<PeerInfo>().ok_or_else(|| Error::Unauthenticated(door.no_certificate_message().into()))?;
    peer.identity.clone().map_err(|reason| {
        metrics::counter!("cpis_auth_denied_total", "reason" => "no_identity").increment(1);
        Error::Unauthenticated(reason.to_string())
    })
}

/// The user a request's bearer token names; `Ok(None)` when it sends no
/// Authorization header. `tokens` is `None` where no JWKS is configured,
/// and then any token is refused. The `Err` is the reason, for the door to
/// answer in its own way; every refusal is counted in
/// `cpis_auth_denied_total{reason="bearer_token"}`.
pub(crate) fn bearer_user(
    headers: &HeaderMap,
    tokens: Option<&TokenVerifier>,
    door: Door,
) -> Result<Option<TokenUser>, String> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let Some(tokens) = tokens else {
        return Err(bearer_refused(
            "bearer tokens are not accepted here (the FHIR door's JWKS is not configured)".into(),
        ));
    };
    let text = value.to_str().map_err(|_| bearer_refused("the Authorization header is not text".into()))?;
    let token = door
        .bearer_schemes()
        .iter()
        .find_map(|scheme| text.strip_prefix(scheme))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| bearer_refused("the Authorization header must be Bearer <JWT>".into()))?;
    tokens.verify(token).map(Some).map_err(|error| bearer_refused(error.to_string()))
}

/// [`bearer_user`] where a token is required.
pub(crate) fn required_bearer_user(
    headers: &HeaderMap,
    tokens: &TokenVerifier,
    door: Door,
) -> Result<TokenUser, String> {
    bearer_user(headers, Some(tokens), door)?
        .ok_or_else(|| bearer_refused("an Authorization: Bearer <JWT> header is required".into()))
}

fn bearer_refused(reason: String) -> String {
    metrics::counter!("cpis_auth_denied_total", "reason" => "bearer_token").increment(1);
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(searches: usize) -> (Edge, watch::Sender<bool>) {
        let draining = watch::Sender::new(false);
        let limits = EdgeLimits { max_concurrent_searches: searches, max_concurrent_uploads: 1 };
        (Edge::new(limits, draining.subscribe()), draining)
    }

    #[test]
    fn a_search_holds_its_permit_until_dropped_and_draining_refuses_first() {
        let (edge, draining) = edge(1);
        let permit = edge.admit_search(Door::Fhir).unwrap();
        let refused = edge.admit_search(Door::Grpc).unwrap_err();
        assert!(matches!(&refused, Error::ResourceExhausted(message) if message.contains("search limit")), "{refused}");
        drop(permit);
        let _permit = edge.admit_search(Door::Browser).unwrap();
        draining.send_replace(true);
        let refused = edge.admit_search(Door::Browser).unwrap_err();
        assert!(matches!(&refused, Error::Unavailable(message) if message.contains("shutting down")), "{refused}");
    }

    #[test]
    fn no_certificate_is_unauthenticated_and_no_header_is_no_bearer_user() {
        let refused = identity(&Extensions::new(), Door::Grpc).unwrap_err();
        assert!(matches!(refused, Error::Unauthenticated(_)), "{refused}");
        assert_eq!(bearer_user(&HeaderMap::new(), None, Door::Browser), Ok(None));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, http::HeaderValue::from_static("Bearer x"));
        let refused = bearer_user(&headers, None, Door::Browser).unwrap_err();
        assert!(refused.contains("not accepted here"), "{refused}");
    }
}
