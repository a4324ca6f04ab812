//! The spill: searches whose access and notifications the store has not
//! taken yet, appended in order to a local file in the data directory and
//! synced (`fdatasync`) before the search answers, so that they survive
//! SIGTERM, OOM and restart. It is never the record of anything (the store
//! is): on start the relay reloads it and skips every search whose access
//! is already stored, so a restart never notifies twice.
//!
//! Format: records one after another, each `len: u32` (little-endian),
//! `checksum: [u8; 8]` (the first 8 bytes of the payload's SHA-256), then
//! `len` bytes of postcard-encoded [`HeldSearch`]. A torn or corrupt record
//! ends the read (a crash can only tear the last one: every append is synced
//! before the next). This module does file I/O only and blocks: call it off
//! the async workers.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{AccessEvent, NotificationDraft};

/// The spill file inside the data directory.
pub const SPILL_FILE: &str = "held-notifications.spill";
const HEADER_BYTES: usize = 4 + 8;
/// A record larger than this is corrupt (a held search is a few hundred bytes).
const MAX_RECORD_BYTES: usize = 1 << 20;

/// One held search: its access history entry and its notification drafts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSearch {
    pub access: AccessEvent,
    pub drafts: Vec<NotificationDraft>,
}

/// What a spill file held when it was opened.
#[derive(Debug, Default)]
pub struct Loaded {
    pub held: Vec<HeldSearch>,
    /// Bytes after a torn or corrupt record, not read.
    pub unreadable_bytes: u64,
}

/// The open spill file, positioned at its end.
pub struct Spill {
    path: PathBuf,
    file: File,
    len: u64,
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(payload);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&digest[..8]);
    sum
}

fn encode(held: &HeldSearch) -> io::Result<Vec<u8>> {
    let payload = postcard::to_allocvec(held).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
    let mut record = Vec::with_capacity(HEADER_BYTES + payload.len());
    record.extend_from_slice(&len.to_le_bytes());
    record.extend_from_slice(&checksum(&payload));
    record.extend_from_slice(&payload);
    Ok(record)
}

fn decode_all(bytes: &[u8]) -> Loaded {
    let mut loaded = Loaded::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(record) = decode_one(rest) else {
            loaded.unreadable_bytes = rest.len() as u64;
            break;
        };
        let (held, used) = record;
        loaded.held.push(held);
        rest = &rest[used..];
    }
    loaded
}

fn decode_one(bytes: &[u8]) -> Option<(HeldSearch, usize)> {
    let header = bytes.get(..HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let payload = bytes.get(HEADER_BYTES..HEADER_BYTES + len)?;
    if checksum(payload) != header[4..] {
        return None;
    }
    let held = postcard::from_bytes(payload).ok()?;
    Some((held, HEADER_BYTES + len))
}

/// Options that create the file readable by its owner only, whatever the
/// umask: it holds NHS numbers and the names of clinicians.
fn private(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    options
}

/// Syncs a directory, so that a file created or renamed in it survives a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spill {
    /// Opens (or creates) the spill in `dir` and reads what it holds.
    pub fn open(dir: &Path) -> io::Result<(Self, Loaded)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(SPILL_FILE);
        let mut file = private(OpenOptions::new().read(true).append(true).create(true)).open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let loaded = decode_all(&bytes);
        let len = bytes.len() as u64;
        Ok((Self { path, file, len }, loaded))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one held search and syncs it. On failure the file is cut
    /// back to where it was, so that a torn record never hides later ones.
    pub fn append(&mut self, held: &HeldSearch) -> io::Result<()> {
        let record = encode(held)?;
        let written = self.file.write_all(&record).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += record.len() as u64;
                Ok(())
            }
            Err(error) => {
                let _ = self.file.set_len(self.len);
                Err(error)
            }
        }
    }

    /// Makes the spill exactly `held`, atomically: a new file, synced, renamed over the old one.
    pub fn rewrite<'a>(&mut self, held: impl IntoIterator<Item = &'a HeldSearch>) -> io::Result<()> {
        let mut bytes = Vec::new();
        for search in held {
            bytes.extend_from_slice(&encode(search)?);
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let temporary = self.path.with_extension("spill.new");
        {
            let mut file = private(OpenOptions::new().write(true).create(true).truncate(true)).open(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, &self.path)?;
        sync_dir(dir)?;
        self.file = OpenOptions::new().read(true).append(true).open(&self.path)?;
        self.len = bytes.len() as u64;
        Ok(())
    }

    /// Empties the spill once everything it held is stored.
    pub fn clear(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.len = 0;
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A held search of a synthetic person, for the spill's and the held queue's tests.
    pub(in crate::relay) fn search(id: u128) -> HeldSearch {
        HeldSearch {
            access: AccessEvent {
                id,
                accessed_at: "2026-06-01T09:00:00Z".parse().unwrap(),
                nhs_number: crate::nhs::NhsNumber::parse("9434765919").unwrap(),
                organisation_ods_code: "RR8".into(),
                organisation_name: "Test Hospital".into(),
                care_setting: crate::model::CareSetting::EmergencyDepartment,
                accessor: crate::model::Accessor {
                    user_id: "u".into(),
                    name: "Dr U".into(),
                    role_code: "R8000".into(),
                },
                request_id: format!("r{id}"),
                scheduled: false,
            },
            drafts: Vec::new(),
        }
    }

    #[test]
    fn appended_searches_come_back_in_order_and_a_torn_tail_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spill, loaded) = Spill::open(dir.path()).unwrap();
        assert!(loaded.held.is_empty());
        spill.append(&search(1)).unwrap();
        spill.append(&search(2)).unwrap();
        drop(spill);
        // A torn third record, as a crash in the middle of an append leaves.
        let mut file = OpenOptions::new().append(true).open(dir.path().join(SPILL_FILE)).unwrap();
        file.write_all(&encode(&search(3)).unwrap()[..7]).unwrap();
        drop(file);
        let (mut spill, loaded) = Spill::open(dir.path()).unwrap();
        assert_eq!(loaded.held, vec![search(1), search(2)]);
        assert_eq!(loaded.unreadable_bytes, 7);
        spill.rewrite(&loaded.held[1..]).unwrap();
        spill.append(&search(4)).unwrap();
        drop(spill);
        let (mut spill, loaded) = Spill::open(dir.path()).unwrap();
        assert_eq!(loaded.held, vec![search(2), search(4)]);
        spill.clear().unwrap();
        drop(spill);
        assert!(Spill::open(dir.path()).unwrap().1.held.is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SPILL_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "personal data: owner only");
        }
    }

    #[test]
    fn a_corrupt_record_ends_the_read() {
        let mut bytes = encode(&search(1)).unwrap();
        let second = encode(&search(2)).unwrap();
        let start = bytes.len();
        bytes.extend_from_slice(&second);
        bytes[start + HEADER_BYTES + 3] ^= 0xff;
        let loaded = decode_all(&bytes);
        assert_eq!(loaded.held, vec![search(1)]);
        assert_eq!(loaded.unreadable_bytes, second.len() as u64);
    }
}
