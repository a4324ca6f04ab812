//! Recomputing the log from the records themselves and checking it against
//! the signed checkpoints: the core of `audit verify`. The records' leaf
//! hashes are folded into a [`Frontier`] (O(log n) memory, one pass), the root
//! at every checkpoint's size is compared with the signed root, and each leaf
//! is compared with the leaf hash the stored tree holds at its position, so an
//! altered, removed or reordered record is reported where it is. Reads no
//! store itself: callers stream the records in log order.

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
    /// The tree has leaves from `position` on that no record was read for.
    RecordsMissing { position: u64, tree_size: u64 },
    /// Records from `position` on have no leaf in the tree.
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
    /// Leaf differences beyond [`MAX_LEAF_FINDINGS`], counted only.
    pub more_leaf_differences: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// How many differing leaves are listed one by one.
pub const MAX_LEAF_FINDINGS: usize = 100;

/// Verifies the records' leaf hashes, in log order, against the signed roots
/// and (when given) the stored tree.
pub fn verify_records<S: HashStore>(
    leaves: impl IntoIterator<Item = Hash>,
    signed: &[SignedRoot],
    tree: Option<&MerkleLog<S>>,
) -> Result<Report, TreeError<S::Error>> {
    let mut signed: Vec<SignedRoot> = signed.to_vec();
    signed.sort_by_key(|root| root.size);
    let mut report = Report::default();
    let mut leaf_findings = 0usize;
    let tree_size = tree.map_or(0, MerkleLog::size);
    if let Some(tree) = tree {
        for checkpoint in signed.iter().filter(|checkpoint| checkpoint.size <= tree_size) {
            if tree.root_at(checkpoint.size)? != checkpoint.root {
                report.findings.push(Finding::TreeMismatch { size: checkpoint.size });
            }
        }
    }
    let mut frontier = Frontier::new();
    let mut next_checkpoint = signed.iter().peekable();
    while next_checkpoint.next_if(|checkpoint| checkpoint.size == 0).is_some() {
        report.checkpoints_matched += 1;
    }
    for leaf in leaves {
        let position = frontier.size();
        if let Some(tree) = tree {
            if position < tree_size {
                if tree.leaf_hash(position)? != leaf {
                    if leaf_findings < MAX_LEAF_FINDINGS {
                        report.findings.push(Finding::LeafDiffers { position });
                        leaf_findings += 1;
                    } else {
                        report.more_leaf_differences += 1;
                    }
                }
            } else if position == tree_size {
                report.findings.push(Finding::RecordsNotInTree { position });
            }
        }
        frontier.push_leaf(leaf);
        while let Some(checkpoint) = next_checkpoint.next_if(|checkpoint| checkpoint.size == frontier.size()) {
            if frontier.root() == checkpoint.root {
                report.checkpoints_matched += 1;
            } else {
                report.findings.push(Finding::CheckpointMismatch { size: checkpoint.size });
            }
        }
    }
    report.records = frontier.size();
    if tree.is_some() && report.records < tree_size {
        report.findings.push(Finding::RecordsMissing { position: report.records, tree_size });
    }
    for checkpoint in next_checkpoint {
        report.findings.push(Finding::CheckpointBeyondRecords { size: checkpoint.size, records: report.records });
    }
    Ok(report)
}
