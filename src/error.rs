//! The crate's one error type and its single mapping to a gRPC `Status`.
//! Callers' mistakes become INVALID_ARGUMENT (with a field violation) or
//! PERMISSION_DENIED; faults of the relay are logged here and reach the caller
//! as a plain message, never with internal detail.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::store::error::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request names a bad value; `field` is its path in the request.
    #[error("{field}: {description}")]
    InvalidArgument { field: String, description: String },
    /// The caller's certificate could not identify them.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role or organisation may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// Shedding load or over a limit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller's organisation is over its rate limit; a token is there after `retry_after`.
    #[error("{message}")]
    RateLimited { message: String, retry_after: std::time::Duration },
    /// The request is well formed but the relay's state refuses it (a
    /// FULL_REFRESH that would remove too much); nothing was changed.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Starting, draining, or otherwise not taking this request now.
    #[error("{0}")]
    Unavailable(String),
    /// Storage failed; nothing of the request that reported this was applied.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), description: description.into() }
    }

    /// The gRPC code this error becomes.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::ResourceExhausted(_) | Self::RateLimited { .. } => Code::ResourceExhausted,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unavailable(_) | Self::Store(_) => Code::Unavailable,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument { field, description } => {
                let mut details = ErrorDetails::new();
                details.add_bad_request_violation(field.clone(), description.clone());
                Status::with_error_details(Code::InvalidArgument, format!("{field}: {description}"), details)
            }
            Error::Unauthenticated(message) => Status::unauthenticated(message),
            Error::PermissionDenied(message) => Status::permission_denied(message),
            Error::ResourceExhausted(message) => Status::resource_exhausted(message),
            Error::RateLimited { message, retry_after } => {
                let details = ErrorDetails::with_retry_info(Some(retry_after));
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            Error::FailedPrecondition(message) => Status::failed_precondition(message),
            Error::Unavailable(message) => Status::unavailable(message),
            Error::Store(store_error) => {
                tracing::error!(error = %store_error, "store failure reached a caller");
                Status::unavailable("the relay's store is unavailable; nothing was changed, retry later")
            }
        }
    }
}
