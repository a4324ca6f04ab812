//! Validation of what callers send: request fields become INVALID_ARGUMENT
//! errors naming the field, and upload records become per-record
//! [`Rejection`]s with a machine-readable reason. Messages never repeat the
//! rejected value, so they are safe to log.
//!
//! Every text field is checked for content here, once, for every door (gRPC,
//! FHIR, browser, upload files): a value no store can keep (PostgreSQL
//! refuses NUL in text) or no screen should show (control characters, line
//! separators, bidirectional overrides that make a name read as another,
//! Unicode noncharacters) is refused naming the field, so the stores never
//! see a value they cannot store. Lengths are in characters; every limit is
//! small enough that its bytes (at most four per character) fit any store's
//! key or index (PostgreSQL's B-tree entries take up to about 2,700 bytes).

use chrono::{DateTime, NaiveDate, Utc};

use super::sent::{SentPlanRecord, SentPlanType};
use crate::{
    error::{Error, Result},
    model::{Address, LocalAuthority, Plan, PlanType},
    nhs::{NhsNumber, NhsNumberError},
};

/// Longest accepted free-text field of a request without a tighter limit below.
pub const MAX_TEXT_LEN: usize = 200;

// Upload limits, in characters (a longer value is refused before it is kept;
// together they bound what one valid record can hold):
/// An NHS number as sent, before spaces and dashes are removed.
pub(super) const MAX_NHS_NUMBER_LEN: usize = 32;
/// Given and family name, each.
pub(super) const MAX_NAME_LEN: usize = 100;
/// One address line.
pub(super) const MAX_ADDRESS_LINE_LEN: usize = 100;
/// Most address lines kept for a person.
pub(super) const MAX_ADDRESS_LINES: usize = 6;
pub(super) const MAX_POSTCODE_LEN: usize = 16;
/// The LA's local id and team code, each.
pub(super) const MAX_ID_LEN: usize = 64;
/// The header's free-text file id.
pub(super) const MAX_FILE_ID_LEN: usize = 128;
/// Dates are exactly `YYYY-MM-DD`; text this long or longer is refused unread.
const MAX_DATE_LEN: usize = 32;

/// Why an upload record was not loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectionReason {
    InvalidNhsNumber,
    MissingField,
    InvalidDate,
    EndBeforeStart,
    DuplicateRecord,
    InvalidPlanType,
    UnexpectedField,
    FieldTooLong,
    InvalidCharacter,
    Expired,
}

impl RejectionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidNhsNumber => "INVALID_NHS_NUMBER",
            Self::MissingField => "MISSING_FIELD",
            Self::InvalidDate => "INVALID_DATE",
            Self::EndBeforeStart => "END_BEFORE_START",
            Self::DuplicateRecord => "DUPLICATE_RECORD",
            Self::InvalidPlanType => "INVALID_PLAN_TYPE",
            Self::UnexpectedField => "UNEXPECTED_FIELD",
            Self::FieldTooLong => "FIELD_TOO_LONG",
            Self::InvalidCharacter => "INVALID_CHARACTER",
            Self::Expired => "EXPIRED",
        }
    }
}

/// One record that was not loaded.
/// `Debug` leaves out the echoed NHS number and the message (which may quote
/// the record's values).
#[derive(Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Zero-based position among the upload's records.
    pub index: u64,
    /// As sent, so the LA can find the record.
    pub nhs_number: String,
    pub reason: RejectionReason,
    pub message: String,
}

impl std::fmt::Debug for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejection").field("index", &self.index).field("reason", &self.reason).finish_non_exhaustive()
    }
}

/// A delete's plan type: `None` (every type) when unspecified.
pub(super) fn plan_type_filter(plan_type: SentPlanType) -> Result<Option<PlanType>> {
    match plan_type {
        SentPlanType::Unspecified => Ok(None),
        SentPlanType::Known(plan_type) => Ok(Some(plan_type)),
        SentPlanType::Unknown(code) => Err(Error::invalid("type", format!("{code} is not a plan type"))),
    }
}

/// A request field's NHS number, or INVALID_ARGUMENT naming the field.
pub(super) fn nhs_number_field(text: &str, field: &str) -> Result<NhsNumber> {
    NhsNumber::parse(text).map_err(|error| Error::invalid(field, nhs_error_text(error)))
}

fn nhs_error_text(error: NhsNumberError) -> String {
    match error {
        NhsNumberError::Empty => "is required".to_owned(),
        other => format!("is not a valid NHS number: {other}"),
    }
}

/// A required, bounded text field of a request.
pub(super) fn required_text(text: &str, field: &str) -> Result<String> {
    check_required_text(text, field).map(str::to_owned)
}

/// An optional text field of a request of at most `max` characters.
pub(super) fn optional_text_within(text: &str, field: &str, max: usize) -> Result<String> {
    if text.trim().is_empty() { Ok(String::new()) } else { bounded_text(text, field, max).map(str::to_owned) }
}

/// [`required_text`] without a copy: the trimmed text.
pub(super) fn check_required_text<'a>(text: &'a str, field: &str) -> Result<&'a str> {
    bounded_text(text, field, MAX_TEXT_LEN)
}

fn bounded_text<'a>(text: &'a str, field: &str, max: usize) -> Result<&'a str> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if longer_than(trimmed, max) {
        return Err(Error::invalid(field, format!("is longer than {max} characters")));
    }
    if let Some(problem) = unacceptable_character(trimmed) {
        return Err(Error::invalid(field, problem));
    }
    Ok(trimmed)
}

/// Why `text` cannot be kept, if it cannot: the first character that no
/// store keeps or no screen should show, named by its code point (never the
/// text around it, so the message is safe to log).
pub(super) fn unacceptable_character(text: &str) -> Option<String> {
    text.chars().find_map(|character| {
        let what = if character.is_control() {
            "a control character"
        } else if matches!(character, '\u{2028}' | '\u{2029}') {
            "a line or paragraph separator"
        } else if matches!(character, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') {
            "a bidirectional override or isolate"
        } else if is_noncharacter(character) {
            "a Unicode noncharacter"
        } else {
            return None;
        };
        Some(format!("contains {what} (U+{:04X}), which is not accepted in text", u32::from(character)))
    })
}

/// The 66 code points Unicode reserves never to be characters.
fn is_noncharacter(character: char) -> bool {
    let code = u32::from(character);
    (0xFDD0..=0xFDEF).contains(&code) || code & 0xFFFE == 0xFFFE
}

/// Bytes bound characters from above: count characters only when it could matter.
fn longer_than(text: &str, max: usize) -> bool {
    text.len() > max && text.chars().count() > max
}

/// A rejected record's NHS number as echoed back: at most
/// [`MAX_NHS_NUMBER_LEN`] characters of what was sent, so a report (and the
/// memory behind it) never grows with what a client puts in the field.
pub(super) fn echoed_nhs_number(mut sent: String) -> String {
    if let Some((cut, _)) = sent.char_indices().nth(MAX_NHS_NUMBER_LEN) {
        sent.truncate(cut);
    }
    sent.shrink_to_fit();
    sent
}

/// An optional, bounded text field of a request: the trimmed text, empty when absent.
pub(super) fn check_optional_text<'a>(text: &'a str, field: &str) -> Result<&'a str> {
    if text.trim().is_empty() { Ok("") } else { check_required_text(text, field) }
}

/// The local authority details of an upload header, all required.
pub(super) fn local_authority(authority: Option<&LocalAuthority>) -> Result<LocalAuthority> {
    let Some(authority) = authority else {
        return Err(Error::invalid("header.local_authority", "is required"));
    };
    Ok(LocalAuthority {
        ods_code: required_text(&authority.ods_code, "header.local_authority.ods_code")?,
        name: required_text(&authority.name, "header.local_authority.name")?,
        office_hours_phone: required_text(&authority.office_hours_phone, "header.local_authority.office_hours_phone")?,
        emergency_phone: required_text(&authority.emergency_phone, "header.local_authority.emergency_phone")?,
    })
}

/// Builds a plan from an uploaded record, or says why not. The record's
/// text is moved into the plan, not copied (an upload can carry a million).
/// `nhs_number` is the record's, taken out so the caller can report it.
pub(super) fn plan_record(
    nhs_number: &str,
    record: SentPlanRecord,
    la_ods_code: &str,
    now: DateTime<Utc>,
) -> std::result::Result<Plan, (RejectionReason, String)> {
    use RejectionReason::*;
    let today = now.date_naive();
    if longer_than(nhs_number, MAX_NHS_NUMBER_LEN) {
        return Err((FieldTooLong, format!("nhs_number: is longer than {MAX_NHS_NUMBER_LEN} characters")));
    }
    let nhs_number = NhsNumber::parse(nhs_number).map_err(|error| match error {
        NhsNumberError::Empty => (MissingField, "nhs_number: is required".to_owned()),
        other => (InvalidNhsNumber, format!("nhs_number: {other}")),
    })?;
    let plan_type = match record.plan_type {
        SentPlanType::Known(plan_type) => plan_type,
        SentPlanType::Unspecified => return Err((MissingField, "type: is required".to_owned())),
        SentPlanType::Unknown(code) => return Err((InvalidPlanType, format!("type: {code} is not a plan type"))),
    };
    // Every length first: nothing of an oversized record is kept or copied.
    check_lengths(&record)?;
    let local_id = text(record.local_id, "local_id", true, MAX_ID_LEN)?;
    let given_name = text(record.given_name, "given_name", true, MAX_NAME_LEN)?;
    let family_name = text(record.family_name, "family_name", true, MAX_NAME_LEN)?;
    let team_code = text(record.team_code, "team_code", false, MAX_ID_LEN)?;
    let date_of_birth =
        date(&record.date_of_birth, "date_of_birth")?.ok_or((MissingField, "date_of_birth: is required".to_owned()))?;
    if date_of_birth > today {
        return Err((InvalidDate, "date_of_birth: is in the future".to_owned()));
    }
    let start_date =
        date(&record.start_date, "start_date")?.ok_or((MissingField, "start_date: is required".to_owned()))?;
    let end_date = date(&record.end_date, "end_date")?;
    if end_date.is_some_and(|end| end < start_date) {
        return Err((EndBeforeStart, "end_date: is before start_date".to_owned()));
    }
    let expected_delivery_date = date(&record.expected_delivery_date, "expected_delivery_date")?;
    match (plan_type, expected_delivery_date) {
        (PlanType::UnbornChildProtection, None) => {
            return Err((MissingField, "expected_delivery_date: is required for UNBORN_CHILD_PROTECTION".to_owned()));
        }
        (PlanType::ChildProtection | PlanType::LookedAfter, Some(_)) => {
            return Err((UnexpectedField, "expected_delivery_date: is only for UNBORN_CHILD_PROTECTION".to_owned()));
        }
        _ => {}
    }
    let address = match record.address {
        None => Address::default(),
        Some(address) => {
            let mut lines = Vec::with_capacity(address.lines.len());
            for line in address.lines {
                let line = text(line, "address.lines", false, MAX_ADDRESS_LINE_LEN)?;
                if !line.is_empty() {
                    lines.push(line);
                }
            }
            let mut postcode = text(address.postcode, "address.postcode", false, MAX_POSTCODE_LEN)?;
            postcode.make_ascii_uppercase();
            Address { lines, postcode }
        }
    };
    let plan = Plan {
        nhs_number,
        la_ods_code: la_ods_code.to_owned(),
        local_id,
        given_name,
        family_name,
        date_of_birth,
        address,
        plan_type,
        start_date,
        end_date,
        expected_delivery_date,
        team_code,
        loaded_at: now,
    };
    if !plan.is_visible_on(today) {
        return Err((Expired, "the plan is past its visibility window and would never be shown".to_owned()));
    }
    Ok(plan)
}

/// Every field of a record within its limit (trimmed, as [`text`] counts).
fn check_lengths(record: &SentPlanRecord) -> std::result::Result<(), (RejectionReason, String)> {
    let too_long =
        |field: &str, max: usize| (RejectionReason::FieldTooLong, format!("{field}: is longer than {max} characters"));
    let fields: [(&str, &str, usize); 8] = [
        (&record.local_id, "local_id", MAX_ID_LEN),
        (&record.given_name, "given_name", MAX_NAME_LEN),
        (&record.family_name, "family_name", MAX_NAME_LEN),
        (&record.team_code, "team_code", MAX_ID_LEN),
        (&record.date_of_birth, "date_of_birth", MAX_DATE_LEN),
        (&record.start_date, "start_date", MAX_DATE_LEN),
        (&record.end_date, "end_date", MAX_DATE_LEN),
        (&record.expected_delivery_date, "expected_delivery_date", MAX_DATE_LEN),
    ];
    for (value, field, max) in fields {
        if longer_than(value.trim(), max) {
            return Err(too_long(field, max));
        }
    }
    if let Some(address) = &record.address {
        if address.lines.len() > MAX_ADDRESS_LINES {
            return Err((RejectionReason::FieldTooLong, format!("address.lines: more than {MAX_ADDRESS_LINES} lines")));
        }
        if address.lines.iter().any(|line| longer_than(line.trim(), MAX_ADDRESS_LINE_LEN)) {
            return Err(too_long("address.lines", MAX_ADDRESS_LINE_LEN));
        }
        if longer_than(address.postcode.trim(), MAX_POSTCODE_LEN) {
            return Err(too_long("address.postcode", MAX_POSTCODE_LEN));
        }
    }
    Ok(())
}

/// A record's text field, trimmed in place.
fn text(
    value: String,
    field: &str,
    required: bool,
    max: usize,
) -> std::result::Result<String, (RejectionReason, String)> {
    let trimmed = value.trim();
    if trimmed.is_empty() && required {
        return Err((RejectionReason::MissingField, format!("{field}: is required")));
    }
    if longer_than(trimmed, max) {
        return Err((RejectionReason::FieldTooLong, format!("{field}: is longer than {max} characters")));
    }
    if let Some(problem) = unacceptable_character(trimmed) {
        return Err((RejectionReason::InvalidCharacter, format!("{field}: {problem}")));
    }
    if trimmed.len() == value.len() { Ok(value) } else { Ok(trimmed.to_owned()) }
}

fn date(value: &str, field: &str) -> std::result::Result<Option<NaiveDate>, (RejectionReason, String)> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    iso_date(trimmed)
        .map(Some)
        .ok_or_else(|| (RejectionReason::InvalidDate, format!("{field}: is not a date in the form YYYY-MM-DD")))
}

/// Exactly `YYYY-MM-DD` naming a real day. Cheaper than a general format
/// parser, which matters on a FULL_REFRESH of hundreds of thousands of records.
fn iso_date(text: &str) -> Option<NaiveDate> {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        bytes[range]
            .iter()
            .try_fold(0u32, |value, &byte| byte.is_ascii_digit().then(|| value * 10 + u32::from(byte - b'0')))
    };
    NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_exactly_year_month_day_and_real() {
        assert_eq!(iso_date("2024-02-29"), chrono::NaiveDate::from_ymd_opt(2024, 2, 29));
        for bad in
            ["2023-02-29", "2024-1-05", "2024-01-5 ", "24-01-05", "2024/01/05", "2024-13-01", "２０２４-01-05", ""]
        {
            assert_eq!(iso_date(bad), None, "{bad:?}");
        }
    }

    fn record(plan_type: SentPlanType) -> SentPlanRecord {
        SentPlanRecord {
            nhs_number: "999 000 0018".into(),
            local_id: "L1".into(),
            given_name: " Ada ".into(),
            family_name: "Example".into(),
            date_of_birth: "2020-01-02".into(),
            plan_type,
            start_date: "2025-01-01".into(),
            ..SentPlanRecord::default()
        }
    }

    #[test]
    fn a_record_as_sent_is_checked_without_the_wire() {
        let now = "2026-01-01T00:00:00Z".parse().unwrap();
        let rejected = |plan_type| plan_record("9990000018", record(plan_type), "706", now).unwrap_err();
        assert_eq!(rejected(SentPlanType::Unspecified), (RejectionReason::MissingField, "type: is required".into()));
        assert_eq!(
            rejected(SentPlanType::Unknown(9)),
            (RejectionReason::InvalidPlanType, "type: 9 is not a plan type".into())
        );
        let plan = plan_record("9990000018", record(SentPlanType::Known(PlanType::LookedAfter)), "706", now).unwrap();
        assert_eq!((plan.given_name.as_str(), plan.plan_type), ("Ada", PlanType::LookedAfter));
        assert_eq!(plan_type_filter(SentPlanType::Unspecified).unwrap(), None);
        let refused = plan_type_filter(SentPlanType::Unknown(9)).unwrap_err();
        assert!(matches!(refused, Error::InvalidArgument { ref field, .. } if field == "type"), "{refused}");
    }
}
