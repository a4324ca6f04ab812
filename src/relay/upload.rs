//! An upload: its header checked against the caller's certificate, each
//! record validated on its own (valid ones load, the others come back as
//! per-record rejections), a FULL_REFRESH checked against what it would
//! remove before anything changes, and the report. Committing the valid
//! plans is `plans`'s.

use std::{collections::HashSet, sync::Arc};

use futures::{Stream, StreamExt};
use tracing::Instrument;

use super::{
    Relay,
    plans::{Committed, RefreshCheck},
    sent::{SentPlanRecord, SentUploadHeader, UploadMode},
    validate::{self, Rejection, RejectionReason},
};
use crate::{
    auth::{Action, Identity, authorize, authorize_local_authority},
    error::{Error, Result},
    model::PlanType,
    stored::StoredPlan,
};

/// The first message of an upload.
#[derive(Clone, Debug)]
pub struct UploadHeader {
    pub mode: UploadMode,
    pub file_id: String,
    pub local_authority: crate::model::LocalAuthority,
    /// FULL_REFRESH: the uploader means to remove a large share of the LA's plans.
    pub allow_large_removal: bool,
}

/// Rejections reported one by one; beyond these only their counts per reason.
pub(super) const MAX_DETAILED_REJECTIONS: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadStatus {
    AllLoaded,
    Partial,
    NoneLoaded,
}

impl UploadStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllLoaded => "all_loaded",
            Self::Partial => "partial",
            Self::NoneLoaded => "none_loaded",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadOutcome {
    pub status: UploadStatus,
    /// Records received, header excluded.
    pub received: u64,
    pub loaded: u64,
    /// Every rejected record.
    pub rejected: u64,
    /// The first [`MAX_DETAILED_REJECTIONS`] rejections.
    pub rejections: Vec<Rejection>,
    /// All rejections per reason, in the order the reasons first occurred.
    pub rejection_counts: Vec<(RejectionReason, u64)>,
    /// FULL_REFRESH: previous plans of the authority not in the upload.
    pub removed: u64,
    /// FULL_REFRESH: plans the authority held before it.
    pub current_plans: u64,
}

impl UploadHeader {
    /// Validates the header as sent against the caller's certificate.
    pub fn validate(identity: &Identity, header: &SentUploadHeader) -> Result<Self> {
        authorize(identity, Action::UploadPlans)?;
        let Some(mode) = header.mode else {
            return Err(Error::invalid("header.mode", "must be INCREMENTAL or FULL_REFRESH"));
        };
        let local_authority = validate::local_authority(header.local_authority.as_ref())?;
        authorize_local_authority(identity, &local_authority.ods_code)?;
        let file_id = validate::optional_text_within(&header.file_id, "header.file_id", validate::MAX_FILE_ID_LEN)?;
        Ok(Self { mode, file_id, local_authority, allow_large_removal: header.allow_large_removal })
    }
}

impl Relay {
    /// Loads the valid records of an upload and reports the others.
    pub async fn upload(
        &self,
        identity: &Identity,
        header: UploadHeader,
        records: impl Stream<Item = Result<SentPlanRecord>>,
    ) -> Result<UploadOutcome> {
        authorize(identity, Action::UploadPlans)?;
        let started = std::time::Instant::now();
        let now = self.shared.clock.now();
        let la_ods_code = header.local_authority.ods_code.clone();
        let limit = self.shared.settings.max_upload_records;
        let shared_la: Arc<str> = la_ods_code.as_str().into();
        let mut plans: Vec<StoredPlan> = Vec::new();
        let mut seen: HashSet<(crate::nhs::NhsNumber, PlanType)> = HashSet::new();
        let mut rejections = Vec::new();
        let mut rejection_counts: Vec<(RejectionReason, u64)> = Vec::new();
        let mut rejected: u64 = 0;
        let mut reject = |rejection: Rejection| {
            rejected += 1;
            match rejection_counts.iter_mut().find(|(reason, _)| *reason == rejection.reason) {
                Some((_, count)) => *count += 1,
                None => rejection_counts.push((rejection.reason, 1)),
            }
            if rejections.len() < MAX_DETAILED_REJECTIONS {
                rejections
                    .push(Rejection { nhs_number: validate::echoed_nhs_number(rejection.nhs_number), ..rejection });
            }
        };
        let mut received: u64 = 0;
        // Trace spans (nothing when traces are off): receiving and validating the records, then the commit.
        let validating =
            crate::traced_span!("validate", received = tracing::field::Empty, rejected = tracing::field::Empty,);
        let mut records = std::pin::pin!(records);
        while let Some(record) = records.next().await {
            // A fast client's records are already buffered, so the stream never makes this
            // task wait: give the worker back regularly, or every search and connection
            // scheduled behind it waits for the whole upload to be validated.
            tokio::task::consume_budget().await;
            let mut record = record?;
            if received as usize >= limit {
                return Err(Error::ResourceExhausted(format!(
                    "an upload may carry at most {limit} records; nothing was loaded"
                )));
            }
            let index = received;
            received += 1;
            let nhs_number = std::mem::take(&mut record.nhs_number);
            match validate::plan_record(&nhs_number, record, &la_ods_code, now) {
                Ok(plan) if !seen.insert((plan.nhs_number, plan.plan_type)) => reject(Rejection {
                    index,
                    nhs_number,
                    reason: RejectionReason::DuplicateRecord,
                    message: format!(
                        "an earlier record of this upload has the same NHS number and plan type {}",
                        plan.plan_type.code()
                    ),
                }),
                Ok(plan) => plans.push(StoredPlan::encode(&plan, Arc::clone(&shared_la))?),
                Err((reason, message)) => reject(Rejection { index, nhs_number, reason, message }),
            }
        }
        if header.mode == UploadMode::FullRefresh && received == 0 {
            return Err(Error::invalid(
                "records",
                "a FULL_REFRESH with no records would remove every plan of this local authority; nothing was changed (use Delete to remove plans)",
            ));
        }

        drop(seen);
        validating.record("received", received);
        validating.record("rejected", rejected);
        drop(validating);
        let loaded = plans.len() as u64;
        let receive_ms = started.elapsed().as_millis() as u64;
        let settings = &self.shared.settings;
        let check = RefreshCheck {
            allow_large_removal: header.allow_large_removal,
            max_removal_percent: settings.max_refresh_removal_percent,
            max_rejected_percent: settings.max_refresh_rejected_percent,
            received,
            rejected,
        };
        let Committed { removed, current_plans, store_ms, index_ms } = if plans.is_empty() {
            // Nothing is loaded, so nothing is removed; a refresh still says when its file looks broken.
            let current_plans = match header.mode {
                UploadMode::FullRefresh => self.shared.index.plans_of(&la_ods_code).len() as u64,
                UploadMode::Incremental => 0,
            };
            if header.mode == UploadMode::FullRefresh {
                check.check(&la_ods_code, current_plans, 0)?;
            }
            Committed { removed: 0, current_plans, store_ms: 0, index_ms: 0 }
        } else {
            // On its own task: a client that goes away must not stop a change half
            // way, between the store and the index.
            let relay = self.clone();
            let (mode, authority) = (header.mode, header.local_authority.clone());
            let commit = crate::traced_span!("commit", plans = plans.len());
            self.spawn_task(async move { relay.commit_plans(mode, authority, plans, check).await }.instrument(commit))
                .await
                .map_err(|error| Error::Unavailable(format!("the upload did not finish: {error}")))??
        };
        let status = match (loaded, rejected) {
            (_, 0) if loaded > 0 => UploadStatus::AllLoaded,
            (0, _) => UploadStatus::NoneLoaded,
            _ => UploadStatus::Partial,
        };
        metrics::counter!("cpis_uploads_total", "status" => status.as_str()).increment(1);
        // The file id is the uploader's free text: at debug only, as a debug-escaped value.
        tracing::debug!(la = %la_ods_code, file_id = ?header.file_id, "upload file");
        tracing::info!(
            la = %la_ods_code,
            mode = ?header.mode,
            received,
            loaded,
            rejected,
            removed,
            current_plans,
            receive_ms,
            store_ms,
            index_ms,
            "upload processed"
        );
        if loaded > 0 {
            self.publish_plan_gauges();
        }
        Ok(UploadOutcome { status, received, loaded, rejected, rejections, rejection_counts, removed, current_plans })
    }
}
