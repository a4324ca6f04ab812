//! The default store: an LSM engine (fjall) with a write-ahead journal, in
//! the data directory, as two databases, each with its own journal and its
//! own write lane (see [`lane`]):
//!
//! - `plans/`: authorities, plans in their stored form ([`StoredPlan`]),
//!   plans by their last visible day (for retention), and the plans' history
//!   of changes by person and by time ([`crate::plan_history`]);
//! - `activity/`: a person's accesses in time order, accesses by time (for
//!   retention), each authority's notifications by sequence, and each
//!   authority's acknowledged position.
//!
//! A flagged search writes its access, its time entry and one notification
//! per owning authority, nothing else: an authority's last sequence is its
//! newest notification's (read on open), and a retried request is recognised
//! from the accesses, which the relay holds in memory (see `crate::accesses`).
//! The durable part of a batch of searches is one sequential append to the
//! activity journal and one `fdatasync`: the keyspaces that answer reads are
//! the engine's memtables, flushed and compacted by its own threads off the
//! commit path, and rebuilt from the journal after a crash. Changes of one
//! batch become visible to readers together, after the sync.
//!
//! Start-up copies plan bytes into the index without decoding them, and
//! reads every person's recent accesses on a second thread meanwhile.

mod by_person;
mod changes;
pub(super) mod keys;
mod lane;
mod log;
mod notification;
mod plan_changes;
pub(in crate::store) use log::{bounds as log_bounds, logged};

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use futures::{FutureExt, future::BoxFuture};
use serde::{Serialize, de::DeserializeOwned};

use self::lane::Lane;
use super::{Applied, Broken, Change, Cursor, Snapshot, Store, StoreError};
use crate::{
    accesses::Recent,
    model::{AccessEvent, AccessView, Notification},
    nhs::NhsNumber,
    plan_history::PlanEvent,
    stored::StoredPlan,
};

/// The plans database inside the data directory.
pub(crate) const PLANS_DIR: &str = "plans";
/// The activity database inside the data directory.
pub(crate) const ACTIVITY_DIR: &str = "activity";
/// The file of the store before version 3 (redb), refused with a message.
const OLD_FILE_NAME: &str = "cpis-relay.redb";
/// Version 3: two fjall databases, request ids, signed big-endian keys.
const SCHEMA_VERSION: u64 = 3;
/// The engines' block caches together, unless configured: reads of plans on
/// start and of histories on search; the operating system caches the files too.
pub(crate) const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Memtable size per keyspace before it is flushed to a table file.
const MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;
/// Journal kept per database before the oldest memtables are flushed so it
/// can be dropped: bounds what a start replays (about 1 s on this machine).
const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// Creates `dir` (and its missing parents) with mode 0700 whatever the
/// umask, and tightens an existing one to 0700: the store holds children's
/// names, dates of birth and addresses.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Sets every directory under `root` (itself included) to 0700 and every
/// file to 0600. fjall creates its files with the process umask and keeps
/// writing new table and journal files after this walk; those are private
/// all the same, because the data directory itself is 0700 (no one but the
/// relay's user can reach them).
///
/// Each directory is also synced, once its entries are walked: fjall syncs a
/// new keyspace's own directory but not the `keyspaces/` directory that
/// names it, so without this a power loss after a store is created could
/// leave a journal whose keyspaces are gone (`tests/it/faults/power_loss.rs` found it).
fn restrict_tree(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::symlink_metadata(root)?;
    if metadata.is_dir() {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            match restrict_tree(&entry.path()) {
                // A file the engine removed meanwhile (compaction) needs nothing.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        std::fs::File::open(root)?.sync_all()?;
    } else if metadata.is_file() {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

pub(super) fn io(error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(error.to_string())
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|error| StoreError::Corrupt(format!("encoding: {error}")))
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8], keyspace: &str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|error| StoreError::Corrupt(format!("{keyspace}: {error}")))
}

/// The two databases and their keyspaces; fjall handles are cheap clones.
#[derive(Clone)]
pub(super) struct Spaces {
    pub plans_db: Database,
    pub meta: Keyspace,
    pub authorities: Keyspace,
    pub plans: Keyspace,
    pub plan_expiry: Keyspace,
    /// Plans' changes by person and by time (see [`crate::plan_history`]).
    pub plan_history: Keyspace,
    pub plan_history_times: Keyspace,
    pub activity_db: Database,
    pub accesses: Keyspace,
    /// Written by earlier releases only; emptied on open.
    pub access_times: Keyspace,
    pub requests: Keyspace,
    pub notifications: Keyspace,
    /// Each notification's key under its person's NHS number (see [`keys::person_notification`]).
    pub notifications_by_person: Keyspace,
    pub cursors: Keyspace,
    /// The access log (see [`log`]).
    pub log: Keyspace,
    pub log_ids: Keyspace,
    pub audit_reads: Keyspace,
    pub log_meta: Keyspace,
    pub log_tree: Keyspace,
    pub log_notes: Keyspace,
    /// What the activity lane appended to the log, hashed, for the keeper.
    pub appended: Arc<log::Appended>,
    /// Held while a note takes the next note number: the keeper's checkpoint
    /// and a retention note stored at one moment must not take the same one.
    pub notes_lock: Arc<std::sync::Mutex<()>>,
}

impl Spaces {
    pub(super) fn open(data_dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let open = |name: &str| -> Result<Database, StoreError> {
            let path = data_dir.join(name);
            Database::builder(&path)
                .cache_size(cache_bytes as u64 / 2)
                .max_journaling_size(MAX_JOURNAL_BYTES)
                .worker_threads(1)
                .open()
                .map_err(|error| StoreError::Io(format!("{}: {error}", path.display())))
        };
        let keyspace = |database: &Database, name: &str| {
            database
                .keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES))
                .map_err(|error| StoreError::Io(format!("keyspace {name}: {error}")))
        };
        let (plans_db, activity_db) = (open(PLANS_DIR)?, open(ACTIVITY_DIR)?);
        Ok(Self {
            meta: keyspace(&plans_db, "meta")?,
            authorities: keyspace(&plans_db, "authorities")?,
            plans: keyspace(&plans_db, "plans")?,
            plan_expiry: keyspace(&plans_db, "plan_expiry")?,
            plan_history: keyspace(&plans_db, "plan_history")?,
            plan_history_times: keyspace(&plans_db, "plan_history_times")?,
            accesses: keyspace(&activity_db, "accesses")?,
            access_times: keyspace(&activity_db, "access_times")?,
            requests: keyspace(&activity_db, "requests")?,
            notifications: keyspace(&activity_db, "notifications")?,
            notifications_by_person: keyspace(&activity_db, "notifications_by_person")?,
            cursors: keyspace(&activity_db, "cursors")?,
            log: keyspace(&activity_db, "log")?,
            log_ids: keyspace(&activity_db, "log_ids")?,
            audit_reads: keyspace(&activity_db, "audit_reads")?,
            log_meta: keyspace(&activity_db, "log_meta")?,
            log_tree: keyspace(&activity_db, "log_tree")?,
            log_notes: keyspace(&activity_db, "log_notes")?,
            appended: Arc::default(),
            notes_lock: Arc::default(),
            plans_db,
            activity_db,
        })
    }

    /// Every authority's positions: the acknowledged position from its
    /// cursor record, and the last sequence from its newest notification (a
    /// search writes no cursor; an acknowledgement records the last sequence
    /// of its time, which covers notifications retention has removed since).
    pub(in crate::store) fn positions(&self) -> Result<Vec<Cursor>, StoreError> {
        let corrupt = || StoreError::Corrupt("notifications: malformed key".into());
        let mut cursors: std::collections::BTreeMap<String, Cursor> =
            self.cursors()?.into_iter().map(|cursor| (cursor.la_ods_code.clone(), cursor)).collect();
        let mut from: Vec<u8> = Vec::new();
        while let Some(first) = self.notifications.range(from.clone()..).next() {
            let key = first.key().map_err(io)?;
            let split = key.iter().position(|&byte| byte == 0).ok_or_else(corrupt)?;
            let la = std::str::from_utf8(&key[..split]).map_err(|_| corrupt())?.to_owned();
            if let Some(last) = self.notifications.prefix(keys::authority_prefix(&la)).next_back() {
                let last = last.key().map_err(io)?;
                let sequence: [u8; 8] =
                    last.get(split + 1..).and_then(|tail| tail.try_into().ok()).ok_or_else(corrupt)?;
                let cursor = cursors
                    .entry(la.clone())
                    .or_insert_with(|| Cursor { la_ods_code: la.clone(), ..Cursor::default() });
                cursor.last_sequence = cursor.last_sequence.max(u64::from_be_bytes(sequence));
            }
            // Past every key of this authority: its separator 0 becomes 1.
            from = la.into_bytes();
            from.push(1);
        }
        Ok(cursors.into_values().collect())
    }

    /// Every authority's cursor record.
    fn cursors(&self) -> Result<Vec<Cursor>, StoreError> {
        let mut cursors = Vec::new();
        for entry in self.cursors.iter() {
            let (key, value) = entry.into_inner().map_err(io)?;
            let la = std::str::from_utf8(&key).map_err(|_| StoreError::Corrupt("cursors: key".into()))?;
            let (last_sequence, acked_through): (u64, u64) = decode(&value, "cursors")?;
            cursors.push(Cursor { la_ods_code: la.to_owned(), last_sequence, acked_through });
        }
        Ok(cursors)
    }
}

/// A handle to the embedded store; clones share the databases and lanes.
/// When the last clone is dropped the lanes commit what is queued and stop.
#[derive(Clone)]
pub struct EmbeddedStore {
    spaces: Spaces,
    plan_lane: Arc<Lane>,
    activity_lane: Arc<Lane>,
    path: PathBuf,
    stats: Arc<CommitStats>,
    broken: Broken,
}

/// Group-commit counters since the store was opened (both lanes).
#[derive(Debug, Default)]
pub(crate) struct CommitStats {
    /// Durable batches committed.
    pub commits: AtomicU64,
    /// Changes carried by those batches.
    pub changes: AtomicU64,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir` and starts its lanes.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    /// [`EmbeddedStore::open`] with block caches of `cache_bytes` in all.
    pub(crate) fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        create_private_dir(data_dir).map_err(|error| StoreError::Io(format!("{}: {error}", data_dir.display())))?;
        if data_dir.join(OLD_FILE_NAME).exists() {
            return Err(StoreError::Corrupt(format!(
                "{} holds a schema version 2 store (one redb file); this relay reads version {SCHEMA_VERSION}: \
                 export each authority's plans with the previous release, start on an empty data directory and upload them again",
                data_dir.display()
            )));
        }
        let spaces = Spaces::open(data_dir, cache_bytes)?;
        restrict_tree(data_dir).map_err(|error| StoreError::Io(format!("{}: {error}", data_dir.display())))?;
        check_schema(&spaces)?;
        empty_keyspace(&spaces, &spaces.requests)?;
        log::assign_positions(&spaces)?;
        empty_keyspace(&spaces, &spaces.access_times)?;
        by_person::index_on_open(&spaces)?;
        let log_bounds = log::bounds(&spaces)?;
        let stats = Arc::new(CommitStats::default());
        let positions = spaces.positions()?.into_iter().map(|cursor| (cursor.la_ods_code.clone(), cursor)).collect();
        let broken = Broken::default();
        let plan_lane = Lane::start(
            "plans",
            plan_changes::PlanCommitter { spaces: spaces.clone() },
            Arc::clone(&stats),
            broken.clone(),
        )?;
        let activity_lane = Lane::start(
            "activity",
            changes::ActivityCommitter { spaces: spaces.clone(), positions, log: log_bounds, undo: Vec::new() },
            Arc::clone(&stats),
            broken.clone(),
        )?;
        Ok(Self {
            spaces,
            plan_lane: Arc::new(plan_lane),
            activity_lane: Arc::new(activity_lane),
            path: data_dir.to_owned(),
            stats,
            broken,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (commits, changes) since opening: their ratio is the average group-commit batch.
    pub fn commit_stats(&self) -> (u64, u64) {
        (self.stats.commits.load(Ordering::Acquire), self.stats.changes.load(Ordering::Acquire))
    }

    /// Runs a read on the blocking pool, off the async worker threads.
    fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Spaces) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let spaces = self.spaces.clone();
        async move { tokio::task::spawn_blocking(move || work(&spaces)).await.map_err(io)? }.boxed()
    }
}

/// Empties a keyspace only an earlier release wrote, in bounded batches; an
/// empty one costs one read. `requests`: requests are recognised from the
/// accesses themselves. `access_times`: the access log orders the accesses
/// (and retention follows it), once [`log::assign_positions`] has read it.
fn empty_keyspace(spaces: &Spaces, keyspace: &Keyspace) -> Result<(), StoreError> {
    loop {
        let mut batch = spaces.activity_db.batch().durability(Some(fjall::PersistMode::SyncData));
        let mut removed = 0usize;
        for entry in keyspace.iter().take(100_000) {
            batch.remove(keyspace, entry.key().map_err(io)?);
            removed += 1;
        }
        if removed == 0 {
            return Ok(());
        }
        batch.commit().map_err(io)?;
    }
}

/// Records the schema version in a new store, or checks it in an old one.
fn check_schema(spaces: &Spaces) -> Result<(), StoreError> {
    match spaces.meta.get("schema_version").map_err(io)? {
        None => {
            spaces.meta.insert("schema_version", SCHEMA_VERSION.to_be_bytes()).map_err(io)?;
            spaces.plans_db.persist(fjall::PersistMode::SyncAll).map_err(io)?;
            Ok(())
        }
        Some(bytes) => {
            let version = <[u8; 8]>::try_from(&bytes[..]).map(u64::from_be_bytes).unwrap_or(0);
            if version == SCHEMA_VERSION {
                Ok(())
            } else {
                Err(StoreError::Corrupt(format!("schema version {version}; this relay reads version {SCHEMA_VERSION}")))
            }
        }
    }
}

/// Which lanes a change goes to.
fn lanes_of(change: &Change) -> (bool, bool) {
    match change {
        Change::UpsertPlans { .. } | Change::ReplacePlans { .. } | Change::DeletePlans { .. } => (true, false),
        Change::RecordAccess { .. } | Change::RecordAudit(_) | Change::Ack { .. } => (false, true),
        Change::Expire(_) => (true, true),
    }
}

impl Store for EmbeddedStore {
    fn load(&self) -> BoxFuture<'static, Result<Snapshot, StoreError>> {
        self.read(|spaces| {
            // Accesses on a second thread while this one reads the plans: start-up
            // reads both in full, and they are independent.
            std::thread::scope(|scope| {
                let recent = std::thread::Builder::new()
                    .name("cpis-load-accesses".into())
                    .spawn_scoped(scope, || recent_accesses(spaces))
                    .map_err(io)?;
                let mut snapshot = load_plans(spaces)?;
                snapshot.recent =
                    recent.join().map_err(|_| StoreError::Io("reading the accesses panicked".into()))??;
                Ok(snapshot)
            })
        })
    }

    fn apply(&self, change: Change) -> BoxFuture<'static, Result<Applied, StoreError>> {
        match lanes_of(&change) {
            (true, false) => Lane::apply(self.plan_lane.sender(), change).boxed(),
            (false, _) => Lane::apply(self.activity_lane.sender(), change).boxed(),
            (true, true) => {
                let (plans, activity) = (self.plan_lane.sender(), self.activity_lane.sender());
                async move {
                    let (from_plans, from_activity) =
                        futures::try_join!(Lane::apply(plans, change.clone()), Lane::apply(activity, change))?;
                    Ok(match (from_plans, from_activity) {
                        (Applied::Expired(plans), Applied::Expired(activity)) => {
                            Applied::Expired(super::ExpiryCounts {
                                plans: plans.plans,
                                plan_changes: plans.plan_changes,
                                notifications: activity.notifications,
                                accesses: activity.accesses,
                            })
                        }
                        (other, _) => other,
                    })
                }
                .boxed()
            }
        }
    }

    fn plan_history_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<PlanEvent>, StoreError>> {
        self.read(move |spaces| {
            let mut events = Vec::new();
            for entry in spaces.plan_history.prefix(keys::person_prefix(nhs_number)) {
                events.push(PlanEvent::decode(&entry.value().map_err(io)?)?);
            }
            Ok(events)
        })
    }

    fn accesses_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<AccessEvent>, StoreError>> {
        self.read(move |spaces| {
            let mut accesses: Vec<AccessEvent> = Vec::new();
            for entry in spaces.accesses.prefix(keys::person_prefix(nhs_number)) {
                accesses.push(decode(&entry.value().map_err(io)?, "accesses")?);
            }
            // Unscheduled and scheduled accesses are filed apart: merge them into time order.
            accesses.sort_by_key(|access| (access.accessed_at, access.id));
            Ok(accesses)
        })
    }

    fn notifications_after(
        &self,
        la_ods_code: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        let la = la_ods_code.to_owned();
        self.read(move |spaces| {
            let mut page = Vec::with_capacity(limit.min(1024));
            if after == u64::MAX {
                return Ok(page);
            }
            let (from, to) = (keys::notification(&la, after + 1), keys::notification(&la, u64::MAX));
            for entry in spaces.notifications.range(from..=to).take(limit) {
                page.push(notification::decode_notification(&entry.value().map_err(io)?)?);
            }
            Ok(page)
        })
    }

    fn notifications_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        self.read(move |spaces| by_person::notifications_of(spaces, nhs_number))
    }

    fn broken(&self) -> Option<Broken> {
        Some(self.broken.clone())
    }

    fn access_log(&self) -> Option<Arc<dyn crate::store::log::AccessLog>> {
        Some(Arc::new(log::EmbeddedLog { spaces: self.spaces.clone() }))
    }
}

/// Authorities, plans (bytes, not decoded) and positions, for the index.
fn load_plans(spaces: &Spaces) -> Result<Snapshot, StoreError> {
    let mut snapshot = Snapshot::default();
    for entry in spaces.authorities.iter() {
        let (_, value) = entry.into_inner().map_err(io)?;
        snapshot.authorities.push(decode(&value, "authorities")?);
    }
    snapshot.plans.reserve(spaces.plans.approximate_len());
    let mut la_codes: std::collections::HashMap<String, Arc<str>> = std::collections::HashMap::new();
    for entry in spaces.plans.iter() {
        let (key, value) = entry.into_inner().map_err(io)?;
        let (la, nhs, plan_type) = keys::parse_plan(&key)?;
        let la = match la_codes.get(la) {
            Some(shared) => Arc::clone(shared),
            None => Arc::clone(la_codes.entry(la.to_owned()).or_insert_with(|| la.into())),
        };
        snapshot.plans.push(StoredPlan::from_stored(la, nhs, plan_type, &value)?);
    }
    snapshot.cursors = spaces.positions()?;
    Ok(snapshot)
}

/// Every person's recent accesses, read in key order (person, then kind,
/// then time) and decoded in place, without copying their text.
fn recent_accesses(spaces: &Spaces) -> Result<Recent, StoreError> {
    let recent = Recent::new();
    let mut person: Option<NhsNumber> = None;
    let mut values: Vec<fjall::Slice> = Vec::new();
    let flush = |person: Option<NhsNumber>, values: &mut Vec<fjall::Slice>| -> Result<(), StoreError> {
        if let Some(nhs_number) = person {
            let views = values
                .iter()
                .map(|value| {
                    postcard::from_bytes(value).map_err(|error| StoreError::Corrupt(format!("accesses: {error}")))
                })
                .collect::<Result<Vec<AccessView<'_>>, _>>()?;
            recent.load_person(nhs_number, views);
        }
        values.clear();
        Ok(())
    };
    for entry in spaces.accesses.iter() {
        let (key, value) = entry.into_inner().map_err(io)?;
        let nhs = keys::person_of_access(&key)?;
        if person != Some(nhs) {
            flush(person, &mut values)?;
            person = Some(nhs);
        }
        values.push(value);
    }
    flush(person, &mut values)?;
    Ok(recent)
}

#[cfg(test)]
mod tests;
