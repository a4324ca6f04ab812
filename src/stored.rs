//! The stored forms of a plan and of an access: the bytes the store writes
//! (and the index keeps, for plans), encoded once and read in place.
//!
//! A fixed header carries what the index and retention decide on without
//! decoding (the last visible day); the rest is the plan encoded with postcard, decoded only when a flagged search or
//! an export shows it. Keeping bytes instead of a struct of owned strings is
//! what lets a million people fit in a few hundred megabytes and be read
//! back on start without decoding every record.

use std::sync::Arc;

use chrono::NaiveDate;

use crate::{
    model::{Plan, PlanType, days},
    nhs::NhsNumber,
    store::error::StoreError,
};

/// Header: the last visible day as a day number (i32), `NO_END` while current.
const HEADER: usize = 4;
const NO_END: i32 = i32::MAX;

/// One plan in its stored form, with the key fields it is filed under.
/// `Debug` shows the keys (the NHS number redacted) and the length of the
/// encoded plan, never its bytes (names, date of birth, address).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredPlan {
    la_ods_code: Arc<str>,
    nhs_number: NhsNumber,
    plan_type: PlanType,
    bytes: Box<[u8]>,
}

impl StoredPlan {
    /// Encodes a plan; `la_ods_code` is the owning authority's shared code.
    pub fn encode(plan: &Plan, la_ods_code: Arc<str>) -> Result<Self, StoreError> {
        let visible_until = plan.visible_until().map_or(NO_END, days::to_number);
        let mut bytes = Vec::with_capacity(HEADER + 128);
        bytes.extend_from_slice(&visible_until.to_le_bytes());
        let bytes = postcard::to_extend(plan, bytes)
            .map_err(|error| StoreError::Corrupt(format!("encoding a plan: {error}")))?;
        Ok(Self {
            la_ods_code,
            nhs_number: plan.nhs_number,
            plan_type: plan.plan_type,
            bytes: bytes.into_boxed_slice(),
        })
    }

    /// Takes bytes read from the store, filed under this key.
    pub fn from_stored(
        la_ods_code: Arc<str>,
        nhs_number: NhsNumber,
        plan_type: PlanType,
        bytes: &[u8],
    ) -> Result<Self, StoreError> {
        header(bytes)?;
        Ok(Self { la_ods_code, nhs_number, plan_type, bytes: bytes.into() })
    }

    pub fn la_ods_code(&self) -> &str {
        &self.la_ods_code
    }

    pub(crate) fn shared_la_ods_code(&self) -> &Arc<str> {
        &self.la_ods_code
    }

    pub fn nhs_number(&self) -> NhsNumber {
        self.nhs_number
    }

    pub fn plan_type(&self) -> PlanType {
        self.plan_type
    }

    /// What the store writes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The last day health sees the plan; `None` while it is current.
    pub fn visible_until(&self) -> Option<NaiveDate> {
        visible_until_of(&self.bytes).ok().flatten()
    }

    /// Whether health sees this plan on `today` (shown and notified): it has
    /// started ([`Plan::has_started_on`]) and is not past its last visible
    /// day. The start date is read from the encoded plan, so only for a plan
    /// still in its window; one that cannot be decoded counts as started,
    /// never hiding a flag (showing it then reports the corruption).
    pub fn is_visible_on(&self, today: NaiveDate) -> bool {
        self.is_retained_on(today) && self.decode().map_or(true, |plan| plan.has_started_on(today))
    }

    /// Whether retention keeps this plan on `today`: not past its last
    /// visible day, started or not.
    pub fn is_retained_on(&self, today: NaiveDate) -> bool {
        self.visible_until().is_none_or(|last_day| today <= last_day)
    }

    /// The whole plan, for showing it.
    pub fn decode(&self) -> Result<Plan, StoreError> {
        let plan = decode_plan(&self.bytes)?;
        if plan.nhs_number != self.nhs_number || plan.plan_type != self.plan_type {
            return Err(StoreError::Corrupt("plans: a record is filed under another key".into()));
        }
        Ok(plan)
    }
}

/// The plan in stored plan bytes.
pub(crate) fn decode_plan(bytes: &[u8]) -> Result<Plan, StoreError> {
    header(bytes)?;
    postcard::from_bytes(&bytes[HEADER..]).map_err(|error| StoreError::Corrupt(format!("plans: {error}")))
}

/// The last visible day recorded in stored plan bytes.
pub fn visible_until_of(bytes: &[u8]) -> Result<Option<NaiveDate>, StoreError> {
    let visible_until = header(bytes)?;
    if visible_until == NO_END {
        return Ok(None);
    }
    days::from_number(visible_until)
        .map(Some)
        .ok_or_else(|| StoreError::Corrupt(format!("plans: day number {visible_until} is out of range")))
}

fn header(bytes: &[u8]) -> Result<i32, StoreError> {
    bytes
        .first_chunk::<HEADER>()
        .map(|day| i32::from_le_bytes(*day))
        .ok_or_else(|| StoreError::Corrupt("plans: a record is shorter than its header".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_round_trips_and_its_header_answers_without_decoding() {
        let nhs_number = NhsNumber::parse("9990000026").unwrap();
        let mut plan = crate::model::test_plan(nhs_number, PlanType::LookedAfter);
        plan.end_date = Some("2025-03-01".parse().unwrap());
        plan.loaded_at = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let stored = StoredPlan::encode(&plan, "706".into()).unwrap();
        assert_eq!(stored.visible_until(), Some("2026-03-01".parse().unwrap()));
        assert!(stored.is_visible_on("2026-03-01".parse().unwrap()));
        assert!(!stored.is_visible_on("2026-03-02".parse().unwrap()));
        assert_eq!(stored.decode().unwrap(), plan);

        // A plan starts on its start date: before it, kept by retention but not shown.
        plan.start_date = "2026-06-10".parse().unwrap();
        plan.end_date = None;
        let starting = StoredPlan::encode(&plan, "706".into()).unwrap();
        assert!(starting.is_retained_on("2026-06-09".parse().unwrap()));
        assert!(!starting.is_visible_on("2026-06-09".parse().unwrap()));
        assert!(starting.is_visible_on("2026-06-10".parse().unwrap()));
        plan.start_date = "2024-01-01".parse().unwrap();
        plan.end_date = Some("2025-03-01".parse().unwrap());

        let read = StoredPlan::from_stored("706".into(), nhs_number, PlanType::LookedAfter, stored.bytes()).unwrap();
        assert_eq!(read, stored);
        let misfiled = StoredPlan::from_stored("706".into(), nhs_number, PlanType::ChildProtection, stored.bytes());
        assert!(misfiled.unwrap().decode().is_err(), "a record under another key is corrupt");
        assert!(StoredPlan::from_stored("706".into(), nhs_number, PlanType::LookedAfter, &[1, 2]).is_err());
        let mut damaged = stored.bytes().to_vec();
        damaged.truncate(damaged.len() / 2);
        let damaged = StoredPlan::from_stored("706".into(), nhs_number, PlanType::LookedAfter, &damaged).unwrap();
        assert!(damaged.decode().is_err(), "a cut record does not decode");
    }

    #[test]
    fn current_plans_have_no_last_day() {
        let plan = crate::model::test_plan(NhsNumber::parse("9990000026").unwrap(), PlanType::ChildProtection);
        let stored = StoredPlan::encode(&plan, "706".into()).unwrap();
        assert_eq!(stored.visible_until(), None);
        assert!(stored.is_visible_on(NaiveDate::MAX));
    }
}

/// An access in its stored form (postcard bytes of an [`AccessEvent`]), as a
/// search reads it: [`StoredAccess::view`] borrows its text instead of copying it.
/// `Debug` shows the length of the encoding only, never its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredAccess(Box<[u8]>);

impl std::fmt::Debug for StoredAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredAccess({} bytes)", self.0.len())
    }
}

impl std::fmt::Debug for StoredPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredPlan")
            .field("la_ods_code", &self.la_ods_code)
            .field("nhs_number", &self.nhs_number)
            .field("plan_type", &self.plan_type)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl StoredAccess {
    pub fn encode(access: &crate::model::AccessEvent) -> Result<Self, StoreError> {
        postcard::to_allocvec(access)
            .map(|bytes| Self(bytes.into_boxed_slice()))
            .map_err(|error| StoreError::Corrupt(format!("encoding an access: {error}")))
    }

    /// Takes bytes read from the store.
    pub fn from_stored(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    /// What the store writes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn view(&self) -> Result<crate::model::AccessView<'_>, StoreError> {
        postcard::from_bytes(&self.0).map_err(|error| StoreError::Corrupt(format!("accesses: {error}")))
    }
}
