//! The FHIR R4 door: NHS England's CP-IS FHIR API (the CareTeam and
//! AuditEvent searches by NHS number, and `metadata`) at
//! [`BASE_PATH`], over the relay's own mutual TLS. Like `service/`, it is
//! an adapter: it converts requests into the domain's [`SearchQuery`] and
//! answers in the shapes of the published examples; it holds no domain rule.
//!
//! - [`routes`]: paths, parameters and headers, one handler per search;
//! - `auth::token` and `auth::care_setting`: the user from a bearer JWT, and a
//!   search's care setting from the token or the organisation;
//! - [`trace_ids`]: TraceIDs a client reuses, counted;
//! - [`resources`]: domain answers as FHIR JSON;
//! - [`errors`]: every refusal as an OperationOutcome, in one place;
//! - `tls::https` serves it (and the browser view) over `tls::incoming`.
//!
//! [`SearchQuery`]: crate::relay::SearchQuery

pub mod errors;
pub mod resources;
pub mod routes;
pub mod trace_ids;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::auth::token::TokenVerifier;

pub use errors::FhirError;

/// Where the CP-IS API lives on the door.
pub(crate) const BASE_PATH: &str = "/cpis/FHIR/R4";
/// The content type of every answer.
pub(crate) const FHIR_JSON: &str = "application/fhir+json";

/// What `server::run` needs to open the door: a bound listener and the token verifier.
pub struct FhirDoor {
    pub listener: TcpListener,
    pub tokens: Arc<TokenVerifier>,
}
