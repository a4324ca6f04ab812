//! A subject access request: everything the relay holds about one person,
//! for an auditor to hand to them. Plans held now and the retained history
//! of changes of the person's plans ([`crate::plan_history`]), every retained access of
//! the log (searches of both kinds and auditors' reads) with its inclusion
//! proof in one signed checkpoint, and the retained notifications about the
//! person with whether the owning authority acknowledged them. The request is
//! itself an auditor's read, stored before anything is gathered (so it is in
//! the report), and refused if it cannot be stored.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Relay;
use crate::{
    access_log::SignedCheckpoint,
    auth::{Action, Identity, authorize},
    error::{Error, Result},
    model::{LocalAuthority, Notification, Plan},
    nhs::NhsNumber,
    plan_history::PlanEvent,
    store::log::LogEntry,
    transparency::Hash,
};

/// One access of the report with its place in the log and its proof.
#[derive(Debug, Clone)]
pub struct LoggedAccess {
    pub position: u64,
    pub entry: LogEntry,
    pub proof: Vec<Hash>,
}

/// What a subject access request gathers.
#[derive(Debug, Clone)]
pub struct SubjectAccess {
    pub nhs_number: NhsNumber,
    pub generated_at: DateTime<Utc>,
    pub plans: Vec<(Plan, Option<Arc<LocalAuthority>>)>,
    /// Oldest first.
    pub plan_history: Vec<PlanEvent>,
    /// In log order.
    pub accesses: Vec<LoggedAccess>,
    /// With whether the owning authority acknowledged each.
    pub notifications: Vec<(Notification, bool)>,
    pub checkpoint: SignedCheckpoint,
}

impl Relay {
    /// Everything held about `nhs_number` (auditors only).
    pub async fn subject_access(&self, identity: &Identity, nhs_number: &str) -> Result<SubjectAccess> {
        authorize(identity, Action::ReadAccessLog)?;
        let nhs_number = super::validate::nhs_number_field(nhs_number, "nhs_number")?;
        let keeper = self
            .shared
            .log_keeper
            .clone()
            .ok_or_else(|| Error::FailedPrecondition("this relay's store keeps no access log yet".into()))?;
        self.record_audit_read(identity, nhs_number, None, "").await?;
        let generated_at = self.shared.clock.now();
        let plans = self
            .shared
            .index
            .plans(nhs_number)
            .iter()
            .map(|stored| {
                let plan = stored.decode()?;
                Ok((plan, self.shared.index.authority(stored.la_ods_code())))
            })
            .collect::<Result<Vec<_>, crate::store::StoreError>>()?;
        let mut plan_history = self.shared.store.plan_history_of(nhs_number).await?;
        // One change of several plans shares its time: those read by authority and plan type.
        plan_history.sort_by(|a, b| (a.at, &a.la_ods_code, a.plan_type).cmp(&(b.at, &b.la_ods_code, b.plan_type)));
        let (checkpoint, accesses) = keeper
            .run(move |keeper| {
                let log = keeper.log();
                // Positions read with the records: one read, not one lookup per access.
                let mut entries: Vec<(u64, LogEntry)> = log
                    .searches_of(nhs_number)?
                    .into_iter()
                    .map(|(position, access)| (position, LogEntry::Search(access)))
                    .collect();
                for (position, read) in log.audit_reads_of(nhs_number)? {
                    entries.push((position, LogEntry::Audit(read)));
                }
                entries.sort_by_key(|(position, _)| *position);
                let positions: Vec<u64> = entries.iter().map(|(position, _)| *position).collect();
                let (checkpoint, proofs) = keeper.proofs(&positions)?;
                let accesses = entries
                    .into_iter()
                    .zip(proofs)
                    .map(|((position, entry), proof)| LoggedAccess { position, entry, proof })
                    .collect();
                Ok((checkpoint, accesses))
            })
            .await?;
        let acked: std::collections::HashMap<String, u64> = self
            .shared
            .hub
            .positions()
            .into_iter()
            .map(|authority| (authority.la_ods_code, authority.acked_through))
            .collect();
        let notifications = self
            .shared
            .store
            .notifications_of(nhs_number)
            .await?
            .into_iter()
            .map(|notification| {
                let through = acked.get(&notification.draft.la_ods_code).copied().unwrap_or(0);
                let acknowledged = notification.sequence <= through;
                (notification, acknowledged)
            })
            .collect();
        Ok(SubjectAccess { nhs_number, generated_at, plans, plan_history, accesses, notifications, checkpoint })
    }
}
