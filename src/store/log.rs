//! The access log as a store keeps it: every stored access (a
//! search, either kind, or an auditor's read) has a log position, assigned
//! gaplessly in commit order by the store's single writer in the same atomic
//! write as the access. The leaves of the Merkle tree are the accesses in
//! position order (their encoding is `transparency::leaf`); the tree's hashes
//! and the signed notes (checkpoints, retention) are derived data the log
//! keeper (`crate::access_log`) writes after the commit, never on a search's
//! commit path.
//!
//! Retention removes a prefix of the log: the oldest positions, while they
//! are past their keeping period, never past the tree the keeper has built
//! (so every removed record's leaf is in the tree). The first position still
//! held is recorded with the removal.
//!
//! What this module must not do: hash a tree, sign, or read a clock.

use std::ops::ControlFlow;

use crate::{
    model::{AccessEvent, AuditRead},
    nhs::NhsNumber,
    store::StoreError,
    transparency::{Hash, HashStore, leaf::LeafFields},
};

/// One entry of the log, as it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry {
    Search(AccessEvent),
    Audit(AuditRead),
}

impl LogEntry {
    pub(crate) fn leaf_fields(&self) -> LeafFields<'_> {
        match self {
            Self::Search(event) => LeafFields::of_search(event),
            Self::Audit(read) => LeafFields::of_audit(read),
        }
    }

    pub fn id(&self) -> u128 {
        match self {
            Self::Search(event) => event.id,
            Self::Audit(read) => read.id,
        }
    }

    pub fn nhs_number(&self) -> NhsNumber {
        match self {
            Self::Search(event) => event.nhs_number,
            Self::Audit(read) => read.nhs_number,
        }
    }

    /// Its RFC 6962 leaf hash.
    pub(crate) fn leaf_hash(&self) -> Result<Hash, StoreError> {
        self.leaf_fields().leaf_hash().map_err(|error| StoreError::Corrupt(format!("access log: {error}")))
    }
}

/// Which positions a log holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogBounds {
    /// The first position retention has not removed.
    pub retained_from: u64,
    /// The position the next access will take: the log's length.
    pub next_position: u64,
}

/// Why no leaf hash could be read at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafProblem {
    /// No record is stored at the position (or the record it names is gone).
    Missing,
    /// A record is there but does not decode.
    Unreadable(String),
}

/// What a signed note the keeper stores says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// A signed checkpoint (`transparency::checkpoint`).
    Checkpoint,
    /// A signed retention note: positions below a boundary were removed under a rule.
    Retention,
}

impl NoteKind {
    pub fn code(self) -> u8 {
        match self {
            Self::Checkpoint => 1,
            Self::Retention => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Checkpoint),
            2 => Some(Self::Retention),
            _ => None,
        }
    }
}

/// A record kept beside the log rather than in it: never verified against a
/// checkpoint, and so left out of what auditors are shown as logged. `audit
/// verify` reports each one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutsideRecord {
    /// An access or auditor's read with no log position.
    NoPosition { id: u128 },
    /// A record filed at a position the log does not hold for it: beyond
    /// the log's end, below what it retains, or where another record is.
    NotAt { id: u128, position: u64 },
}

impl OutsideRecord {
    /// What is wrong, without the record's id (as `store check` words it).
    pub fn describe(&self) -> String {
        match self {
            Self::NoPosition { .. } => "a record has no log position".into(),
            Self::NotAt { position, .. } => format!("log position {position} does not hold this record"),
        }
    }

    /// The record's id.
    pub fn id(&self) -> u128 {
        match self {
            Self::NoPosition { id } | Self::NotAt { id, .. } => *id,
        }
    }
}

/// A signed note as stored, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNote {
    /// Its number in the store: increasing in the order notes were stored.
    pub sequence: u64,
    pub kind: NoteKind,
    pub text: String,
}

/// What a shared store's tree answers (as `StoreError::Io`) when another
/// node's keeper appended first: the keeper reopens the tree and continues.
pub(crate) const TREE_MOVED: &str = "another node appended to the access log's tree";

/// The tree's hashes as a store keeps them.
pub(crate) type TreeStore = Box<dyn HashStore<Error = StoreError> + Send + Sync>;

/// The access log of a store this process alone writes. Every method
/// blocks on storage: callers run them on a blocking thread.
pub trait AccessLog: Send + Sync + 'static {
    fn bounds(&self) -> Result<LogBounds, StoreError>;

    /// Visits the leaf hash of every position from `from` to `to` (exclusive),
    /// in order, until `visit` breaks; positions past the log are not visited.
    fn leaf_hashes(
        &self,
        from: u64,
        to: u64,
        visit: &mut dyn FnMut(u64, Result<Hash, LeafProblem>) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;

    /// Appends to `leaves` the leaf hashes from position `from` on (below
    /// `to`) that this process computed as it stored the records and still
    /// holds in memory, stopping at the first it does not hold: the keeper
    /// reads the rest with [`AccessLog::leaf_hashes`]. `audit verify` never
    /// uses these: it recomputes every leaf from the records. None by default.
    fn take_appended(&self, from: u64, to: u64, leaves: &mut Vec<Hash>) {
        let _ = (from, to, leaves);
    }

    /// The entry at `position`, if it is still held.
    fn entry_at(&self, position: u64) -> Result<Option<LogEntry>, StoreError>;

    /// The position of the access (or auditor's read) with this id, if it is still held.
    fn position_of(&self, id: u128) -> Result<Option<u64>, StoreError>;

    /// The positions of those of `ids` (accesses or auditors' reads) still
    /// held: one read where a store can (an auditor's page checks thousands).
    fn positions_of(&self, ids: &[u128]) -> Result<std::collections::HashMap<u128, u64>, StoreError> {
        let mut found = std::collections::HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(position) = self.position_of(*id)? {
                found.insert(*id, position);
            }
        }
        Ok(found)
    }

    /// Every retained search of one person that has a log position, with
    /// it, in log order: one read where a store can (a subject access report
    /// lists thousands). A search stored but not yet given a position is left out.
    fn searches_of(&self, nhs_number: NhsNumber) -> Result<Vec<(u64, AccessEvent)>, StoreError>;

    /// Every retained auditor's read of one person, oldest first, with its position.
    fn audit_reads_of(&self, nhs_number: NhsNumber) -> Result<Vec<(u64, AuditRead)>, StoreError>;

    /// The tree's hash store.
    fn tree(&self) -> TreeStore;

    /// Stores a signed note durably, after every note stored before it.
    fn add_note(&self, kind: NoteKind, text: &str) -> Result<(), StoreError>;

    /// Every stored note, oldest first.
    fn notes(&self) -> Result<Vec<StoredNote>, StoreError>;

    /// Removes the notes numbered `sequences` (the keeper thins old
    /// checkpoints, see `crate::access_log::notes::thinned`); returns how many went.
    fn remove_notes(&self, sequences: &[u64]) -> Result<u64, StoreError>;

    /// Up to `limit` records kept outside the log (see [`OutsideRecord`]).
    fn records_outside(&self, limit: usize) -> Result<Vec<OutsideRecord>, StoreError>;
}
