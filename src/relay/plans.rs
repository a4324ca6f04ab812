//! Plan writes: an upload's valid plans committed to the store and then
//! shown by the index, in the order of a shared store's plan feed; deletes
//! and exports, each scoped to the caller's own local authority. The store
//! commits a change before the index shows it; a FULL_REFRESH passes its
//! [`RefreshCheck`] under the write lock, before it replaces anything.
//! Receiving an upload is `upload`'s.

use std::sync::Arc;

use super::{
    Relay,
    sent::{SentPlanType, UploadMode},
    validate,
};
use crate::{
    auth::{Action, Identity, authorize},
    error::{Error, Result},
    store::writes::PlanVersion,
    stored::StoredPlan,
};

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

/// What a FULL_REFRESH is checked against before it changes anything.
#[derive(Clone, Copy, Debug)]
pub(super) struct RefreshCheck {
    pub(super) allow_large_removal: bool,
    pub(super) max_removal_percent: u32,
    pub(super) max_rejected_percent: u32,
    pub(super) received: u64,
    pub(super) rejected: u64,
}

impl RefreshCheck {
    /// Refuses a refresh that would remove more of the LA's `current` plans,
    /// or reject more of its records, than the settings allow. An LA's first
    /// refresh (no current plans) can deflag no one and is never refused.
    pub(super) fn check(&self, la_ods_code: &str, current: u64, would_remove: u64) -> Result<()> {
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

/// What committing an upload did, and how long it took.
pub(super) struct Committed {
    pub(super) removed: u64,
    pub(super) current_plans: u64,
    pub(super) store_ms: u64,
    pub(super) index_ms: u64,
}

impl Relay {
    /// Stores an upload's valid plans, then shows them. A refresh is checked
    /// first, under the write lock, against the plans it would replace.
    pub(super) async fn commit_plans(
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
        let at = self.shared.clock.now();
        let (removed, current_plans, store_ms) = match mode {
            UploadMode::Incremental => {
                let applied = self.shared.store.upsert_plans(authority.clone(), Arc::clone(&plans), at).await?;
                let store_ms = started.elapsed().as_millis() as u64;
                let version = self.before_own_change(&writes, applied).await?;
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
                let replacing = self.shared.store.replace_plans(authority.clone(), Arc::clone(&plans), at);
                let (staging_index, staging_plans) = (index.clone(), Arc::clone(&plans));
                let staging =
                    off_runtime(move || staging_index.stage_replacement(&la_ods_code, staging_plans.iter().cloned()));
                let (stored, staged) = tokio::join!(replacing, staging);
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
                    Some(version) if !self.holds_version_before(version) => {
                        index.abandon(staged);
                        self.catch_up_before(&writes, version).await?;
                        let (la, plans) = (la_ods_code_of(&plans), Arc::clone(&plans));
                        let replaced =
                            off_runtime(move || index.replace_authority(&la, plans.iter().cloned())).await? as u64;
                        self.applied_plan_version(&writes, version);
                        replaced
                    }
                    applied => {
                        let version = self.before_own_change(&writes, applied).await?;
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
    async fn before_own_change(&self, writes: &tokio::sync::MutexGuard<'_, ()>, version: PlanVersion) -> Result<u64> {
        match version {
            Some(version) => {
                self.catch_up_before(writes, version).await?;
                Ok(version)
            }
            None => Ok(0),
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
        let deleted = self
            .spawn_task(async move {
                let writes = relay.shared.plan_writes.lock().await;
                relay.catch_up_before(&writes, u64::MAX).await?;
                let held = relay.shared.index.plans(nhs_number).iter().any(|plan| {
                    plan.la_ods_code() == la_ods_code && plan_type.is_none_or(|kind| kind == plan.plan_type())
                });
                if !held {
                    return Ok(0);
                }
                let at = relay.shared.clock.now();
                let applied = relay.shared.store.delete_plans(la_ods_code.clone(), nhs_number, plan_type, at).await?;
                let version = relay.before_own_change(&writes, applied).await?;
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
