//! `cpis.v1.Plans` over [`Relay::upload`], [`Relay::delete`] and [`Relay::export`].

use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{ResponseStream, identity};
use crate::wire;
use crate::{
    error::Error,
    proto::{
        DeleteRequest, DeleteResponse, ExportRequest, PlanRecord, UploadMessage, UploadReport, plans_server::Plans,
        upload_message::Body,
    },
    relay::{Relay, UploadHeader},
};

pub struct PlansService {
    relay: Relay,
}

impl PlansService {
    pub fn new(relay: Relay) -> Self {
        Self { relay }
    }
}

/// A failure reading the upload stream: the client's mistakes keep their
/// meaning (a message that does not decode is INVALID_ARGUMENT, one over the
/// size limit RESOURCE_EXHAUSTED); only a broken transport is UNAVAILABLE.
fn stream_error(status: Status) -> Error {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            Error::ResourceExhausted(format!("records: {}", status.message()))
        }
        tonic::Code::Internal | tonic::Code::InvalidArgument | tonic::Code::Unimplemented => {
            Error::invalid("records", format!("a message could not be read: {}", status.message()))
        }
        _ => Error::Unavailable(format!("the upload stream broke: {}", status.message())),
    }
}

#[tonic::async_trait]
impl Plans for PlansService {
    type ExportStream = ResponseStream<PlanRecord>;

    async fn upload(&self, request: Request<Streaming<UploadMessage>>) -> Result<Response<UploadReport>, Status> {
        let identity = identity(&request)?;
        let mut messages = request.into_inner();
        let header = match messages.message().await?.and_then(|message| message.body) {
            Some(Body::Header(header)) => UploadHeader::validate(&identity, &wire::upload_header_from_wire(header))?,
            _ => return Err(Error::invalid("header", "the first message of an upload must be the header").into()),
        };
        let records = messages.map(|message| match message.map(|message| message.body) {
            Ok(Some(Body::Record(record))) => Ok(wire::plan_record_from_wire(record)),
            Ok(Some(Body::Header(_))) => Err(Error::invalid("header", "only the first message may be a header")),
            Ok(None) => Err(Error::invalid("body", "each message must carry a header or a record")),
            Err(status) => Err(stream_error(status)),
        });
        let outcome = self.relay.upload(&identity, header, records).await?;
        Ok(Response::new(wire::upload_report(outcome)))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let identity = identity(&request)?;
        let DeleteRequest { nhs_number, r#type } = request.get_ref();
        let deleted = self.relay.delete(&identity, nhs_number, wire::plan_type_from_wire(*r#type)).await?;
        Ok(Response::new(DeleteResponse { deleted }))
    }

    async fn export(&self, request: Request<ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        let identity = identity(&request)?;
        let plans = self.relay.export(&identity)?;
        let stream = tokio_stream::iter(plans).map(|plan| Ok(wire::plan_record(&plan.decode().map_err(Error::from)?)));
        Ok(Response::new(Box::pin(stream)))
    }
}
