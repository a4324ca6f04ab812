//! Every error of the FHIR door as an HTTP status and an OperationOutcome,
//! in one place: the door's own refusals (parameters, headers, tokens) and
//! the domain's [`Error`], matched exhaustively. The three codes of the CP-IS
//! guide carry their `England-SpineErrorOrWarningCode`; other answers (not
//! found, overload, unavailable) carry only the FHIR issue type. Faults of the
//! relay are logged here and reach the caller as a plain message.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::error::Error;

/// The Spine error code system of the CP-IS guide.
pub(crate) const SPINE_ERROR_SYSTEM: &str = "https://fhir.nhs.uk/CodeSystem/England-SpineErrorOrWarningCode";

/// Why the FHIR door refused a request.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// A domain operation refused or failed.
    #[error(transparent)]
    Domain(#[from] Error),
    /// The search names no person we can look up: a wrong identifier system, say.
    #[error("{0}")]
    InvalidSearchData(String),
    /// A header or parameter is missing, malformed or unknown.
    #[error("{0}")]
    PreconditionFailed(String),
    /// No bearer token, or one that does not verify.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
}

/// How one error is answered.
struct Answer {
    status: StatusCode,
    issue_code: &'static str,
    spine: Option<(&'static str, &'static str)>,
    diagnostics: String,
}

const ACCESS_DENIED: (&str, &str) = ("ACCESS_DENIED", "Access has been denied to process this request");
const INVALID_SEARCH_DATA: (&str, &str) = ("INVALID_SEARCH_DATA", "Invalid search data provided");
const PRECONDITION_FAILED: (&str, &str) = ("PRECONDITION_FAILED", "Required condition was not fulfilled");

impl FhirError {
    fn answer(self) -> Answer {
        let answer = |status, issue_code, spine, diagnostics| Answer { status, issue_code, spine, diagnostics };
        match self {
            Self::InvalidSearchData(message) => {
                answer(StatusCode::BAD_REQUEST, "invalid", Some(INVALID_SEARCH_DATA), message)
            }
            Self::PreconditionFailed(message) => {
                answer(StatusCode::BAD_REQUEST, "invalid", Some(PRECONDITION_FAILED), message)
            }
            Self::Unauthorized(message) => answer(StatusCode::UNAUTHORIZED, "forbidden", Some(ACCESS_DENIED), message),
            Self::NotFound(message) => answer(StatusCode::NOT_FOUND, "not-found", None, message),
            Self::MethodNotAllowed(message) => answer(StatusCode::METHOD_NOT_ALLOWED, "not-supported", None, message),
            Self::Domain(error) => match error {
                // The person searched for is the only field a FHIR caller sends.
                Error::InvalidArgument { field, description } if field == "nhs_number" => answer(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    Some(INVALID_SEARCH_DATA),
                    format!("patient:identifier: the NHS number {description}"),
                ),
                // The accessor comes from the token's claims.
                Error::InvalidArgument { field, description } => answer(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    Some(PRECONDITION_FAILED),
                    format!("{field} (from the bearer token): {description}"),
                ),
                // The client certificate names no usable identity: no token can help.
                Error::Unauthenticated(message) => {
                    answer(StatusCode::FORBIDDEN, "forbidden", Some(ACCESS_DENIED), message)
                }
                Error::PermissionDenied(message) => {
                    answer(StatusCode::FORBIDDEN, "forbidden", Some(ACCESS_DENIED), message)
                }
                Error::ResourceExhausted(message) | Error::RateLimited { message, .. } => {
                    answer(StatusCode::TOO_MANY_REQUESTS, "throttled", None, message)
                }
                Error::FailedPrecondition(message) => answer(StatusCode::CONFLICT, "conflict", None, message),
                Error::Unavailable(message) => answer(StatusCode::SERVICE_UNAVAILABLE, "transient", None, message),
                Error::Store(store_error) => {
                    tracing::error!(error = %store_error, "store failure reached a FHIR caller");
                    answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "transient",
                        None,
                        "the relay's store is unavailable; nothing was changed, retry later".to_owned(),
                    )
                }
            },
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(self) -> StatusCode {
        self.answer().status
    }
}

/// An OperationOutcome of one error issue.
pub(crate) fn operation_outcome(issue_code: &str, spine: Option<(&str, &str)>, diagnostics: &str, id: &str) -> Value {
    let mut issue = json!({ "severity": "error", "code": issue_code });
    if let Some((code, display)) = spine {
        issue["details"] = json!({ "coding": [{ "system": SPINE_ERROR_SYSTEM, "code": code, "display": display }] });
    }
    if !diagnostics.is_empty() {
        issue["diagnostics"] = Value::String(diagnostics.to_owned());
    }
    json!({ "resourceType": "OperationOutcome", "id": id, "issue": [issue] })
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        // Over the organisation's rate limit: when to try again, in whole seconds, rounded up.
        let retry_after = match &self {
            Self::Domain(Error::RateLimited { retry_after, .. }) => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => None,
        };
        let answer = self.answer();
        let id = uuid::Uuid::new_v4().to_string();
        let body = operation_outcome(answer.issue_code, answer.spine, &answer.diagnostics, &id);
        let mut response = (answer.status, body.to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(super::FHIR_JSON));
        if answer.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
