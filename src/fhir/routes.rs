//! The door's HTTP surface: `GET {BASE}/CareTeam`, `GET {BASE}/AuditEvent`
//! and `GET {BASE}/metadata`; everything else is a 404 or 405
//! OperationOutcome. Each search reads the caller's organisation from the
//! connection's certificate, the user from the bearer token, the care
//! setting from the token or the organisation's configuration
//! ([`crate::auth::care_setting`]) and the person from `patient:identifier`, then
//! calls [`Relay::search`] like the gRPC door.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::Value;
use tracing::Instrument;

use super::{BASE_PATH, FHIR_JSON, errors::FhirError, resources};
use crate::{
    auth::token::{TokenUser, TokenVerifier},
    edge::{self, Door, Edge},
    relay::{Relay, SearchQuery},
    tls::PeerInfo,
};

/// The search parameter both searches take.
const PATIENT_IDENTIFIER: &str = "patient:identifier";
const TRACE_ID: &str = "traceid";
const UNSCHEDULED: &str = "isunscheduledaccessevent";
/// Longest accepted TraceID.
const MAX_TRACE_ID_LEN: usize = 200;

#[derive(Clone)]
struct FhirDoor {
    relay: Relay,
    tokens: Arc<TokenVerifier>,
    /// Shared with the other doors: the global search limit and draining.
    edge: Edge,
    trace_ids: Arc<super::trace_ids::TraceIds>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Search {
    CareTeam,
    AuditEvent,
}

impl Search {
    fn resource_type(self) -> &'static str {
        match self {
            Self::CareTeam => "CareTeam",
            Self::AuditEvent => "AuditEvent",
        }
    }
}

/// The door's routes over a relay.
pub fn router(relay: Relay, tokens: Arc<TokenVerifier>, edge: Edge) -> Router {
    Router::new()
        .route(&format!("{BASE_PATH}/CareTeam"), get(care_team))
        .route(&format!("{BASE_PATH}/AuditEvent"), get(audit_event))
        .route(&format!("{BASE_PATH}/metadata"), get(metadata))
        .route_layer(axum::middleware::from_fn(crate::traces::https_doors::fhir))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(FhirDoor { relay, tokens, edge, trace_ids: Arc::default() })
}

async fn care_team(State(door): State<FhirDoor>, request: Request) -> Response {
    answer(&door, request, Some(Search::CareTeam)).await
}

async fn audit_event(State(door): State<FhirDoor>, request: Request) -> Response {
    answer(&door, request, Some(Search::AuditEvent)).await
}

async fn metadata(State(door): State<FhirDoor>, request: Request) -> Response {
    answer(&door, request, None).await
}

async fn not_found(request: Request) -> Response {
    let trace_id = trace_id(request.headers()).ok().flatten();
    let error = FhirError::NotFound(format!("{} is not served here (see {BASE_PATH}/metadata)", request.uri().path()));
    finish(Err(error), trace_id.as_deref())
}

async fn method_not_allowed(request: Request) -> Response {
    let trace_id = trace_id(request.headers()).ok().flatten();
    let error = FhirError::MethodNotAllowed(format!("{} accepts only GET", request.uri().path()));
    let mut response = finish(Err(error), trace_id.as_deref());
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
    response
}

/// Runs one request on a span carrying its TraceID, and logs it as the gRPC access log does.
async fn answer(door: &FhirDoor, request: Request, search: Option<Search>) -> Response {
    let started = std::time::Instant::now();
    // A search has no body: only the head is read (and it is Sync, so it can be held across awaits).
    let (request, _body) = request.into_parts();
    let organisation = request
        .extensions
        .get::<PeerInfo>()
        .and_then(|peer| peer.identity.as_ref().ok())
        .map(|identity| identity.ods_code.clone());
    let resource = search.map_or("metadata", Search::resource_type);
    let trace_id = trace_id(&request.headers);
    let echoed = trace_id.as_ref().ok().cloned().flatten();
    let span = tracing::info_span!(
        "fhir",
        trace_id = echoed.as_deref().unwrap_or(""),
        resource,
        organisation = organisation.as_deref().unwrap_or("")
    );
    let result = async {
        let trace_id = trace_id?;
        let base = base_url(&request.headers)?;
        match search {
            None => {
                expect_no_parameters(request.uri.query())?;
                Ok(resources::capability_statement(&base))
            }
            Some(search) => door.search(&request, search, &base, trace_id.as_deref()).await,
        }
    }
    .instrument(span.clone())
    .await;
    let response = finish(result, echoed.as_deref());
    let _entered = span.enter();
    log_request(resource, response.status(), started.elapsed());
    response
}

fn log_request(resource: &str, status: StatusCode, elapsed: std::time::Duration) {
    let latency_ms = elapsed.as_millis() as u64;
    let status = status.as_u16();
    if status >= 400 || elapsed >= crate::edge::SLOW_CALL {
        tracing::info!(resource, status, latency_ms, "fhir request");
    } else {
        tracing::debug!(resource, status, latency_ms, "fhir request");
    }
}

/// The response: FHIR JSON, with the caller's TraceID echoed.
fn finish(result: Result<Value, FhirError>, trace_id: Option<&str>) -> Response {
    let mut response = match result {
        Ok(body) => {
            let mut response = (StatusCode::OK, body.to_string()).into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
            response
        }
        Err(error) => error.into_response(),
    };
    if let Some(value) = trace_id.and_then(|text| HeaderValue::from_str(text).ok()) {
        response.headers_mut().insert("TraceID", value);
    }
    response
}

impl FhirDoor {
    async fn search(
        &self,
        request: &Parts,
        search: Search,
        base: &str,
        trace_id: Option<&str>,
    ) -> Result<Value, FhirError> {
        let _permit = self.edge.admit_search(Door::Fhir)?;
        let identity = edge::identity(&request.extensions, Door::Fhir)?;
        let user = self.user(&request.headers)?;
        let care_setting = self.tokens.settings().care_settings.resolve(user.care_setting, &identity.ods_code)?;
        let nhs_number = patient_identifier(request.uri.query())?;
        let scheduled = !unscheduled_access(&request.headers)?;
        let resource = search.resource_type();
        if let Some(trace_id) = trace_id {
            let searched = [identity.ods_code.as_str(), user.accessor.user_id.as_str(), nhs_number.as_str(), resource];
            if self.trace_ids.note(trace_id, &searched) {
                tracing::warn!(trace_id, organisation = %identity.ods_code, resource, "a TraceID was reused for another search; each search is still notified");
            }
        }
        let query = SearchQuery {
            nhs_number: nhs_number.clone(),
            accessor: Some(user.accessor),
            care_setting: Some(care_setting),
            // The idempotency key is the TraceID with the resource searched;
            // the store's request key adds the organisation, user, person and
            // care setting. So only a retry of the same search notifies once:
            // a reused TraceID never suppresses another search's notification.
            request_id: trace_id.map(|trace_id| request_id(resource, trace_id)).unwrap_or_default(),
            scheduled,
        };
        let outcome = self.relay.search(&identity, query).await?;
        let shown_number =
            crate::nhs::NhsNumber::parse(&nhs_number).map(|number| number.to_string()).unwrap_or(nhs_number);
        let self_url = format!(
            "{base}/{}?{PATIENT_IDENTIFIER}={}|{shown_number}",
            search.resource_type(),
            resources::NHS_NUMBER_SYSTEM
        );
        Ok(match search {
            Search::CareTeam => resources::care_team_bundle(base, &self_url, &outcome),
            Search::AuditEvent => {
                resources::audit_event_bundle(base, &self_url, &shown_number, &outcome.previous_accesses)
            }
        })
    }

    /// The user a request's bearer token names (required here).
    fn user(&self, headers: &HeaderMap) -> Result<TokenUser, FhirError> {
        edge::required_bearer_user(headers, &self.tokens, Door::Fhir).map_err(FhirError::Unauthorized)
    }
}

/// The search's idempotency key: the resource and the TraceID as sent, or,
/// when the two would be longer than a request id may be, the resource and
/// the TraceID's SHA-256 (so every accepted TraceID works, and two TraceIDs
/// never share a key).
fn request_id(resource: &str, trace_id: &str) -> String {
    let plain = format!("{resource}:{trace_id}");
    if plain.len() <= crate::relay::MAX_TEXT_LEN {
        return plain;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(trace_id.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{resource}:sha256:{hex}")
}

/// `TraceID`, if sent: printable ASCII without spaces, at most 200 characters.
fn trace_id(headers: &HeaderMap) -> Result<Option<String>, FhirError> {
    let Some(value) = headers.get(TRACE_ID) else { return Ok(None) };
    let malformed = || {
        FhirError::PreconditionFailed(format!(
            "the TraceID header must be 1 to {MAX_TRACE_ID_LEN} printable characters without spaces (a UUID is recommended)"
        ))
    };
    let text = value.to_str().map_err(|_| malformed())?.trim();
    if text.is_empty() || text.len() > MAX_TRACE_ID_LEN || !text.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(malformed());
    }
    Ok(Some(text.to_owned()))
}

/// `IsUnscheduledAccessEvent`: `true` or `false` (any case); absent means true.
fn unscheduled_access(headers: &HeaderMap) -> Result<bool, FhirError> {
    let Some(value) = headers.get(UNSCHEDULED) else { return Ok(true) };
    match value.to_str().map(|text| text.trim().to_ascii_lowercase()) {
        Ok(text) if text == "true" => Ok(true),
        Ok(text) if text == "false" => Ok(false),
        _ => Err(FhirError::PreconditionFailed("the IsUnscheduledAccessEvent header must be true or false".into())),
    }
}

/// The base URL fullUrls and links are made of, from the Host the client used.
fn base_url(headers: &HeaderMap) -> Result<String, FhirError> {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<axum::http::uri::Authority>().ok())
        .filter(|authority| authority.as_str().chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c)))
        .ok_or_else(|| FhirError::PreconditionFailed("a Host header naming the relay is required".into()))?;
    Ok(format!("https://{host}{BASE_PATH}"))
}

/// Decoded `name=value` pairs of a query string.
fn parameters(query: Option<&str>) -> Result<Vec<(String, String)>, FhirError> {
    let decode = |text: &str| {
        let text = text.replace('+', " ");
        percent_encoding::percent_decode_str(&text)
            .decode_utf8()
            .map(|decoded| decoded.into_owned())
            .map_err(|_| FhirError::PreconditionFailed("the query string is not UTF-8 once decoded".into()))
    };
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// `_format`, asking for JSON, is the only parameter every route accepts.
fn is_json_format(name: &str, value: &str) -> bool {
    name == "_format" && matches!(value, "json" | "application/json" | "application/fhir+json")
}

fn expect_no_parameters(query: Option<&str>) -> Result<(), FhirError> {
    match parameters(query)?.into_iter().find(|(name, value)| !is_json_format(name, value)) {
        Some((name, _)) => Err(FhirError::PreconditionFailed(format!("unknown parameter {name:?}"))),
        None => Ok(()),
    }
}

/// The NHS number of `patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}`,
/// not yet validated (the domain does that).
fn patient_identifier(query: Option<&str>) -> Result<String, FhirError> {
    let mut found: Option<String> = None;
    for (name, value) in parameters(query)? {
        if is_json_format(&name, &value) {
            continue;
        }
        if name != PATIENT_IDENTIFIER {
            return Err(FhirError::PreconditionFailed(format!(
                "unknown parameter {name:?}: the only search parameter is {PATIENT_IDENTIFIER}"
            )));
        }
        if found.is_some() {
            return Err(FhirError::PreconditionFailed(format!("{PATIENT_IDENTIFIER} is given more than once")));
        }
        found = Some(value);
    }
    let value = found
        .filter(|value| !value.trim().is_empty())
        .ok_or_else(|| FhirError::PreconditionFailed(format!("the {PATIENT_IDENTIFIER} parameter is required")))?;
    let expected = format!("{PATIENT_IDENTIFIER} must be {}|{{NHS number}}", resources::NHS_NUMBER_SYSTEM);
    let Some((system, number)) = value.split_once('|') else {
        return Err(FhirError::InvalidSearchData(expected));
    };
    if system != resources::NHS_NUMBER_SYSTEM {
        return Err(FhirError::InvalidSearchData(format!("{expected}: another identifier system was given")));
    }
    Ok(number.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patient_identifier_is_decoded_and_checked() {
        let number = |query: &str| patient_identifier(Some(query));
        assert_eq!(number("patient:identifier=https://fhir.nhs.uk/Id/nhs-number|9990000026").unwrap(), "9990000026");
        assert_eq!(
            number("patient%3Aidentifier=https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number%7C9990000026&_format=json")
                .unwrap(),
            "9990000026"
        );
        assert!(matches!(number("patient:identifier=9990000026"), Err(FhirError::InvalidSearchData(_))));
        assert!(matches!(
            number("patient:identifier=https://example.org/id|9990000026"),
            Err(FhirError::InvalidSearchData(_))
        ));
        assert!(matches!(number(""), Err(FhirError::PreconditionFailed(_))));
        assert!(matches!(number("patient=9990000026"), Err(FhirError::PreconditionFailed(_))));
        assert!(matches!(
            number("patient:identifier=https://fhir.nhs.uk/Id/nhs-number|1&patient:identifier=x|2"),
            Err(FhirError::PreconditionFailed(_))
        ));
    }

    #[test]
    fn the_unscheduled_header_is_true_when_absent_and_strict_otherwise() {
        let mut headers = HeaderMap::new();
        assert!(unscheduled_access(&headers).unwrap());
        headers.insert("IsUnscheduledAccessEvent", HeaderValue::from_static("False"));
        assert!(!unscheduled_access(&headers).unwrap());
        headers.insert("IsUnscheduledAccessEvent", HeaderValue::from_static("no"));
        assert!(unscheduled_access(&headers).is_err());
    }
}
