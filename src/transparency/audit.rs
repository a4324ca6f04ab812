//! Recomputing the log from the records themselves and checking it against
//! the signed checkpoints: the core of `audit verify`. The records' leaf
//! hashes are folded into a [`Frontier`] (O(log n) memory, one pass), the root
//! at every checkpoint's size is compared with the signed root, and each leaf
//! is compared with the leaf hash the stored tree holds at its position, so an
//! altered, removed or reordered record is reported where it is. Reads no
//! store itself: callers stream the records in log order.
//!
//! After retention the records start at a boundary: [`Verification::new`]
//! then starts from the stored tree's frontier at that size. Checkpoints
//! below the boundary are checked against the stored tree only; every later
//! one is recomputed from that frontier and the remaining records, so a
//! changed frontier shows as a checkpoint mismatch.

use super::hash::{Frontier, Hash};
use super::store::HashStore;
use super::tree::{MerkleLog, TreeError};

/// A size and the root a verified checkpoint signed for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedRoot {
    pub size: u64,
    pub root: Hash,
}

/// One discrepancy, with the position (0-based leaf index) it is at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The record at `position` does not hash to the leaf the tree holds there:
    /// it was altered, or records were removed or moved from here on.
    LeafDiffers { position: u64 },
    /// No record is stored at `position` (removed, or its entry names nothing).
    RecordMissing { position: u64 },
    /// The tree has leaves from `position` on that no record was read for.
    RecordsMissing { position: u64, tree_size: u64 },
    /// Records from `position` on have no leaf in the tree (the keeper had
    /// not appended them yet: not evidence of tampering by itself).
    RecordsNotInTree { position: u64 },
    /// The records' root at `size` is not the signed one: something before
    /// `size` changed since it was signed.
    CheckpointMismatch { size: u64 },
    /// The stored tree's root at `size` is not the signed one: the tree itself
    /// was altered, so its leaf positions are not evidence.
    TreeMismatch { size: u64 },
    /// A checkpoint signs more leaves than there are records.
    CheckpointBeyondRecords { size: u64, records: u64 },
}

/// What a verification found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub records: u64,
    pub checkpoints_matched: usize,
    pub findings: Vec<Finding>,
    /// Leaf differences and missing records beyond [`MAX_LEAF_FINDINGS`], counted only.
    pub more_leaf_differences: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// How many differing leaves are listed one by one.
pub(crate) const MAX_LEAF_FINDINGS: usize = 100;

/// A verification in progress: push each record's leaf hash in log order
/// (`None` for a position with no record), then [`Verification::finish`].
pub(crate) struct Verification<'t, S: HashStore> {
    signed: Vec<SignedRoot>,
    next_checkpoint: usize,
    tree: Option<&'t MerkleLog<S>>,
    tree_size: u64,
    frontier: Frontier,
    report: Report,
    leaf_findings: usize,
}

impl<'t, S: HashStore> Verification<'t, S> {
    /// Starts at `start` (the empty frontier, or the tree's frontier at the
    /// retention boundary); checks the stored tree against every signed root.
    pub(crate) fn new(
        start: Frontier,
        signed: &[SignedRoot],
        tree: Option<&'t MerkleLog<S>>,
    ) -> Result<Self, TreeError<S::Error>> {
        let mut signed: Vec<SignedRoot> = signed.to_vec();
        signed.sort_by_key(|root| root.size);
        let mut report = Report::default();
        let tree_size = tree.map_or(0, MerkleLog::size);
        if let Some(tree) = tree {
            for checkpoint in signed.iter().filter(|checkpoint| checkpoint.size <= tree_size) {
                if tree.root_at(checkpoint.size)? != checkpoint.root {
                    report.findings.push(Finding::TreeMismatch { size: checkpoint.size });
                }
            }
        }
        // Checkpoints below the start were checked against the tree above.
        let mut next_checkpoint = signed.partition_point(|checkpoint| checkpoint.size < start.size());
        while let Some(checkpoint) = signed.get(next_checkpoint).filter(|checkpoint| checkpoint.size == start.size()) {
            if start.root() == checkpoint.root {
                report.checkpoints_matched += 1;
            } else {
                report.findings.push(Finding::CheckpointMismatch { size: checkpoint.size });
            }
            next_checkpoint += 1;
        }
        Ok(Self { signed, next_checkpoint, tree, tree_size, frontier: start, report, leaf_findings: 0 })
    }

    /// The position the next pushed leaf is at.
    pub(crate) fn position(&self) -> u64 {
        self.frontier.size()
    }

    fn leaf_finding(&mut self, finding: Finding) {
        if self.leaf_findings < MAX_LEAF_FINDINGS {
            self.report.findings.push(finding);
            self.leaf_findings += 1;
        } else {
            self.report.more_leaf_differences += 1;
        }
    }

    /// The next record's leaf hash, or `None` when its position has no record.
    pub(crate) fn push(&mut self, leaf: Option<Hash>) -> Result<(), TreeError<S::Error>> {
        self.push_with_stored(leaf, None)
    }

    /// [`Self::push`] with the stored tree's leaf at this position when the
    /// caller already read it (a reader that fetches leaves in parallel).
    pub(crate) fn push_with_stored(
        &mut self,
        leaf: Option<Hash>,
        stored: Option<Hash>,
    ) -> Result<(), TreeError<S::Error>> {
        let position = self.frontier.size();
        let leaf = match leaf {
            Some(leaf) => {
                if let Some(tree) = self.tree {
                    if position < self.tree_size {
                        let stored = match stored {
                            Some(stored) => stored,
                            None => tree.leaf_hash(position)?,
                        };
                        if stored != leaf {
                            self.leaf_finding(Finding::LeafDiffers { position });
                        }
                    } else if position == self.tree_size {
                        self.report.findings.push(Finding::RecordsNotInTree { position });
                    }
                }
                leaf
            }
            None => {
                self.leaf_finding(Finding::RecordMissing { position });
                // Nothing to hash: every later root differs anyway.
                [0; 32]
            }
        };
        self.frontier.push_leaf(leaf);
        while let Some(checkpoint) =
            self.signed.get(self.next_checkpoint).filter(|checkpoint| checkpoint.size == self.frontier.size())
        {
            if self.frontier.root() == checkpoint.root {
                self.report.checkpoints_matched += 1;
            } else {
                self.report.findings.push(Finding::CheckpointMismatch { size: checkpoint.size });
            }
            self.next_checkpoint += 1;
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Report {
        self.report.records = self.frontier.size();
        if self.tree.is_some() && self.report.records < self.tree_size {
            self.report
                .findings
                .push(Finding::RecordsMissing { position: self.report.records, tree_size: self.tree_size });
        }
        for checkpoint in &self.signed[self.next_checkpoint..] {
            self.report
                .findings
                .push(Finding::CheckpointBeyondRecords { size: checkpoint.size, records: self.report.records });
        }
        self.report
    }
}

/// Verifies the records' leaf hashes, in log order from position 0, against
/// the signed roots and (when given) the stored tree.
pub fn verify_records<S: HashStore>(
    leaves: impl IntoIterator<Item = Hash>,
    signed: &[SignedRoot],
    tree: Option<&MerkleLog<S>>,
) -> Result<Report, TreeError<S::Error>> {
    let mut verification = Verification::new(Frontier::new(), signed, tree)?;
    for leaf in leaves {
        verification.push(Some(leaf))?;
    }
    Ok(verification.finish())
}
