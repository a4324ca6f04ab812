//! The signed retention note: retention removed the log's positions below a
//! boundary, under a rule (accesses older than an instant), at a time. A C2SP
//! signed note like a checkpoint, signed with the same key, with this text:
//!
//! ```text
//! <origin>
//! retention
//! <first retained position, decimal>
//! <accesses before this instant were removed, RFC 3339 UTC, microseconds>
//! <time of the removal, RFC 3339 UTC, microseconds>
//! ```
//!
//! A verifier accepts records starting at the boundary of the latest such
//! note (position 0 without one); any other missing prefix is a finding.
//!
//! # Which checkpoints stay stored ([`thinned`])
//! Every checkpoint is stored as it is signed (one small note every
//! checkpoint interval while the log grows), so no access the keeper has
//! put in the tree lacks a stored signature. A checkpoint vouches for every
//! position below its size, so a later one covers all an earlier one did:
//! thinning old ones loses no coverage. Kept: every note of the last
//! [`NOTES_KEPT_WHOLE`], and before it the last checkpoint of each UTC hour,
//! every cosigned checkpoint (a witness's evidence) and every retention
//! note; so the notes stay bounded (about 17,000 for a day at a 5-second
//! interval, then 8,760 a year), which `audit verify` checks one by one.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::{
    store::log::{NoteKind, StoredNote},
    transparency::{
        Checkpoint, LogSigner, VerifierKey,
        checkpoint::{CheckpointError, open_note, sign_note, split_note},
    },
};

/// How long every stored checkpoint is kept before thinning to one an hour.
pub(crate) const NOTES_KEPT_WHOLE: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// The numbers of the stored notes that thinning removes as of `now` (see
/// the module's doc): checkpoints of `verifier`'s key, signed before `now -
/// NOTES_KEPT_WHOLE`, carrying no cosignature, each followed by a later
/// checkpoint of the same UTC hour. Never the last note; notes that do not
/// verify are left for `audit verify` to report.
pub fn thinned(notes: &[StoredNote], verifier: &VerifierKey, now: DateTime<Utc>) -> Vec<u64> {
    let horizon = now - NOTES_KEPT_WHOLE;
    let hour = |time: DateTime<Utc>| time.timestamp().div_euclid(3600);
    let checkpoints: Vec<(u64, DateTime<Utc>, bool)> = notes
        .iter()
        .filter(|note| note.kind == NoteKind::Checkpoint)
        .filter_map(|note| {
            let checkpoint = Checkpoint::verify(&note.text, verifier).ok()?;
            let cosigned = split_note(&note.text).is_ok_and(|(_, signatures)| signatures.len() > 1);
            Some((note.sequence, checkpoint.time, cosigned))
        })
        .collect();
    checkpoints
        .windows(2)
        .filter(|pair| {
            let ((_, time, cosigned), (_, next_time, _)) = (pair[0], pair[1]);
            time < horizon && !cosigned && hour(time) == hour(next_time)
        })
        .map(|pair| pair[0].0)
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionNote {
    pub origin: String,
    /// The first position still held after the removal.
    pub boundary: u64,
    /// Accesses before this instant were removed.
    pub removed_before: DateTime<Utc>,
    pub time: DateTime<Utc>,
}

fn instant(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl RetentionNote {
    pub fn text(&self) -> String {
        format!(
            "{}\nretention\n{}\n{}\n{}\n",
            self.origin,
            self.boundary,
            instant(&self.removed_before),
            instant(&self.time)
        )
    }

    pub fn sign(&self, signer: &LogSigner) -> String {
        sign_note(&self.text(), signer)
    }

    /// Verifies a signed retention note with `verifier` and parses it.
    pub fn verify(note: &str, verifier: &VerifierKey) -> Result<Self, CheckpointError> {
        let malformed = CheckpointError::MalformedCheckpoint;
        let text = open_note(note, verifier)?;
        let lines: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
        let [origin, "retention", boundary, removed_before, time] = lines.as_slice() else {
            return Err(malformed("a retention note has five lines: origin, retention, boundary, rule, time"));
        };
        if *origin != verifier.name() {
            return Err(CheckpointError::OriginMismatch {
                origin: (*origin).to_owned(),
                key_name: verifier.name().to_owned(),
            });
        }
        let parse_time = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .map(|time| time.to_utc())
                .map_err(|_| malformed("a time is not RFC 3339"))
        };
        let note = Self {
            origin: (*origin).to_owned(),
            boundary: boundary.parse().map_err(|_| malformed("the boundary is not a position"))?,
            removed_before: parse_time(removed_before)?,
            time: parse_time(time)?,
        };
        if note.text() != text {
            return Err(malformed("not in canonical form"));
        }
        Ok(note)
    }
}
