//! The trace span of each request at the HTTPS doors (FHIR, browser view),
//! as axum middleware on their routes: named by method and route template
//! (`GET /cpis/FHIR/R4/CareTeam`), never by the path or query the client
//! sent, which can hold an NHS number. Nothing at all when traces are off.

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;

/// For the FHIR door's routes.
pub async fn fhir(request: Request, next: Next) -> Response {
    door("fhir", request, next).await
}

/// For the browser view's routes.
pub async fn browser(request: Request, next: Next) -> Response {
    door("browser", request, next).await
}

async fn door(door: &'static str, request: Request, next: Next) -> Response {
    if !super::on() {
        return next.run(request).await;
    }
    let route = request.extensions().get::<MatchedPath>().map_or("(unmatched)", MatchedPath::as_str);
    let operation = format!("{} {route}", request.method());
    let span = super::door_span(door, &operation, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    response
}
