//! The spill: searches whose access and notifications the store has not
//! taken yet, appended in order to a local file in the data directory and
//! synced (`fdatasync`) before the search answers, so that they survive
//! SIGTERM, OOM and restart. It is never the record of anything (the store
//! is): on start the relay reloads it and skips every search whose access
//! is already stored, so a restart never notifies twice.
//!
//! Format: records one after another, each `len: u32` (little-endian),
//! `checksum: [u8; 8]` (the first 8 bytes of the payload's SHA-256), then
//! `len` bytes of postcard-encoded [`HeldSearch`]. A crash can only tear the
//! last record (every append is synced before the next); a corrupt record
//! elsewhere (a bad sector, a stray write) is skipped and the read goes on at
//! the next record that checks out, so one bad record never costs the held
//! searches after it; the file as found is kept beside it
//! (`held-notifications.spill.corrupt-<unix seconds>`) for an operator.
//!
//! One relay per data directory: [`Spill::open`] takes an exclusive lock on
//! `held-notifications.lock` for as long as the spill is open, and a second
//! relay on the same directory is refused (two would rewrite each other's
//! spill). A data directory must therefore be persistent and not shared. The
//! spill file's creation is made durable by syncing the directory.
//!
//! This module does file I/O only and blocks: call it off the async workers.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::model::{AccessEvent, NotificationDraft};

/// The spill file inside the data directory.
pub const SPILL_FILE: &str = "held-notifications.spill";
/// Locked while a relay has the data directory's spill open.
pub(crate) const LOCK_FILE: &str = "held-notifications.lock";
const HEADER_BYTES: usize = 4 + 8;
/// A record larger than this is corrupt (a held search is a few hundred
/// bytes); small, so that looking for the next record past a corrupt one
/// rarely hashes noise.
const MAX_RECORD_BYTES: usize = 64 << 10;

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
    /// Bytes of torn or corrupt records, skipped.
    pub unreadable_bytes: u64,
    /// Where the file as found was kept, when it had unreadable bytes.
    pub preserved: Option<PathBuf>,
}

/// The open spill file, positioned at its end.
pub struct Spill {
    path: PathBuf,
    file: File,
    len: u64,
    /// Holds the data directory's lock until the spill is dropped.
    _lock: File,
    /// Syncs done, for tests of how appends share them.
    syncs: u64,
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(payload);
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&digest[..8]);
    sum
}

/// One record: header and payload.
pub(super) fn encode(held: &HeldSearch) -> io::Result<Vec<u8>> {
    encode_record(held)
}

/// One record of any kind in the spill's framing (the quarantine file uses it too).
pub(super) fn encode_record<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let payload = postcard::to_allocvec(value).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
    let mut record = Vec::with_capacity(HEADER_BYTES + payload.len());
    record.extend_from_slice(&len.to_le_bytes());
    record.extend_from_slice(&checksum(&payload));
    record.extend_from_slice(&payload);
    Ok(record)
}

/// Every record that checks out; past a torn or corrupt one, the read
/// resumes at the next offset where a whole record checks out (its length,
/// 8 bytes of SHA-256 and its decoding all agree, which noise does not do).
fn decode_all(bytes: &[u8]) -> Loaded {
    let (held, unreadable_bytes) = decode_records(bytes);
    Loaded { held, unreadable_bytes, preserved: None }
}

/// Every record of kind `T` that checks out, and the bytes skipped.
pub(super) fn decode_records<T: DeserializeOwned>(bytes: &[u8]) -> (Vec<T>, u64) {
    let (mut records, mut unreadable) = (Vec::new(), 0);
    let mut at = 0;
    while at < bytes.len() {
        match decode_one(&bytes[at..]) {
            Some((record, used)) => {
                records.push(record);
                at += used;
            }
            None => {
                let next = (at + 1..bytes.len()).find(|&start| decode_one::<T>(&bytes[start..]).is_some());
                let resume = next.unwrap_or(bytes.len());
                unreadable += (resume - at) as u64;
                at = resume;
            }
        }
    }
    (records, unreadable)
}

fn decode_one<T: DeserializeOwned>(bytes: &[u8]) -> Option<(T, usize)> {
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
pub(super) fn private(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    options
}

/// Syncs a directory, so that a file created or renamed in it survives a crash.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Takes the data directory's lock, or says which directory another relay holds.
fn lock(dir: &Path) -> io::Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = private(OpenOptions::new().read(true).write(true).create(true).truncate(false)).open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "another cpis-relay is using the data directory {} ({} is locked): one relay per data directory",
                dir.display(),
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(error)) => Err(error),
    }
}

impl Spill {
    /// Locks the data directory `dir`, opens (or creates) its spill and reads what it holds.
    pub fn open(dir: &Path) -> io::Result<(Self, Loaded)> {
        std::fs::create_dir_all(dir)?;
        let lock = lock(dir)?;
        let path = dir.join(SPILL_FILE);
        let existed = path.exists();
        let mut file = private(OpenOptions::new().read(true).append(true).create(true)).open(&path)?;
        if !existed {
            // The new file's directory entry must survive a power loss, or appends synced to it could vanish.
            sync_dir(dir)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut loaded = decode_all(&bytes);
        if loaded.unreadable_bytes > 0 {
            let seconds = std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            let preserved = path.with_extension(format!("spill.corrupt-{seconds}"));
            std::fs::copy(&path, &preserved)?;
            sync_dir(dir)?;
            loaded.preserved = Some(preserved);
        }
        let len = bytes.len() as u64;
        Ok((Self { path, file, len, _lock: lock, syncs: 0 }, loaded))
    }

    /// Syncs done since it was opened.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one held search and syncs it.
    pub fn append(&mut self, held: &HeldSearch) -> io::Result<()> {
        self.append_records(&encode(held)?)
    }

    /// Appends encoded records ([`encode`]) with one sync. On failure the
    /// file is cut back to where it was, so that a torn record never hides later ones.
    pub(super) fn append_records(&mut self, records: &[u8]) -> io::Result<()> {
        self.syncs += 1;
        let written = self.file.write_all(records).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += records.len() as u64;
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
        self.syncs += 1;
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
        self.syncs += 1;
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
    fn a_corrupt_record_is_skipped_and_the_records_after_it_kept() {
        let mut bytes = encode(&search(1)).unwrap();
        let second = encode(&search(2)).unwrap();
        let start = bytes.len();
        bytes.extend_from_slice(&second);
        bytes.extend_from_slice(&encode(&search(3)).unwrap());
        bytes.extend_from_slice(&encode(&search(4)).unwrap());
        bytes[start + HEADER_BYTES + 3] ^= 0xff;
        let loaded = decode_all(&bytes);
        assert_eq!(loaded.held, vec![search(1), search(3), search(4)]);
        assert_eq!(loaded.unreadable_bytes, second.len() as u64);
    }

    #[test]
    fn a_corrupt_spill_keeps_its_tail_across_a_restart_and_the_file_as_found() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spill, _) = Spill::open(dir.path()).unwrap();
        for id in 1..=3 {
            spill.append(&search(id)).unwrap();
        }
        drop(spill);
        let path = dir.path().join(SPILL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES + 2] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (mut spill, loaded) = Spill::open(dir.path()).unwrap();
        assert_eq!(loaded.held, vec![search(2), search(3)]);
        let preserved = loaded.preserved.expect("the file as found is kept");
        assert_eq!(std::fs::read(&preserved).unwrap(), bytes);
        spill.rewrite(&loaded.held).unwrap();
        drop(spill);
        assert_eq!(Spill::open(dir.path()).unwrap().1.held, vec![search(2), search(3)]);
    }

    #[test]
    fn one_relay_per_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = Spill::open(dir.path()).unwrap();
        let refused = Spill::open(dir.path()).err().expect("the second is refused");
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock);
        assert!(refused.to_string().contains("one relay per data directory"), "{refused}");
        drop(first);
        Spill::open(dir.path()).unwrap();
    }
}
