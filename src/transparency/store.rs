//! Where the log's hashes live: the [`HashStore`] trait and its in-memory
//! implementation. A store holds one append-only sequence of 32-byte hashes
//! (the layout [`super::tree`] defines: each appended leaf's hash followed by
//! the perfect subtrees it completes) and the tree size they cover, written
//! together. The embedded store keeps them as consecutive keys (position as a
//! big-endian u64) in one keyspace (`log_tree`), written by the log keeper
//! after the accesses commit; it must not hold anything else.

use super::hash::Hash;

/// The storage a [`super::tree::MerkleLog`] needs.
pub trait HashStore {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The number of leaves the stored hashes cover.
    fn tree_size(&self) -> Result<u64, Self::Error>;

    /// The hash at `position` of the sequence; positions below
    /// [`super::tree::stored_hash_count`] of the tree size exist.
    fn hash_at(&self, position: u64) -> Result<Hash, Self::Error>;

    /// Appends `hashes` at the end of the sequence and records `tree_size`,
    /// both or neither.
    fn append(&mut self, hashes: &[Hash], tree_size: u64) -> Result<(), Self::Error>;

    /// The hashes at `positions`, in their order: one read where a store can
    /// (a verifier reads a leaf per record).
    fn hashes_at(&self, positions: &[u64]) -> Result<Vec<Hash>, Self::Error> {
        positions.iter().map(|position| self.hash_at(*position)).collect()
    }
}

impl<S: HashStore + ?Sized> HashStore for Box<S> {
    type Error = S::Error;

    fn tree_size(&self) -> Result<u64, Self::Error> {
        (**self).tree_size()
    }

    fn hash_at(&self, position: u64) -> Result<Hash, Self::Error> {
        (**self).hash_at(position)
    }

    fn append(&mut self, hashes: &[Hash], tree_size: u64) -> Result<(), Self::Error> {
        (**self).append(hashes, tree_size)
    }

    fn hashes_at(&self, positions: &[u64]) -> Result<Vec<Hash>, Self::Error> {
        (**self).hashes_at(positions)
    }
}

/// A [`HashStore`] in a vector: for tests, benches and verifiers that rebuild
/// a tree from its leaves.
#[derive(Clone, Debug, Default)]
pub struct MemoryHashStore {
    hashes: Vec<Hash>,
    tree_size: u64,
}

/// A position past the end of a [`MemoryHashStore`]: a caller's bug.
#[derive(Debug, thiserror::Error)]
#[error("no hash is stored at position {0}")]
pub struct MissingHash(pub u64);

impl MemoryHashStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored sequence, for tests that tamper with it.
    pub fn hashes_mut(&mut self) -> &mut Vec<Hash> {
        &mut self.hashes
    }
}

impl HashStore for MemoryHashStore {
    type Error = MissingHash;

    fn tree_size(&self) -> Result<u64, MissingHash> {
        Ok(self.tree_size)
    }

    fn hash_at(&self, position: u64) -> Result<Hash, MissingHash> {
        usize::try_from(position).ok().and_then(|index| self.hashes.get(index)).copied().ok_or(MissingHash(position))
    }

    fn append(&mut self, hashes: &[Hash], tree_size: u64) -> Result<(), MissingHash> {
        self.hashes.extend_from_slice(hashes);
        self.tree_size = tree_size;
        Ok(())
    }
}
