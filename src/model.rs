//! Domain types: plans, local authorities, accesses and notifications, and
//! the visibility rules of a plan. Plain data with no I/O; the wire types in
//! `proto` are converted to and from these at the gRPC edge.

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::nhs::NhsNumber;

mod care_setting;
mod codes;
mod redacted;

pub use care_setting::CareSetting;

/// Days a plan stays visible after its end date.
pub const VISIBLE_DAYS_AFTER_END: u64 = 365;
/// Days an unborn child protection plan stays visible after the expected delivery date.
pub const VISIBLE_DAYS_AFTER_DELIVERY: u64 = 28;

/// Stored by its [`PlanType::stored_code`], never by the variant's place in
/// this list: reordering the variants cannot change what stores hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum PlanType {
    /// CPPI: child protection plan.
    ChildProtection,
    /// LACI: looked-after child.
    LookedAfter,
    /// UCPI: unborn child protection plan, held against the mother's NHS number.
    UnbornChildProtection,
}

impl PlanType {
    pub const ALL: [PlanType; 3] = [Self::ChildProtection, Self::LookedAfter, Self::UnbornChildProtection];

    /// The short code LA systems use: CPPI, LACI or UCPI.
    pub fn code(self) -> &'static str {
        match self {
            Self::ChildProtection => "CPPI",
            Self::LookedAfter => "LACI",
            Self::UnbornChildProtection => "UCPI",
        }
    }

    /// Accepts the short code or the contract's enum name, in any case.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_uppercase().as_str() {
            "CPPI" | "CP" | "CHILD_PROTECTION" => Some(Self::ChildProtection),
            "LACI" | "LAC" | "LOOKED_AFTER" => Some(Self::LookedAfter),
            "UCPI" | "UNBORN" | "UNBORN_CHILD_PROTECTION" => Some(Self::UnbornChildProtection),
            _ => None,
        }
    }
}

/// A local authority's children's social care contact details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalAuthority {
    pub ods_code: String,
    pub name: String,
    pub office_hours_phone: String,
    pub emergency_phone: String,
}

/// A postal address. `Debug` shows how many lines it has only (see [`redacted`]).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub lines: Vec<String>,
    pub postcode: String,
}

/// One validated plan held by one local authority for one person. A local
/// authority holds at most one plan of each type per person.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub nhs_number: NhsNumber,
    /// ODS code of the owning local authority.
    pub la_ods_code: String,
    pub local_id: String,
    pub given_name: String,
    pub family_name: String,
    #[serde(with = "days")]
    pub date_of_birth: NaiveDate,
    pub address: Address,
    pub plan_type: PlanType,
    #[serde(with = "days")]
    pub start_date: NaiveDate,
    #[serde(with = "optional_days")]
    pub end_date: Option<NaiveDate>,
    #[serde(with = "optional_days")]
    pub expected_delivery_date: Option<NaiveDate>,
    pub team_code: String,
    /// When this version of the record was loaded; the newest record's
    /// details are the ones shown for a person.
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub loaded_at: DateTime<Utc>,
}

impl Plan {
    /// The last day on which the plan is shown to health, or `None` while it
    /// has no end (a current plan). UCPI plans end 28 days after the expected
    /// delivery date, or 365 days after an earlier recorded end.
    pub fn visible_until(&self) -> Option<NaiveDate> {
        let after_end = self.end_date.map(|end| add_days(end, VISIBLE_DAYS_AFTER_END));
        match (self.plan_type, self.expected_delivery_date) {
            (PlanType::UnbornChildProtection, Some(delivery)) => {
                let after_delivery = add_days(delivery, VISIBLE_DAYS_AFTER_DELIVERY);
                Some(after_end.map_or(after_delivery, |end| end.min(after_delivery)))
            }
            _ => after_end,
        }
    }

    /// Whether the plan is within its visibility window on `today`: not
    /// past its last visible day. A plan not started yet is within it (it is
    /// kept, and may be uploaded) but not shown: health sees a plan only once
    /// it has started too ([`Plan::has_started_on`]).
    pub fn is_visible_on(&self, today: NaiveDate) -> bool {
        self.visible_until().is_none_or(|last_day| today <= last_day)
    }

    /// Whether the plan has started on `today`. Domain rule: a plan starts on
    /// its start date; before it, it is neither shown nor notified (an LA may
    /// upload a plan agreed at a conference that starts next week).
    pub fn has_started_on(&self, today: NaiveDate) -> bool {
        self.start_date <= today
    }
}

fn add_days(date: NaiveDate, days: u64) -> NaiveDate {
    date.checked_add_days(Days::new(days)).unwrap_or(NaiveDate::MAX)
}

/// Dates in storage: days from the common era as one integer, which is
/// smaller and far cheaper to decode than ISO text.
pub mod days {
    use chrono::{Datelike, NaiveDate};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(crate) fn to_number(date: NaiveDate) -> i32 {
        date.num_days_from_ce()
    }

    pub(crate) fn from_number(days: i32) -> Option<NaiveDate> {
        NaiveDate::from_num_days_from_ce_opt(days)
    }

    pub(crate) fn serialize<S: Serializer>(date: &NaiveDate, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i32(to_number(*date))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NaiveDate, D::Error> {
        let days = i32::deserialize(deserializer)?;
        from_number(days).ok_or_else(|| D::Error::custom(format!("day number {days} is out of range")))
    }
}

/// [`days`] for optional dates.
pub mod optional_days {
    use chrono::NaiveDate;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(crate) fn serialize<S: Serializer>(date: &Option<NaiveDate>, serializer: S) -> Result<S::Ok, S::Error> {
        match date {
            Some(date) => serializer.serialize_some(&super::days::to_number(*date)),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<NaiveDate>, D::Error> {
        match Option::<i32>::deserialize(deserializer)? {
            Some(days) => super::days::from_number(days)
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("day number {days} is out of range"))),
            None => Ok(None),
        }
    }
}

/// The health professional who searched.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accessor {
    pub user_id: String,
    pub name: String,
    pub role_code: String,
}

/// One search of a flagged person: the access history entry and, for
/// unscheduled care, the source of its notifications.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEvent {
    /// Unique per access; also keys it in storage.
    pub id: u128,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub accessed_at: DateTime<Utc>,
    pub nhs_number: NhsNumber,
    pub organisation_ods_code: String,
    pub organisation_name: String,
    pub care_setting: CareSetting,
    pub accessor: Accessor,
    /// The client's idempotency key (or a generated one), unique per organisation.
    pub request_id: String,
    /// Scheduled care: audited, but never notified nor listed among previous accesses.
    pub scheduled: bool,
}

/// An auditor's read of a person's access trail: itself an access of the
/// log (kind audit), never notified and never listed to a clinician.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRead {
    /// Unique per read; also keys it in storage.
    pub id: u128,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub read_at: DateTime<Utc>,
    /// Whose trail was read.
    pub nhs_number: NhsNumber,
    /// The auditor's organisation, from its certificate.
    pub organisation_ods_code: String,
    pub organisation_name: String,
    /// The person the auditor's request named (empty when it named none).
    pub accessor: Accessor,
    pub request_id: String,
}

/// A stored access read in place, its text borrowed from the stored bytes
/// (the encoding is [`AccessEvent`]'s): what a search needs to list previous
/// accesses and recognise a retry, without copying the text of accesses it
/// will not show.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct AccessView<'a> {
    pub id: u128,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub accessed_at: DateTime<Utc>,
    pub nhs_number: NhsNumber,
    pub organisation_ods_code: &'a str,
    pub organisation_name: &'a str,
    pub care_setting: CareSetting,
    #[serde(borrow)]
    pub accessor: AccessorView<'a>,
    pub request_id: &'a str,
    pub scheduled: bool,
}

/// [`Accessor`], borrowed.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct AccessorView<'a> {
    pub user_id: &'a str,
    pub name: &'a str,
    pub role_code: &'a str,
}

impl AccessView<'_> {
    pub fn to_event(&self) -> AccessEvent {
        AccessEvent {
            id: self.id,
            accessed_at: self.accessed_at,
            nhs_number: self.nhs_number,
            organisation_ods_code: self.organisation_ods_code.to_owned(),
            organisation_name: self.organisation_name.to_owned(),
            care_setting: self.care_setting,
            accessor: Accessor {
                user_id: self.accessor.user_id.to_owned(),
                name: self.accessor.name.to_owned(),
                role_code: self.accessor.role_code.to_owned(),
            },
            request_id: self.request_id.to_owned(),
            scheduled: self.scheduled,
        }
    }

    /// Whether this access was made by the request `key` names.
    pub fn is_request(&self, key: &RequestKey) -> bool {
        self.request_id == key.request_id
            && self.organisation_ods_code == key.organisation_ods_code
            && self.accessor.user_id == key.user_id
            && self.nhs_number == key.nhs_number
            && self.care_setting == key.care_setting
    }
}

impl AccessEvent {
    pub fn view(&self) -> AccessView<'_> {
        AccessView {
            id: self.id,
            accessed_at: self.accessed_at,
            nhs_number: self.nhs_number,
            organisation_ods_code: &self.organisation_ods_code,
            organisation_name: &self.organisation_name,
            care_setting: self.care_setting,
            accessor: AccessorView {
                user_id: &self.accessor.user_id,
                name: &self.accessor.name,
                role_code: &self.accessor.role_code,
            },
            request_id: &self.request_id,
            scheduled: self.scheduled,
        }
    }
}

/// What makes a search a client's retry of an earlier one: the same
/// organisation, user, person, care setting and request id. Anything less
/// (another user of the same organisation reusing an id, say) is a new search.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestKey {
    pub organisation_ods_code: String,
    pub user_id: String,
    pub nhs_number: NhsNumber,
    pub care_setting: CareSetting,
    pub request_id: String,
}

impl AccessEvent {
    pub fn request_key(&self) -> RequestKey {
        RequestKey {
            organisation_ods_code: self.organisation_ods_code.clone(),
            user_id: self.accessor.user_id.clone(),
            nhs_number: self.nhs_number,
            care_setting: self.care_setting,
            request_id: self.request_id.clone(),
        }
    }
}

/// The access notification for one owning local authority, before the store
/// has given it a sequence number.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationDraft {
    pub la_ods_code: String,
    pub notification_id: String,
    pub local_id: String,
    pub plan_type: PlanType,
    pub team_code: String,
    /// The W3C `traceparent` of the search's commit when it was traced, so
    /// that delivery continues its trace. Not in the postcard encoding (held
    /// searches in the spill file lose it); each store keeps it its own way.
    #[serde(skip)]
    pub traceparent: Option<String>,
}

/// A committed access notification, as delivered to the owning local authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub sequence: u64,
    pub draft: NotificationDraft,
    pub access: AccessEvent,
}

/// A current CPPI-style plan of authority 706 for unit tests; callers change what they test.
#[cfg(test)]
pub(crate) fn test_plan(nhs_number: NhsNumber, plan_type: PlanType) -> Plan {
    Plan {
        nhs_number,
        la_ods_code: "706".into(),
        local_id: "L1".into(),
        given_name: "Test".into(),
        family_name: "Child".into(),
        date_of_birth: NaiveDate::from_ymd_opt(2015, 1, 1).unwrap_or_default(),
        address: Address::default(),
        plan_type,
        start_date: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap_or_default(),
        end_date: None,
        expected_delivery_date: None,
        team_code: String::new(),
        loaded_at: DateTime::UNIX_EPOCH,
    }
}

/// A new record's id (an access, an auditor's read, a plan's change): a
/// time-ordered (version 7) UUID of `at`, its 74 other bits from the
/// thread's CSPRNG, seeded by the operating system (no system call per id).
/// Time-ordered, a store's index of ids grows at its end rather than
/// everywhere, which an LSM tree writes and compacts for less.
pub fn time_ordered_id(at: DateTime<Utc>) -> u128 {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid().as_u128()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn plan(plan_type: PlanType, end: Option<&str>, delivery: Option<&str>) -> Plan {
        Plan {
            end_date: end.map(date),
            expected_delivery_date: delivery.map(date),
            ..test_plan(NhsNumber::parse("9990000026").unwrap(), plan_type)
        }
    }

    #[test]
    fn current_plans_are_visible_and_ended_ones_for_365_days() {
        assert!(plan(PlanType::ChildProtection, None, None).is_visible_on(date("2090-01-01")));
        let ended = plan(PlanType::LookedAfter, Some("2025-03-01"), None);
        assert!(ended.is_visible_on(date("2026-03-01")), "day 365 after the end is still visible");
        assert!(!ended.is_visible_on(date("2026-03-02")), "day 366 is not");
    }

    #[test]
    fn unborn_plans_end_28_days_after_the_expected_delivery_date() {
        let unborn = plan(PlanType::UnbornChildProtection, None, Some("2025-06-01"));
        assert!(unborn.is_visible_on(date("2025-06-29")));
        assert!(!unborn.is_visible_on(date("2025-06-30")));
        let ended_early = plan(PlanType::UnbornChildProtection, Some("2024-02-01"), Some("2025-06-01"));
        assert_eq!(ended_early.visible_until(), Some(date("2025-01-31")));
    }

    #[test]
    fn plan_types_parse_from_codes_and_names() {
        assert_eq!(PlanType::parse("cppi"), Some(PlanType::ChildProtection));
        assert_eq!(PlanType::parse("LOOKED_AFTER"), Some(PlanType::LookedAfter));
        assert_eq!(PlanType::parse(" ucpi "), Some(PlanType::UnbornChildProtection));
        assert_eq!(PlanType::parse("XYZ"), None);
    }
}
