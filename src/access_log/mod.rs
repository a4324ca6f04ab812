//! The tamper-evident access log wired to the relay: the stores
//! give every access a log position in commit order (`crate::store::log`);
//! this module builds and signs the tree over them ([`keeper`]), records
//! retention under a signed note ([`notes`]), gets checkpoints cosigned by
//! witnesses ([`witnessing`]) and verifies a store's log
//! against its signed notes ([`verify`]). The construction itself (hashing,
//! proofs, checkpoints) is `crate::transparency`, which reads no store.
//!
//! # What verification trusts
//! Only the verifier key. The tree's hashes are derived data kept for fast
//! proofs; `audit verify` recomputes every root from the records and checks
//! it against each signed checkpoint, and checks the stored tree too (so a
//! difference is reported at its position, not only at a checkpoint).
//!
//! # Retention
//! Retention removes a prefix of the log (see `crate::store::log`) and the
//! keeper signs a retention note naming the first position kept and the
//! rule. The tree's hashes are kept whole (32 bytes per access and about as
//! much again for interior nodes; no personal data: a leaf hash covers a
//! random 128-bit access id, so it cannot be tested against guesses), so
//! verification starts from the tree's frontier at the boundary: every
//! checkpoint after it is recomputed from that frontier and the records
//! kept, every checkpoint before it is checked against the stored tree, and
//! records missing below the boundary without a signed note are a finding.

pub mod keeper;
pub mod notes;
pub mod verify;
pub mod witnessing;

#[cfg(test)]
mod tests;

pub use keeper::{Inclusion, LogKeeper, SignedCheckpoint};
pub use notes::RetentionNote;
pub use verify::{LogFinding, LogReport, verify_log, verify_log_against};
pub use witnessing::{WitnessEndpoint, WitnessPolicy};

/// The key file's name inside the data directory unless configured.
pub(crate) const DEFAULT_KEY_FILE: &str = "access-log.key";
/// The public verifier key written beside it, for auditors.
pub const VERIFIER_KEY_FILE: &str = "access-log.pub";
/// The name the relay signs its checkpoints under unless configured.
pub const DEFAULT_LOG_NAME: &str = "cpis-relay/access-log";
/// Seconds between checkpoints unless configured.
pub(crate) const DEFAULT_CHECKPOINT_INTERVAL_SECS: u64 = 5;

/// Loads the log's signing key from `path`, generating it (mode 0600, its
/// directory synced) when it does not exist yet, and keeps the public
/// verifier key beside it (`access-log.pub`) the key's own: written when
/// missing, rewritten when it names another key (a stale copy would have
/// auditors check against the wrong key).
pub fn load_or_create_signer(
    name: &str,
    path: &std::path::Path,
) -> Result<(crate::transparency::LogSigner, bool), crate::transparency::key::KeyError> {
    let created = if path.exists() {
        false
    } else {
        crate::transparency::key::generate_key_file(path)?;
        true
    };
    let signer = crate::transparency::LogSigner::from_key_file(name, path)?;
    let public = path.with_file_name(VERIFIER_KEY_FILE);
    let verifier = signer.verifier().to_string();
    let current = std::fs::read_to_string(&public).ok();
    if current.as_deref().map(str::trim) != Some(verifier.as_str()) {
        if current.is_some() {
            tracing::warn!(path = %public.display(), verifier = %verifier, "the verifier key file named another key; rewritten to match the signing key");
        }
        // A key on a read-only mount (a secret) is used as it is: the verifier key is for auditors.
        if let Err(error) = std::fs::write(&public, format!("{verifier}\n")) {
            tracing::warn!(path = %public.display(), %error, verifier = %verifier, "cannot write the verifier key beside the signing key");
        }
    }
    Ok((signer, created))
}

/// The key (name and key id) the newest stored checkpoint of `log` is
/// signed with, when that is not `verifier`: the log's key is recorded by
/// the checkpoints it signed, so a node with another key must not sign more
/// (every node of a deployment signs with one key). `None` when the newest
/// checkpoint verifies with `verifier`, or none is stored. Blocks.
pub(crate) fn recorded_key_if_other(
    log: &dyn crate::store::log::AccessLog,
    verifier: &crate::transparency::VerifierKey,
) -> Result<Option<(String, u32)>, crate::store::StoreError> {
    use crate::{store::log::NoteKind, transparency::checkpoint::split_note};
    for note in log.notes()?.iter().rev().filter(|note| note.kind == NoteKind::Checkpoint) {
        if crate::transparency::Checkpoint::verify(&note.text, verifier).is_ok() {
            return Ok(None);
        }
        let Ok((text, signatures)) = split_note(&note.text) else { continue };
        let origin = text.lines().next().unwrap_or_default();
        let signer = signatures.iter().find(|(name, _, _)| *name == origin).or(signatures.first());
        if let Some((name, key_id, _)) = signer {
            return Ok(Some(((*name).to_owned(), *key_id)));
        }
    }
    Ok(None)
}
