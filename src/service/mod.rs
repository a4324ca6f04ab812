//! gRPC adapters: each RPC takes the caller's identity from the connection,
//! calls one relay operation and converts the result. No domain rule lives
//! here; errors become `Status` only through `From<Error>`.

pub mod answer;

mod audit;
mod lookup;
mod notifications;
mod plans;

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use tonic::{Request, Status};

pub use audit::AuditService;
pub use lookup::LookupService;
pub use notifications::NotificationsService;
pub use plans::PlansService;

use crate::{
    auth::Identity,
    edge::{self, Door},
    error::Error,
};

/// A boxed server stream, as tonic's generated traits expect.
pub(crate) type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The caller's identity, read once per connection from its verified certificate (see [`edge::identity`]).
pub fn identity<T>(request: &Request<T>) -> Result<Arc<Identity>, Error> {
    edge::identity(request.extensions(), Door::Grpc)
}
