//! Every refusal of the browser view as a page, in one place: the domain's
//! [`Error`] keeps its meaning (a wrong role is 403, a bad NHS number 400,
//! the rate limit 429 with `Retry-After`, a failing store 503 with a plain
//! message and the detail in the log), and a CSRF refusal is 403.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use maud::html;

use super::layout;
use crate::error::Error;

#[derive(Debug)]
pub enum WebError {
    /// Whatever the domain refused, with its own message.
    Domain(Error),
    /// A state change that is not the viewer's own (see `viewer`).
    Csrf(&'static str),
    /// A form field the browser view itself needs, missing or malformed.
    BadForm(String),
    NotFound,
}

impl From<Error> for WebError {
    fn from(error: Error) -> Self {
        Self::Domain(error)
    }
}

impl WebError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Domain(error) => match error {
                Error::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
                Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
                Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                Error::ResourceExhausted(_) | Error::Unavailable(_) | Error::Store(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                Error::FailedPrecondition(_) => StatusCode::CONFLICT,
            },
            Self::Csrf(_) => StatusCode::FORBIDDEN,
            Self::BadForm(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// The heading and the message a person reads.
    fn explain(&self) -> (&'static str, String) {
        match self {
            Self::Domain(Error::Store(error)) => {
                tracing::error!(%error, "store failure reached a browser");
                (
                    "The relay cannot answer now",
                    "The relay's store is unavailable; nothing was changed. Try again shortly.".into(),
                )
            }
            Self::Domain(Error::PermissionDenied(message)) => ("You cannot use this page", message.clone()),
            Self::Domain(Error::Unauthenticated(message)) => ("Your certificate is not accepted", message.clone()),
            Self::Domain(Error::RateLimited { message, .. }) => ("Too many searches", message.clone()),
            Self::Domain(error) => ("There is a problem", error.to_string()),
            Self::Csrf(reason) => {
                ("This form cannot be accepted", format!("{reason}. Open the page again from the relay and resend it."))
            }
            Self::BadForm(message) => ("There is a problem", message.clone()),
            Self::NotFound => ("Page not found", "There is no page at this address.".into()),
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (heading, message) = self.explain();
        let body = layout::page(
            heading,
            None,
            html! {
                h1 { (heading) }
                p class="lede" { (message) }
                p { a href="/" { "Go to the start page" } }
            },
        );
        let mut response = (status, body).into_response();
        if let Self::Domain(Error::RateLimited { retry_after, .. }) = &self {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

pub(crate) async fn not_found() -> Response {
    WebError::NotFound.into_response()
}

pub(crate) async fn method_not_allowed() -> Response {
    let mut response = WebError::BadForm("This page does not accept that kind of request.".into()).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
