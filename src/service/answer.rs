//! A search's answer written to the wire straight from the domain's values:
//! the bytes of `cpis.v1.SearchResponse`, exactly as prost
//! encodes [`wire::search_response`](crate::wire::search_response)'s
//! message, without building that message first. Building it copied every
//! string of the answer into a string of its own: about 120 allocations for a
//! flagged person with 25 previous accesses (four per access), all freed
//! once encoded. Here the plans' and the accesses' text (the interned users
//! of [`crate::accesses`], shared by all their accesses) is read in place and
//! dates are written as digits, with no formatting machinery.
//!
//! Only the relay's server encodes this type (clients decode the generated
//! `SearchResponse`); decoding one skips every field. A test checks the bytes
//! against the generated message's for answers of every shape.

use bytes::BufMut;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len, skip_field},
};

use crate::wire;
use crate::{
    accesses::RecentAccess,
    model::{Address, LocalAuthority, Plan},
    relay::{SearchOutcome, ShownPlan},
};

/// `cpis.v1.SearchResponse`, encoded from a [`SearchOutcome`].
#[derive(Default)]
pub struct SearchAnswer(pub SearchOutcome);

impl std::fmt::Debug for SearchAnswer {
    /// Counts only: the outcome holds personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchAnswer")
            .field("flagged", &self.0.flagged())
            .field("plans", &self.0.plans.len())
            .field("previous_accesses", &self.0.previous_accesses.len())
            .finish()
    }
}

impl From<SearchOutcome> for SearchAnswer {
    fn from(outcome: SearchOutcome) -> Self {
        Self(outcome)
    }
}

impl Message for SearchAnswer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        let outcome = &self.0;
        put_bool(1, outcome.flagged(), buf);
        if let Some(person) = outcome.person.as_deref() {
            put_message(2, person_len(person), buf);
            put_person(person, buf);
        }
        for shown in &outcome.plans {
            put_message(3, plan_len(shown), buf);
            put_plan(shown, buf);
        }
        for access in &outcome.previous_accesses {
            put_message(4, access_len(access), buf);
            put_access(access, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let outcome = &self.0;
        bool_len(1, outcome.flagged())
            + outcome.person.as_deref().map_or(0, |person| message_len(2, person_len(person)))
            + outcome.plans.iter().map(|shown| message_len(3, plan_len(shown))).sum::<usize>()
            + outcome.previous_accesses.iter().map(|access| message_len(4, access_len(access))).sum::<usize>()
    }

    fn clear(&mut self) {
        self.0 = SearchOutcome::default();
    }
}

// `Person`: nhs_number 1, given_name 2, family_name 3, date_of_birth 4, address 5 (always present).

fn person_len(plan: &Plan) -> usize {
    str_len(1, nhs_digits(plan).as_str())
        + str_len(2, &plan.given_name)
        + str_len(3, &plan.family_name)
        + str_len(4, AsciiText::of(plan.date_of_birth).as_str())
        + message_len(5, address_len(&plan.address))
}

fn put_person(plan: &Plan, buf: &mut impl BufMut) {
    put_str(1, nhs_digits(plan).as_str(), buf);
    put_str(2, &plan.given_name, buf);
    put_str(3, &plan.family_name, buf);
    put_str(4, AsciiText::of(plan.date_of_birth).as_str(), buf);
    put_message(5, address_len(&plan.address), buf);
    put_address(&plan.address, buf);
}

// `Address`: lines 1 (repeated: an empty line is still written), postcode 2.

fn address_len(address: &Address) -> usize {
    address.lines.iter().map(|line| message_len(1, line.len())).sum::<usize>() + str_len(2, &address.postcode)
}

fn put_address(address: &Address, buf: &mut impl BufMut) {
    for line in &address.lines {
        put_message(1, line.len(), buf);
        buf.put_slice(line.as_bytes());
    }
    put_str(2, &address.postcode, buf);
}

// `PlanSummary`: type 1, start_date 2, end_date 3, expected_delivery_date 4, local_authority 5 (always present).

fn plan_len(shown: &ShownPlan) -> usize {
    let plan = &*shown.plan;
    int_len(1, wire::plan_type(plan.plan_type) as i32)
        + str_len(2, AsciiText::of(plan.start_date).as_str())
        + plan.end_date.map_or(0, |date| str_len(3, AsciiText::of(date).as_str()))
        + plan.expected_delivery_date.map_or(0, |date| str_len(4, AsciiText::of(date).as_str()))
        + message_len(5, authority_len(shown))
}

fn put_plan(shown: &ShownPlan, buf: &mut impl BufMut) {
    let plan = &*shown.plan;
    put_int(1, wire::plan_type(plan.plan_type) as i32, buf);
    put_str(2, AsciiText::of(plan.start_date).as_str(), buf);
    if let Some(date) = plan.end_date {
        put_str(3, AsciiText::of(date).as_str(), buf);
    }
    if let Some(date) = plan.expected_delivery_date {
        put_str(4, AsciiText::of(date).as_str(), buf);
    }
    put_message(5, authority_len(shown), buf);
    match shown.authority.as_deref() {
        Some(authority) => put_authority(authority, buf),
        // Never uploaded without its details; the code alone, as the message was built.
        None => put_str(1, &plan.la_ods_code, buf),
    }
}

// `LocalAuthority`: ods_code 1, name 2, office_hours_phone 3, emergency_phone 4.

fn authority_len(shown: &ShownPlan) -> usize {
    match shown.authority.as_deref() {
        Some(authority) => {
            str_len(1, &authority.ods_code)
                + str_len(2, &authority.name)
                + str_len(3, &authority.office_hours_phone)
                + str_len(4, &authority.emergency_phone)
        }
        None => str_len(1, &shown.plan.la_ods_code),
    }
}

fn put_authority(authority: &LocalAuthority, buf: &mut impl BufMut) {
    put_str(1, &authority.ods_code, buf);
    put_str(2, &authority.name, buf);
    put_str(3, &authority.office_hours_phone, buf);
    put_str(4, &authority.emergency_phone, buf);
}

// `AccessRecord`: accessed_at 1 (always present), organisation_ods_code 2, organisation_name 3,
// care_setting 4, accessor 5 (always present), scheduled 6; access_id 7 is never listed.

fn access_len(access: &RecentAccess) -> usize {
    let who = &*access.who;
    message_len(1, timestamp_len(access.accessed_at))
        + str_len(2, &who.organisation_ods_code)
        + str_len(3, &who.organisation_name)
        + int_len(4, access.care_setting.wire_code())
        + message_len(5, accessor_len(&who.user_id, &who.name, &who.role_code))
        + bool_len(6, access.scheduled)
}

fn put_access(access: &RecentAccess, buf: &mut impl BufMut) {
    let who = &*access.who;
    put_message(1, timestamp_len(access.accessed_at), buf);
    put_timestamp(access.accessed_at, buf);
    put_str(2, &who.organisation_ods_code, buf);
    put_str(3, &who.organisation_name, buf);
    put_int(4, access.care_setting.wire_code(), buf);
    put_message(5, accessor_len(&who.user_id, &who.name, &who.role_code), buf);
    put_str(1, &who.user_id, buf);
    put_str(2, &who.name, buf);
    put_str(3, &who.role_code, buf);
    put_bool(6, access.scheduled, buf);
}

fn accessor_len(user_id: &str, name: &str, role_code: &str) -> usize {
    str_len(1, user_id) + str_len(2, name) + str_len(3, role_code)
}

// `google.protobuf.Timestamp`: seconds 1 (int64), nanos 2 (int32), as `wire::timestamp` makes it.

fn timestamp_parts(instant: DateTime<Utc>) -> (i64, i32) {
    let timestamp = wire::timestamp(instant);
    (timestamp.seconds, timestamp.nanos)
}

fn timestamp_len(instant: DateTime<Utc>) -> usize {
    let (seconds, nanos) = timestamp_parts(instant);
    int64_len(1, seconds) + int_len(2, nanos)
}

fn put_timestamp(instant: DateTime<Utc>, buf: &mut impl BufMut) {
    let (seconds, nanos) = timestamp_parts(instant);
    put_int64(1, seconds, buf);
    put_int(2, nanos, buf);
}

/// The NHS number as ten digits (what its `Display` writes), without formatting.
fn nhs_digits(plan: &Plan) -> AsciiText {
    let mut digits = [b'0'; 10];
    let mut value = plan.nhs_number.as_u64();
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
    if value == 0 { AsciiText::Short(digits) } else { AsciiText::Long(plan.nhs_number.to_string()) }
}

/// Ten ASCII characters in place (a date, an NHS number), or, for a year
/// outside 0-9999 (which chrono writes with a sign), the formatted text.
enum AsciiText {
    Short([u8; 10]),
    Long(String),
}

impl AsciiText {
    /// `YYYY-MM-DD`, as `%Y-%m-%d` writes it.
    fn of(date: NaiveDate) -> Self {
        let year = date.year();
        if !(0..=9999).contains(&year) {
            return Self::Long(date.format("%Y-%m-%d").to_string());
        }
        let (year, month, day) = (year as u32, date.month(), date.day());
        let digit = |value: u32| b'0' + (value % 10) as u8;
        Self::Short([
            digit(year / 1000),
            digit(year / 100),
            digit(year / 10),
            digit(year),
            b'-',
            digit(month / 10),
            digit(month),
            b'-',
            digit(day / 10),
            digit(day),
        ])
    }

    fn as_str(&self) -> &str {
        match self {
            // ASCII digits and dashes only.
            Self::Short(bytes) => std::str::from_utf8(bytes).unwrap_or_default(),
            Self::Long(text) => text,
        }
    }
}

// The encoding of proto3 fields as prost writes them: a default value (0, false, "") is not written;
// a present sub-message always is, even empty.

fn str_len(tag: u32, text: &str) -> usize {
    if text.is_empty() { 0 } else { message_len(tag, text.len()) }
}

fn put_str(tag: u32, text: &str, buf: &mut impl BufMut) {
    if !text.is_empty() {
        put_message(tag, text.len(), buf);
        buf.put_slice(text.as_bytes());
    }
}

fn message_len(tag: u32, body: usize) -> usize {
    key_len(tag) + encoded_len_varint(body as u64) + body
}

/// A length-delimited field's key and length; its body follows.
fn put_message(tag: u32, body: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(body as u64, buf);
}

/// An `int32` or enum field: negative values take ten bytes, sign-extended.
fn int_len(tag: u32, value: i32) -> usize {
    int64_len(tag, i64::from(value))
}

fn put_int(tag: u32, value: i32, buf: &mut impl BufMut) {
    put_int64(tag, i64::from(value), buf);
}

fn int64_len(tag: u32, value: i64) -> usize {
    if value == 0 { 0 } else { key_len(tag) + encoded_len_varint(value as u64) }
}

fn put_int64(tag: u32, value: i64, buf: &mut impl BufMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value as u64, buf);
    }
}

fn bool_len(tag: u32, value: bool) -> usize {
    int_len(tag, i32::from(value))
}

fn put_bool(tag: u32, value: bool, buf: &mut impl BufMut) {
    put_int(tag, i32::from(value), buf);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{Duration, TimeZone};

    use super::*;
    use crate::{
        accesses::Recent,
        model::{AccessEvent, Accessor, CareSetting, PlanType, test_plan},
        nhs::NhsNumber,
    };

    fn person() -> NhsNumber {
        NhsNumber::parse("9990000026").unwrap()
    }

    fn accesses(count: i64) -> Vec<RecentAccess> {
        let recent = Recent::new();
        let start = Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 0).unwrap();
        for i in 0..count {
            recent.record(&AccessEvent {
                id: i as u128 + 1,
                // Before 1970 too (negative seconds), and whole seconds (no nanos) too.
                accessed_at: start + Duration::milliseconds(i * 30_001),
                nhs_number: person(),
                organisation_ods_code: format!("R{}", i % 3),
                organisation_name: if i % 4 == 0 { String::new() } else { "An organisation".into() },
                care_setting: if i % 2 == 0 { CareSetting::EmergencyDepartment } else { CareSetting::MaternityUnit },
                accessor: Accessor {
                    user_id: format!("user{i}"),
                    name: "A clinician with a long name ".repeat(i as usize % 7),
                    role_code: if i % 3 == 0 { String::new() } else { "R0260".into() },
                },
                request_id: format!("r{i}"),
                scheduled: i % 5 == 4,
            });
        }
        recent.with(person(), <[RecentAccess]>::to_vec)
    }

    fn plan(plan_type: PlanType, la: &str) -> Plan {
        let mut plan = test_plan(person(), plan_type);
        plan.la_ods_code = la.into();
        plan
    }

    fn shown(plan: Plan, authority: Option<LocalAuthority>) -> ShownPlan {
        ShownPlan { plan: Arc::new(plan), authority: authority.map(Arc::new) }
    }

    fn same_bytes(outcome: SearchOutcome) {
        let expected = wire::search_response(outcome.clone()).encode_to_vec();
        let answer = SearchAnswer(outcome);
        assert_eq!(answer.encoded_len(), expected.len());
        assert_eq!(answer.encode_to_vec(), expected);
    }

    #[test]
    fn the_answer_is_byte_for_byte_the_generated_message() {
        same_bytes(SearchOutcome::default());
        let mut first = plan(PlanType::ChildProtection, "706");
        first.given_name = "Amélie".into();
        first.address =
            Address { lines: vec!["1 Road".into(), String::new(), "Town".into()], postcode: "N1 2ZZ".into() };
        first.end_date = NaiveDate::from_ymd_opt(2026, 12, 31);
        let mut unborn = plan(PlanType::UnbornChildProtection, "213");
        unborn.expected_delivery_date = NaiveDate::from_ymd_opt(2027, 2, 3);
        unborn.date_of_birth = NaiveDate::from_ymd_opt(-44, 3, 15).unwrap(); // chrono writes a sign
        unborn.family_name = String::new();
        let authority = LocalAuthority {
            ods_code: "706".into(),
            name: "Westminster".into(),
            office_hours_phone: "020 7641 4000".into(),
            emergency_phone: String::new(),
        };
        let plans = vec![shown(first.clone(), Some(authority)), shown(unborn.clone(), None)];
        for (person, listed) in [(first, 0), (unborn, 3), (test_plan(person(), PlanType::LookedAfter), 40)] {
            same_bytes(SearchOutcome {
                plans: plans.clone(),
                person: Some(Arc::new(person)),
                previous_accesses: accesses(listed),
                notification: Default::default(),
            });
        }
        // Lengths past one byte's varint: a long name and many accesses.
        let mut long = plan(PlanType::LookedAfter, "706");
        long.given_name = "x".repeat(300);
        same_bytes(SearchOutcome {
            plans: vec![shown(long.clone(), None)],
            person: Some(Arc::new(long)),
            previous_accesses: accesses(200),
            notification: Default::default(),
        });
    }

    #[test]
    fn decoding_skips_every_field() {
        let outcome = SearchOutcome {
            plans: vec![shown(plan(PlanType::ChildProtection, "706"), None)],
            person: Some(Arc::new(plan(PlanType::ChildProtection, "706"))),
            previous_accesses: accesses(2),
            notification: Default::default(),
        };
        let bytes = SearchAnswer(outcome).encode_to_vec();
        let decoded = SearchAnswer::decode(&bytes[..]).unwrap();
        assert!(!decoded.0.flagged());
    }
}
