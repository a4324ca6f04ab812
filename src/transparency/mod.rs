//! The tamper-evident access log: every stored access is a leaf
//! of an append-only Merkle tree built as RFC 6962 / RFC 9162 (Certificate
//! Transparency) specify; the relay signs checkpoints of it with its own
//! Ed25519 key; anyone holding the public key can check that one access is in
//! the log (an inclusion proof) and that a later checkpoint extends an earlier
//! one (a consistency proof).
//!
//! This module owns the construction and nothing else: it never reads an
//! access store, a clock or the network, and it knows no gRPC. The stores
//! give each access a log position in the same batch as the access; the log
//! keeper (`crate::access_log`) appends the leaves and signs checkpoints, and
//! `audit verify` streams the records into an [`audit::Verification`].
//!
//! - [`hash`]: RFC 6962 leaf and node hashing, the split rule, the compact range.
//! - [`leaf`]: the canonical byte encoding of an access (documented there, so a
//!   third party can recompute a leaf hash from the access alone).
//! - [`store`]: the storage trait for the tree's hashes, and one in memory.
//! - [`tree`]: the append-only tree: roots of any prefix, inclusion and
//!   consistency proofs, O(log n) hashes read each.
//! - [`proof`]: verifying proofs with the hashes alone.
//! - [`audit`]: recomputing the tree from the records against signed roots.
//! - [`key`], [`checkpoint`]: the Ed25519 key and the signed checkpoint (C2SP
//!   signed note with a tlog-checkpoint body and a time line).
//! - [`cosignature`]: witnesses' cosignatures (C2SP tlog-cosignature v1) and the
//!   tlog-witness `add-checkpoint` request body.
//!
//! # Verifying as a third party
//! 1. Check the checkpoint's signature with the verifier key
//!    (`name+keyid+base64(0x01 || key)`): Ed25519 over the note text.
//! 2. Recompute the access's leaf hash: SHA-256(0x00 || encoding), the
//!    encoding in [`leaf`].
//! 3. Run the inclusion proof from the leaf to the checkpoint's root
//!    (RFC 9162 section 2.1.3.2), and consistency proofs between checkpoints
//!    (section 2.1.4.2). `tests/transparency/verify_proof.py` does all three
//!    independently, in Python with `cryptography`.

pub mod audit;
pub mod checkpoint;
pub mod cosignature;
pub mod hash;
pub mod key;
pub mod leaf;
pub mod proof;
pub mod store;
pub mod tree;

#[cfg(test)]
mod tests;

pub use checkpoint::Checkpoint;
pub use hash::Hash;
pub use key::{LogSigner, VerifierKey};
pub use leaf::{AccessKind, access_leaf_hash, encode_access};
pub use store::{HashStore, MemoryHashStore};
pub use tree::MerkleLog;
