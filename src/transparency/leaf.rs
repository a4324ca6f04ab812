//! The leaf of one access: a canonical, versioned byte encoding of an
//! [`AccessEvent`] and its kind, written field by field so that it never
//! changes with postcard or serde. Its RFC 6962 leaf hash is
//! SHA-256(0x00 || encoding).
//!
//! # Encoding, version 1
//! All integers are big-endian; a string is its UTF-8 length as a u32
//! followed by its UTF-8 bytes (no terminator, no normalisation).
//!
//! | field | bytes |
//! |---|---|
//! | version | u8, `0x01` |
//! | kind | u8: `0x00` unscheduled care search, `0x01` scheduled care search, `0x02` auditor's read |
//! | access id | u128 (16 bytes) |
//! | accessed at | i64, microseconds since 1970-01-01T00:00:00Z |
//! | NHS number | u64, the ten digits as a number |
//! | organisation ODS code | string |
//! | organisation name | string |
//! | care setting | string, the contract's enum name (`EMERGENCY_DEPARTMENT`, ..., `SCHOOL_NURSING`) |
//! | accessor user id | string |
//! | accessor name | string |
//! | accessor role code | string |
//! | request id | string |
//!
//! A later version changes the version byte; a verifier hashes each record
//! with the version it was logged under.

use crate::model::{AccessEvent, CareSetting};

use super::hash::{Hash, leaf_hash};

/// The encoding version [`encode_access`] writes.
pub const ACCESS_LEAF_VERSION: u8 = 1;

/// What kind of access a leaf records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// An unscheduled care search: notified and listed.
    Unscheduled,
    /// A scheduled care search: silent, audited.
    Scheduled,
    /// An auditor's read of a person's access log.
    Audit,
}

impl AccessKind {
    /// The kind of a search, from its `scheduled` mark.
    pub fn of_search(event: &AccessEvent) -> Self {
        if event.scheduled { Self::Scheduled } else { Self::Unscheduled }
    }

    pub fn code(self) -> u8 {
        match self {
            Self::Unscheduled => 0x00,
            Self::Scheduled => 0x01,
            Self::Audit => 0x02,
        }
    }
}

/// The contract's name of a care setting, as the encoding writes it.
pub fn care_setting_code(setting: CareSetting) -> &'static str {
    match setting {
        CareSetting::EmergencyDepartment => "EMERGENCY_DEPARTMENT",
        CareSetting::OutOfHoursGp => "OUT_OF_HOURS_GP",
        CareSetting::WalkInCentre => "WALK_IN_CENTRE",
        CareSetting::MinorInjuriesUnit => "MINOR_INJURIES_UNIT",
        CareSetting::PaediatricWard => "PAEDIATRIC_WARD",
        CareSetting::AmbulanceService => "AMBULANCE_SERVICE",
        CareSetting::MaternityUnit => "MATERNITY_UNIT",
        CareSetting::GeneralPractice => "GENERAL_PRACTICE",
        CareSetting::HealthVisiting => "HEALTH_VISITING",
        CareSetting::SchoolNursing => "SCHOOL_NURSING",
    }
}

/// A text field longer than a u32 can count: never a real access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {length} bytes, more than a leaf can hold")]
pub struct FieldTooLong {
    pub field: &'static str,
    pub length: usize,
}

/// The version 1 encoding of `event` as an access of `kind`.
pub fn encode_access(event: &AccessEvent, kind: AccessKind) -> Result<Vec<u8>, FieldTooLong> {
    let texts: [(&'static str, &str); 7] = [
        ("organisation_ods_code", &event.organisation_ods_code),
        ("organisation_name", &event.organisation_name),
        ("care_setting", care_setting_code(event.care_setting)),
        ("accessor.user_id", &event.accessor.user_id),
        ("accessor.name", &event.accessor.name),
        ("accessor.role_code", &event.accessor.role_code),
        ("request_id", &event.request_id),
    ];
    let capacity = 2 + 16 + 8 + 8 + texts.iter().map(|(_, text)| 4 + text.len()).sum::<usize>();
    let mut out = Vec::with_capacity(capacity);
    out.push(ACCESS_LEAF_VERSION);
    out.push(kind.code());
    out.extend_from_slice(&event.id.to_be_bytes());
    out.extend_from_slice(&event.accessed_at.timestamp_micros().to_be_bytes());
    out.extend_from_slice(&event.nhs_number.as_u64().to_be_bytes());
    for (field, text) in texts {
        let length = u32::try_from(text.len()).map_err(|_| FieldTooLong { field, length: text.len() })?;
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    Ok(out)
}

/// The RFC 6962 leaf hash of `event` as an access of `kind`.
pub fn access_leaf_hash(event: &AccessEvent, kind: AccessKind) -> Result<Hash, FieldTooLong> {
    Ok(leaf_hash(&encode_access(event, kind)?))
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::model::Accessor;
    use crate::nhs::NhsNumber;

    fn access() -> AccessEvent {
        AccessEvent {
            id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            accessed_at: Utc.timestamp_micros(1_764_930_000_123_456).single().expect("a valid time"),
            nhs_number: NhsNumber::parse("999 000 0018").expect("a synthetic NHS number"),
            organisation_ods_code: "RXX".into(),
            organisation_name: "Test ED".into(),
            care_setting: CareSetting::EmergencyDepartment,
            accessor: Accessor { user_id: "u1".into(), name: "Dr Ä".into(), role_code: "R8000".into() },
            request_id: "req-1".into(),
            scheduled: false,
        }
    }

    #[test]
    fn the_encoding_is_the_documented_bytes() {
        let encoded = encode_access(&access(), AccessKind::Unscheduled).expect("short fields");
        let mut expected = vec![0x01, 0x00];
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        expected.extend_from_slice(&1_764_930_000_123_456i64.to_be_bytes());
        expected.extend_from_slice(&9_990_000_018u64.to_be_bytes());
        for text in ["RXX", "Test ED", "EMERGENCY_DEPARTMENT", "u1", "Dr Ä", "R8000", "req-1"] {
            expected.extend_from_slice(&(text.len() as u32).to_be_bytes());
            expected.extend_from_slice(text.as_bytes());
        }
        assert_eq!(encoded, expected);
        // "Dr Ä" is five UTF-8 bytes: lengths count bytes, not characters.
        assert!(encoded.windows(9).any(|window| window == [0, 0, 0, 5, b'D', b'r', b' ', 0xc3, 0x84]));
    }

    #[test]
    fn the_kind_and_every_field_change_the_leaf() {
        let base = access();
        let hash = |event: &AccessEvent, kind| access_leaf_hash(event, kind).expect("short fields");
        let original = hash(&base, AccessKind::Unscheduled);
        assert_ne!(original, hash(&base, AccessKind::Scheduled));
        assert_ne!(original, hash(&base, AccessKind::Audit));
        let mut changes: Vec<AccessEvent> = Vec::new();
        let mut push = |change: fn(&mut AccessEvent)| {
            let mut event = base.clone();
            change(&mut event);
            changes.push(event);
        };
        push(|event| event.id += 1);
        push(|event| event.accessed_at += chrono::Duration::microseconds(1));
        push(|event| event.nhs_number = NhsNumber::parse("999 000 0026").expect("synthetic"));
        push(|event| event.organisation_ods_code.push('X'));
        push(|event| event.organisation_name.push('X'));
        push(|event| event.care_setting = CareSetting::WalkInCentre);
        push(|event| event.accessor.user_id.push('X'));
        push(|event| event.accessor.name.push('X'));
        push(|event| event.accessor.role_code.push('X'));
        push(|event| event.request_id.push('X'));
        // Moving a byte between adjacent strings keeps the concatenation but not the leaf.
        push(|event| {
            event.organisation_ods_code = "RXXT".into();
            event.organisation_name = "est ED".into();
        });
        for (number, changed) in changes.iter().enumerate() {
            assert_ne!(hash(changed, AccessKind::Unscheduled), original, "change {number}");
        }
    }

    #[test]
    fn a_search_kind_follows_its_scheduled_mark() {
        let mut event = access();
        assert_eq!(AccessKind::of_search(&event), AccessKind::Unscheduled);
        event.scheduled = true;
        assert_eq!(AccessKind::of_search(&event), AccessKind::Scheduled);
    }
}
