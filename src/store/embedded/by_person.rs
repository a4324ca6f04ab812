//! One person's notifications, for a subject access report: the
//! `notifications_by_person` keyspace holds each notification's key under
//! the person's NHS number (`keys::person_notification`), written and removed
//! in the same batch as the notification itself (`super::changes`), and
//! built once on open for a store an earlier release wrote.
//!
//! What it must not do: read another person's notifications.

use super::{NhsNumber, Notification, Spaces, StoreError, io, keys, notification::decode_notification};

/// Marks in `log_meta` that every notification is in `notifications_by_person`.
pub(super) const NOTIFICATIONS_BY_PERSON: &str = "notifications_by_person";

/// Indexes the notifications an earlier release wrote by person, once, in
/// bounded batches (a crash meanwhile starts it again: entries are keys only).
pub(super) fn index_on_open(spaces: &Spaces) -> Result<(), StoreError> {
    if spaces.log_meta.contains_key(NOTIFICATIONS_BY_PERSON).map_err(io)? {
        return Ok(());
    }
    let mut batch = spaces.activity_db.batch().durability(Some(fjall::PersistMode::SyncData));
    let mut pending = 0usize;
    for entry in spaces.notifications.iter() {
        let notification: Notification = decode_notification(&entry.value().map_err(io)?)?;
        let (la, sequence) = (notification.draft.la_ods_code.as_str(), notification.sequence);
        let key = keys::person_notification(notification.access.nhs_number, la, sequence);
        batch.insert(&spaces.notifications_by_person, key, []);
        pending += 1;
        if pending == 100_000 {
            batch.commit().map_err(io)?;
            batch = spaces.activity_db.batch().durability(Some(fjall::PersistMode::SyncData));
            pending = 0;
        }
    }
    batch.insert(&spaces.log_meta, NOTIFICATIONS_BY_PERSON, []);
    batch.commit().map_err(io)
}

/// The person's notifications, by authority and sequence.
pub(super) fn notifications_of(spaces: &Spaces, nhs_number: NhsNumber) -> Result<Vec<Notification>, StoreError> {
    let prefix = keys::person_prefix(nhs_number);
    let mut found = Vec::new();
    for entry in spaces.notifications_by_person.prefix(prefix) {
        let key = entry.key().map_err(io)?;
        // Both go in one batch; an entry whose notification is missing lists nothing.
        if let Some(value) = spaces.notifications.get(&key[prefix.len()..]).map_err(io)? {
            found.push(decode_notification(&value)?);
        }
    }
    Ok(found)
}
