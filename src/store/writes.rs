//! The store's writes as typed calls. Each says what it returns, so that no
//! caller matches an outcome its change cannot have: recording a search is
//! notified or a repeat, a plan change has a feed version or none, an expiry
//! has its counts. They go through [`Store::apply`], the one write entry
//! point a store (and a wrapper: health reporting, fault injection) needs,
//! because a store commits heterogeneous changes in one batch and a wrapper
//! treats every write alike. A store answering a change out of kind is a
//! bug that becomes [`StoreError::Corrupt`] here, in one place.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Applied, Change, Expiry, ExpiryCounts, Store, StoreError};
use crate::{
    model::{AccessEvent, AuditRead, LocalAuthority, Notification, NotificationDraft, PlanType},
    nhs::NhsNumber,
    stored::StoredPlan,
};

/// What recording a search did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Stored, with its notifications numbered.
    Notified(Vec<Notification>),
    /// Another node stored this request within the request window: nothing
    /// was stored and no one is notified (this search is its retry).
    Repeated,
}

/// A plan change's place in a shared store's plan feed; `None` where this
/// process alone writes the store (nothing to order it against).
pub(crate) type PlanVersion = Option<u64>;

impl dyn Store {
    /// Stores a search of a flagged person with a notification per draft.
    pub async fn record_access(
        &self,
        access: AccessEvent,
        drafts: Vec<NotificationDraft>,
    ) -> Result<Recorded, StoreError> {
        match self.apply(Change::RecordAccess { access, drafts }).await? {
            Applied::Notified(notifications) => Ok(Recorded::Notified(notifications)),
            Applied::Repeated => Ok(Recorded::Repeated),
            other => Err(out_of_kind("a recorded access", other)),
        }
    }

    /// Stores an auditor's read in the access log.
    pub(crate) async fn record_audit(&self, read: AuditRead) -> Result<(), StoreError> {
        committed("an auditor's read", self.apply(Change::RecordAudit(read)).await?)
    }

    /// Adds or replaces these plans of one authority (an incremental upload).
    pub async fn upsert_plans(
        &self,
        authority: LocalAuthority,
        plans: Arc<[StoredPlan]>,
        at: DateTime<Utc>,
    ) -> Result<PlanVersion, StoreError> {
        plan_version("an upsert", self.apply(Change::UpsertPlans { authority, plans, at }).await?)
    }

    /// Makes the authority's plans exactly these (FULL_REFRESH), atomically.
    pub async fn replace_plans(
        &self,
        authority: LocalAuthority,
        plans: Arc<[StoredPlan]>,
        at: DateTime<Utc>,
    ) -> Result<PlanVersion, StoreError> {
        plan_version("a full refresh", self.apply(Change::ReplacePlans { authority, plans, at }).await?)
    }

    /// Deletes one authority's plans of a person: one type, or all.
    pub async fn delete_plans(
        &self,
        la_ods_code: String,
        nhs_number: NhsNumber,
        plan_type: Option<PlanType>,
        at: DateTime<Utc>,
    ) -> Result<PlanVersion, StoreError> {
        let change = Change::DeletePlans { la_ods_code, nhs_number, plan_type, at };
        plan_version("a delete", self.apply(change).await?)
    }

    /// Acknowledges an authority's notifications through `through`.
    pub async fn ack(&self, la_ods_code: String, through: u64) -> Result<(), StoreError> {
        committed("an acknowledgement", self.apply(Change::Ack { la_ods_code, through }).await?)
    }

    /// Removes one chunk of what is past its keeping period.
    pub async fn expire(&self, expiry: Expiry) -> Result<ExpiryCounts, StoreError> {
        match self.apply(Change::Expire(expiry)).await? {
            Applied::Expired(counts) => Ok(counts),
            other => Err(out_of_kind("an expiry", other)),
        }
    }
}

fn committed(change: &str, applied: Applied) -> Result<(), StoreError> {
    match applied {
        Applied::Committed => Ok(()),
        other => Err(out_of_kind(change, other)),
    }
}

fn plan_version(change: &str, applied: Applied) -> Result<PlanVersion, StoreError> {
    match applied {
        Applied::Committed => Ok(None),
        Applied::PlanVersion(version) => Ok(Some(version)),
        other => Err(out_of_kind(change, other)),
    }
}

fn out_of_kind(change: &str, applied: Applied) -> StoreError {
    let answer = match applied {
        Applied::Committed => "committed",
        Applied::Notified(_) => "notifications",
        Applied::Repeated => "a repeated request",
        Applied::Expired(_) => "expiry counts",
        Applied::PlanVersion(_) => "a plan version",
    };
    StoreError::Corrupt(format!("the store answered {change} with {answer}"))
}
