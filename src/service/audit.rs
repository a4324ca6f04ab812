//! `cpis.v1.Audit` over [`Relay::access_log`], the access log's proofs (an
//! authority's own notifications' too, [`Relay::notification_proofs`]) and
//! [`Relay::subject_access`].

use tonic::{Request, Response, Status};

use super::{ResponseStream, identity};
use crate::wire;
use crate::{
    access_log::SignedCheckpoint,
    plan_history::{PlanEvent, PlanEventKind},
    proto::{
        self, AccessLogRequest, AccessRecord, ConsistencyProofRequest, InclusionProofRequest, LatestCheckpointRequest,
        NotificationProofsRequest, NotificationProofsResponse, SubjectAccessRequest, audit_server::Audit,
    },
    relay::{NotificationProof, Relay, SubjectAccess},
    store::{StoreError, log::LogEntry},
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
        witnessed_note: String::new(),
        note: signed.note,
        tree_size: signed.checkpoint.size,
        root_hash: signed.checkpoint.root.to_vec(),
        time: Some(wire::timestamp(signed.checkpoint.time)),
        verifier_key: verifier.map(ToString::to_string).unwrap_or_default(),
    }
}

fn leaf_bytes(entry: &LogEntry) -> Result<Vec<u8>, Status> {
    entry
        .leaf_fields()
        .encode()
        .map_err(|error| crate::error::Error::from(StoreError::Corrupt(error.to_string())).into())
}

fn logged_access(access: crate::relay::LoggedAccess) -> Result<proto::LoggedAccess, Status> {
    let leaf = leaf_bytes(&access.entry)?;
    let (record, kind, request_id) = match access.entry {
        LogEntry::Search(event) => {
            let kind = if event.scheduled { proto::AccessKind::Scheduled } else { proto::AccessKind::Unscheduled };
            let request_id = event.request_id.clone();
            (wire::access_record(event), kind, request_id)
        }
        LogEntry::Audit(read) => {
            let record = AccessRecord {
                accessed_at: Some(wire::timestamp(read.read_at)),
                organisation_ods_code: read.organisation_ods_code,
                organisation_name: read.organisation_name,
                care_setting: proto::CareSetting::Unspecified as i32,
                accessor: Some(proto::Accessor {
                    user_id: read.accessor.user_id,
                    name: read.accessor.name,
                    role_code: read.accessor.role_code,
                }),
                scheduled: false,
                access_id: uuid::Uuid::from_u128(read.id).to_string(),
            };
            (record, proto::AccessKind::Audit, read.request_id)
        }
    };
    Ok(proto::LoggedAccess {
        access: Some(record),
        kind: kind as i32,
        request_id,
        leaf_index: access.position,
        leaf,
        audit_path: access.proof.iter().map(|hash| hash.to_vec()).collect(),
    })
}

fn notification_proof(sequence: u64, answer: NotificationProof) -> proto::NotificationProof {
    let id = |access_id: u128| uuid::Uuid::from_u128(access_id).to_string();
    let status = |status: proto::NotificationProofStatus| status as i32;
    match answer {
        NotificationProof::Included { access_id, position, leaf, proof } => proto::NotificationProof {
            sequence,
            status: status(proto::NotificationProofStatus::Included),
            access_id: id(access_id),
            leaf_index: position,
            leaf,
            audit_path: proof.iter().map(|hash| hash.to_vec()).collect(),
        },
        NotificationProof::NotYetCovered { access_id } => proto::NotificationProof {
            sequence,
            status: status(proto::NotificationProofStatus::NotYetCovered),
            access_id: id(access_id),
            ..Default::default()
        },
        NotificationProof::NotHeld => proto::NotificationProof {
            sequence,
            status: status(proto::NotificationProofStatus::NotHeld),
            ..Default::default()
        },
    }
}

fn subject_access_report(
    report: SubjectAccess,
    verifier: Option<&VerifierKey>,
) -> Result<proto::SubjectAccessReport, Status> {
    let plans = report
        .plans
        .iter()
        .map(|(plan, authority)| proto::SubjectPlan {
            record: Some(wire::plan_record(plan)),
            local_authority: authority.as_deref().map(wire::local_authority),
            loaded_at: Some(wire::timestamp(plan.loaded_at)),
        })
        .collect();
    Ok(proto::SubjectAccessReport {
        nhs_number: report.nhs_number.to_string(),
        generated_at: Some(wire::timestamp(report.generated_at)),
        plans,
        accesses: report.accesses.into_iter().map(logged_access).collect::<Result<_, _>>()?,
        notifications: report
            .notifications
            .iter()
            .map(|(notification, acknowledged)| proto::SubjectNotification {
                notification: Some(wire::notification(notification)),
                acknowledged: *acknowledged,
                la_ods_code: notification.draft.la_ods_code.clone(),
            })
            .collect(),
        checkpoint: Some(signed_checkpoint(report.checkpoint, verifier)),
        plan_history: report.plan_history.iter().map(plan_change).collect::<Result<_, _>>()?,
    })
}

fn plan_change(event: &PlanEvent) -> Result<proto::PlanChange, Status> {
    let kind = match event.kind {
        PlanEventKind::Loaded => proto::PlanChangeKind::Loaded,
        PlanEventKind::Changed => proto::PlanChangeKind::Changed,
        PlanEventKind::Deleted => proto::PlanChangeKind::Deleted,
        PlanEventKind::Withdrawn => proto::PlanChangeKind::Withdrawn,
        PlanEventKind::Expired => proto::PlanChangeKind::Expired,
    };
    Ok(proto::PlanChange {
        at: Some(wire::timestamp(event.at)),
        la_ods_code: event.la_ods_code.clone(),
        plan_type: wire::plan_type(event.plan_type) as i32,
        kind: kind as i32,
        record: event.plan().map_err(crate::error::Error::from)?.as_ref().map(wire::plan_record),
    })
}

#[tonic::async_trait]
impl Audit for AuditService {
    type AccessLogStream = ResponseStream<AccessRecord>;

    async fn access_log(&self, request: Request<AccessLogRequest>) -> Result<Response<Self::AccessLogStream>, Status> {
        let identity = identity(&request)?;
        let accesses = self.relay.access_log(&identity, &request.get_ref().nhs_number).await?;
        let records: Vec<_> = accesses.into_iter().map(|access| Ok(wire::access_record(access))).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(records))))
    }

    async fn latest_checkpoint(
        &self,
        request: Request<LatestCheckpointRequest>,
    ) -> Result<Response<proto::SignedCheckpoint>, Status> {
        let identity = identity(&request)?;
        let signed = self.relay.latest_checkpoint(&identity).await?;
        let witnessed = self.relay.log_keeper().and_then(|keeper| keeper.witnessed());
        let mut checkpoint = signed_checkpoint(signed, self.verifier());
        checkpoint.witnessed_note = witnessed.map(|witnessed| witnessed.note).unwrap_or_default();
        Ok(Response::new(checkpoint))
    }

    async fn inclusion_proof(
        &self,
        request: Request<InclusionProofRequest>,
    ) -> Result<Response<proto::InclusionProofResponse>, Status> {
        let identity = identity(&request)?;
        let inclusion = self.relay.inclusion_proof(&identity, &request.get_ref().access_id).await?;
        let leaf = leaf_bytes(&inclusion.entry)?;
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

    async fn notification_proofs(
        &self,
        request: Request<NotificationProofsRequest>,
    ) -> Result<Response<NotificationProofsResponse>, Status> {
        let identity = identity(&request)?;
        let sent = request.get_ref();
        let (tree_size, answers) = self.relay.notification_proofs(&identity, &sent.sequences, sent.tree_size).await?;
        let proofs = answers.into_iter().map(|(sequence, answer)| notification_proof(sequence, answer)).collect();
        Ok(Response::new(NotificationProofsResponse { tree_size, proofs }))
    }

    async fn subject_access(
        &self,
        request: Request<SubjectAccessRequest>,
    ) -> Result<Response<proto::SubjectAccessReport>, Status> {
        let identity = identity(&request)?;
        let report = self.relay.subject_access(&identity, &request.get_ref().nhs_number).await?;
        Ok(Response::new(subject_access_report(report, self.verifier())?))
    }
}
