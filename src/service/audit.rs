//! `cpis.v1.Audit` over [`Relay::access_log`] and the access log's proofs.

use tonic::{Request, Response, Status};

use super::{ResponseStream, convert, identity};
use crate::{
    access_log::SignedCheckpoint,
    proto::{
        self, AccessLogRequest, AccessRecord, ConsistencyProofRequest, InclusionProofRequest, LatestCheckpointRequest,
        audit_server::Audit,
    },
    relay::Relay,
    store::StoreError,
    transparency::VerifierKey,
};

pub struct AuditService {
    relay: Relay,
}

impl AuditService {
    pub fn new(relay: Relay) -> Self {
        Self { relay }
    }

    fn verifier(&self) -> Option<&VerifierKey> {
        self.relay.log_keeper().map(|keeper| keeper.verifier())
    }
}

fn signed_checkpoint(signed: SignedCheckpoint, verifier: Option<&VerifierKey>) -> proto::SignedCheckpoint {
    proto::SignedCheckpoint {
        note: signed.note,
        tree_size: signed.checkpoint.size,
        root_hash: signed.checkpoint.root.to_vec(),
        time: Some(convert::timestamp(signed.checkpoint.time)),
        verifier_key: verifier.map(ToString::to_string).unwrap_or_default(),
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

    async fn latest_checkpoint(
        &self,
        request: Request<LatestCheckpointRequest>,
    ) -> Result<Response<proto::SignedCheckpoint>, Status> {
        let identity = identity(&request)?;
        let signed = self.relay.latest_checkpoint(&identity).await?;
        Ok(Response::new(signed_checkpoint(signed, self.verifier())))
    }

    async fn inclusion_proof(
        &self,
        request: Request<InclusionProofRequest>,
    ) -> Result<Response<proto::InclusionProofResponse>, Status> {
        let identity = identity(&request)?;
        let inclusion = self.relay.inclusion_proof(&identity, &request.get_ref().access_id).await?;
        let leaf = inclusion
            .entry
            .leaf_fields()
            .encode()
            .map_err(|error| crate::error::Error::from(StoreError::Corrupt(error.to_string())))?;
        Ok(Response::new(proto::InclusionProofResponse {
            leaf_index: inclusion.position,
            leaf,
            audit_path: inclusion.proof.iter().map(|hash| hash.to_vec()).collect(),
            checkpoint: Some(signed_checkpoint(inclusion.checkpoint, self.verifier())),
        }))
    }

    async fn consistency_proof(
        &self,
        request: Request<ConsistencyProofRequest>,
    ) -> Result<Response<proto::ConsistencyProofResponse>, Status> {
        let identity = identity(&request)?;
        let sent = request.get_ref();
        let (old_size, new_size, proof) = self.relay.consistency_proof(&identity, sent.old_size, sent.new_size).await?;
        Ok(Response::new(proto::ConsistencyProofResponse {
            old_size,
            new_size,
            hashes: proof.iter().map(|hash| hash.to_vec()).collect(),
        }))
    }
}
