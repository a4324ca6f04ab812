//! `cpis.v1.Lookup` over [`Relay::search`].
//!
//! Served by hand rather than through the generated `LookupServer`, whose
//! answer type is the generated `SearchResponse`: the answer here is a
//! [`SearchAnswer`], the same bytes written straight from the search's
//! outcome (see `answer`). Routing, limits and status codes are those of the
//! generated server; its clients are unchanged.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use tonic::{
    Request, Response, Status,
    codegen::{Body, BoxFuture, StdError, http},
    server::{Grpc, NamedService},
};

use super::{answer::SearchAnswer, identity};
use crate::wire;
use crate::{proto::SearchRequest, relay::Relay};

/// The service's one method.
const SEARCH_PATH: &str = "/cpis.v1.Lookup/Search";

#[derive(Clone)]
pub struct LookupService {
    relay: Relay,
    max_decoding_message_size: Option<usize>,
}

impl LookupService {
    pub fn new(relay: Relay) -> Self {
        Self { relay, max_decoding_message_size: None }
    }

    /// Largest request accepted (tonic's default: 4 MiB).
    #[must_use]
    pub(crate) fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding_message_size = Some(limit);
        self
    }

    async fn search(relay: Relay, request: Request<SearchRequest>) -> Result<Response<SearchAnswer>, Status> {
        let identity = identity(&request)?;
        let query = wire::search_query(request.into_inner())?;
        let outcome = relay.search(&identity, query).await?;
        Ok(Response::new(SearchAnswer(outcome)))
    }
}

impl NamedService for LookupService {
    const NAME: &'static str = "cpis.v1.Lookup";
}

impl<B> tower::Service<http::Request<B>> for LookupService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != SEARCH_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let (relay, limit) = (self.relay.clone(), self.max_decoding_message_size);
        Box::pin(async move {
            let search = tower::service_fn(move |request| Self::search(relay.clone(), request));
            let codec = tonic_prost::ProstCodec::<SearchAnswer, SearchRequest>::default();
            let mut grpc = Grpc::new(codec).apply_max_message_size_config(limit, None);
            Ok(grpc.unary(search, request).await)
        })
    }
}
