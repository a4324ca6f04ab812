//! Signed checkpoints: the C2SP signed-note format (c2sp.org/signed-note)
//! carrying a C2SP tlog-checkpoint body (c2sp.org/tlog-checkpoint), signed
//! with the log's Ed25519 key (signature type 0x01), plus one extension line
//! with the time the checkpoint was made:
//!
//! ```text
//! <origin>
//! <tree size, decimal, no leading zeros>
//! <root hash, standard base64>
//! <time, RFC 3339 UTC with microseconds, e.g. 2026-12-05T09:00:00.000000Z>
//!
//! — <key name = origin> <base64(key id, 4 bytes big-endian || Ed25519 signature, 64 bytes)>
//! ```
//!
//! The signature covers the note text: the four lines, each with its newline.
//! Verifying needs only the verifier key ([`super::key::VerifierKey`]).
//! Signature lines of other keys (a witness's cosignature) are ignored; a
//! failing signature of the expected key rejects the whole note.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};

use super::hash::Hash;
use super::key::{LogSigner, VerifierKey, is_valid_key_name};

/// The em dash and space that open a signature line.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Why a note or checkpoint was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed note: {0}")]
    MalformedNote(&'static str),
    #[error("the note has no signature of {0}")]
    NotSigned(String),
    #[error("the signature of {0} does not verify")]
    BadSignature(String),
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(&'static str),
    #[error("the checkpoint's origin {origin:?} is not the key name {key_name:?}")]
    OriginMismatch { origin: String, key_name: String },
}

/// A tree head: the log's origin, size, root hash, and when it was signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub time: DateTime<Utc>,
}

impl Checkpoint {
    /// The note text, each line ending with a newline.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root),
            self.time.to_rfc3339_opts(SecondsFormat::Micros, true)
        )
    }

    /// Parses a note text this module wrote; anything else is refused.
    pub(crate) fn parse_text(text: &str) -> Result<Self, CheckpointError> {
        let malformed = CheckpointError::MalformedCheckpoint;
        let body = text.strip_suffix('\n').ok_or(malformed("the text must end with a newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [origin, size, root, time] = lines.as_slice() else {
            return Err(malformed("expected four lines: origin, tree size, root hash, time"));
        };
        if !is_valid_key_name(origin) {
            return Err(malformed("the origin must be non-empty, without spaces or '+'"));
        }
        if size.is_empty()
            || !size.bytes().all(|byte| byte.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(malformed("the tree size must be decimal digits without leading zeros"));
        }
        let size = size.parse().map_err(|_| malformed("the tree size is too large"))?;
        let root: Hash = STANDARD
            .decode(root)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(malformed("the root hash must be the base64 of 32 bytes"))?;
        let time = DateTime::parse_from_rfc3339(time).map_err(|_| malformed("the time must be RFC 3339"))?.to_utc();
        let checkpoint = Self { origin: (*origin).to_owned(), size, root, time };
        if checkpoint.text() != text {
            return Err(malformed("not in canonical form (base64 padding, time precision or zone)"));
        }
        Ok(checkpoint)
    }

    /// The signed note of this checkpoint; the signer's name must be the origin.
    pub fn sign(&self, signer: &LogSigner) -> Result<String, CheckpointError> {
        if signer.name() != self.origin {
            return Err(CheckpointError::OriginMismatch {
                origin: self.origin.clone(),
                key_name: signer.name().into(),
            });
        }
        Ok(sign_note(&self.text(), signer))
    }

    /// Verifies a signed checkpoint with `verifier` and parses it; its origin
    /// must be the verifier's key name.
    pub fn verify(note: &str, verifier: &VerifierKey) -> Result<Self, CheckpointError> {
        let text = open_note(note, verifier)?;
        let checkpoint = Self::parse_text(text)?;
        if checkpoint.origin != verifier.name() {
            return Err(CheckpointError::OriginMismatch {
                origin: checkpoint.origin,
                key_name: verifier.name().to_owned(),
            });
        }
        Ok(checkpoint)
    }
}

/// Signs `text` (which must end with a newline) as a signed note.
pub(crate) fn sign_note(text: &str, signer: &LogSigner) -> String {
    let signature = signer.sign(text.as_bytes());
    format!("{text}\n{}", signature_line(signer.name(), signer.verifier().key_id(), &signature))
}

/// A signature line's key name, key id and signature.
pub(crate) type SignatureLine<'a> = (&'a str, u32, Vec<u8>);

/// A signed note split into its text (ending with a newline) and its
/// signature lines as `(key name, key id, signature)`, checked for form only.
pub(crate) fn split_note(note: &str) -> Result<(&str, Vec<SignatureLine<'_>>), CheckpointError> {
    let malformed = CheckpointError::MalformedNote;
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(malformed("control characters other than newline"));
    }
    let split = note.rfind("\n\n").ok_or(malformed("no blank line before the signatures"))?;
    let (text, signatures) = (&note[..=split], &note[split + 2..]);
    let signatures =
        signatures.strip_suffix('\n').ok_or(malformed("the last signature line must end with a newline"))?;
    let mut lines = Vec::new();
    for line in signatures.split('\n') {
        let (name, key_id, signature) = parse_signature_line(line)?;
        lines.push((name, key_id, signature));
    }
    Ok((text, lines))
}

/// One signature line without its newline: `— <name> <base64(key id || signature)>`.
pub(crate) fn parse_signature_line(line: &str) -> Result<SignatureLine<'_>, CheckpointError> {
    let malformed = CheckpointError::MalformedNote;
    let line = line.strip_prefix(SIGNATURE_PREFIX).ok_or(malformed("a signature line must start with '— '"))?;
    let (name, blob) = line.split_once(' ').ok_or(malformed("a signature line is '— name signature'"))?;
    let mut blob = STANDARD.decode(blob).map_err(|_| malformed("a signature is not base64"))?;
    if name.is_empty() || blob.len() < 4 {
        return Err(malformed("a signature line has no name or a short signature"));
    }
    let key_id = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
    blob.drain(..4);
    Ok((name, key_id, blob))
}

/// A signature line, newline included, of `name`'s key `key_id`.
pub(crate) fn signature_line(name: &str, key_id: u32, signature: &[u8]) -> String {
    let mut blob = Vec::with_capacity(4 + signature.len());
    blob.extend_from_slice(&key_id.to_be_bytes());
    blob.extend_from_slice(signature);
    format!("{SIGNATURE_PREFIX}{name} {}\n", STANDARD.encode(blob))
}

/// The text of a signed note once `verifier`'s signature on it verifies.
pub(crate) fn open_note<'a>(note: &'a str, verifier: &VerifierKey) -> Result<&'a str, CheckpointError> {
    let (text, signatures) = split_note(note)?;
    let mut verified = false;
    for (name, key_id, signature) in signatures {
        if name != verifier.name() || key_id != verifier.key_id() {
            continue;
        }
        if !verifier.verifies(text.as_bytes(), &signature) {
            return Err(CheckpointError::BadSignature(verifier.name().to_owned()));
        }
        verified = true;
    }
    if !verified {
        return Err(CheckpointError::NotSigned(verifier.name().to_owned()));
    }
    Ok(text)
}
