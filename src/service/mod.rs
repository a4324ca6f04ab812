//! gRPC adapters: each RPC takes the caller's identity from the connection,
//! calls one relay operation and converts the result. No domain rule lives
//! here; errors become `Status` only through `From<Error>`.

pub mod convert;

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

use crate::{auth::Identity, error::Error, tls::PeerInfo};

/// A boxed server stream, as tonic's generated traits expect.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The caller's identity, read once per connection from its verified certificate.
pub fn identity<T>(request: &Request<T>) -> Result<Arc<Identity>, Error> {
    let peer = request
        .extensions()
        .get::<PeerInfo>()
        .ok_or_else(|| Error::Unauthenticated("no verified client certificate on this connection".into()))?;
    peer.identity.clone().map_err(|reason| {
        metrics::counter!("cpis_auth_denied_total", "reason" => "no_identity").increment(1);
        Error::Unauthenticated(reason.to_string())
    })
}
