//! The embedded store's access log (see `crate::store::log`), in the
//! activity database:
//!
//! - `log`: position -> the kind of the access and its key in `accesses`
//!   (searches) or `audit_reads` (auditors' reads), written by the activity
//!   lane in the same batch as the access;
//! - `log_ids`: access id -> position, for proofs by access id;
//! - `log_meta`: the first retained position (written by retention, in the
//!   lane) and the tree size (written by the keeper with the tree's hashes);
//! - `log_tree`: the tree's hashes by stored position (the keeper's);
//! - `log_notes`: signed checkpoints and retention notes, oldest first.
//!
//! The log is also the accesses' order: retention removes a prefix of it.
//! A store written before the log existed has accesses without positions:
//! [`assign_positions`] gives them positions in time order (from the
//! `access_times` index those releases kept) once, on open; the index is
//! then emptied.

use std::{
    collections::VecDeque,
    ops::ControlFlow,
    sync::{Mutex, MutexGuard},
};

use fjall::PersistMode;

use super::{Spaces, decode, io, keys};
use crate::{
    model::{AccessView, AuditRead},
    nhs::NhsNumber,
    store::{
        StoreError,
        log::{AccessLog, LeafProblem, LogBounds, LogEntry, NoteKind, OutsideRecord, StoredNote, TreeStore},
    },
    transparency::{Hash, HashStore, leaf::LeafFields},
};

const RETAINED_FROM: &str = "retained_from";
const TREE_SIZE: &str = "tree_size";
/// Set once every access written before the log has a position.
const POSITIONS_ASSIGNED: &str = "positions_assigned";

/// The kind byte of a log entry: the leaf encoding's.
pub(super) const SEARCH_UNSCHEDULED: u8 = 0;
pub(super) const SEARCH_SCHEDULED: u8 = 1;
pub(super) const AUDIT_READ: u8 = 2;

/// A log entry's value: its kind and its record's key.
pub(super) fn entry_value(kind: u8, record_key: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + record_key.len());
    value.push(kind);
    value.extend_from_slice(record_key);
    value
}

fn meta_u64(spaces: &Spaces, key: &str) -> Result<u64, StoreError> {
    match spaces.log_meta.get(key).map_err(io)? {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(&bytes[..])
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt(format!("log_meta: {key}"))),
    }
}

/// The first retained position and the next position to assign, as stored.
pub(in crate::store) fn bounds(spaces: &Spaces) -> Result<LogBounds, StoreError> {
    let retained_from = meta_u64(spaces, RETAINED_FROM)?;
    let next_position = match spaces.log.last_key_value() {
        Some(entry) => keys::position_of_key(&entry.key().map_err(io)?, "log")? + 1,
        None => 0,
    };
    Ok(LogBounds { retained_from, next_position: next_position.max(retained_from) })
}

/// Writes the first retained position into a lane's batch.
pub(super) fn set_retained_from(spaces: &Spaces, batch: &mut fjall::OwnedWriteBatch, position: u64) {
    batch.insert(&spaces.log_meta, RETAINED_FROM, position.to_be_bytes());
}

/// Whether the record under `key` with this id is in the log: `None`, or
/// how it is kept outside it (no position, or a position whose entry names
/// another record or is not held).
pub(in crate::store) fn logged(spaces: &Spaces, key: &[u8], id: u128) -> Result<Option<OutsideRecord>, StoreError> {
    let Some(position) = spaces.log_ids.get(id.to_be_bytes()).map_err(io)? else {
        return Ok(Some(OutsideRecord::NoPosition { id }));
    };
    let position = keys::position_of_key(&position, "log_ids")?;
    Ok(match spaces.log.get(keys::log_position(position)).map_err(io)? {
        Some(entry) if entry.get(1..) == Some(key) => None,
        _ => Some(OutsideRecord::NotAt { id, position }),
    })
}

/// Accesses given positions per commit of [`assign_positions`].
const MIGRATION_BATCH: usize = 100_000;

/// Gives every access an earlier release stored a log position, in time
/// order, once: the log then starts with them. Each batch commits on its
/// own, so a crash part-way leaves the first accesses logged: the next start
/// resumes after them (those whose id the log already holds are skipped,
/// and nothing else writes before this ends), and only the last batch marks
/// the migration done.
pub(super) fn assign_positions(spaces: &Spaces) -> Result<(), StoreError> {
    assign_positions_in(spaces, MIGRATION_BATCH, usize::MAX)
}

/// [`assign_positions`] in batches of `batch_size`, stopping (as a crash
/// would, unmarked) after `batches_before_stopping` commits: for the test
/// of a migration resumed.
pub(super) fn assign_positions_in(
    spaces: &Spaces,
    batch_size: usize,
    batches_before_stopping: usize,
) -> Result<(), StoreError> {
    if spaces.log_meta.contains_key(POSITIONS_ASSIGNED).map_err(io)? {
        return Ok(());
    }
    let first = bounds(spaces)?.next_position;
    let mut position = first;
    let mut batch = spaces.activity_db.batch().durability(Some(PersistMode::SyncData));
    let (mut pending, mut committed) = (0usize, 0usize);
    for entry in spaces.access_times.iter() {
        let access_key = entry.value().map_err(io)?;
        let id = keys::id_of_record_key(&access_key)?;
        if spaces.log_ids.contains_key(id.to_be_bytes()).map_err(io)? {
            continue; // logged by the run that stopped part-way
        }
        let scheduled = access_key.get(8).copied().ok_or_else(|| StoreError::Corrupt("access_times".into()))?;
        let kind = if scheduled == 0 { SEARCH_UNSCHEDULED } else { SEARCH_SCHEDULED };
        batch.insert(&spaces.log, keys::log_position(position), entry_value(kind, &access_key));
        batch.insert(&spaces.log_ids, id.to_be_bytes(), position.to_be_bytes());
        position += 1;
        pending += 1;
        if pending == batch_size {
            batch.commit().map_err(io)?;
            committed += 1;
            if committed == batches_before_stopping {
                return Ok(());
            }
            batch = spaces.activity_db.batch().durability(Some(PersistMode::SyncData));
            pending = 0;
        }
    }
    batch.commit().map_err(io)?;
    if position > first {
        tracing::info!(
            accesses = position - first,
            "gave the accesses of an earlier release their access log positions"
        );
    }
    spaces.log_meta.insert(POSITIONS_ASSIGNED, []).map_err(io)?;
    spaces.activity_db.persist(PersistMode::SyncAll).map_err(io)
}

/// Leaf hashes the activity lane computed as it committed their records, for
/// the keeper to take instead of reading the records back. Bounded: past
/// [`APPENDED_LIMIT`] the oldest go, and the keeper reads what it missed.
#[derive(Default)]
pub(in crate::store) struct Appended {
    leaves: Mutex<VecDeque<(u64, Hash)>>,
}

/// About ten seconds of searches at full speed (40 bytes each).
const APPENDED_LIMIT: usize = 1 << 18;

impl Appended {
    fn leaves(&self) -> MutexGuard<'_, VecDeque<(u64, Hash)>> {
        self.leaves.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// After a commit: its positions and leaf hashes, in position order.
    pub(crate) fn push(&self, appended: &[(u64, Hash)]) {
        let Some(&(first, _)) = appended.first() else { return };
        let mut leaves = self.leaves();
        // Only a run without gaps is of use: one leaf that could not be hashed ends it.
        if leaves.back().is_some_and(|(last, _)| last + 1 != first) {
            leaves.clear();
        }
        leaves.extend(appended.iter().copied());
        let excess = leaves.len().saturating_sub(APPENDED_LIMIT);
        leaves.drain(..excess);
    }

    fn take(&self, from: u64, to: u64, out: &mut Vec<Hash>) {
        let mut leaves = self.leaves();
        while leaves.front().is_some_and(|(position, _)| *position < from) {
            leaves.pop_front();
        }
        let mut next = from;
        while next < to {
            match leaves.front() {
                Some(&(position, leaf)) if position == next => {
                    out.push(leaf);
                    leaves.pop_front();
                    next += 1;
                }
                _ => break,
            }
        }
    }
}

/// The embedded store's [`AccessLog`].
pub(super) struct EmbeddedLog {
    pub spaces: Spaces,
}

impl EmbeddedLog {
    /// The leaf hash of the record a log value names.
    fn leaf_of(&self, value: &[u8]) -> Result<Hash, LeafProblem> {
        let unreadable = |error: String| LeafProblem::Unreadable(error);
        let (&kind, record_key) = value.split_first().ok_or_else(|| unreadable("empty log entry".into()))?;
        let keyspace = if kind == AUDIT_READ { &self.spaces.audit_reads } else { &self.spaces.accesses };
        let record = keyspace.get(record_key).map_err(|error| unreadable(error.to_string()))?;
        let record = record.ok_or(LeafProblem::Missing)?;
        let hash = if kind == AUDIT_READ {
            let read: AuditRead = postcard::from_bytes(&record).map_err(|error| unreadable(error.to_string()))?;
            LeafFields::of_audit(&read).leaf_hash()
        } else {
            let view: AccessView<'_> = postcard::from_bytes(&record).map_err(|error| unreadable(error.to_string()))?;
            LeafFields::of_view(&view).leaf_hash()
        };
        hash.map_err(|error| unreadable(error.to_string()))
    }
}

impl AccessLog for EmbeddedLog {
    fn bounds(&self) -> Result<LogBounds, StoreError> {
        bounds(&self.spaces)
    }

    fn leaf_hashes(
        &self,
        from: u64,
        to: u64,
        visit: &mut dyn FnMut(u64, Result<Hash, LeafProblem>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let mut expected = from;
        for entry in self.spaces.log.range(keys::log_position(from)..keys::log_position(to)) {
            let (key, value) = entry.into_inner().map_err(io)?;
            let position = keys::position_of_key(&key, "log")?;
            while expected < position {
                if visit(expected, Err(LeafProblem::Missing)).is_break() {
                    return Ok(());
                }
                expected += 1;
            }
            if visit(position, self.leaf_of(&value)).is_break() {
                return Ok(());
            }
            expected = position + 1;
        }
        let end = to.min(bounds(&self.spaces)?.next_position);
        while expected < end {
            if visit(expected, Err(LeafProblem::Missing)).is_break() {
                return Ok(());
            }
            expected += 1;
        }
        Ok(())
    }

    fn take_appended(&self, from: u64, to: u64, leaves: &mut Vec<Hash>) {
        self.spaces.appended.take(from, to, leaves);
    }

    fn entry_at(&self, position: u64) -> Result<Option<LogEntry>, StoreError> {
        let Some(value) = self.spaces.log.get(keys::log_position(position)).map_err(io)? else { return Ok(None) };
        let Some((&kind, record_key)) = value.split_first() else {
            return Err(StoreError::Corrupt("log: empty entry".into()));
        };
        if kind == AUDIT_READ {
            let record = self.spaces.audit_reads.get(record_key).map_err(io)?;
            record.map(|bytes| decode(&bytes, "audit_reads").map(LogEntry::Audit)).transpose()
        } else {
            let record = self.spaces.accesses.get(record_key).map_err(io)?;
            record.map(|bytes| decode(&bytes, "accesses").map(LogEntry::Search)).transpose()
        }
    }

    fn position_of(&self, id: u128) -> Result<Option<u64>, StoreError> {
        match self.spaces.log_ids.get(id.to_be_bytes()).map_err(io)? {
            None => Ok(None),
            Some(bytes) => keys::position_of_key(&bytes, "log_ids").map(Some),
        }
    }

    fn searches_of(&self, nhs_number: NhsNumber) -> Result<Vec<(u64, crate::model::AccessEvent)>, StoreError> {
        let mut searches = Vec::new();
        for entry in self.spaces.accesses.prefix(keys::person_prefix(nhs_number)) {
            let access: crate::model::AccessEvent = decode(&entry.value().map_err(io)?, "accesses")?;
            if let Some(position) = self.position_of(access.id)? {
                searches.push((position, access));
            }
        }
        searches.sort_unstable_by_key(|(position, _)| *position);
        Ok(searches)
    }

    fn audit_reads_of(&self, nhs_number: NhsNumber) -> Result<Vec<(u64, AuditRead)>, StoreError> {
        let mut reads = Vec::new();
        for entry in self.spaces.audit_reads.prefix(keys::person_prefix(nhs_number)) {
            let read: AuditRead = decode(&entry.value().map_err(io)?, "audit_reads")?;
            let position = self
                .position_of(read.id)?
                .ok_or_else(|| StoreError::Corrupt("audit_reads: a read without a log position".into()))?;
            reads.push((position, read));
        }
        Ok(reads)
    }

    fn tree(&self) -> TreeStore {
        Box::new(EmbeddedTree { spaces: self.spaces.clone() })
    }

    fn records_outside(&self, limit: usize) -> Result<Vec<OutsideRecord>, StoreError> {
        let mut outside = Vec::new();
        for (keyspace, what) in [(&self.spaces.accesses, "accesses"), (&self.spaces.audit_reads, "audit_reads")] {
            for entry in keyspace.iter() {
                let key = entry.key().map_err(io)?;
                let id =
                    keys::id_of_record_key(&key).map_err(|error| StoreError::Corrupt(format!("{what}: {error}")))?;
                if let Some(record) = logged(&self.spaces, &key, id)? {
                    outside.push(record);
                    if outside.len() >= limit {
                        return Ok(outside);
                    }
                }
            }
        }
        Ok(outside)
    }

    fn add_note(&self, kind: NoteKind, text: &str) -> Result<(), StoreError> {
        // From reading the last number to committing the next: one note at a time.
        let _numbering = self.spaces.notes_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let sequence = match self.spaces.log_notes.last_key_value() {
            Some(entry) => keys::position_of_key(&entry.key().map_err(io)?, "log_notes")? + 1,
            None => 0,
        };
        let mut value = Vec::with_capacity(1 + text.len());
        value.push(kind.code());
        value.extend_from_slice(text.as_bytes());
        let mut batch = self.spaces.activity_db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.spaces.log_notes, keys::log_position(sequence), value);
        batch.commit().map_err(io)
    }

    fn notes(&self) -> Result<Vec<StoredNote>, StoreError> {
        let mut notes = Vec::new();
        for entry in self.spaces.log_notes.iter() {
            let (key, value) = entry.into_inner().map_err(io)?;
            let sequence = keys::position_of_key(&key, "log_notes")?;
            let corrupt = || StoreError::Corrupt("log_notes: malformed note".into());
            let (&kind, text) = value.split_first().ok_or_else(corrupt)?;
            let kind = NoteKind::from_code(kind).ok_or_else(corrupt)?;
            let text = std::str::from_utf8(text).map_err(|_| corrupt())?.to_owned();
            notes.push(StoredNote { sequence, kind, text });
        }
        Ok(notes)
    }

    fn remove_notes(&self, sequences: &[u64]) -> Result<u64, StoreError> {
        // The numbering lock: the last note, which numbers the next, is never among these.
        let _numbering = self.spaces.notes_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut batch = self.spaces.activity_db.batch().durability(Some(PersistMode::SyncData));
        let mut removed = 0;
        for sequence in sequences {
            let key = keys::log_position(*sequence);
            if self.spaces.log_notes.contains_key(key).map_err(io)? {
                batch.remove(&self.spaces.log_notes, key);
                removed += 1;
            }
        }
        batch.commit().map_err(io)?;
        Ok(removed)
    }
}

/// The tree's hashes in `log_tree`, its size in `log_meta`, written together.
struct EmbeddedTree {
    spaces: Spaces,
}

impl HashStore for EmbeddedTree {
    type Error = StoreError;

    fn tree_size(&self) -> Result<u64, StoreError> {
        meta_u64(&self.spaces, TREE_SIZE)
    }

    fn hash_at(&self, position: u64) -> Result<Hash, StoreError> {
        let bytes = self
            .spaces
            .log_tree
            .get(keys::log_position(position))
            .map_err(io)?
            .ok_or_else(|| StoreError::Corrupt(format!("log_tree: no hash at {position}")))?;
        <[u8; 32]>::try_from(&bytes[..]).map_err(|_| StoreError::Corrupt(format!("log_tree: hash {position}")))
    }

    fn append(&mut self, hashes: &[Hash], tree_size: u64) -> Result<(), StoreError> {
        let first = match self.spaces.log_tree.last_key_value() {
            Some(entry) => keys::position_of_key(&entry.key().map_err(io)?, "log_tree")? + 1,
            None => 0,
        };
        let mut batch = self.spaces.activity_db.batch().durability(Some(PersistMode::SyncData));
        for (offset, hash) in hashes.iter().enumerate() {
            batch.insert(&self.spaces.log_tree, keys::log_position(first + offset as u64), hash.as_slice());
        }
        batch.insert(&self.spaces.log_meta, TREE_SIZE, tree_size.to_be_bytes());
        batch.commit().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(from: u64, to: u64) -> Vec<(u64, Hash)> {
        (from..to).map(|position| (position, [position as u8; 32])).collect()
    }

    fn take(appended: &Appended, from: u64, to: u64) -> Vec<u8> {
        let mut out = Vec::new();
        appended.take(from, to, &mut out);
        out.iter().map(|leaf| leaf[0]).collect()
    }

    #[test]
    fn the_keeper_takes_a_gapless_run_from_its_tree_size_and_reads_the_rest() {
        let appended = Appended::default();
        appended.push(&run(0, 3));
        appended.push(&run(3, 5));
        // Positions the keeper already read from the store are dropped; it takes up to `to`.
        assert_eq!(take(&appended, 1, 3), [1, 2]);
        assert_eq!(take(&appended, 3, 10), [3, 4]);
        assert!(take(&appended, 5, 10).is_empty());
        // A commit whose leaf could not be hashed leaves a gap: what came before is of no use.
        appended.push(&run(6, 8));
        appended.push(&run(9, 10));
        assert!(take(&appended, 5, 10).is_empty(), "5 is not held: the keeper reads from the store");
        assert_eq!(take(&appended, 9, 10), [9]);
    }

    #[test]
    fn only_the_newest_leaves_are_kept_past_the_limit() {
        let appended = Appended::default();
        let total = APPENDED_LIMIT as u64 + 10;
        appended.push(&run(0, total));
        assert!(take(&appended, 0, total).is_empty(), "the oldest went");
        assert_eq!(take(&appended, 10, 12), [10, 11]);
        assert_eq!(appended.leaves().len(), APPENDED_LIMIT - 2);
    }
}
