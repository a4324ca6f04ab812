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

use chrono::{DateTime, SecondsFormat, Utc};

use crate::transparency::{
    LogSigner, VerifierKey,
    checkpoint::{CheckpointError, open_note, sign_note},
};

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
