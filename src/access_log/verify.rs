//! `audit verify`: recomputes the tree from a store's records and checks it
//! against every signed checkpoint and retention note the store holds, with
//! nothing but the verifier key trusted. One pass over the records in
//! position order, leaf hashes computed from the stored bytes in place (no
//! per-record allocation), read by a few threads a chunk of positions each
//! and folded in order: memory is those chunks and O(log n) for the tree.

use std::ops::ControlFlow;

use super::notes::RetentionNote;
use crate::{
    store::{
        StoreError,
        log::{AccessLog, LeafProblem, NoteKind, OutsideRecord},
    },
    transparency::{
        Checkpoint, HashStore, MerkleLog, VerifierKey,
        audit::{Finding, SignedRoot, Verification},
        hash::Frontier,
        tree::{TreeError, stored_hash_position},
    },
};

/// A problem `audit verify` reports besides the tree's own findings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFinding {
    /// A finding of the recomputation (position or size inside).
    Tree(Finding),
    /// A record at `position` is there but cannot be read.
    Unreadable { position: u64, error: String },
    /// Stored note number `index` does not verify with the key.
    NoteUnverified { index: usize, error: String },
    /// Records below `retained_from` are gone, but the latest signed
    /// retention note only removed those below `signed_boundary`.
    PrefixMissing { signed_boundary: u64, retained_from: u64 },
    /// A record kept beside the log, not in it: no checkpoint vouches for it.
    Outside(OutsideRecord),
    /// The store does not extend the trusted (witnessed) checkpoint of
    /// `size`: accesses it covered were removed or rewritten, notes and
    /// tree with them.
    WitnessedNotExtended { size: u64, reason: String },
    /// Positions `from..to` are in the stored tree but no stored checkpoint
    /// covers them: the keeper stores each checkpoint as it signs it, right
    /// after growing the tree, so their notes were deleted (or the relay died
    /// between the two writes).
    Unsigned { from: u64, to: u64 },
    /// The log was rewritten with its tree (no record differs from its leaf):
    /// the first position that differs from what was signed is in
    /// `from..to`, between the last checkpoint that still matches (of size
    /// `from`) and the first that does not (of size `to`). With every
    /// checkpoint stored, that is one checkpoint interval's accesses at most.
    FirstDifference { from: u64, to: u64 },
}

impl std::fmt::Display for LogFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tree(Finding::LeafDiffers { position }) => {
                write!(
                    f,
                    "position {position}: the record differs from the leaf logged there (altered, or records moved)"
                )
            }
            Self::Tree(Finding::RecordMissing { position }) => write!(f, "position {position}: the record is missing"),
            Self::Tree(Finding::RecordsMissing { position, tree_size }) => {
                write!(f, "positions {position} to {}: records missing at the end of the log", tree_size - 1)
            }
            Self::Tree(Finding::RecordsNotInTree { position }) => {
                write!(f, "position {position} on: records not yet in the tree (the relay stopped before logging them)")
            }
            Self::Tree(Finding::CheckpointMismatch { size }) => {
                write!(f, "checkpoint of size {size}: the records do not give its signed root")
            }
            Self::Tree(Finding::TreeMismatch { size }) => {
                write!(f, "checkpoint of size {size}: the stored tree does not give its signed root")
            }
            Self::Tree(Finding::CheckpointBeyondRecords { size, records }) => {
                write!(f, "checkpoint of size {size}: only {records} positions are held")
            }
            Self::Unreadable { position, error } => {
                write!(f, "position {position}: the record cannot be read: {error}")
            }
            Self::NoteUnverified { index, error } => write!(f, "signed note {index}: {error}"),
            Self::Outside(outside) => write!(
                f,
                "access {}: kept outside the log ({}), so no checkpoint covers it",
                uuid::Uuid::from_u128(outside.id()),
                outside.describe()
            ),
            Self::WitnessedNotExtended { size, reason } => {
                write!(f, "the witnessed checkpoint of size {size} is not extended by this store: {reason}")
            }
            Self::Unsigned { from, to } => write!(
                f,
                "positions {from} to {}: in the tree but under no stored signed checkpoint (its notes were deleted, \
                 or the relay died between growing the tree and storing the checkpoint)",
                to - 1
            ),
            Self::FirstDifference { from, to } if to - from == 1 => {
                write!(f, "position {from}: the first that differs from what was signed")
            }
            Self::FirstDifference { from, to } => write!(
                f,
                "positions {from} to {}: the first that differs from what was signed is among these (the checkpoint \
                 of size {from} matches, the one of size {to} does not)",
                to - 1
            ),
            Self::PrefixMissing { signed_boundary, retained_from } => write!(
                f,
                "positions {signed_boundary} to {}: removed without a signed retention note",
                retained_from - 1
            ),
        }
    }
}

/// What `audit verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogReport {
    /// The first position held and the log's length.
    pub retained_from: u64,
    pub next_position: u64,
    pub tree_size: u64,
    pub checkpoints: usize,
    pub checkpoints_matched: usize,
    pub retention_notes: usize,
    pub findings: Vec<LogFinding>,
    pub more_findings: u64,
    /// The trusted checkpoint's size, when one was given (it is not counted in `checkpoints`).
    pub trusted_size: Option<u64>,
}

impl LogReport {
    /// No evidence of tampering: records not yet in the tree (a relay that
    /// stopped before its keeper caught up) are reported but are not a failure.
    pub fn is_clean(&self) -> bool {
        self.findings.iter().all(|finding| matches!(finding, LogFinding::Tree(Finding::RecordsNotInTree { .. })))
    }
}

/// Records outside the log named in one report at most.
const OUTSIDE_SHOWN: usize = 100;

/// Positions one thread reads at a time.
const CHUNK: u64 = 32_768;

/// One position as read: the record's leaf hash (or why not) and the tree's leaf there.
type ReadLeaf = (u64, Result<crate::transparency::Hash, LeafProblem>, Option<crate::transparency::Hash>);

/// The records' leaf hashes of positions `start..end`, with the stored
/// tree's leaf at each position below `tree_size`.
fn read_chunk(log: &dyn AccessLog, start: u64, end: u64, tree_size: u64) -> Result<Vec<ReadLeaf>, StoreError> {
    let mut read: Vec<ReadLeaf> = Vec::with_capacity((end - start) as usize);
    log.leaf_hashes(start, end, &mut |position, leaf| {
        read.push((position, leaf, None));
        ControlFlow::Continue(())
    })?;
    let in_tree: Vec<u64> = read
        .iter()
        .filter(|(position, _, _)| *position < tree_size)
        .map(|(position, _, _)| stored_hash_position(0, *position))
        .collect();
    let stored = log.tree().hashes_at(&in_tree)?;
    for ((_, _, slot), hash) in read.iter_mut().zip(stored) {
        *slot = Some(hash);
    }
    Ok(read)
}

fn tree_error(error: TreeError<StoreError>) -> StoreError {
    match error {
        TreeError::Store(error) => error,
        other => StoreError::Corrupt(format!("access log tree: {other}")),
    }
}

/// Verifies `log` with `verifier`. Blocks.
pub fn verify_log(log: &dyn AccessLog, verifier: &VerifierKey) -> Result<LogReport, StoreError> {
    verify_in_chunks(log, verifier, None, CHUNK)
}

/// [`verify_log`], and the store must extend `trusted`, a checkpoint the
/// caller holds from outside the store (one a quorum of witnesses cosigned,
/// its signatures already checked): the records and the tree must give its
/// root at its size. Blocks.
pub fn verify_log_against(
    log: &dyn AccessLog,
    verifier: &VerifierKey,
    trusted: &Checkpoint,
) -> Result<LogReport, StoreError> {
    verify_in_chunks(log, verifier, Some(trusted), CHUNK)
}

/// [`verify_log`] reading `chunk` positions a thread.
pub(super) fn verify_in_chunks(
    log: &dyn AccessLog,
    verifier: &VerifierKey,
    trusted: Option<&Checkpoint>,
    chunk: u64,
) -> Result<LogReport, StoreError> {
    let mut report = LogReport { trusted_size: trusted.map(|trusted| trusted.size), ..LogReport::default() };
    let mut signed = Vec::new();
    let mut signed_boundary = 0u64;
    for note in log.notes()? {
        let index = note.sequence as usize;
        match note.kind {
            NoteKind::Checkpoint => match Checkpoint::verify(&note.text, verifier) {
                Ok(checkpoint) => signed.push(SignedRoot { size: checkpoint.size, root: checkpoint.root }),
                Err(error) => report.findings.push(LogFinding::NoteUnverified { index, error: error.to_string() }),
            },
            NoteKind::Retention => match RetentionNote::verify(&note.text, verifier) {
                Ok(retention) => {
                    signed_boundary = signed_boundary.max(retention.boundary);
                    report.retention_notes += 1;
                }
                Err(error) => report.findings.push(LogFinding::NoteUnverified { index, error: error.to_string() }),
            },
        }
    }
    report.checkpoints = signed.len();
    if let Some(trusted) = trusted {
        signed.push(SignedRoot { size: trusted.size, root: trusted.root });
    }
    let bounds = log.bounds()?;
    report.retained_from = bounds.retained_from;
    report.next_position = bounds.next_position;
    if bounds.retained_from > signed_boundary {
        report.findings.push(LogFinding::PrefixMissing { signed_boundary, retained_from: bounds.retained_from });
    }
    let tree = MerkleLog::open(log.tree()).map_err(tree_error)?;
    report.tree_size = tree.size();
    let start = if bounds.retained_from <= tree.size() {
        tree.frontier_at(bounds.retained_from).map_err(tree_error)?
    } else {
        // Records removed beyond the tree: nothing to start from but nothing.
        report
            .findings
            .push(LogFinding::Tree(Finding::RecordsMissing { position: 0, tree_size: bounds.retained_from }));
        Frontier::new()
    };
    let mut verification = Verification::new(start, &signed, Some(&tree)).map_err(tree_error)?;
    let mut unreadable = Vec::new();
    // Records and the tree's leaves are read in parallel, a chunk of positions
    // per thread; the chunks are then folded in order. Memory: a chunk a thread.
    let threads = std::thread::available_parallelism().map_or(2, |count| count.get()).clamp(1, 8) as u64;
    let tree_size = tree.size();
    let mut from = verification.position();
    while from < bounds.next_position {
        let chunks: Vec<(u64, u64)> = (0..threads)
            .map(|index| from + index * chunk)
            .take_while(|start| *start < bounds.next_position)
            .map(|start| (start, (start + chunk).min(bounds.next_position)))
            .collect();
        let read = std::thread::scope(|scope| {
            let workers: Vec<_> = chunks
                .iter()
                .map(|&(start, end)| scope.spawn(move || read_chunk(log, start, end, tree_size)))
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().map_err(|_| StoreError::Io("a verifying thread panicked".into()))?)
                .collect::<Result<Vec<_>, StoreError>>()
        })?;
        for chunk in read {
            for (position, leaf, stored) in chunk {
                let leaf = match leaf {
                    Ok(hash) => Some(hash),
                    Err(LeafProblem::Missing) => None,
                    Err(LeafProblem::Unreadable(error)) => {
                        if unreadable.len() < 100 {
                            unreadable.push(LogFinding::Unreadable { position, error });
                        }
                        None
                    }
                };
                verification.push_with_stored(leaf, stored).map_err(tree_error)?;
            }
        }
        from = chunks.last().map_or(bounds.next_position, |(_, end)| *end);
    }
    let tree_report = verification.finish();
    report.checkpoints_matched = tree_report.checkpoints_matched;
    if let Some(trusted) = trusted {
        // The trusted root is among the signed ones: what was found at its size is about it.
        let about_trusted = tree_report.findings.iter().filter_map(|finding| match *finding {
            Finding::CheckpointMismatch { size } if size == trusted.size => {
                Some("the records no longer give its root (accesses it covers were removed or rewritten)".to_owned())
            }
            Finding::TreeMismatch { size } if size == trusted.size => {
                Some("the stored tree no longer gives its root (the tree was rewritten)".to_owned())
            }
            Finding::CheckpointBeyondRecords { size, records } if size == trusted.size => Some(format!(
                "only {records} positions are held (the newest accesses were removed, notes and leaves with them)"
            )),
            _ => None,
        });
        let reasons: Vec<String> = about_trusted.collect();
        if reasons.is_empty() {
            report.checkpoints_matched = report.checkpoints_matched.saturating_sub(1);
        } else {
            report.findings.push(LogFinding::WitnessedNotExtended { size: trusted.size, reason: reasons.join("; ") });
        }
    }
    report.more_findings = tree_report.more_leaf_differences;
    report.findings.extend(unreadable);
    // Findings at the trusted checkpoint's size are reported once, as about it (above).
    let trusted_size = trusted
        .filter(|_| report.findings.iter().any(|finding| matches!(finding, LogFinding::WitnessedNotExtended { .. })))
        .map(|trusted| trusted.size);
    report.findings.extend(
        tree_report
            .findings
            .into_iter()
            .filter(|finding| {
                let size = match finding {
                    Finding::CheckpointMismatch { size }
                    | Finding::TreeMismatch { size }
                    | Finding::CheckpointBeyondRecords { size, .. } => Some(*size),
                    _ => None,
                };
                trusted_size.is_none() || size != trusted_size
            })
            .map(LogFinding::Tree),
    );
    if let Some(finding) = first_difference(&signed, &report.findings) {
        report.findings.push(finding);
    }
    let latest_stored = signed.iter().take(report.checkpoints).map(|root| root.size).max().unwrap_or(0);
    if let Some(finding) = unsigned_tail(log, verifier, latest_stored, tree_size)? {
        report.findings.push(finding);
    }
    report.findings.extend(log.records_outside(OUTSIDE_SHOWN)?.into_iter().map(LogFinding::Outside));
    Ok(report)
}

/// Where a log rewritten with its tree first differs from what was signed,
/// when no record-level finding names it already: between the largest
/// checkpoint that still matches and the smallest that does not.
fn first_difference(signed: &[SignedRoot], findings: &[LogFinding]) -> Option<LogFinding> {
    let mismatched: Vec<u64> = findings
        .iter()
        .filter_map(|finding| match finding {
            LogFinding::Tree(Finding::CheckpointMismatch { size } | Finding::TreeMismatch { size })
            | LogFinding::WitnessedNotExtended { size, .. } => Some(*size),
            _ => None,
        })
        .collect();
    let to = mismatched.iter().copied().min()?;
    let named = findings.iter().any(|finding| match finding {
        LogFinding::Tree(Finding::LeafDiffers { position } | Finding::RecordMissing { position }) => *position < to,
        _ => false,
    });
    if named {
        return None;
    }
    let from =
        signed.iter().map(|root| root.size).filter(|size| *size < to && !mismatched.contains(size)).max().unwrap_or(0);
    Some(LogFinding::FirstDifference { from, to })
}

/// The tree's positions from `latest_stored` (the largest stored checkpoint
/// read at the start) to `tree_size` that no stored checkpoint covers, if
/// any. A running keeper stores its checkpoint a moment after growing the
/// tree, so the notes are read again before calling that a finding.
fn unsigned_tail(
    log: &dyn AccessLog,
    verifier: &VerifierKey,
    latest_stored: u64,
    tree_size: u64,
) -> Result<Option<LogFinding>, StoreError> {
    if tree_size <= latest_stored {
        return Ok(None);
    }
    let latest_now = log
        .notes()?
        .iter()
        .filter(|note| note.kind == NoteKind::Checkpoint)
        .filter_map(|note| Checkpoint::verify(&note.text, verifier).ok())
        .map(|checkpoint| checkpoint.size)
        .max()
        .unwrap_or(0);
    Ok((tree_size > latest_now).then_some(LogFinding::Unsigned { from: latest_now, to: tree_size }))
}
