//! What the log check keeps across restarts, in its state directory:
//! - `state.json`: the relay's log key the agent checks with, the latest
//!   checkpoint it trusts (a signed note) and the notifications it delivered
//!   whose inclusion is not confirmed yet. Rewritten whole (atomically, see
//!   [`crate::deliver::files::write_atomically`]) after each round.
//! - `pending.jsonl`: one line per notification delivered since, appended
//!   before its acknowledgement, so a crash of the agent forgets no check
//!   (a redelivery after a crash appends the same sequence again: kept once).
//!   Emptied once `state.json` holds its lines.
//! - `evidence/`: one file per problem found (see [`super::LogCheck`]).
//!
//! No personal data: a pending notification is kept as its sequence, its
//! access id and a digest of its fields ([`super::verdict::FieldsDigest`]).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::verdict::FieldsDigest;
use crate::deliver::files::{DEAD_LETTER_MODE, write_atomically};

const STATE_FILE: &str = "state.json";
const JOURNAL_FILE: &str = "pending.jsonl";
pub(crate) const EVIDENCE_DIR: &str = "evidence";

/// A delivered notification whose access is not confirmed in the log yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub sequence: u64,
    #[serde(with = "uuid_text")]
    pub access_id: u128,
    #[serde(with = "base64_digest")]
    pub fields: FieldsDigest,
    /// When the agent delivered it (Unix milliseconds).
    pub delivered_at_ms: i64,
    /// Whether it was reported as not confirmed in time (reported once).
    #[serde(default)]
    pub late: bool,
}

/// The whole state file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Saved {
    /// The relay's log verifier key checked with (configured, or pinned on first use).
    pub verifier_key: Option<String>,
    /// The latest checkpoint trusted: a signed note (with its cosignatures).
    pub trusted_note: Option<String>,
    pub pending: Vec<Pending>,
}

/// The state directory, open.
pub(crate) struct StateDir {
    dir: PathBuf,
    journal: std::fs::File,
}

impl StateDir {
    /// Opens (creating) `dir` and reads what it holds: the saved state with
    /// the journal's notifications added.
    pub(crate) fn open(dir: &Path) -> Result<(Self, Saved, BTreeMap<u64, Pending>), String> {
        let describe = |error: std::io::Error| format!("{}: {error}", dir.display());
        crate::deliver::files::prepare_dir(dir).map_err(describe)?;
        crate::deliver::files::prepare_dir(&dir.join(EVIDENCE_DIR)).map_err(describe)?;
        let saved: Saved = match std::fs::read(dir.join(STATE_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| format!("{}: {error}", dir.join(STATE_FILE).display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(error) => return Err(describe(error)),
        };
        let mut pending: BTreeMap<u64, Pending> =
            saved.pending.iter().map(|entry| (entry.sequence, entry.clone())).collect();
        let journal_path = dir.join(JOURNAL_FILE);
        match std::fs::read_to_string(&journal_path) {
            Ok(text) => {
                // A line cut by a crash mid-write is the last one: skipped,
                // and ended below so that the next line starts afresh.
                for entry in text.lines().filter_map(|line| serde_json::from_str::<Pending>(line).ok()) {
                    pending.entry(entry.sequence).or_insert(entry);
                }
                if !text.is_empty() && !text.ends_with('\n') {
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(&journal_path)
                        .and_then(|mut file| file.write_all(b"\n"))
                        .map_err(describe)?;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(describe(error)),
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, DEAD_LETTER_MODE);
        let journal = options.open(&journal_path).map_err(describe)?;
        Ok((Self { dir: dir.to_owned(), journal }, saved, pending))
    }

    /// Appends one delivered notification to the journal (written through
    /// to the system, so a crash of the agent keeps it).
    pub(crate) fn append(&mut self, entry: &Pending) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.journal.write_all(&line)
    }

    /// Writes the whole state durably, then empties the journal it includes.
    pub(crate) fn save(&mut self, saved: &Saved) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(saved).map_err(std::io::Error::other)?;
        write_atomically(&self.dir, STATE_FILE, &bytes, DEAD_LETTER_MODE)?;
        self.journal.set_len(0)?;
        self.journal.sync_all()
    }

    /// Keeps the evidence of one problem in `evidence/`; returns its path.
    pub(crate) fn keep_evidence(&self, name: &str, evidence: &serde_json::Value) -> std::io::Result<PathBuf> {
        let bytes = serde_json::to_vec_pretty(evidence).map_err(std::io::Error::other)?;
        write_atomically(&self.dir.join(EVIDENCE_DIR), name, &bytes, DEAD_LETTER_MODE)
    }
}

mod uuid_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(id: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&uuid::Uuid::from_u128(*id))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
        let text = String::deserialize(deserializer)?;
        uuid::Uuid::parse_str(&text).map(|id| id.as_u128()).map_err(serde::de::Error::custom)
    }
}

mod base64_digest {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(digest: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        use base64::{Engine, engine::general_purpose::STANDARD};
        serializer.collect_str(&STANDARD.encode(digest))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(deserializer)?;
        use base64::{Engine, engine::general_purpose::STANDARD};
        let bytes = STANDARD.decode(text).map_err(serde::de::Error::custom)?;
        bytes.try_into().map_err(|_| serde::de::Error::custom("a digest is 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sequence: u64) -> Pending {
        Pending {
            sequence,
            access_id: u128::from(sequence) << 64,
            fields: [sequence as u8; 32],
            delivered_at_ms: 1,
            late: false,
        }
    }

    #[test]
    fn journal_lines_survive_a_restart_and_saving_folds_them_into_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let (mut state, saved, pending) = StateDir::open(dir.path()).unwrap();
        assert!(saved.trusted_note.is_none() && pending.is_empty());
        state.append(&entry(1)).unwrap();
        state.append(&entry(2)).unwrap();
        state.append(&entry(2)).unwrap();
        drop(state);
        // A line cut short by a crash is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap()
            .write_all(b"{\"sequence\":3,\"acc")
            .unwrap();
        let (mut state, _, pending) = StateDir::open(dir.path()).unwrap();
        assert_eq!(pending.values().cloned().collect::<Vec<_>>(), [entry(1), entry(2)]);
        state.append(&entry(4)).unwrap();
        drop(state);
        let (mut state, _, pending) = StateDir::open(dir.path()).unwrap();
        assert_eq!(pending.keys().copied().collect::<Vec<_>>(), [1, 2, 4], "a line after the cut one is read");
        let saved =
            Saved { verifier_key: Some("k".into()), trusted_note: Some("note".into()), pending: vec![entry(2)] };
        state.save(&saved).unwrap();
        drop(state);
        let (_, reread, pending) = StateDir::open(dir.path()).unwrap();
        assert_eq!(reread.trusted_note.as_deref(), Some("note"));
        assert_eq!(pending.into_values().collect::<Vec<_>>(), [entry(2)]);
    }
}
