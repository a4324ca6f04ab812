//! RFC 6962 hashing (RFC 9162 section 2.1.1): the leaf and interior node
//! hashes with their one-byte domain separation, the empty tree's root, the
//! split rule of a tree of n leaves, and the compact range ([`Frontier`]) that
//! folds a stream of leaf hashes into the root of every prefix in O(log n)
//! memory. Pure functions only: no storage, no I/O.

use sha2::{Digest, Sha256};

/// A SHA-256 output: a leaf hash, an interior node hash or a root.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of the empty string.
pub(crate) fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// MTH({d}) = SHA-256(0x00 || d).
pub(crate) fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(leaf);
    hasher.finalize().into()
}

/// SHA-256(0x01 || left || right).
pub(crate) fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// k, the largest power of two smaller than `n`: a tree of `n` leaves is the
/// tree of its first k leaves and the tree of the other n - k. `n` must be at
/// least 2.
pub(crate) fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2, "a tree of {n} leaves has no split");
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[n]) straight from the definition, recursing over the leaf hashes: the
/// reference the stored tree is tested against; O(n) hashes.
pub fn root_of_leaf_hashes(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&root_of_leaf_hashes(&leaves[..k]), &root_of_leaf_hashes(&leaves[k..]))
        }
    }
}

/// The roots of the perfect subtrees a tree of `size` leaves decomposes into
/// (one per set bit of `size`, largest first): enough to append a leaf and to
/// give the root, without the rest of the tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// A frontier from its parts; `peaks` must have one hash per set bit of `size`.
    pub(crate) fn from_parts(size: u64, peaks: Vec<Hash>) -> Option<Self> {
        (peaks.len() == size.count_ones() as usize).then_some(Self { size, peaks })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// Appends one leaf hash; `completed` receives the leaf hash and then the
    /// hash of every perfect subtree the leaf completes, lowest first (the
    /// order the stored layout keeps them in, see [`super::tree`]).
    pub fn push(&mut self, leaf: Hash, completed: &mut Vec<Hash>) {
        completed.push(leaf);
        let mut hash = leaf;
        let mut size = self.size;
        while size & 1 == 1 {
            let Some(left) = self.peaks.pop() else { break };
            hash = node_hash(&left, &hash);
            completed.push(hash);
            size >>= 1;
        }
        self.peaks.push(hash);
        self.size += 1;
    }

    /// Appends one leaf hash, discarding the completed subtrees.
    pub(crate) fn push_leaf(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.size;
        while size & 1 == 1 {
            let Some(left) = self.peaks.pop() else { break };
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.peaks.push(hash);
        self.size += 1;
    }

    /// MTH of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        fold_peaks(&self.peaks)
    }
}

/// The root of a tree from the roots of its perfect subtrees, largest first.
pub(crate) fn fold_peaks(peaks: &[Hash]) -> Hash {
    let mut iter = peaks.iter().rev();
    let Some(last) = iter.next() else { return empty_root() };
    iter.fold(*last, |right, left| node_hash(left, &right))
}

/// Lower-case hexadecimal, for messages and test vectors.
pub(crate) fn to_hex(hash: &[u8]) -> String {
    hash.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A 32-byte hash from hexadecimal.
pub(crate) fn from_hex(text: &str) -> Option<Hash> {
    if text.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (index, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Hash {
        from_hex(text).expect("a 64-digit hex hash")
    }

    // Known answers from the RFC 6962 hasher tests of transparency-dev/merkle.
    #[test]
    fn hashes_match_rfc6962_known_answers() {
        assert_eq!(empty_root(), hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
        assert_eq!(leaf_hash(b""), hex("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"));
        assert_eq!(leaf_hash(b"L123456"), hex("395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"));
        // The node hash takes any 64 bytes; the vector hashes two 4-byte strings.
        let mut hasher = Sha256::new();
        hasher.update([0x01]);
        hasher.update(b"N123");
        hasher.update(b"N456");
        let node: Hash = hasher.finalize().into();
        assert_eq!(node, hex("aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"));
        assert_ne!(leaf_hash(b""), empty_root(), "an empty leaf is not the empty tree");
    }

    #[test]
    fn split_point_is_the_largest_power_of_two_below() {
        let cases =
            [(2, 1), (3, 2), (4, 2), (5, 4), (7, 4), (8, 4), (9, 8), (1 << 40, 1 << 39), ((1 << 40) + 1, 1 << 40)];
        for (n, k) in cases {
            assert_eq!(split_point(n), k, "n = {n}");
        }
    }

    #[test]
    fn the_frontier_gives_the_root_of_every_prefix() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), empty_root());
        for (count, leaf) in leaves.iter().enumerate() {
            frontier.push_leaf(*leaf);
            assert_eq!(frontier.root(), root_of_leaf_hashes(&leaves[..=count]), "size {}", count + 1);
            assert_eq!(frontier.peaks().len(), (count + 1).count_ones() as usize);
        }
    }
}
