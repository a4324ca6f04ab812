//! The browser view's two static files, compiled into the binary (the
//! stylesheet, written for this project in the spirit of the NHS design
//! system, and one small script for live updates and focus), and the
//! security headers every answer carries.

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

pub(crate) const STYLESHEET_PATH: &str = "/assets/web.css";
pub(crate) const SCRIPT_PATH: &str = "/assets/web.js";

const STYLESHEET: &str = include_str!("assets/web.css");
const SCRIPT: &str = include_str!("assets/web.js");

/// Nothing but this origin's own stylesheet, script, forms and event
/// stream; no inline script or style, no framing, no plugins.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(crate) async fn stylesheet() -> Response {
    asset(STYLESHEET, "text/css; charset=utf-8")
}

/// Browsers ask for it on every site; there is none.
pub(crate) async fn favicon() -> axum::http::StatusCode {
    axum::http::StatusCode::NO_CONTENT
}

pub async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Set here so that `secure` leaves it: static, and holding nothing personal.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}

/// The headers of every answer: pages hold personal data, so nothing is
/// cached, framed or sniffed, no address leaves as a referrer (same-origin
/// only, which keeps the `Origin` header on the relay's own forms), and
/// HTTPS is pinned.
pub(crate) fn secure(response: &mut Response) {
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000; includeSubDomains"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    headers.insert("permissions-policy", HeaderValue::from_static("camera=(), microphone=(), geolocation=()"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    }
}
