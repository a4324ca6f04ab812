//! Verifying inclusion and consistency proofs with nothing but the hashes:
//! the algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2, which check the
//! proofs RFC 6962 section 2.1.1 and 2.1.2 define. What a third party runs;
//! it must never read the log.

use super::hash::{Hash, node_hash};

/// Why a proof does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProofError {
    #[error("leaf {index} is not in a tree of {size} leaves")]
    LeafOutOfRange { index: u64, size: u64 },
    #[error("the proof has {actual} hashes; a proof for these sizes has {expected}")]
    WrongLength { actual: usize, expected: usize },
    #[error("the first size {old} is larger than the second {new}")]
    SizesReversed { old: u64, new: u64 },
    #[error("the proof gives root {computed}, not the expected {expected}", computed = super::hash::to_hex(computed), expected = super::hash::to_hex(expected))]
    RootMismatch { computed: Hash, expected: Hash },
    #[error("the old root does not match the proof")]
    OldRootMismatch,
    #[error("the proof is empty; these sizes need one")]
    EmptyProof,
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`.
pub(crate) fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion_proof(index, size, leaf, proof)?;
    if computed != *root {
        return Err(ProofError::RootMismatch { computed, expected: *root });
    }
    Ok(())
}

/// The root an inclusion proof leads to (RFC 9162 section 2.1.3.2).
pub(crate) fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::LeafOutOfRange { index, size });
    }
    let expected = inclusion_proof_length(index, size);
    if proof.len() != expected {
        return Err(ProofError::WrongLength { actual: proof.len(), expected });
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut hash = *leaf;
    for sibling in proof {
        if f_n & 1 == 1 || f_n == s_n {
            hash = node_hash(sibling, &hash);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    debug_assert_eq!(s_n, 0, "the length check leaves no levels over");
    Ok(hash)
}

/// Checks that the tree of `old` leaves with root `old_root` is a prefix of
/// the tree of `new` leaves with root `new_root` (RFC 9162 section 2.1.4.2).
pub(crate) fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::SizesReversed { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength { actual: proof.len(), expected: 0 });
        }
        if old_root != new_root {
            return Err(ProofError::RootMismatch { computed: *old_root, expected: *new_root });
        }
        return Ok(());
    }
    if old == 0 {
        // The empty tree is a prefix of every tree: nothing to prove.
        if !proof.is_empty() {
            return Err(ProofError::WrongLength { actual: proof.len(), expected: 0 });
        }
        return Ok(());
    }
    if proof.is_empty() {
        return Err(ProofError::EmptyProof);
    }
    let expected = consistency_proof_length(old, new);
    if proof.len() != expected {
        return Err(ProofError::WrongLength { actual: proof.len(), expected });
    }
    // When the old tree is a perfect subtree its root is the proof's implicit first hash.
    let mut hashes = proof.iter();
    let first = if old.is_power_of_two() { *old_root } else { *hashes.next().ok_or(ProofError::EmptyProof)? };
    let (mut f_n, mut s_n) = (old - 1, new - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut old_hash, mut new_hash) = (first, first);
    for sibling in hashes {
        if s_n == 0 {
            return Err(ProofError::WrongLength { actual: proof.len(), expected });
        }
        if f_n & 1 == 1 || f_n == s_n {
            old_hash = node_hash(sibling, &old_hash);
            new_hash = node_hash(sibling, &new_hash);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            new_hash = node_hash(&new_hash, sibling);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if old_hash != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if new_hash != *new_root {
        return Err(ProofError::RootMismatch { computed: new_hash, expected: *new_root });
    }
    Ok(())
}

/// The number of hashes in PATH(index, D[0:size]).
pub(crate) fn inclusion_proof_length(index: u64, size: u64) -> usize {
    // The levels where index and size - 1 still differ, plus the right
    // border levels where the path climbs without a sibling skipped.
    let inner = (u64::BITS - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = (index >> inner).count_ones() as usize;
    inner + border
}

/// The number of hashes in PROOF(old, D[0:new]), 0 < old < new: the part of
/// the inclusion path of leaf old - 1 above the perfect subtree of 2^t leaves
/// it ends (t the trailing zeros of old), plus that subtree's root unless it
/// is the whole old tree.
pub(crate) fn consistency_proof_length(old: u64, new: u64) -> usize {
    let diverge = (u64::BITS - ((old - 1) ^ (new - 1)).leading_zeros()) as usize;
    let border = ((old - 1) >> diverge).count_ones() as usize;
    let inner = diverge - old.trailing_zeros() as usize;
    usize::from(!old.is_power_of_two()) + inner + border
}
