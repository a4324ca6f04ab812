//! What the plan lane writes: uploads, full refreshes, deletes and plan
//! retention, each with its events in the plan history
//! ([`crate::plan_history`]), in one fjall write batch per lane batch,
//! committed with `SyncData`, or not at all. Reads a change needs (the
//! version a new one replaces, an authority's current set for a refresh,
//! what retention removes) see everything committed before it, because the
//! lane is the only writer of its keyspaces, and this batch's own earlier
//! writes through [`Pending`].

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use fjall::{OwnedWriteBatch, PersistMode};

use super::{Spaces, changes::journal_failed, encode, io, keys, lane::Committer};
use crate::{
    model::{LocalAuthority, days},
    plan_history::{PlanEvent, PlanEventKind},
    store::{Applied, Change, Expiry, ExpiryCounts, StoreError},
    stored::{self, StoredPlan},
};

/// Writes plan changes.
pub(super) struct PlanCommitter {
    pub spaces: Spaces,
}

/// A stored version of a plan: its last visible day (its expiry entry) and its bytes.
#[derive(Clone)]
struct Held {
    until: Option<i32>,
    bytes: Vec<u8>,
}

impl Held {
    fn of(bytes: &[u8]) -> Result<Self, StoreError> {
        Ok(Self { until: stored::visible_until_of(bytes)?.map(days::to_number), bytes: bytes.to_vec() })
    }
}

/// Plans this batch wrote (`None`: removed), which reads of the keyspace do not see yet.
type Pending = HashMap<Vec<u8>, Option<Held>>;

/// One batch being written: the fjall batch, its own writes, and the plan events it makes.
struct Writing<'a> {
    spaces: &'a Spaces,
    batch: OwnedWriteBatch,
    pending: Pending,
    events: Vec<PlanEvent>,
}

impl Committer for PlanCommitter {
    fn commit(&mut self, changes: Vec<Change>) -> Result<Vec<Applied>, StoreError> {
        let spaces = &self.spaces;
        let batch = spaces.plans_db.batch().durability(Some(PersistMode::SyncData));
        let mut writing = Writing { spaces, batch, pending: Pending::new(), events: Vec::new() };
        let mut results = Vec::with_capacity(changes.len());
        for change in changes {
            results.push(match change {
                Change::UpsertPlans { authority, plans, at } => {
                    writing.put_authority(&authority)?;
                    for plan in plans.iter() {
                        let key = keys::plan(plan.la_ods_code(), plan.nhs_number(), plan.plan_type());
                        let held = writing.held(&key)?;
                        writing.write_plan(key, plan, held, at)?;
                    }
                    Applied::Committed
                }
                Change::ReplacePlans { authority, plans, at } => {
                    writing.put_authority(&authority)?;
                    let la = authority.ods_code.as_str();
                    let mut current = writing.held_under(&keys::authority_prefix(la))?;
                    for plan in plans.iter() {
                        let key = keys::plan(la, plan.nhs_number(), plan.plan_type());
                        // A plan twice in one refresh: the second replaces the first.
                        let held = match current.remove(&key) {
                            Some(held) => Some(held),
                            None => writing.pending.get(&key).cloned().flatten(),
                        };
                        writing.write_plan(key, plan, held, at)?;
                    }
                    for (gone, held) in current {
                        writing.remove_plan(&gone, &held, at, PlanEventKind::Withdrawn)?;
                    }
                    Applied::Committed
                }
                Change::DeletePlans { la_ods_code, nhs_number, plan_type, at } => {
                    let mut prefix = keys::authority_prefix(&la_ods_code);
                    prefix.extend_from_slice(&nhs_number.as_u64().to_be_bytes());
                    for (key, held) in writing.held_under(&prefix)? {
                        let (_, _, kind) = keys::parse_plan(&key)?;
                        if plan_type.is_none_or(|wanted| wanted == kind) {
                            writing.remove_plan(&key, &held, at, PlanEventKind::Deleted)?;
                        }
                    }
                    Applied::Committed
                }
                Change::Expire(expiry) => Applied::Expired(writing.expire(&expiry)?),
                Change::RecordAccess { .. } | Change::RecordAudit(_) | Change::Ack { .. } => {
                    return Err(StoreError::Corrupt("an activity change reached the plan lane".into()));
                }
            });
        }
        let Writing { mut batch, events, .. } = writing;
        for event in &events {
            let at = event.at.timestamp_micros();
            batch.insert(&spaces.plan_history, keys::plan_change(event.nhs_number, at, event.id), event.encode()?);
            batch.insert(&spaces.plan_history_times, keys::plan_change_time(event.nhs_number, at, event.id), []);
        }
        batch.commit().map_err(journal_failed)?;
        Ok(results)
    }
}

impl Writing<'_> {
    fn put_authority(&mut self, authority: &LocalAuthority) -> Result<(), StoreError> {
        self.batch.insert(&self.spaces.authorities, authority.ods_code.as_str(), encode(authority)?);
        Ok(())
    }

    /// The version of a plan held, reading this batch's own writes first.
    fn held(&self, key: &[u8]) -> Result<Option<Held>, StoreError> {
        if let Some(version) = self.pending.get(key) {
            return Ok(version.clone());
        }
        self.spaces.plans.get(key).map_err(io)?.map(|value| Held::of(&value)).transpose()
    }

    /// Every plan held under a key prefix, this batch's own writes included, in key order.
    fn held_under(&self, prefix: &[u8]) -> Result<BTreeMap<Vec<u8>, Held>, StoreError> {
        let mut held = BTreeMap::new();
        for entry in self.spaces.plans.prefix(prefix) {
            let (key, value) = entry.into_inner().map_err(io)?;
            held.insert(key.to_vec(), Held::of(&value)?);
        }
        for (key, version) in self.pending.iter().filter(|(key, _)| key.starts_with(prefix)) {
            match version {
                Some(version) => held.insert(key.clone(), version.clone()),
                None => held.remove(key),
            };
        }
        Ok(held)
    }

    /// Writes one plan over the version held (if any), moves its expiry
    /// entry if its last visible day changed, and records the change if it is one.
    fn write_plan(
        &mut self,
        key: Vec<u8>,
        plan: &StoredPlan,
        held: Option<Held>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let until = plan.visible_until().map(days::to_number);
        let before = held.as_ref().and_then(|held| held.until);
        if before != until {
            if let Some(day) = before {
                self.batch.remove(&self.spaces.plan_expiry, keys::plan_expiry(day, &key));
            }
            if let Some(day) = until {
                self.batch.insert(&self.spaces.plan_expiry, keys::plan_expiry(day, &key), []);
            }
        }
        if let Some(event) = PlanEvent::of_write(held.as_ref().map(|held| held.bytes.as_slice()), plan, at)? {
            self.events.push(event);
        }
        self.batch.insert(&self.spaces.plans, key.clone(), plan.bytes());
        self.pending.insert(key, Some(Held { until, bytes: plan.bytes().to_vec() }));
        Ok(())
    }

    fn remove_plan(
        &mut self,
        key: &[u8],
        held: &Held,
        at: DateTime<Utc>,
        kind: PlanEventKind,
    ) -> Result<(), StoreError> {
        if let Some(day) = held.until {
            self.batch.remove(&self.spaces.plan_expiry, keys::plan_expiry(day, key));
        }
        self.batch.remove(&self.spaces.plans, key.to_vec());
        self.pending.insert(key.to_vec(), None);
        let (la, nhs_number, plan_type) = keys::parse_plan(key)?;
        self.events.push(PlanEvent::removal(at, la, nhs_number, plan_type, kind));
        Ok(())
    }

    /// Plans whose last visible day is before today, and plan changes older than accesses are kept.
    fn expire(&mut self, expiry: &Expiry) -> Result<ExpiryCounts, StoreError> {
        let spaces = self.spaces;
        let mut counts = ExpiryCounts::default();
        let end = keys::plan_expiry_from(days::to_number(expiry.today));
        for entry in spaces.plan_expiry.range(..end).take(expiry.limit) {
            let key = entry.key().map_err(io)?;
            let plan_key = keys::plan_of_expiry(&key)?;
            if spaces.plans.contains_key(plan_key).map_err(io)? {
                self.batch.remove(&spaces.plans, plan_key.to_vec());
                let (la, nhs_number, plan_type) = keys::parse_plan(plan_key)?;
                self.events.push(PlanEvent::removal(expiry.now, la, nhs_number, plan_type, PlanEventKind::Expired));
                counts.plans += 1;
            }
            self.batch.remove(&spaces.plan_expiry, key.to_vec());
        }
        let end = keys::plan_changes_from(expiry.accesses_before.timestamp_micros());
        for entry in spaces.plan_history_times.range(..end).take(expiry.limit) {
            let key = entry.key().map_err(io)?;
            self.batch.remove(&spaces.plan_history, keys::plan_change_of_time(&key)?);
            self.batch.remove(&spaces.plan_history_times, key.to_vec());
            counts.plan_changes += 1;
        }
        Ok(counts)
    }
}
