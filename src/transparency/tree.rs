//! The append-only Merkle tree over a [`HashStore`]: appending leaves, the
//! root of any prefix of the log, inclusion proofs (RFC 6962 section 2.1.1,
//! RFC 9162 section 2.1.3.1) and consistency proofs (RFC 6962 section 2.1.2,
//! RFC 9162 section 2.1.4.1). Verification lives in [`super::proof`].
//!
//! # Stored layout
//! Every perfect subtree (level l, index i: the 2^l leaves from i * 2^l) is
//! hashed once, when its last leaf arrives, and kept; nothing else is. Appending
//! leaf n writes its leaf hash and then the hash of each subtree it completes,
//! lowest first, at the end of one sequence, so positions only grow:
//! - a tree of n leaves holds `stored_hash_count(n)` = 2n - popcount(n) hashes;
//! - subtree (l, i) is at `stored_hash_count(last) + l`, `last` = (i + 1) * 2^l - 1.
//!
//! Appending reads nothing (the [`Frontier`] of the current size is kept in
//! memory) and writes 1 + (trailing ones of n) hashes. The hash of any subtree
//! the RFC's recursion visits is a fold of at most log2(n) stored hashes, and a
//! proof needs at most one such fold besides perfect-subtree reads, so a root,
//! an inclusion proof or a consistency proof needs O(log n) hashes. Which ones
//! follows from the sizes alone ([`ProofPlan`]), so they are read together,
//! in one [`HashStore::hashes_at`], for one proof or many.

use super::hash::{Frontier, Hash, fold_peaks, split_point};
use super::store::HashStore;

/// Why a tree operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError<E: std::error::Error + 'static> {
    #[error("leaf {index} is not in a tree of {size} leaves")]
    LeafOutOfRange { index: u64, size: u64 },
    #[error("tree size {size} is beyond the log's {tree_size} leaves")]
    SizeOutOfRange { size: u64, tree_size: u64 },
    #[error("a consistency proof from size {old} to size {new}: the first must not be larger")]
    SizesReversed { old: u64, new: u64 },
    #[error("hash store: {0}")]
    Store(#[source] E),
}

/// How many hashes the layout keeps for a tree of `size` leaves.
pub(crate) fn stored_hash_count(size: u64) -> u64 {
    2 * size - u64::from(size.count_ones())
}

/// Where the layout keeps the perfect subtree at `level` and `index`.
pub(crate) fn stored_hash_position(level: u32, index: u64) -> u64 {
    let last_leaf = ((index + 1) << level) - 1;
    stored_hash_count(last_leaf) + u64::from(level)
}

/// An append-only RFC 6962 Merkle tree whose nodes live in `S`.
#[derive(Debug)]
pub struct MerkleLog<S> {
    store: S,
    frontier: Frontier,
}

type Result<T, S> = std::result::Result<T, TreeError<<S as HashStore>::Error>>;

impl<S: HashStore> MerkleLog<S> {
    /// Opens the tree `store` holds, reading the popcount(size) hashes of its frontier.
    pub fn open(store: S) -> Result<Self, S> {
        let size = store.tree_size().map_err(TreeError::Store)?;
        let peaks = store.hashes_at(&subtree_positions(0, size)).map_err(TreeError::Store)?;
        #[allow(
            clippy::expect_used,
            reason = "a HashStore returns one hash per position asked (its contract); a store that does not is a bug, not a state to answer"
        )]
        let frontier = Frontier::from_parts(size, peaks).expect("one peak per set bit of the size");
        Ok(Self { store, frontier })
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn into_store(self) -> S {
        self.store
    }

    /// The root of the whole tree, from memory.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The hashes `leaves` would append, in stored order, and the tree size
    /// after them, without writing: for a store that writes them in the same
    /// batch as the records they are the leaves of, then calls [`Self::appended`].
    pub(crate) fn hashes_to_append(&self, leaves: &[Hash]) -> (Vec<Hash>, Frontier) {
        let mut frontier = self.frontier.clone();
        let mut hashes = Vec::with_capacity(leaves.len() * 2);
        for leaf in leaves {
            frontier.push(*leaf, &mut hashes);
        }
        (hashes, frontier)
    }

    /// Adopts the frontier [`Self::hashes_to_append`] gave once its hashes are stored.
    pub fn appended(&mut self, frontier: Frontier) {
        self.frontier = frontier;
    }

    /// Appends leaf hashes; returns the index of the first.
    pub fn append(&mut self, leaves: &[Hash]) -> Result<u64, S> {
        let first = self.size();
        let (hashes, frontier) = self.hashes_to_append(leaves);
        self.store.append(&hashes, frontier.size()).map_err(TreeError::Store)?;
        self.frontier = frontier;
        Ok(first)
    }

    /// The stored leaf hash at `index`.
    pub(crate) fn leaf_hash(&self, index: u64) -> Result<Hash, S> {
        if index >= self.size() {
            return Err(TreeError::LeafOutOfRange { index, size: self.size() });
        }
        self.store.hash_at(stored_hash_position(0, index)).map_err(TreeError::Store)
    }

    /// MTH(D[0:size]): the root the log had when it held `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, S> {
        self.check_size(size)?;
        if size == self.size() {
            return Ok(self.root());
        }
        let peaks = self.store.hashes_at(&subtree_positions(0, size)).map_err(TreeError::Store)?;
        Ok(fold_peaks(&peaks))
    }

    /// The frontier of the tree when it held `size` leaves: where a verifier
    /// that no longer has the leaves below `size` (retention) starts from.
    pub(crate) fn frontier_at(&self, size: u64) -> Result<Frontier, S> {
        self.check_size(size)?;
        let peaks = self.store.hashes_at(&subtree_positions(0, size)).map_err(TreeError::Store)?;
        #[allow(
            clippy::expect_used,
            reason = "a HashStore returns one hash per position asked (its contract); a store that does not is a bug, not a state to answer"
        )]
        let frontier = Frontier::from_parts(size, peaks).expect("one peak per set bit of the size");
        Ok(frontier)
    }

    /// PATH(index, D[0:size]): the audit path of leaf `index` in the tree of
    /// `size` leaves, nearest the leaf first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, S> {
        self.check_size(size)?;
        let mut plan = ProofPlan::default();
        plan.add_inclusion(index, size)?;
        Ok(plan.read(&self.store).map_err(TreeError::Store)?.pop().unwrap_or_default())
    }

    /// PROOF(old, D[0:new]): the consistency proof that the tree of `old`
    /// leaves is a prefix of the tree of `new`. Empty when `old` is 0 or `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, S> {
        self.check_size(new)?;
        let mut plan = ProofPlan::default();
        plan.add_consistency(old, new)?;
        Ok(plan.read(&self.store).map_err(TreeError::Store)?.pop().unwrap_or_default())
    }

    fn check_size(&self, size: u64) -> Result<(), S> {
        if size > self.size() {
            return Err(TreeError::SizeOutOfRange { size, tree_size: self.size() });
        }
        Ok(())
    }
}

/// Proofs as the stored hashes they fold, worked out from the sizes alone
/// (no I/O) and then read with one [`HashStore::hashes_at`] for all of them:
/// a proof costs one read, and many proofs one read, however many hashes
/// they need. Each element of a proof is MTH(D[start:start+width]) for a
/// subtree the RFC's recursion visits (`start` a multiple of the power of two
/// at or above `width`), the fold of the stored perfect subtrees it
/// decomposes into.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProofPlan {
    /// Per element of every proof: the positions of the hashes it folds.
    elements: Vec<Vec<u64>>,
    /// Per proof: how many of `elements` it has, in order.
    lengths: Vec<usize>,
}

impl ProofPlan {
    /// Adds PATH(index, D[0:size]), nearest the leaf first.
    pub(crate) fn add_inclusion<E: std::error::Error + 'static>(
        &mut self,
        index: u64,
        size: u64,
    ) -> std::result::Result<(), TreeError<E>> {
        if index >= size {
            return Err(TreeError::LeafOutOfRange { index, size });
        }
        let first = self.elements.len();
        let (mut start, mut width, mut offset) = (0, size, index);
        while width > 1 {
            let k = split_point(width);
            if offset < k {
                self.elements.push(subtree_positions(start + k, width - k));
                width = k;
            } else {
                self.elements.push(subtree_positions(start, k));
                start += k;
                offset -= k;
                width -= k;
            }
        }
        self.elements[first..].reverse();
        self.lengths.push(self.elements.len() - first);
        Ok(())
    }

    /// Adds PROOF(old, D[0:new]); empty when `old` is 0 or `new`.
    pub(crate) fn add_consistency<E: std::error::Error + 'static>(
        &mut self,
        old: u64,
        new: u64,
    ) -> std::result::Result<(), TreeError<E>> {
        if old > new {
            return Err(TreeError::SizesReversed { old, new });
        }
        let first = self.elements.len();
        if old != 0 && old != new {
            // SUBPROOF(m, D[start:start+width], whole_old_tree), unrolled.
            let (mut start, mut width, mut m, mut whole_old_tree) = (0, new, old, true);
            loop {
                if m == width {
                    if !whole_old_tree {
                        self.elements.push(subtree_positions(start, width));
                    }
                    break;
                }
                let k = split_point(width);
                if m <= k {
                    self.elements.push(subtree_positions(start + k, width - k));
                    width = k;
                } else {
                    self.elements.push(subtree_positions(start, k));
                    start += k;
                    m -= k;
                    width -= k;
                    whole_old_tree = false;
                }
            }
        }
        self.elements[first..].reverse();
        self.lengths.push(self.elements.len() - first);
        Ok(())
    }

    /// Every stored position the proofs need, once each, in order.
    pub(crate) fn positions(&self) -> Vec<u64> {
        let mut positions: Vec<u64> = self.elements.iter().flatten().copied().collect();
        positions.sort_unstable();
        positions.dedup();
        positions
    }

    /// The proofs, in the order they were added, from one read of `store`.
    /// Stored hashes never change, so any handle on the store will do, and
    /// nothing needs to be locked while it reads.
    pub(crate) fn read<S: HashStore + ?Sized>(&self, store: &S) -> std::result::Result<Vec<Vec<Hash>>, S::Error> {
        let positions = self.positions();
        let hashes = store.hashes_at(&positions)?;
        #[allow(
            clippy::expect_used,
            reason = "a HashStore returns one hash per position asked (its contract); a store that does not is a bug, not a state to answer"
        )]
        let hash_at = |position: &u64| hashes[positions.binary_search(position).expect("every position was read")];
        let mut elements = self.elements.iter().map(|element| {
            let peaks: Vec<Hash> = element.iter().map(hash_at).collect();
            fold_peaks(&peaks)
        });
        Ok(self.lengths.iter().map(|length| elements.by_ref().take(*length).collect()).collect())
    }
}

/// Where the layout keeps the perfect subtrees covering `width` leaves from
/// `start`, largest first (an empty list for none: its fold is the empty root).
fn subtree_positions(start: u64, width: u64) -> Vec<u64> {
    perfect_subtrees(start, width).map(|(level, index)| stored_hash_position(level, index)).collect()
}

/// The perfect subtrees (level, index) that cover `width` leaves from
/// `start`, largest first: one per set bit of `width`.
fn perfect_subtrees(start: u64, width: u64) -> impl Iterator<Item = (u32, u64)> {
    let mut offset = start;
    (0..u64::BITS).rev().filter(move |level| width >> level & 1 == 1).map(move |level| {
        let subtree = (level, offset >> level);
        offset += 1 << level;
        subtree
    })
}
