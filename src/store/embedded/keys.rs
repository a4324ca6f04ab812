//! Byte keys of the embedded store's keyspaces. Every key sorts in the order
//! its reads and retention need (integers big-endian, signed ones with the
//! sign bit flipped), and every variable-length part is either the last part
//! or ends in a 0 byte that the part itself cannot contain (ODS codes are
//! checked to be printable ASCII before they reach the store).

use crate::{model::PlanType, nhs::NhsNumber, store::StoreError};

pub(in crate::store) fn type_byte(plan_type: PlanType) -> u8 {
    plan_type.stored_code()
}

pub(in crate::store) fn plan_type_of(byte: u8) -> Result<PlanType, StoreError> {
    PlanType::from_stored_code(byte).ok_or_else(|| StoreError::Corrupt(format!("plans: plan type key {byte}")))
}

fn signed64(value: i64) -> [u8; 8] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

fn signed32(value: i32) -> [u8; 4] {
    ((value as u32) ^ (1 << 31)).to_be_bytes()
}

/// `authority 0`: the prefix of one authority's plans or notifications.
pub(in crate::store) fn authority_prefix(la: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(la.len() + 1 + 9);
    key.extend_from_slice(la.as_bytes());
    key.push(0);
    key
}

/// plans: `authority 0 nhs(8) type(1)`.
pub(in crate::store) fn plan(la: &str, nhs: NhsNumber, plan_type: PlanType) -> Vec<u8> {
    let mut key = authority_prefix(la);
    key.extend_from_slice(&nhs.as_u64().to_be_bytes());
    key.push(type_byte(plan_type));
    key
}

/// The parts of a plan key.
pub(in crate::store) fn parse_plan(key: &[u8]) -> Result<(&str, NhsNumber, PlanType), StoreError> {
    let corrupt = || StoreError::Corrupt("plans: malformed key".into());
    let split = key.iter().position(|&byte| byte == 0).ok_or_else(corrupt)?;
    let (la, rest) = (&key[..split], &key[split + 1..]);
    if rest.len() != 9 {
        return Err(corrupt());
    }
    let la = std::str::from_utf8(la).map_err(|_| corrupt())?;
    let nhs = u64::from_be_bytes(rest[..8].try_into().map_err(|_| corrupt())?);
    let nhs = NhsNumber::from_u64(nhs).map_err(|error| StoreError::Corrupt(format!("plans: {error}")))?;
    Ok((la, nhs, plan_type_of(rest[8])?))
}

/// plan_expiry: `last visible day(4) plan key`.
pub(in crate::store) fn plan_expiry(day: i32, plan_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + plan_key.len());
    key.extend_from_slice(&signed32(day));
    key.extend_from_slice(plan_key);
    key
}

/// The first expiry key of plans visible until `day` or later.
pub(in crate::store) fn plan_expiry_from(day: i32) -> [u8; 4] {
    signed32(day)
}

/// The last visible day of an expiry key.
pub(in crate::store) fn expiry_day(key: &[u8]) -> Result<i32, StoreError> {
    let day: [u8; 4] = key
        .get(..4)
        .and_then(|day| day.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt("plan_expiry: malformed key".into()))?;
    Ok((u32::from_be_bytes(day) ^ (1 << 31)) as i32)
}

/// The plan key inside an expiry key.
pub(in crate::store) fn plan_of_expiry(key: &[u8]) -> Result<&[u8], StoreError> {
    key.get(4..).ok_or_else(|| StoreError::Corrupt("plan_expiry: malformed key".into()))
}

/// accesses: `nhs(8) scheduled(1) accessed at(8) id(16)`: a person's
/// unscheduled accesses in time order, then their scheduled (silent) reads,
/// so that routine reads never crowd the accesses a clinician is shown out of
/// the newest a search reads.
pub(in crate::store) fn access(nhs: NhsNumber, scheduled: bool, at_micros: i64, id: u128) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[..8].copy_from_slice(&nhs.as_u64().to_be_bytes());
    key[8] = u8::from(scheduled);
    key[9..17].copy_from_slice(&signed64(at_micros));
    key[17..].copy_from_slice(&id.to_be_bytes());
    key
}

/// The person of an access key.
pub(in crate::store) fn person_of_access(key: &[u8]) -> Result<NhsNumber, StoreError> {
    let nhs: [u8; 8] = key
        .get(..8)
        .and_then(|nhs| nhs.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt("accesses: malformed key".into()))?;
    NhsNumber::from_u64(u64::from_be_bytes(nhs)).map_err(|error| StoreError::Corrupt(format!("accesses: {error}")))
}

/// Every access of a person, both kinds.
pub(in crate::store) fn person_prefix(nhs: NhsNumber) -> [u8; 8] {
    nhs.as_u64().to_be_bytes()
}

/// access_times, as releases before the access log wrote it: `accessed at(8)
/// id(16)` -> the access key (now read once, to give those accesses log
/// positions, then emptied).
#[cfg(test)]
pub(in crate::store) fn access_time(at_micros: i64, id: u128) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&signed64(at_micros));
    key[8..].copy_from_slice(&id.to_be_bytes());
    key
}

/// notifications: `authority 0 sequence(8)`.
pub(in crate::store) fn notification(la: &str, sequence: u64) -> Vec<u8> {
    let mut key = authority_prefix(la);
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// notifications_by_person: `nhs number(8) authority 0 sequence(8)` -> nothing:
/// a person's notifications, for a subject access report.
pub(in crate::store) fn person_notification(nhs: NhsNumber, la: &str, sequence: u64) -> Vec<u8> {
    let mut key = person_prefix(nhs).to_vec();
    key.extend_from_slice(&notification(la, sequence));
    key
}

/// log: `position(8)` -> `kind(1) record key`; log_ids: `id(16)` -> `position(8)`;
/// log_tree: `position(8)` -> hash; log_notes: `sequence(8)` -> `kind(1) text`.
pub(in crate::store) fn log_position(position: u64) -> [u8; 8] {
    position.to_be_bytes()
}

/// The position of a log, log_tree or log_notes key.
pub(in crate::store) fn position_of_key(key: &[u8], keyspace: &str) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt(format!("{keyspace}: malformed key")))?;
    Ok(u64::from_be_bytes(bytes))
}

/// audit_reads: `nhs(8) read at(8) id(16)`: a person's reads by auditors in time order.
pub(in crate::store) fn audit_read(nhs: NhsNumber, at_micros: i64, id: u128) -> [u8; 32] {
    person_in_time(nhs, at_micros, id)
}

/// plan_history: `nhs(8) at(8) id(16)`: the changes of a person's plans in time order.
pub(in crate::store) fn plan_change(nhs: NhsNumber, at_micros: i64, id: u128) -> [u8; 32] {
    person_in_time(nhs, at_micros, id)
}

fn person_in_time(nhs: NhsNumber, at_micros: i64, id: u128) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&nhs.as_u64().to_be_bytes());
    key[8..16].copy_from_slice(&signed64(at_micros));
    key[16..].copy_from_slice(&id.to_be_bytes());
    key
}

/// plan_history_times: `at(8) nhs(8) id(16)`: every plan change in time order (for retention).
pub(in crate::store) fn plan_change_time(nhs: NhsNumber, at_micros: i64, id: u128) -> [u8; 32] {
    let mut key = person_in_time(nhs, at_micros, id);
    key[..16].rotate_left(8);
    key
}

/// The first plan_history_times key at or after `at`.
pub(in crate::store) fn plan_changes_from(at_micros: i64) -> [u8; 8] {
    signed64(at_micros)
}

/// The plan_history key a plan_history_times key indexes.
pub(in crate::store) fn plan_change_of_time(key: &[u8]) -> Result<[u8; 32], StoreError> {
    let mut key: [u8; 32] =
        key.try_into().map_err(|_| StoreError::Corrupt("plan_history_times: malformed key".into()))?;
    key[..16].rotate_left(8);
    Ok(key)
}

/// The time of an access key (33 bytes) or an audit read key (32 bytes).
pub(in crate::store) fn time_of_record_key(key: &[u8]) -> Result<i64, StoreError> {
    let at = match key.len() {
        33 => &key[9..17],
        32 => &key[8..16],
        _ => return Err(StoreError::Corrupt("log: malformed record key".into())),
    };
    let at: [u8; 8] = at.try_into().map_err(|_| StoreError::Corrupt("log: malformed record key".into()))?;
    Ok((u64::from_be_bytes(at) ^ (1 << 63)) as i64)
}

/// The id at the end of an access key or an audit read key.
pub(in crate::store) fn id_of_record_key(key: &[u8]) -> Result<u128, StoreError> {
    let id: [u8; 16] = key
        .get(key.len().saturating_sub(16)..)
        .and_then(|id| id.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt("log: malformed record key".into()))?;
    Ok(u128::from_be_bytes(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_as_their_parts() {
        let nhs = NhsNumber::parse("9990000026").unwrap();
        assert!(access(nhs, false, -5, 0) < access(nhs, false, 3, 0), "times before the epoch sort first");
        assert!(access(nhs, false, i64::MAX, 0) < access(nhs, true, i64::MIN, 0), "scheduled reads after the rest");
        assert!(access(nhs, true, 0, 0).starts_with(&person_prefix(nhs)));
        assert!(plan_expiry(-1, b"a") < plan_expiry(0, b"a"));
        assert!(notification("706", 9) < notification("706", 10));
        assert!(notification("70", u64::MAX) < notification("706", 0), "an authority's range excludes longer codes");
        let key = plan("706", nhs, PlanType::LookedAfter);
        assert_eq!(parse_plan(&key).unwrap(), ("706", nhs, PlanType::LookedAfter));
        assert_eq!(plan_of_expiry(&plan_expiry(7, &key)).unwrap(), key.as_slice());
        assert_eq!(time_of_record_key(&access(nhs, true, -7, 3)).unwrap(), -7);
        assert_eq!(time_of_record_key(&audit_read(nhs, 9, 3)).unwrap(), 9);
        assert_eq!(id_of_record_key(&audit_read(nhs, 9, 3)).unwrap(), 3);
        assert_eq!(id_of_record_key(&access(nhs, false, 9, u128::MAX)).unwrap(), u128::MAX);
        let change = plan_change(nhs, -3, 7);
        assert_eq!(plan_change_of_time(&plan_change_time(nhs, -3, 7)).unwrap(), change);
        assert!(plan_change_time(nhs, -3, 7) < plan_change_time(NhsNumber::complete(999_000_001).unwrap(), 4, 0));
        assert!(plan_change_time(nhs, -3, 7).as_slice() < plan_changes_from(-2).as_slice());
    }
}
