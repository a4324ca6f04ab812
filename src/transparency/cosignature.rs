//! Witness cosignatures: C2SP tlog-cosignature v1 with Ed25519
//! (c2sp.org/tlog-cosignature), and the body of the C2SP tlog-witness
//! `add-checkpoint` request (c2sp.org/tlog-witness). No I/O and no clock:
//! the caller gives the time a cosignature is made at.
//!
//! A cosignature is a signed-note signature line of the witness's key,
//! `— <witness name> base64(key id (4) || timestamp (8, big-endian) || Ed25519 signature (64))`,
//! where the key id is SHA-256(name || 0x0A || 0x04 || public key)[:4] and
//! the signed message is
//!
//! ```text
//! cosignature/v1
//! time <timestamp, POSIX seconds, decimal>
//! <the checkpoint's note text, every line, its extension lines included>
//! ```
//!
//! A witness's public key is given as a signed-note verifier key of type
//! 0x04: `<name>+<key id, 8 hex digits>+<base64(0x04 || 32-byte key)>`.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use super::checkpoint::{CheckpointError, signature_line, split_note};
use super::hash::Hash;
use super::key::{KeyError, LogSigner, is_valid_key_name};

/// The signed-note signature type of an Ed25519 cosignature (v1).
pub(crate) const COSIGNATURE_TYPE: u8 = 0x04;
/// The most consistency proof lines an add-checkpoint request may carry.
pub(crate) const MAX_PROOF_LINES: usize = 63;

/// The key id of a witness key (`name`, Ed25519 `public_key`).
pub(crate) fn cosigner_key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', COSIGNATURE_TYPE]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The message a v1 cosignature signs, for a checkpoint's note `text`.
pub(crate) fn cosigned_message(text: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{text}")
}

/// A witness's public key: what a log and a verifier check cosignatures with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosignerKey {
    name: String,
    key_id: u32,
    public_key: [u8; 32],
}

impl CosignerKey {
    pub fn new(name: &str, public_key: [u8; 32]) -> Result<Self, KeyError> {
        if !is_valid_key_name(name) {
            return Err(KeyError::BadName(name.to_owned()));
        }
        Ok(Self { name: name.to_owned(), key_id: cosigner_key_id(name, &public_key), public_key })
    }

    /// Parses `<name>+<hex key id>+<base64(0x04 || public key)>`, checking the id.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(KeyError::BadVerifierKey("expected name+keyid+key"));
        };
        let id = u32::from_str_radix(id, 16)
            .ok()
            .filter(|_| id.len() == 8)
            .ok_or(KeyError::BadVerifierKey("the key id must be 8 hexadecimal digits"))?;
        let key = STANDARD.decode(key).map_err(|_| KeyError::BadVerifierKey("the key is not base64"))?;
        let [COSIGNATURE_TYPE, public_key @ ..] = key.as_slice() else {
            return Err(KeyError::BadVerifierKey("not an Ed25519 cosignature (type 0x04) key"));
        };
        let public_key: [u8; 32] =
            public_key.try_into().map_err(|_| KeyError::BadVerifierKey("an Ed25519 public key is 32 bytes"))?;
        let key = Self::new(name, public_key)?;
        if key.key_id != id {
            return Err(KeyError::BadVerifierKey("the key id does not match the name and key"));
        }
        Ok(key)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The timestamp of this key's cosignature of the note `text`, if
    /// `signature` (timestamp || Ed25519 signature) is one.
    pub fn verify(&self, text: &str, signature: &[u8]) -> Option<u64> {
        let (timestamp, signature) = signature.split_first_chunk::<8>()?;
        let timestamp = u64::from_be_bytes(*timestamp);
        if signature.len() != 64 || timestamp > i64::MAX as u64 {
            return None;
        }
        let verifier = super::VerifierKey::new(&self.name, self.public_key).ok()?;
        verifier.verifies(cosigned_message(text, timestamp).as_bytes(), signature).then_some(timestamp)
    }
}

impl std::fmt::Display for CosignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key = Vec::with_capacity(33);
        key.push(COSIGNATURE_TYPE);
        key.extend_from_slice(&self.public_key);
        write!(f, "{}+{:08x}+{}", self.name, self.key_id, STANDARD.encode(key))
    }
}

/// A witness's signing key.
#[derive(Debug)]
pub struct Cosigner {
    signer: LogSigner,
    key: CosignerKey,
}

impl Cosigner {
    /// Loads the witness's PKCS#8 Ed25519 key at `path` (owner-only) to cosign as `name`.
    pub fn from_key_file(name: &str, path: &Path) -> Result<Self, KeyError> {
        Self::from_signer(LogSigner::from_key_file(name, path)?)
    }

    /// A cosigner from a raw 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, KeyError> {
        Self::from_signer(LogSigner::from_seed(name, seed)?)
    }

    fn from_signer(signer: LogSigner) -> Result<Self, KeyError> {
        let key = CosignerKey::new(signer.name(), *signer.verifier().public_key())?;
        Ok(Self { signer, key })
    }

    pub fn key(&self) -> &CosignerKey {
        &self.key
    }

    /// The cosignature line (newline included) of the note `text` at `timestamp`.
    pub fn cosign(&self, text: &str, timestamp: u64) -> String {
        let signature = self.signer.sign(cosigned_message(text, timestamp).as_bytes());
        let mut blob = Vec::with_capacity(72);
        blob.extend_from_slice(&timestamp.to_be_bytes());
        blob.extend_from_slice(&signature);
        signature_line(&self.key.name, self.key.key_id, &blob)
    }
}

/// A verified cosignature: which of the keys given, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosigned {
    pub witness: String,
    pub timestamp: u64,
}

/// The cosignatures on `note` that verify with one of `keys`, one per key at
/// most; lines of other keys are ignored, as the spec asks.
pub fn verify_cosignatures(note: &str, keys: &[CosignerKey]) -> Result<Vec<Cosigned>, CheckpointError> {
    let (text, signatures) = split_note(note)?;
    let mut found: Vec<Cosigned> = Vec::new();
    for (name, key_id, signature) in signatures {
        let Some(key) = keys.iter().find(|key| key.name == name && key.key_id == key_id) else { continue };
        if found.iter().any(|cosigned| cosigned.witness == key.name) {
            continue;
        }
        if let Some(timestamp) = key.verify(text, &signature) {
            found.push(Cosigned { witness: key.name.clone(), timestamp });
        }
    }
    Ok(found)
}

/// Adds the signature lines of `lines` (each ending with a newline) to `note`,
/// keeping each line once.
pub(crate) fn add_signature_lines(note: &str, lines: &str) -> String {
    let mut note = note.to_owned();
    for line in lines.split_inclusive('\n') {
        if !note.contains(line) {
            note.push_str(line);
        }
    }
    note
}

/// Why an add-checkpoint body was refused (the witness answers 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed add-checkpoint request: {0}")]
pub struct RequestError(pub &'static str);

/// The body of a tlog-witness `add-checkpoint` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the checkpoint the witness last cosigned, as the log believes.
    pub old_size: u64,
    /// The RFC 6962 consistency proof from `old_size` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub note: String,
}

impl AddCheckpoint {
    pub fn encode(&self) -> String {
        let mut body = format!("old {}\n", self.old_size);
        for hash in &self.proof {
            body.push_str(&STANDARD.encode(hash));
            body.push('\n');
        }
        body.push('\n');
        body.push_str(&self.note);
        body
    }

    pub fn parse(body: &str) -> Result<Self, RequestError> {
        let (head, note) = body.split_once("\n\n").ok_or(RequestError("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines.next().and_then(|line| line.strip_prefix("old ")).ok_or(RequestError("no old size line"))?;
        if old.is_empty() || !old.bytes().all(|byte| byte.is_ascii_digit()) || (old.len() > 1 && old.starts_with('0')) {
            return Err(RequestError("the old size must be decimal without leading zeros"));
        }
        let old_size = old.parse().map_err(|_| RequestError("the old size is too large"))?;
        let proof = lines
            .map(|line| {
                STANDARD
                    .decode(line)
                    .ok()
                    .and_then(|bytes| Hash::try_from(bytes).ok())
                    .ok_or(RequestError("a proof line is not the base64 of 32 bytes"))
            })
            .collect::<Result<Vec<Hash>, _>>()?;
        if proof.len() > MAX_PROOF_LINES {
            return Err(RequestError("more than 63 proof lines"));
        }
        Ok(Self { old_size, proof, note: note.to_owned() })
    }
}

/// Checks a witnessed checkpoint: signed by the log (`verifier`) and
/// cosigned by at least `quorum` of `keys`. Returns the checkpoint and the
/// names of the witnesses whose cosignatures verified, or why not.
pub(crate) fn verify_witnessed(
    note: &str,
    verifier: &crate::transparency::VerifierKey,
    keys: &[CosignerKey],
    quorum: usize,
) -> Result<(crate::transparency::Checkpoint, Vec<String>), String> {
    let checkpoint = crate::transparency::Checkpoint::verify(note, verifier)
        .map_err(|error| format!("not a checkpoint of this log: {error}"))?;
    let cosigned = verify_cosignatures(note, keys).map_err(|error| error.to_string())?;
    let witnesses: Vec<String> = cosigned.into_iter().map(|cosigned| cosigned.witness).collect();
    if witnesses.len() < quorum {
        return Err(format!(
            "cosigned by {} of the witness keys given ({}), fewer than the quorum of {quorum}",
            witnesses.len(),
            witnesses.join(", ")
        ));
    }
    Ok((checkpoint, witnesses))
}

/// A key given as its text or as the path of a file holding it (flags and
/// configuration accept both); `what` names the setting in the error.
pub(crate) fn key_text(given: &str, what: &str) -> Result<String, String> {
    if std::path::Path::new(given).is_file() {
        std::fs::read_to_string(given).map_err(|error| format!("{what}: {given}: {error}"))
    } else {
        Ok(given.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transparency::Checkpoint;

    #[test]
    fn a_cosignature_verifies_with_the_witness_key_only() {
        let witness = Cosigner::from_seed("witness.example/w1", &[9; 32]).expect("a key");
        let log = LogSigner::from_seed("example.org/log", &[3; 32]).expect("a key");
        let checkpoint =
            Checkpoint { origin: "example.org/log".into(), size: 5, root: [1; 32], time: chrono::DateTime::UNIX_EPOCH };
        let note = checkpoint.sign(&log).expect("signs");
        let cosigned = add_signature_lines(&note, &witness.cosign(&checkpoint.text(), 1_679_315_147));
        let key = CosignerKey::parse(&witness.key().to_string()).expect("the key text parses");
        assert_eq!(
            verify_cosignatures(&cosigned, std::slice::from_ref(&key)).expect("well formed"),
            vec![Cosigned { witness: "witness.example/w1".into(), timestamp: 1_679_315_147 }]
        );
        // Still the log's checkpoint, the cosignature ignored.
        assert_eq!(Checkpoint::verify(&cosigned, log.verifier()).expect("verifies"), checkpoint);
        let other = Cosigner::from_seed("witness.example/w1", &[8; 32]).expect("a key");
        assert!(verify_cosignatures(&cosigned, &[other.key().clone()]).expect("well formed").is_empty());
        // A cosignature of another checkpoint does not count.
        let moved = cosigned.replacen("\n5\n", "\n6\n", 1);
        assert!(verify_cosignatures(&moved, &[key]).expect("well formed").is_empty());
    }

    // The key id rule of tlog-cosignature, by hand: SHA-256(name || "\n" || 0x04 || key)[:4].
    #[test]
    fn the_key_id_is_the_cosignature_one() {
        let mut preimage = b"witness.example/w1\n\x04".to_vec();
        preimage.extend_from_slice(&[7; 32]);
        assert_eq!(cosigner_key_id("witness.example/w1", &[7; 32]).to_be_bytes(), Sha256::digest(&preimage)[..4]);
    }

    #[test]
    fn the_add_checkpoint_body_round_trips() {
        let request = AddCheckpoint { old_size: 3, proof: vec![[1; 32], [2; 32]], note: "a\n1\nb\n\n— a x\n".into() };
        let body = request.encode();
        assert!(body.starts_with("old 3\nAQEB"), "{body}");
        assert_eq!(AddCheckpoint::parse(&body), Ok(request));
        assert!(AddCheckpoint::parse("old 03\n\nx").is_err());
        assert!(AddCheckpoint::parse("old 0\nnotbase64\n\nx").is_err());
        let empty = AddCheckpoint::parse("old 0\n\norigin\n").expect("parses");
        assert!(empty.proof.is_empty());
    }
}
