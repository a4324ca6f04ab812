//! `cpis.v1.Notifications` over [`Relay::subscribe`] and [`Relay::ack`].

use futures::StreamExt;
use tonic::{Request, Response, Status};

use super::{ResponseStream, identity};
use crate::wire;
use crate::{
    proto::{AccessNotification, AckRequest, AckResponse, SubscribeRequest, notifications_server::Notifications},
    relay::Relay,
};

pub struct NotificationsService {
    relay: Relay,
}

impl NotificationsService {
    pub fn new(relay: Relay) -> Self {
        Self { relay }
    }
}

#[tonic::async_trait]
impl Notifications for NotificationsService {
    type SubscribeStream = ResponseStream<AccessNotification>;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let identity = identity(&request)?;
        let stream = self.relay.subscribe(&identity, request.get_ref().after_sequence)?;
        let stream =
            stream.map(|item| item.map(|notification| wire::notification(&notification)).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let identity = identity(&request)?;
        let acked_through = self.relay.ack(&identity, request.get_ref().sequence).await?;
        Ok(Response::new(AckResponse { acked_through }))
    }
}
