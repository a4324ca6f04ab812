//! A write lane: one thread that owns a kind of write and commits what has
//! queued up as one durable batch (group commit), answering each caller after
//! the commit. If the commit fails, every change of the batch fails and none
//! of it is visible.
//!
//! The embedded store runs two lanes, each over its own journal: plan changes
//! (uploads, deletes, plan retention), and activity (a flagged search's access
//! and notifications, acknowledgements, activity retention). A 150,000-record
//! FULL_REFRESH therefore never sits between a search and its notification's
//! commit.
//!
//! A commit that fails with [`StoreError::Broken`] (the journal append or
//! sync failed: fjall refuses every later commit of that database) marks the
//! store [`Broken`], with an error log and `cpis_store_broken` at 1; the lane
//! then fails every change at once with the same error, never answering one
//! as committed, and `serve` stops the process (exit status 74) so that the
//! supervisor restarts it and the engine replays its journal.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use tokio::sync::{mpsc, oneshot};

use super::CommitStats;
use crate::store::{Applied, Broken, Change, StoreError};

/// Most changes committed in one batch.
const MAX_BATCH: usize = 4096;
/// Changes that may wait for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 8192;

pub(super) struct Job {
    change: Change,
    reply: oneshot::Sender<Result<Applied, StoreError>>,
}

/// Commits a batch of changes durably, or fails it whole.
pub(super) trait Committer: Send + 'static {
    fn commit(&mut self, changes: Vec<Change>) -> Result<Vec<Applied>, StoreError>;
}

/// The sending side of a lane. When the last handle is dropped the writer
/// commits what is queued and its thread is joined before the drop returns,
/// so the store can be reopened at once.
pub(super) struct Lane {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lane {
    pub(super) fn start(
        name: &str,
        mut committer: impl Committer,
        stats: Arc<CommitStats>,
        broken: Broken,
    ) -> Result<Self, StoreError> {
        let lane = name.to_owned();
        let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name(format!("cpis-store-{name}"))
            .spawn(move || {
                let lane_metrics = LaneMetrics::new();
                while let Some(first) = queue.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    match broken.reason() {
                        None => run_batch(&mut committer, &stats, &lane_metrics, &broken, &lane, batch),
                        Some(reason) => {
                            for job in batch {
                                let _ = job.reply.send(Err(StoreError::Broken(reason.clone())));
                            }
                        }
                    }
                }
            })
            .map_err(|error| StoreError::Io(error.to_string()))?;
        Ok(Self { jobs: Some(jobs), thread: Some(thread) })
    }

    /// Queues a change; resolves with its result once the batch holding it is durable.
    pub(super) async fn apply(jobs: Option<mpsc::Sender<Job>>, change: Change) -> Result<Applied, StoreError> {
        let jobs = jobs.ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        jobs.send(Job { change, reply }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) fn sender(&self) -> Option<mpsc::Sender<Job>> {
        self.jobs.clone()
    }
}

/// The lane's metrics, resolved once when its thread starts: resolving one
/// per commit looked it up (and allocated its key) in the registry each time.
struct LaneMetrics {
    sync_duration: metrics::Histogram,
    commits: metrics::Counter,
    changes: metrics::Counter,
}

impl LaneMetrics {
    fn new() -> Self {
        // Resolved against the process's recorder, installed first if the store opens before anything recorded.
        let _recorder = crate::telemetry::metrics();
        Self {
            sync_duration: metrics::histogram!("cpis_store_sync_duration_seconds"),
            commits: metrics::counter!("cpis_store_commits_total"),
            changes: metrics::counter!("cpis_store_changes_total"),
        }
    }
}

fn run_batch(
    committer: &mut impl Committer,
    stats: &CommitStats,
    lane_metrics: &LaneMetrics,
    broken: &Broken,
    lane: &str,
    batch: Vec<Job>,
) {
    let (changes, replies): (Vec<Change>, Vec<_>) = batch.into_iter().map(|job| (job.change, job.reply)).unzip();
    let size = changes.len();
    let started = Instant::now();
    let result = committer.commit(changes);
    match result {
        Ok(results) => {
            lane_metrics.sync_duration.record(started.elapsed().as_secs_f64());
            lane_metrics.commits.increment(1);
            lane_metrics.changes.increment(size as u64);
            stats.commits.fetch_add(1, Ordering::AcqRel);
            stats.changes.fetch_add(size as u64, Ordering::AcqRel);
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(error) => {
            metrics::counter!("cpis_store_sync_failures_total").increment(1);
            if let StoreError::Broken(reason) = &error
                && broken.set(reason)
            {
                metrics::gauge!("cpis_store_broken").set(1.0);
                tracing::error!(
                    lane,
                    %reason,
                    "the store's journal could not be written or synced: the engine takes no more writes, so the relay \
                     stops (exit status 74) and its supervisor should restart it, which replays the journal; check the \
                     data directory's disk first (free space, I/O errors in the kernel log)"
                );
            }
            tracing::error!(%error, changes = size, "store commit failed; nothing of the batch was applied");
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has committed what is queued.
        self.jobs.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("a store writer panicked");
        }
    }
}
