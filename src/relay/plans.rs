//! `Plans`: uploads (INCREMENTAL and FULL_REFRESH) with per-record
//! validation, deletes and exports, each scoped to the caller's own local
//! authority. The store commits a change before the index shows it.

use std::{collections::HashSet, sync::Arc};

use futures::{Stream, StreamExt};

use super::{
    Relay,
    sent::{SentPlanRecord, SentPlanType, SentUploadHeader},
    validate::{self, Rejection, RejectionReason},
};
use crate::{
    auth::{Action, Identity, authorize, authorize_local_authority},
    error::{Error, Result},
    model::PlanType,
    store::Change,
    stored::StoredPlan,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadMode {
    Incremental,
    FullRefresh,
}

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
pub const MAX_DETAILED_REJECTIONS: usize = 1_000;

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

/// What a FULL_REFRESH is checked against before it changes anything.
#[derive(Clone, Copy, Debug)]
struct RefreshCheck {
    allow_large_removal: bool,
    max_removal_percent: u32,
    max_rejected_percent: u32,
    received: u64,
    rejected: u64,
}

impl RefreshCheck {
    /// Refuses a refresh that would remove more of the LA's `current` plans,
    /// or reject more of its records, than the settings allow. An LA's first
    /// refresh (no current plans) can deflag no one and is never refused.
    fn check(&self, la_ods_code: &str, current: u64, would_remove: u64) -> Result<()> {
        if self.allow_large_removal || current == 0 {
            return Ok(());
        }
        let removes_too_many = would_remove * 100 > u64::from(self.max_removal_percent) * current;
        let rejects_too_many = self.rejected * 100 > u64::from(self.max_rejected_percent) * self.received;
        if !(removes_too_many || rejects_too_many) {
            return Ok(());
        }
        let (received, rejected) = (self.received, self.rejected);
        let why = match (removes_too_many, rejects_too_many) {
            (true, true) => format!(
                "more than {}% of the current plans would be removed and more than {}% of the records were rejected",
                self.max_removal_percent, self.max_rejected_percent
            ),
            (true, false) => format!("more than {}% of the current plans would be removed", self.max_removal_percent),
            _ => format!("more than {}% of the records were rejected", self.max_rejected_percent),
        };
        tracing::warn!(
            la = %la_ods_code, current, would_remove, rejected, received, "full refresh refused: {why}"
        );
        Err(Error::FailedPrecondition(format!(
            "FULL_REFRESH refused, nothing was changed: local authority {la_ods_code} holds {current} current plans, \
             this upload would remove {would_remove}, and {rejected} of {received} records were rejected ({why}); \
             fix the file, or set allow_large_removal (cpis-relay upload --allow-large-removal) if the removal is intended"
        )))
    }
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

/// Runs CPU work of a large upload (sorting, index changes) on the blocking pool, so that search
/// threads are not held for the hundreds of milliseconds it can take.
pub(super) async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Unavailable(format!("the index update did not finish: {error}")))
}

fn la_ods_code_of(plans: &[StoredPlan]) -> String {
    plans.first().map(|plan| plan.la_ods_code().to_owned()).unwrap_or_default()
}

/// What committing an upload did, and how long it took.
struct Committed {
    removed: u64,
    current_plans: u64,
    store_ms: u64,
    index_ms: u64,
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
            tokio::spawn(async move { relay.commit_plans(mode, authority, plans, check).await })
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

    /// Stores an upload's valid plans, then shows them. A refresh is checked
    /// first, under the write lock, against the plans it would replace.
    async fn commit_plans(
        &self,
        mode: UploadMode,
        authority: crate::model::LocalAuthority,
        plans: Vec<StoredPlan>,
        check: RefreshCheck,
    ) -> Result<Committed> {
        let started = std::time::Instant::now();
        let writes = self.shared.plan_writes.lock().await;
        // A shared store: what other nodes committed first, so the refresh check counts the current set.
        self.catch_up_before(&writes, u64::MAX).await?;
        // In the store's key order (a refresh then merges with the stored set in
        // one pass), sorted off the async workers: 150,000 plans take tens of ms.
        let plans: Arc<[StoredPlan]> = off_runtime(move || {
            let mut plans = plans;
            plans.sort_unstable_by_key(|plan| (plan.nhs_number(), plan.plan_type()));
            plans.into()
        })
        .await?;
        let la_ods_code = authority.ods_code.clone();
        let index = self.shared.index.clone();
        let (removed, current_plans, store_ms) = match mode {
            UploadMode::Incremental => {
                let change = Change::UpsertPlans { authority: authority.clone(), plans: Arc::clone(&plans) };
                let applied = self.shared.store.apply(change).await?;
                let store_ms = started.elapsed().as_millis() as u64;
                let version = self.before_own_change(&writes, &applied).await?;
                self.shared.hub.register_authority(&authority.ods_code);
                index.set_authority(authority);
                off_runtime(move || index.upsert(plans.iter().cloned())).await?;
                self.applied_plan_version(&writes, version);
                (0, 0, store_ms)
            }
            UploadMode::FullRefresh => {
                let (counting_index, counting_plans, counting_la) =
                    (index.clone(), Arc::clone(&plans), la_ods_code.clone());
                let (current, would_remove) = off_runtime(move || {
                    let current = counting_index.plans_of(&counting_la);
                    let kept = |plan: &StoredPlan| {
                        let key = (plan.nhs_number(), plan.plan_type());
                        counting_plans.binary_search_by_key(&key, |new| (new.nhs_number(), new.plan_type())).is_ok()
                    };
                    (current.len() as u64, current.iter().filter(|plan| !kept(plan)).count() as u64)
                })
                .await?;
                check.check(&la_ods_code, current, would_remove)?;
                // The index stages the new set (invisibly) while the store commits it.
                let change = Change::ReplacePlans { authority: authority.clone(), plans: Arc::clone(&plans) };
                let (staging_index, staging_plans) = (index.clone(), Arc::clone(&plans));
                let staging =
                    off_runtime(move || staging_index.stage_replacement(&la_ods_code, staging_plans.iter().cloned()));
                let (stored, staged) = tokio::join!(self.shared.store.apply(change), staging);
                let store_ms = started.elapsed().as_millis() as u64;
                let staged = staged?;
                let applied = match stored {
                    Ok(applied) => applied,
                    Err(error) => {
                        index.abandon(staged);
                        return Err(error.into());
                    }
                };
                self.shared.hub.register_authority(&authority.ods_code);
                index.set_authority(authority);
                let removed = match applied {
                    // Another node's plan change committed just before this one: it goes
                    // into the index first, then this refresh, staged again after it.
                    crate::store::Applied::PlanVersion(version) if !self.holds_version_before(version) => {
                        index.abandon(staged);
                        self.catch_up_before(&writes, version).await?;
                        let (la, plans) = (la_ods_code_of(&plans), Arc::clone(&plans));
                        let replaced =
                            off_runtime(move || index.replace_authority(&la, plans.iter().cloned())).await? as u64;
                        self.applied_plan_version(&writes, version);
                        replaced
                    }
                    applied => {
                        let version = self.before_own_change(&writes, &applied).await?;
                        let removed = off_runtime(move || index.publish(staged)).await? as u64;
                        self.applied_plan_version(&writes, version);
                        removed
                    }
                };
                (removed, current, store_ms)
            }
        };
        let index_ms = started.elapsed().as_millis() as u64 - store_ms;
        Ok(Committed { removed, current_plans, store_ms, index_ms })
    }

    /// A shared store numbered this node's change: every earlier version
    /// reaches the index first. Returns the change's version (0 when unnumbered).
    async fn before_own_change(
        &self,
        writes: &tokio::sync::MutexGuard<'_, ()>,
        applied: &crate::store::Applied,
    ) -> Result<u64> {
        match applied {
            crate::store::Applied::PlanVersion(version) => {
                self.catch_up_before(writes, *version).await?;
                Ok(*version)
            }
            _ => Ok(0),
        }
    }

    /// Whether the index holds every plan change before `version`.
    fn holds_version_before(&self, version: u64) -> bool {
        *self.shared.plan_version.borrow() + 1 >= version
    }

    /// Deletes the caller's plans of a person: one type, or all if `None`.
    pub async fn delete(&self, identity: &Identity, nhs_number: &str, plan_type: SentPlanType) -> Result<u64> {
        authorize(identity, Action::DeletePlans)?;
        let nhs_number = validate::nhs_number_field(nhs_number, "nhs_number")?;
        let plan_type = validate::plan_type_filter(plan_type)?;
        let la_ods_code = identity.ods_code.clone();
        // On its own task, like an upload: store and index change together or not at all.
        let relay = self.clone();
        let deleted = tokio::spawn(async move {
            let writes = relay.shared.plan_writes.lock().await;
            relay.catch_up_before(&writes, u64::MAX).await?;
            let held =
                relay.shared.index.plans(nhs_number).iter().any(|plan| {
                    plan.la_ods_code() == la_ods_code && plan_type.is_none_or(|kind| kind == plan.plan_type())
                });
            if !held {
                return Ok(0);
            }
            let change = Change::DeletePlans { la_ods_code: la_ods_code.clone(), nhs_number, plan_type };
            let applied = relay.shared.store.apply(change).await?;
            let version = relay.before_own_change(&writes, &applied).await?;
            let removed = relay.shared.index.remove(&la_ods_code, nhs_number, plan_type) as u64;
            relay.applied_plan_version(&writes, version);
            Ok::<_, Error>(removed)
        })
        .await
        .map_err(|error| Error::Unavailable(format!("the delete did not finish: {error}")))??;
        if deleted > 0 {
            self.publish_plan_gauges();
        }
        Ok(deleted)
    }

    /// The caller's plans, in NHS number order, in their stored form
    /// (decode each with [`StoredPlan::decode`] as it is sent).
    pub fn export(&self, identity: &Identity) -> Result<Vec<StoredPlan>> {
        authorize(identity, Action::ExportPlans)?;
        Ok(self.shared.index.plans_of(&identity.ods_code))
    }
}
