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
//! | care setting | string, the contract's enum name (`EMERGENCY_DEPARTMENT`, ..., `SCHOOL_NURSING`); empty for an auditor's read |
//! | accessor user id | string |
//! | accessor name | string |
//! | accessor role code | string |
//! | request id | string |
//!
//! An auditor's read (kind `0x02`) has no care setting (the empty string);
//! its organisation is the auditor's, its accessor the one the auditor's
//! request named (empty strings when it named none).
//!
//! A later version changes the version byte; a verifier hashes each record
//! with the version it was logged under.

use sha2::{Digest, Sha256};

use crate::model::{AccessEvent, AccessView, AuditRead, CareSetting};

use super::hash::Hash;

/// The encoding version [`encode_access`] writes.
pub(crate) const ACCESS_LEAF_VERSION: u8 = 1;

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
    pub(crate) fn of_search(event: &AccessEvent) -> Self {
        if event.scheduled { Self::Scheduled } else { Self::Unscheduled }
    }

    pub fn code(self) -> u8 {
        match self {
            Self::Unscheduled => 0x00,
            Self::Scheduled => 0x01,
            Self::Audit => 0x02,
        }
    }

    /// The kind a leaf's code names.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0x00 => Some(Self::Unscheduled),
            0x01 => Some(Self::Scheduled),
            0x02 => Some(Self::Audit),
            _ => None,
        }
    }

    /// As a person reads it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Unscheduled => "unscheduled care search",
            Self::Scheduled => "scheduled care search",
            Self::Audit => "auditor's read",
        }
    }
}

/// Why bytes are not a version 1 leaf.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an access leaf of version {ACCESS_LEAF_VERSION}: {0}")]
pub(crate) struct LeafDecodeError(&'static str);

/// The contract's name of a care setting, as the encoding writes it: the
/// vocabulary's [`contract_name`](CareSetting::contract_name), which the
/// wire contract fixes for good (leaves already signed hold it).
pub(crate) fn care_setting_code(setting: CareSetting) -> &'static str {
    setting.contract_name()
}

/// A text field longer than a u32 can count: never a real access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {length} bytes, more than a leaf can hold")]
pub struct FieldTooLong {
    pub field: &'static str,
    pub length: usize,
}

/// The fields of one leaf, borrowed from an access, a stored access read in
/// place or an auditor's read: hashing them allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeafFields<'a> {
    pub kind: AccessKind,
    pub id: u128,
    pub at_micros: i64,
    pub nhs_number: u64,
    pub organisation_ods_code: &'a str,
    pub organisation_name: &'a str,
    /// The contract's name; empty for an auditor's read.
    pub care_setting: &'a str,
    pub user_id: &'a str,
    pub name: &'a str,
    pub role_code: &'a str,
    pub request_id: &'a str,
}

impl<'a> LeafFields<'a> {
    /// A search, its kind from its `scheduled` mark.
    pub(crate) fn of_search(event: &'a AccessEvent) -> Self {
        Self {
            kind: AccessKind::of_search(event),
            id: event.id,
            at_micros: event.accessed_at.timestamp_micros(),
            nhs_number: event.nhs_number.as_u64(),
            organisation_ods_code: &event.organisation_ods_code,
            organisation_name: &event.organisation_name,
            care_setting: care_setting_code(event.care_setting),
            user_id: &event.accessor.user_id,
            name: &event.accessor.name,
            role_code: &event.accessor.role_code,
            request_id: &event.request_id,
        }
    }

    /// A stored search read in place.
    pub(crate) fn of_view(view: &AccessView<'a>) -> Self {
        Self {
            kind: if view.scheduled { AccessKind::Scheduled } else { AccessKind::Unscheduled },
            id: view.id,
            at_micros: view.accessed_at.timestamp_micros(),
            nhs_number: view.nhs_number.as_u64(),
            organisation_ods_code: view.organisation_ods_code,
            organisation_name: view.organisation_name,
            care_setting: care_setting_code(view.care_setting),
            user_id: view.accessor.user_id,
            name: view.accessor.name,
            role_code: view.accessor.role_code,
            request_id: view.request_id,
        }
    }

    /// An auditor's read.
    pub(crate) fn of_audit(read: &'a AuditRead) -> Self {
        Self {
            kind: AccessKind::Audit,
            id: read.id,
            at_micros: read.read_at.timestamp_micros(),
            nhs_number: read.nhs_number.as_u64(),
            organisation_ods_code: &read.organisation_ods_code,
            organisation_name: &read.organisation_name,
            care_setting: "",
            user_id: &read.accessor.user_id,
            name: &read.accessor.name,
            role_code: &read.accessor.role_code,
            request_id: &read.request_id,
        }
    }

    fn texts(&self) -> [(&'static str, &'a str); 7] {
        [
            ("organisation_ods_code", self.organisation_ods_code),
            ("organisation_name", self.organisation_name),
            ("care_setting", self.care_setting),
            ("accessor.user_id", self.user_id),
            ("accessor.name", self.name),
            ("accessor.role_code", self.role_code),
            ("request_id", self.request_id),
        ]
    }

    /// Feeds the version 1 encoding to `sink`, piece by piece.
    fn write(&self, mut sink: impl FnMut(&[u8])) -> Result<(), FieldTooLong> {
        sink(&[ACCESS_LEAF_VERSION, self.kind.code()]);
        sink(&self.id.to_be_bytes());
        sink(&self.at_micros.to_be_bytes());
        sink(&self.nhs_number.to_be_bytes());
        for (field, text) in self.texts() {
            let length = u32::try_from(text.len()).map_err(|_| FieldTooLong { field, length: text.len() })?;
            sink(&length.to_be_bytes());
            sink(text.as_bytes());
        }
        Ok(())
    }

    /// The version 1 encoding.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, FieldTooLong> {
        let capacity = 2 + 16 + 8 + 8 + self.texts().iter().map(|(_, text)| 4 + text.len()).sum::<usize>();
        let mut out = Vec::with_capacity(capacity);
        self.write(|bytes| out.extend_from_slice(bytes))?;
        Ok(out)
    }

    /// Reads a version 1 encoding back, strictly: every byte accounted for,
    /// each text valid UTF-8, the kind known, so that what a verifier shows
    /// is exactly what the hashed leaf holds (re-encoding gives the same bytes).
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Self, LeafDecodeError> {
        let mut rest = bytes;
        let mut take = |count: usize| -> Result<&'a [u8], LeafDecodeError> {
            if rest.len() < count {
                return Err(LeafDecodeError("it ends early"));
            }
            let (taken, left) = rest.split_at(count);
            rest = left;
            Ok(taken)
        };
        let header = take(2)?;
        if header[0] != ACCESS_LEAF_VERSION {
            return Err(LeafDecodeError("another version"));
        }
        let kind = AccessKind::from_code(header[1]).ok_or(LeafDecodeError("an unknown kind"))?;
        let id = u128::from_be_bytes(take(16)?.try_into().map_err(|_| LeafDecodeError("the id"))?);
        let at_micros = i64::from_be_bytes(take(8)?.try_into().map_err(|_| LeafDecodeError("the time"))?);
        let nhs_number = u64::from_be_bytes(take(8)?.try_into().map_err(|_| LeafDecodeError("the NHS number"))?);
        let mut text = || -> Result<&'a str, LeafDecodeError> {
            let length = u32::from_be_bytes(take(4)?.try_into().map_err(|_| LeafDecodeError("a length"))?);
            std::str::from_utf8(take(length as usize)?).map_err(|_| LeafDecodeError("a text is not UTF-8"))
        };
        let fields = Self {
            kind,
            id,
            at_micros,
            nhs_number,
            organisation_ods_code: text()?,
            organisation_name: text()?,
            care_setting: text()?,
            user_id: text()?,
            name: text()?,
            role_code: text()?,
            request_id: text()?,
        };
        if !rest.is_empty() {
            return Err(LeafDecodeError("bytes follow the last field"));
        }
        Ok(fields)
    }

    /// The RFC 6962 leaf hash, SHA-256(0x00 || encoding), without building the encoding.
    pub(crate) fn leaf_hash(&self) -> Result<Hash, FieldTooLong> {
        let mut hasher = Sha256::new();
        hasher.update([0x00]);
        self.write(|bytes| hasher.update(bytes))?;
        Ok(hasher.finalize().into())
    }
}

/// The version 1 encoding of `event` as an access of `kind`.
pub fn encode_access(event: &AccessEvent, kind: AccessKind) -> Result<Vec<u8>, FieldTooLong> {
    LeafFields { kind, ..LeafFields::of_search(event) }.encode()
}

/// The RFC 6962 leaf hash of `event` as an access of `kind`.
pub fn access_leaf_hash(event: &AccessEvent, kind: AccessKind) -> Result<Hash, FieldTooLong> {
    LeafFields { kind, ..LeafFields::of_search(event) }.leaf_hash()
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    #[test]
    fn a_leaf_decodes_to_the_fields_it_was_encoded_from_and_nothing_else_decodes() {
        let event = access();
        let encoded = encode_access(&event, AccessKind::Scheduled).expect("encodes");
        let decoded = LeafFields::decode(&encoded).expect("decodes");
        assert_eq!(decoded, LeafFields { kind: AccessKind::Scheduled, ..LeafFields::of_search(&event) });
        assert_eq!(decoded.encode().expect("encodes"), encoded);
        assert!(LeafFields::decode(&encoded[..encoded.len() - 1]).is_err(), "cut short");
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(LeafFields::decode(&longer).is_err(), "a byte too many");
        let mut other_kind = encoded.clone();
        other_kind[1] = 9;
        assert!(LeafFields::decode(&other_kind).is_err(), "an unknown kind");
        let mut other_version = encoded;
        other_version[0] = 2;
        assert!(LeafFields::decode(&other_version).is_err(), "another version");
    }
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

    #[test]
    fn the_streamed_hash_is_the_hash_of_the_encoding() {
        let event = access();
        let fields = LeafFields::of_search(&event);
        assert_eq!(fields.leaf_hash().unwrap(), super::super::hash::leaf_hash(&fields.encode().unwrap()));
        let stored = postcard::to_allocvec(&event).unwrap();
        let view: AccessView<'_> = postcard::from_bytes(&stored).unwrap();
        assert_eq!(LeafFields::of_view(&view), fields, "a stored access hashes as the access");
    }

    #[test]
    fn an_auditors_read_has_kind_two_and_no_care_setting() {
        let event = access();
        let read = AuditRead {
            id: event.id,
            read_at: event.accessed_at,
            nhs_number: event.nhs_number,
            organisation_ods_code: "X26".into(),
            organisation_name: "Audit".into(),
            accessor: event.accessor.clone(),
            request_id: "a-1".into(),
        };
        let encoded = LeafFields::of_audit(&read).encode().unwrap();
        assert_eq!(&encoded[..2], &[0x01, 0x02]);
        let care_setting_at = 2 + 16 + 8 + 8 + 4 + 3 + 4 + 5;
        assert_eq!(&encoded[care_setting_at..care_setting_at + 4], &[0, 0, 0, 0], "an empty care setting");
    }
}
