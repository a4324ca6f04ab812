//! The default store: one redb file in the data directory.
//!
//! All writes go through one writer thread. It takes every change that has
//! queued up (group commit), applies them in one transaction with redb's
//! immediate durability, and answers each caller after the commit, so
//! concurrent flagged searches share one fsync instead of paying one each.
//! If the commit fails, every change of the batch fails and nothing of it
//! is visible, in the file or in the sequence numbers handed out.
//!
//! Retention is cheap because each kind of record is keyed by what expires
//! it: plans have a secondary table ordered by their last visible day,
//! accesses a time-ordered table beside the per-person one that searches
//! read, and notifications are keyed by sequence (which follows time) per
//! authority.
//!
//! Plans are written in their stored form ([`StoredPlan`]), so start-up
//! copies bytes into the index without decoding them.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use chrono::NaiveDate;
use futures::{FutureExt, future::BoxFuture};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};

mod changes;

use changes::apply;

use super::{Applied, Change, Cursor, Faults, Snapshot, Store, StoreError};
use crate::{
    model::{AccessEvent, Notification, PlanType, days},
    nhs::NhsNumber,
    stored::StoredPlan,
};

/// The file inside the data directory.
pub const FILE_NAME: &str = "cpis-relay.redb";
/// Version 2: plans in their stored form, dates as day numbers, per-person accesses.
const SCHEMA_VERSION: u64 = 2;
/// redb's page cache unless configured: reads of plans on start and of
/// access histories on search; the operating system caches the file too.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Most changes committed in one transaction.
const MAX_BATCH: usize = 4096;
/// Changes that may wait for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 8192;

pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const AUTHORITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("authorities");
/// (authority, NHS number, plan type) -> plan in its stored form.
pub(super) const PLANS: TableDefinition<(&str, u64, u8), &[u8]> = TableDefinition::new("plans");
/// (last visible day, authority, NHS number, plan type) for plans that end.
pub(super) const PLAN_EXPIRY: TableDefinition<(i32, &str, u64, u8), ()> = TableDefinition::new("plan_expiry");
/// (NHS number, accessed at in microseconds, access id) -> access: a person's history in order.
pub(super) const ACCESSES: TableDefinition<(u64, i64, u128), &[u8]> = TableDefinition::new("accesses");
/// (accessed at in microseconds, access id) -> NHS number: accesses in time order, for retention.
pub(super) const ACCESS_TIMES: TableDefinition<(i64, u128), u64> = TableDefinition::new("access_times");
/// (authority, sequence) -> notification.
pub(super) const NOTIFICATIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("notifications");
/// authority -> (last sequence, acknowledged through).
pub(super) const CURSORS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("cursors");

struct Job {
    change: Change,
    reply: oneshot::Sender<Result<Applied, StoreError>>,
}

/// A handle to the embedded store; clones share the file and the writer.
/// When the last clone is dropped the writer finishes what is queued and
/// the file is closed before the drop returns, so it can be reopened at once.
#[derive(Clone)]
pub struct EmbeddedStore {
    database: Arc<Database>,
    writer: Arc<WriterHandle>,
    faults: Faults,
    path: PathBuf,
    stats: Arc<CommitStats>,
}

/// Group-commit counters since the store was opened.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Durable transactions committed.
    pub commits: AtomicU64,
    /// Changes carried by those transactions.
    pub changes: AtomicU64,
}

struct WriterHandle {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterHandle {
    fn jobs(&self) -> Option<mpsc::Sender<Job>> {
        self.jobs.clone()
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has committed what is queued.
        self.jobs.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the store writer panicked");
        }
    }
}

pub(super) fn io(error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(error.to_string())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|error| StoreError::Corrupt(format!("encoding: {error}")))
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8], table: &str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|error| StoreError::Corrupt(format!("{table}: {error}")))
}

fn type_key(plan_type: PlanType) -> u8 {
    match plan_type {
        PlanType::ChildProtection => 0,
        PlanType::LookedAfter => 1,
        PlanType::UnbornChildProtection => 2,
    }
}

pub(super) fn plan_type_of(key: u8) -> Result<PlanType, StoreError> {
    match key {
        0 => Ok(PlanType::ChildProtection),
        1 => Ok(PlanType::LookedAfter),
        2 => Ok(PlanType::UnbornChildProtection),
        other => Err(StoreError::Corrupt(format!("plans: plan type key {other}"))),
    }
}

fn day_key(date: NaiveDate) -> i32 {
    days::to_number(date)
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir` and starts its writer.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    /// [`EmbeddedStore::open`] with a page cache of `cache_bytes`.
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|error| StoreError::Io(format!("{}: {error}", data_dir.display())))?;
        let path = data_dir.join(FILE_NAME);
        let database = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(|error| StoreError::Io(format!("{}: {error}", path.display())))?;
        let positions = initialise(&database)?;
        let database = Arc::new(database);
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let faults = Faults::default();
        let stats = Arc::new(CommitStats::default());
        let writer =
            Writer { database: Arc::clone(&database), positions, faults: faults.clone(), stats: Arc::clone(&stats) };
        let thread = std::thread::Builder::new()
            .name("cpis-store-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(io)?;
        let writer = Arc::new(WriterHandle { jobs: Some(jobs), thread: Some(thread) });
        Ok(Self { database, writer, faults, path, stats })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (commits, changes) since opening: their ratio is the average group-commit batch.
    pub fn commit_stats(&self) -> (u64, u64) {
        (self.stats.commits.load(Ordering::Acquire), self.stats.changes.load(Ordering::Acquire))
    }

    fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let database = Arc::clone(&self.database);
        async move { tokio::task::spawn_blocking(move || work(&database)).await.map_err(io)? }.boxed()
    }
}

/// Creates missing tables, checks the schema and reads sequence positions.
fn initialise(database: &Database) -> Result<HashMap<String, Cursor>, StoreError> {
    let transaction = database.begin_write().map_err(io)?;
    {
        let mut meta = transaction.open_table(META).map_err(io)?;
        let version = meta.get("schema_version").map_err(io)?.map(|value| value.value());
        match version {
            None => {
                meta.insert("schema_version", SCHEMA_VERSION).map_err(io)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "schema version {other}; this relay reads version {SCHEMA_VERSION}"
                )));
            }
        }
        transaction.open_table(AUTHORITIES).map_err(io)?;
        transaction.open_table(PLANS).map_err(io)?;
        transaction.open_table(PLAN_EXPIRY).map_err(io)?;
        transaction.open_table(ACCESSES).map_err(io)?;
        transaction.open_table(ACCESS_TIMES).map_err(io)?;
        transaction.open_table(NOTIFICATIONS).map_err(io)?;
        transaction.open_table(CURSORS).map_err(io)?;
    }
    transaction.commit().map_err(io)?;
    let read = database.begin_read().map_err(io)?;
    let cursors = read.open_table(CURSORS).map_err(io)?;
    let mut positions = HashMap::new();
    for entry in cursors.iter().map_err(io)? {
        let (la, value) = entry.map_err(io)?;
        let (last_sequence, acked_through) = value.value();
        let la = la.value().to_owned();
        positions.insert(la.clone(), Cursor { la_ods_code: la, last_sequence, acked_through });
    }
    Ok(positions)
}

/// The single writer: owns the sequence positions and every write transaction.
struct Writer {
    database: Arc<Database>,
    positions: HashMap<String, Cursor>,
    faults: Faults,
    stats: Arc<CommitStats>,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        while let Some(first) = queue.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let (changes, replies): (Vec<Change>, Vec<_>) =
                batch.into_iter().map(|job| (job.change, job.reply)).unzip();
            let size = changes.len();
            match self.commit(changes) {
                Ok(results) => {
                    metrics::histogram!("cpis_store_sync_duration_seconds").record(started.elapsed().as_secs_f64());
                    metrics::counter!("cpis_store_commits_total").increment(1);
                    metrics::counter!("cpis_store_changes_total").increment(size as u64);
                    self.stats.commits.fetch_add(1, Ordering::AcqRel);
                    self.stats.changes.fetch_add(size as u64, Ordering::AcqRel);
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                }
                Err(error) => {
                    metrics::counter!("cpis_store_sync_failures_total").increment(1);
                    tracing::error!(%error, changes = size, "store commit failed; nothing of the batch was applied");
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    fn commit(&mut self, changes: Vec<Change>) -> Result<Vec<Applied>, StoreError> {
        self.faults.wait_while_stalled(changes.len());
        self.faults.check()?;
        let mut positions = self.positions.clone();
        let transaction = self.database.begin_write().map_err(io)?;
        let mut results = Vec::with_capacity(changes.len());
        for change in changes {
            results.push(apply(&transaction, &mut positions, change)?);
        }
        transaction.commit().map_err(io)?;
        self.positions = positions;
        Ok(results)
    }
}

impl Store for EmbeddedStore {
    fn load(&self) -> BoxFuture<'static, Result<Snapshot, StoreError>> {
        self.read(|database| {
            let read = database.begin_read().map_err(io)?;
            let mut snapshot = Snapshot::default();
            for entry in read.open_table(AUTHORITIES).map_err(io)?.iter().map_err(io)? {
                snapshot.authorities.push(decode(entry.map_err(io)?.1.value(), "authorities")?);
            }
            let plans = read.open_table(PLANS).map_err(io)?;
            snapshot.plans.reserve(plans.len().map_err(io)? as usize);
            let mut la_codes: HashMap<String, Arc<str>> = HashMap::new();
            for entry in plans.iter().map_err(io)? {
                let (key, value) = entry.map_err(io)?;
                let (la, nhs, kind) = key.value();
                let la = match la_codes.get(la) {
                    Some(shared) => Arc::clone(shared),
                    None => Arc::clone(la_codes.entry(la.to_owned()).or_insert_with(|| la.into())),
                };
                let nhs = NhsNumber::from_u64(nhs)
                    .map_err(|error| StoreError::Corrupt(format!("plans: key {nhs}: {error}")))?;
                snapshot.plans.push(StoredPlan::from_stored(la, nhs, plan_type_of(kind)?, value.value())?);
            }
            for entry in read.open_table(CURSORS).map_err(io)?.iter().map_err(io)? {
                let (la, value) = entry.map_err(io)?;
                let (last_sequence, acked_through) = value.value();
                snapshot.cursors.push(Cursor { la_ods_code: la.value().to_owned(), last_sequence, acked_through });
            }
            Ok(snapshot)
        })
    }

    fn apply(&self, change: Change) -> BoxFuture<'static, Result<Applied, StoreError>> {
        let jobs = self.writer.jobs();
        async move {
            let jobs = jobs.ok_or(StoreError::Closed)?;
            let (reply, answer) = oneshot::channel();
            jobs.send(Job { change, reply }).await.map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        }
        .boxed()
    }

    fn accesses_of(&self, nhs_number: NhsNumber) -> Result<Vec<AccessEvent>, StoreError> {
        let read = self.database.begin_read().map_err(io)?;
        let table = read.open_table(ACCESSES).map_err(io)?;
        let nhs = nhs_number.as_u64();
        let mut accesses = Vec::new();
        for entry in table.range((nhs, i64::MIN, 0)..=(nhs, i64::MAX, u128::MAX)).map_err(io)? {
            accesses.push(decode(entry.map_err(io)?.1.value(), "accesses")?);
        }
        Ok(accesses)
    }

    fn notifications_after(
        &self,
        la_ods_code: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        let la = la_ods_code.to_owned();
        self.read(move |database| {
            let read = database.begin_read().map_err(io)?;
            let table = read.open_table(NOTIFICATIONS).map_err(io)?;
            let mut page = Vec::with_capacity(limit.min(1024));
            if after == u64::MAX {
                return Ok(page);
            }
            for entry in table.range((la.as_str(), after + 1)..=(la.as_str(), u64::MAX)).map_err(io)?.take(limit) {
                page.push(decode(entry.map_err(io)?.1.value(), "notifications")?);
            }
            Ok(page)
        })
    }

    fn faults(&self) -> &Faults {
        &self.faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: u64, plan_type: PlanType, end: Option<&str>) -> StoredPlan {
        let nhs_number = NhsNumber::complete(999_000_000 + n).or_else(|| NhsNumber::complete(999_100_000 + n)).unwrap();
        let plan = crate::model::Plan {
            local_id: format!("L{n}"),
            end_date: end.map(|end| end.parse().unwrap()),
            ..crate::model::test_plan(nhs_number, plan_type)
        };
        StoredPlan::encode(&plan, "706".into()).unwrap()
    }

    #[tokio::test]
    async fn replace_keeps_exactly_the_new_set_and_a_consistent_expiry_table() {
        let dir = tempfile::tempdir().unwrap();
        let authority = crate::synth::authority("706").unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let first = vec![
                plan(1, PlanType::ChildProtection, Some("2026-01-01")),
                plan(2, PlanType::LookedAfter, None),
                plan(3, PlanType::ChildProtection, Some("2026-02-01")),
            ];
            store.apply(Change::UpsertPlans { authority: authority.clone(), plans: first.into() }).await.unwrap();
            let second =
                vec![plan(2, PlanType::LookedAfter, Some("2026-03-01")), plan(4, PlanType::ChildProtection, None)];
            let change = Change::ReplacePlans { authority: authority.clone(), plans: second.clone().into() };
            store.apply(change).await.unwrap();
            let mut loaded = store.load().await.unwrap().plans;
            loaded.sort_by_key(|plan| plan.nhs_number());
            assert_eq!(loaded, second);
        }
        let report = super::super::check::check(dir.path()).unwrap();
        assert!(report.integrity_ok);
        let count = |table: &str| report.tables.iter().find(|(name, _)| *name == table).unwrap().1;
        assert_eq!((count("plans"), count("plan_expiry")), (2, 1), "one of the two remaining plans has an end");
    }
}
