//! A plan's history of changes, for the subject access report: every store
//! writes one [`PlanEvent`] in the same commit as the plan change that makes
//! it, so the history is exactly what happened to the plans, never more.
//!
//! What counts as a change: a plan loaded for the first time, a new version
//! that differs from the stored one in what it records (its name, address,
//! dates, team...; being loaded again is not a change, so a nightly full
//! refresh that repeats the same plans adds nothing), a plan deleted by its
//! authority, left out of its authority's full refresh, or removed by
//! retention once its visible period is over. Events are kept as long as
//! accesses are (`retention.access_days`) and removed with them.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    model::{Plan, PlanType, time_ordered_id},
    nhs::NhsNumber,
    store::error::StoreError,
    stored::{self, StoredPlan},
};

/// What happened to a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanEventKind {
    /// The authority loaded the plan (an upload or a full refresh) and no version was held.
    Loaded,
    /// The authority loaded a version that records something different from the one held.
    Changed,
    /// The authority deleted it (`Plans.Delete`), for example a record created in error.
    Deleted,
    /// The authority's full refresh left it out.
    Withdrawn,
    /// Retention removed it: its visible period was over.
    Expired,
}

/// One change of one plan. `Debug` shows the kind, time and authority only.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanEvent {
    /// Time-ordered and unique: the store's key.
    pub id: u128,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub at: DateTime<Utc>,
    pub nhs_number: NhsNumber,
    pub la_ods_code: String,
    pub plan_type: PlanType,
    pub kind: PlanEventKind,
    /// The version loaded (`Loaded`, `Changed`) in its stored form; a
    /// removal names the plan only (its last version is the event before).
    pub record: Option<Vec<u8>>,
}

impl fmt::Debug for PlanEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanEvent")
            .field("at", &self.at)
            .field("la_ods_code", &self.la_ods_code)
            .field("plan_type", &self.plan_type)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl PlanEvent {
    /// A plan's removal of this kind.
    pub fn removal(
        at: DateTime<Utc>,
        la_ods_code: &str,
        nhs_number: NhsNumber,
        plan_type: PlanType,
        kind: PlanEventKind,
    ) -> Self {
        Self {
            id: time_ordered_id(at),
            at,
            nhs_number,
            la_ods_code: la_ods_code.to_owned(),
            plan_type,
            kind,
            record: None,
        }
    }

    /// What writing `new` over the stored bytes `old` (none: nothing held)
    /// adds to the history: nothing when only the time it was loaded differs.
    pub(crate) fn of_write(
        old: Option<&[u8]>,
        new: &StoredPlan,
        at: DateTime<Utc>,
    ) -> Result<Option<Self>, StoreError> {
        let kind = match old {
            None => PlanEventKind::Loaded,
            Some(old) if old == new.bytes() => return Ok(None),
            Some(old) => {
                let mut before = stored::decode_plan(old)?;
                let after = new.decode()?;
                before.loaded_at = after.loaded_at;
                if before == after {
                    return Ok(None);
                }
                PlanEventKind::Changed
            }
        };
        Ok(Some(Self {
            id: time_ordered_id(at),
            at,
            nhs_number: new.nhs_number(),
            la_ods_code: new.la_ods_code().to_owned(),
            plan_type: new.plan_type(),
            kind,
            record: Some(new.bytes().to_vec()),
        }))
    }

    /// The version this event loaded, decoded.
    pub fn plan(&self) -> Result<Option<Plan>, StoreError> {
        self.record.as_deref().map(stored::decode_plan).transpose()
    }

    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        postcard::to_allocvec(self).map_err(|error| StoreError::Corrupt(format!("encoding a plan change: {error}")))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        postcard::from_bytes(bytes).map_err(|error| StoreError::Corrupt(format!("plan history: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(address: &str, loaded_at: &str) -> StoredPlan {
        let plan = Plan {
            nhs_number: NhsNumber::complete(999_000_001).unwrap(),
            la_ods_code: "706".into(),
            local_id: "L1".into(),
            given_name: "Test".into(),
            family_name: "Child".into(),
            date_of_birth: "2015-01-01".parse().unwrap(),
            address: crate::model::Address { lines: vec![address.into()], postcode: "LS1 1AA".into() },
            plan_type: PlanType::ChildProtection,
            start_date: "2019-01-01".parse().unwrap(),
            end_date: None,
            expected_delivery_date: None,
            team_code: "T".into(),
            loaded_at: loaded_at.parse().unwrap(),
        };
        StoredPlan::encode(&plan, "706".into()).unwrap()
    }

    #[test]
    fn loading_the_same_plan_again_is_no_change_and_a_new_address_is_one() {
        let at = "2026-06-02T00:00:00Z".parse().unwrap();
        let first = plan("1 Street", "2026-06-01T00:00:00Z");
        let loaded = PlanEvent::of_write(None, &first, at).unwrap().unwrap();
        assert_eq!(loaded.kind, PlanEventKind::Loaded);
        assert_eq!(loaded.plan().unwrap().unwrap().address.lines, ["1 Street"]);

        let again = plan("1 Street", "2026-06-02T00:00:00Z");
        assert_ne!(again.bytes(), first.bytes(), "the time it was loaded differs");
        assert_eq!(PlanEvent::of_write(Some(first.bytes()), &again, at).unwrap(), None);

        let moved = plan("2 Road", "2026-06-02T00:00:00Z");
        let changed = PlanEvent::of_write(Some(first.bytes()), &moved, at).unwrap().unwrap();
        assert_eq!(changed.kind, PlanEventKind::Changed);
        assert_eq!(PlanEvent::decode(&changed.encode().unwrap()).unwrap(), changed);
        let shown = format!("{changed:?}");
        assert!(!shown.contains("Road") && !shown.contains("999"), "Debug shows no personal data: {shown}");
    }
}
