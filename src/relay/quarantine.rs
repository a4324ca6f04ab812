//! The quarantine: held searches whose record the store refused on its own,
//! attempt after attempt, while it took others (PostgreSQL refusing a value,
//! a record that cannot be encoded). Such a search would otherwise stay at
//! the front of the held queue for ever, keeping the node NOT_SERVING and
//! failing every retry behind it. After [`QUARANTINE_AFTER`] attempts, each
//! made with the search alone, it is set aside here, durably, and the queue
//! moves on. Nothing is dropped: the operator lists, exports and replays
//! quarantined searches (`cpis-relay quarantine`), `cpis_notifications_quarantined`
//! counts them (an alert fires while any is kept) and `store check` and
//! `/ops` say how many there are.
//!
//! Kept in `quarantined-notifications` in the data directory, in the spill's
//! framing (length, checksum, postcard payload), appended and synced before
//! the search leaves the held queue; a store without a data directory (the
//! memory store) keeps them in memory only. The relay only appends; the file
//! is rewritten only by `quarantine replay`, which takes the data directory's
//! lock (the relay must be stopped).
//!
//! This module does file I/O and blocks: call it off the async workers.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    sync::Mutex,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::spill::{self, HeldSearch};

/// The quarantine file inside the data directory.
pub(crate) const QUARANTINE_FILE: &str = "quarantined-notifications";

/// Attempts with the search alone, each refused for the record's sake,
/// before a held search is set aside.
pub(crate) const QUARANTINE_AFTER: u32 = 5;

/// A search set aside, with why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    pub search: HeldSearch,
    pub quarantined_at: DateTime<Utc>,
    /// Attempts made before it was set aside.
    pub attempts: u32,
    /// The store's last refusal (its code and message, never a row's values).
    pub error: String,
}

/// What a quarantine file holds, as read.
#[derive(Debug, Default)]
pub struct Contents {
    pub quarantined: Vec<Quarantined>,
    /// Bytes of torn or corrupt records, skipped.
    pub unreadable_bytes: u64,
}

/// The relay's quarantine: a file it appends to, or memory.
pub struct Quarantine {
    inner: Mutex<Inner>,
}

struct Inner {
    file: Option<File>,
    path: Option<PathBuf>,
    count: usize,
    /// Only without a file.
    in_memory: Vec<Quarantined>,
}

impl Quarantine {
    /// Opens (or creates) the quarantine of data directory `dir`, or one in
    /// memory when there is none. The caller holds the directory's lock.
    pub fn open(dir: Option<&Path>) -> io::Result<Self> {
        let Some(dir) = dir else { return Ok(Self::in_memory()) };
        let path = dir.join(QUARANTINE_FILE);
        let existed = path.exists();
        let mut file = spill::private(OpenOptions::new().read(true).append(true).create(true)).open(&path)?;
        if !existed {
            spill::sync_dir(dir)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (quarantined, unreadable) = spill::decode_records::<Quarantined>(&bytes);
        if unreadable > 0 {
            tracing::error!(bytes = unreadable, path = %path.display(), "the quarantine file has torn or corrupt records");
        }
        let count = quarantined.len();
        Ok(Self { inner: Mutex::new(Inner { file: Some(file), path: Some(path), count, in_memory: Vec::new() }) })
    }

    /// A quarantine kept in memory only (a store without a data directory).
    pub(crate) fn in_memory() -> Self {
        Self { inner: Mutex::new(Inner { file: None, path: None, count: 0, in_memory: Vec::new() }) }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many searches are set aside.
    pub fn count(&self) -> usize {
        self.inner().count
    }

    /// Where the quarantine is kept, if in a file.
    pub fn path(&self) -> Option<PathBuf> {
        self.inner().path.clone()
    }

    /// Sets a search aside: appended and synced before this returns. On an
    /// error nothing was kept and the caller must keep the search held.
    pub fn add(&self, quarantined: &Quarantined) -> io::Result<usize> {
        let record = spill::encode_record(quarantined)?;
        let mut inner = self.inner();
        match inner.file.as_mut() {
            Some(file) => {
                let before = file.metadata()?.len();
                if let Err(error) = file.write_all(&record).and_then(|()| file.sync_data()) {
                    // A torn record must not hide the ones appended after it.
                    let _ = file.set_len(before);
                    return Err(error);
                }
            }
            None => inner.in_memory.push(quarantined.clone()),
        }
        inner.count += 1;
        Ok(inner.count)
    }

    /// What is set aside in memory (a store without a data directory).
    pub fn kept_in_memory(&self) -> Vec<Quarantined> {
        self.inner().in_memory.clone()
    }
}

/// Reads the quarantine of data directory `dir` without locking it (the
/// relay only appends whole, synced records; a torn tail is skipped).
pub fn read(dir: &Path) -> io::Result<Contents> {
    let bytes = match std::fs::read(dir.join(QUARANTINE_FILE)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Contents::default()),
        Err(error) => return Err(error),
    };
    let (quarantined, unreadable_bytes) = spill::decode_records(&bytes);
    Ok(Contents { quarantined, unreadable_bytes })
}

/// Makes the quarantine of `dir` exactly `kept`, atomically (a new file,
/// synced, renamed over the old one). For `quarantine replay`, which holds
/// the data directory's lock.
pub fn rewrite(dir: &Path, kept: &[Quarantined]) -> io::Result<()> {
    let mut bytes = Vec::new();
    for quarantined in kept {
        bytes.extend_from_slice(&spill::encode_record(quarantined)?);
    }
    let path = dir.join(QUARANTINE_FILE);
    let temporary = path.with_extension("new");
    {
        let mut file = spill::private(OpenOptions::new().write(true).create(true).truncate(true)).open(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &path)?;
    spill::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::spill::tests::search;

    fn quarantined(id: u128) -> Quarantined {
        Quarantined {
            search: search(id),
            quarantined_at: "2026-06-01T09:00:05Z".parse().unwrap(),
            attempts: QUARANTINE_AFTER,
            error: "PostgreSQL 22021: invalid byte sequence".into(),
        }
    }

    #[test]
    fn quarantined_searches_survive_a_reopen_and_a_rewrite_keeps_only_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let quarantine = Quarantine::open(Some(dir.path())).unwrap();
        assert_eq!(quarantine.add(&quarantined(1)).unwrap(), 1);
        assert_eq!(quarantine.add(&quarantined(2)).unwrap(), 2);
        drop(quarantine);
        assert_eq!(Quarantine::open(Some(dir.path())).unwrap().count(), 2);
        let read_back = read(dir.path()).unwrap();
        assert_eq!(read_back.quarantined, vec![quarantined(1), quarantined(2)]);
        rewrite(dir.path(), &read_back.quarantined[1..]).unwrap();
        assert_eq!(read(dir.path()).unwrap().quarantined, vec![quarantined(2)]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(QUARANTINE_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "personal data: owner only");
        }
    }

    #[test]
    fn without_a_data_directory_the_quarantine_is_in_memory() {
        let quarantine = Quarantine::open(None).unwrap();
        quarantine.add(&quarantined(7)).unwrap();
        assert_eq!((quarantine.count(), quarantine.kept_in_memory()), (1, vec![quarantined(7)]));
        assert_eq!(quarantine.path(), None);
    }

    #[test]
    fn a_directory_without_a_quarantine_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let read_back = read(dir.path()).unwrap();
        assert!(read_back.quarantined.is_empty());
        assert_eq!(read_back.unreadable_bytes, 0);
    }
}
