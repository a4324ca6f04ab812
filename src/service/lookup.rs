//! `cpis.v1.Lookup` over [`Relay::search`].

use tonic::{Request, Response, Status};

use super::{convert, identity};
use crate::{
    proto::{SearchRequest, SearchResponse, lookup_server::Lookup},
    relay::Relay,
};

pub struct LookupService {
    relay: Relay,
}

impl LookupService {
    pub fn new(relay: Relay) -> Self {
        Self { relay }
    }
}

#[tonic::async_trait]
impl Lookup for LookupService {
    async fn search(&self, request: Request<SearchRequest>) -> Result<Response<SearchResponse>, Status> {
        let identity = identity(&request)?;
        let query = convert::search_query(request.into_inner())?;
        let outcome = self.relay.search(&identity, query).await?;
        Ok(Response::new(convert::search_response(outcome)))
    }
}
