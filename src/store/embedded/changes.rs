//! What the activity lane writes for a batch of changes (the plan lane's
//! are in `plan_changes`): every change of the batch goes into one fjall
//! write batch, committed with `SyncData` (one journal append, one
//! `fdatasync`), or the batch fails whole. Reads a change needs (what
//! retention removes) see everything committed before it, because each lane
//! is the only writer of its keyspaces. A failed commit is
//! [`StoreError::Broken`]: the engine takes no more writes after it.

use std::collections::HashMap;

use fjall::{OwnedWriteBatch, PersistMode};

use super::{
    Spaces, encode, io, keys,
    lane::Committer,
    log,
    notification::{decode_notification, encode_notification},
};
use crate::{
    model::{AccessEvent, Notification, NotificationDraft},
    store::{Applied, Change, Cursor, Expiry, ExpiryCounts, StoreError, log::LogBounds},
    transparency::leaf::LeafFields,
};

/// Writes activity: flagged searches, acknowledgements and their retention.
/// Owns each authority's sequence positions and the access log's positions,
/// both assigned in commit order.
pub(super) struct ActivityCommitter {
    pub spaces: Spaces,
    pub positions: HashMap<String, Cursor>,
    pub log: LogBounds,
    /// The positions a batch changed, as they were before it, to restore if
    /// it fails: changed in place, not copied whole per batch (two strings
    /// per authority, 300 allocations a commit with England's 152).
    pub undo: Vec<(String, Option<(u64, u64)>)>,
}

/// A failed commit: fjall fails one only when its journal append or sync
/// failed, and from then on refuses every commit of that database.
pub(super) fn journal_failed(error: fjall::Error) -> StoreError {
    StoreError::Broken(error.to_string())
}

impl Committer for ActivityCommitter {
    fn commit(&mut self, changes: Vec<Change>) -> Result<Vec<Applied>, StoreError> {
        self.undo.clear();
        let result = self.commit_in_place(changes);
        if result.is_err() {
            for (la, before) in self.undo.drain(..) {
                match (before, self.positions.get_mut(&la)) {
                    (Some((last_sequence, acked_through)), Some(cursor)) => {
                        (cursor.last_sequence, cursor.acked_through) = (last_sequence, acked_through);
                    }
                    _ => {
                        self.positions.remove(&la);
                    }
                }
            }
        }
        result
    }
}

impl ActivityCommitter {
    /// [`Committer::commit`], changing the positions in place (and noting in
    /// `undo` how each was before it was first changed).
    fn commit_in_place(&mut self, changes: Vec<Change>) -> Result<Vec<Applied>, StoreError> {
        let Self { spaces, positions, log, undo } = self;
        let mut log_bounds = *log;
        let mut batch = spaces.activity_db.batch().durability(Some(PersistMode::SyncData));
        let mut results = Vec::with_capacity(changes.len());
        // The leaf hashes of what this batch appends to the log, for the keeper once it commits.
        let mut appended = Vec::new();
        for change in changes {
            results.push(match change {
                Change::RecordAccess { access, drafts } => {
                    // No cursor and no request record: an authority's last sequence is its
                    // newest notification's, and requests are recognised from the accesses
                    // (held in memory, rebuilt from this keyspace on start).
                    let at = access.accessed_at.timestamp_micros();
                    let access_key = keys::access(access.nhs_number, access.scheduled, at, access.id);
                    batch.insert(&spaces.accesses, access_key, encode(&access)?);
                    let kind = if access.scheduled { log::SEARCH_SCHEDULED } else { log::SEARCH_UNSCHEDULED };
                    let log_position = append_to_log(spaces, &mut batch, &mut log_bounds, kind, &access_key, access.id);
                    if let Ok(leaf) = LeafFields::of_search(&access).leaf_hash() {
                        appended.push((log_position, leaf));
                    }
                    let mut notify = |draft: NotificationDraft, access: AccessEvent| {
                        let cursor = position(positions, undo, &draft.la_ods_code);
                        cursor.last_sequence += 1;
                        let notification = Notification { sequence: cursor.last_sequence, draft, access };
                        let (la, sequence) = (notification.draft.la_ods_code.as_str(), notification.sequence);
                        batch.insert(
                            &spaces.notifications,
                            keys::notification(la, sequence),
                            encode_notification(&notification)?,
                        );
                        let by_person = keys::person_notification(notification.access.nhs_number, la, sequence);
                        batch.insert(&spaces.notifications_by_person, by_person, []);
                        Ok::<_, StoreError>(notification)
                    };
                    // Each notification holds the access: the last one takes it, the others a copy.
                    let mut drafts = drafts;
                    let last = drafts.pop();
                    let mut notified = Vec::with_capacity(drafts.len() + 1);
                    for draft in drafts {
                        notified.push(notify(draft, access.clone())?);
                    }
                    if let Some(draft) = last {
                        notified.push(notify(draft, access)?);
                    }
                    Applied::Notified(notified)
                }
                Change::RecordAudit(read) => {
                    let key = keys::audit_read(read.nhs_number, read.read_at.timestamp_micros(), read.id);
                    batch.insert(&spaces.audit_reads, key, encode(&read)?);
                    let position = append_to_log(spaces, &mut batch, &mut log_bounds, log::AUDIT_READ, &key, read.id);
                    if let Ok(leaf) = LeafFields::of_audit(&read).leaf_hash() {
                        appended.push((position, leaf));
                    }
                    Applied::Committed
                }
                Change::Ack { la_ods_code, through } => {
                    let cursor = position(positions, undo, &la_ods_code);
                    cursor.acked_through = cursor.acked_through.max(through.min(cursor.last_sequence));
                    put_cursor(spaces, &mut batch, cursor)?;
                    Applied::Committed
                }
                Change::Expire(expiry) => {
                    Applied::Expired(expire_activity(spaces, &mut batch, positions, &mut log_bounds, &expiry)?)
                }
                Change::UpsertPlans { .. } | Change::ReplacePlans { .. } | Change::DeletePlans { .. } => {
                    return Err(StoreError::Corrupt("a plan change reached the activity lane".into()));
                }
            });
        }
        batch.commit().map_err(journal_failed)?;
        *log = log_bounds;
        spaces.appended.push(&appended);
        Ok(results)
    }
}

/// Gives a stored access the next log position, in the same batch; returns it.
fn append_to_log(
    spaces: &Spaces,
    batch: &mut OwnedWriteBatch,
    bounds: &mut LogBounds,
    kind: u8,
    record_key: &[u8],
    id: u128,
) -> u64 {
    let position = bounds.next_position;
    bounds.next_position += 1;
    batch.insert(&spaces.log, keys::log_position(position), log::entry_value(kind, record_key));
    batch.insert(&spaces.log_ids, id.to_be_bytes(), position.to_be_bytes());
    position
}

/// An authority's positions, to change; the first change of a batch notes them in `undo` as they were.
fn position<'a>(
    positions: &'a mut HashMap<String, Cursor>,
    undo: &mut Vec<(String, Option<(u64, u64)>)>,
    la: &str,
) -> &'a mut Cursor {
    if !undo.iter().any(|(noted, _)| noted == la) {
        let before = positions.get(la).map(|cursor| (cursor.last_sequence, cursor.acked_through));
        undo.push((la.to_owned(), before));
    }
    if !positions.contains_key(la) {
        positions.insert(la.to_owned(), Cursor { la_ods_code: la.to_owned(), ..Cursor::default() });
    }
    match positions.get_mut(la) {
        Some(cursor) => cursor,
        None => unreachable!("inserted above"),
    }
}

fn put_cursor(spaces: &Spaces, batch: &mut OwnedWriteBatch, cursor: &Cursor) -> Result<(), StoreError> {
    batch.insert(&spaces.cursors, cursor.la_ods_code.as_str(), encode(&(cursor.last_sequence, cursor.acked_through))?);
    Ok(())
}

/// Acknowledged notifications and accesses (with their request ids) past their keeping periods.
fn expire_activity(
    spaces: &Spaces,
    batch: &mut OwnedWriteBatch,
    positions: &HashMap<String, Cursor>,
    log_bounds: &mut LogBounds,
    expiry: &Expiry,
) -> Result<ExpiryCounts, StoreError> {
    let mut counts = ExpiryCounts::default();
    for cursor in positions.values() {
        let la = cursor.la_ods_code.as_str();
        let (from, to) = (keys::notification(la, 0), keys::notification(la, cursor.acked_through));
        for entry in spaces.notifications.range(from..=to) {
            if counts.notifications as usize >= expiry.limit {
                break;
            }
            let (key, value) = entry.into_inner().map_err(io)?;
            let notification: Notification = decode_notification(&value)?;
            if notification.access.accessed_at >= expiry.acked_notifications_before {
                break;
            }
            batch.remove(&spaces.notifications, key);
            let by_person = keys::person_notification(notification.access.nhs_number, la, notification.sequence);
            batch.remove(&spaces.notifications_by_person, by_person);
            counts.notifications += 1;
        }
    }
    // Accesses: a prefix of the log, oldest position first, stopping at the
    // first one still kept or not yet in the tree.
    let cutoff = expiry.accesses_before.timestamp_micros();
    let (from, to) = (log_bounds.retained_from, expiry.log_positions_below.min(log_bounds.next_position));
    let mut retained_from = from;
    if from < to {
        for entry in spaces.log.range(keys::log_position(from)..keys::log_position(to)).take(expiry.limit) {
            let (key, value) = entry.into_inner().map_err(io)?;
            let position = keys::position_of_key(&key, "log")?;
            let (&kind, record_key) =
                value.split_first().ok_or_else(|| StoreError::Corrupt("log: empty entry".into()))?;
            let at = keys::time_of_record_key(record_key)?;
            if at >= cutoff {
                break;
            }
            if kind == log::AUDIT_READ {
                batch.remove(&spaces.audit_reads, record_key.to_vec());
            } else {
                batch.remove(&spaces.accesses, record_key.to_vec());
            }
            batch.remove(&spaces.log_ids, keys::id_of_record_key(record_key)?.to_be_bytes());
            batch.remove(&spaces.log, key);
            counts.accesses += 1;
            retained_from = position + 1;
        }
    }
    if retained_from != log_bounds.retained_from {
        log::set_retained_from(spaces, batch, retained_from);
        log_bounds.retained_from = retained_from;
    }
    Ok(counts)
}
