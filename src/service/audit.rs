//! `cpis.v1.Audit` over [`Relay::access_log`].

use tonic::{Request, Response, Status};

use super::{ResponseStream, convert, identity};
use crate::{
    proto::{AccessLogRequest, AccessRecord, audit_server::Audit},
    relay::Relay,
};

pub struct AuditService {
    relay: Relay,
}

impl AuditService {
    pub fn new(relay: Relay) -> Self {
        Self { relay }
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    type AccessLogStream = ResponseStream<AccessRecord>;

    async fn access_log(&self, request: Request<AccessLogRequest>) -> Result<Response<Self::AccessLogStream>, Status> {
        let identity = identity(&request)?;
        let accesses = self.relay.access_log(&identity, &request.get_ref().nhs_number).await?;
        let records: Vec<_> = accesses.into_iter().map(|access| Ok(convert::access_record(access))).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(records))))
    }
}
