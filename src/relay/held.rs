//! Held notifications: a search of a flagged person whose access and
//! notifications the store did not take. The clinician is answered anyway
//! (safety over silence); the search is held, oldest first, in memory and in
//! the spill file (synced before the search answers), retried with capped
//! backoff until the store takes it, retried through the shutdown grace
//! period, and reloaded at start. Beyond `max_held_notifications` a search
//! is still answered but its notifications are refused with an error log and
//! `cpis_notifications_refused_total`: never dropped silently.
//!
//! Only one attempt at the oldest held search runs at a time (`retry_turn`),
//! so the background retry and the shutdown retry never store one twice.
//!
//! Locks: the queue's mutex guards memory only and is never held across
//! file I/O, so a search reading held accesses never waits for a disk.
//! Spilling is group-committed: a search adds its record to a pending batch
//! and the first one to find no sync in progress writes the whole batch with
//! one sync (under the spill's own mutex) while the others wait for it, so a
//! burst of failing writes costs one fsync per batch, not one per search.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use super::{
    Relay,
    spill::{self, HeldSearch, Spill},
};
use crate::{
    error::{Error, Result},
    model::{AccessEvent, NotificationDraft},
    nhs::NhsNumber,
    store::{StoreError, writes::Recorded},
};

/// Wait between attempts while shutting down: the grace period is short.
const SHUTDOWN_RETRY: Duration = Duration::from_millis(100);
/// Stored searches left in the spill before it is rewritten with only those
/// still held (when it is not emptied first): keeps the file near the bound.
#[cfg(not(test))]
const COMPACT_AFTER: usize = 4096;
/// Small in unit tests, so that compaction is reached without thousands of syncs.
#[cfg(test)]
const COMPACT_AFTER: usize = 8;

#[derive(Default)]
struct Queue {
    searches: VecDeque<HeldSearch>,
    /// False without a data directory (the memory store): memory only.
    spilled: bool,
    /// Searches in the spill that are already stored.
    stale: usize,
    /// Encoded records of the newest searches, not yet written.
    pending: Vec<u8>,
    /// How many searches `pending` holds (the newest of `searches`, unless stored meanwhile).
    pending_count: usize,
    /// Whether the write of `pending` succeeded, once it is done.
    pending_written: Arc<OnceLock<bool>>,
    /// Tickets: each spilled search's number, and the highest one written (or failed).
    issued: u64,
    written_through: u64,
    /// Someone is writing the spill: wait for them rather than start another sync.
    writing: bool,
}

/// The held searches and their spill.
#[derive(Default)]
pub struct Held {
    /// A std mutex guarding memory only: never held across file I/O.
    queue: Mutex<Queue>,
    /// Signalled when a write of the spill ends.
    written: Condvar,
    /// The file: held only by the one writer, across its I/O, on the blocking pool.
    spill: Mutex<Option<Spill>>,
    retrying: AtomicBool,
    retry_turn: tokio::sync::Mutex<()>,
}

enum Holding {
    /// Held, one of `held`; `spilled` once its record is synced to the spill file.
    Held {
        held: usize,
        spilled: bool,
    },
    Refused(usize),
}

impl Held {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn spill(&self) -> MutexGuard<'_, Option<Spill>> {
        self.spill.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        self.written.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the spill (at start, once it is reloaded) and what it holds.
    fn install(&self, spill: Spill, searches: VecDeque<HeldSearch>) {
        *self.spill() = Some(spill);
        *self.queue() = Queue { searches, spilled: true, ..Queue::default() };
    }

    pub(super) fn len(&self) -> usize {
        self.queue().searches.len()
    }

    /// Writes what is pending, then closes the spill (releasing the data
    /// directory's lock); searches held later stay in memory only. Blocks.
    fn close(&self) {
        let mut queue = self.queue();
        while queue.writing || !queue.pending.is_empty() {
            queue = if queue.writing { self.wait(queue) } else { self.write_pending(queue) };
        }
        queue.spilled = false;
        queue.writing = true;
        drop(queue);
        *self.spill() = None;
        self.queue().writing = false;
        self.written.notify_all();
    }

    pub(super) fn accesses_of(&self, nhs_number: NhsNumber) -> Vec<AccessEvent> {
        let queue = self.queue();
        queue
            .searches
            .iter()
            .filter(|held| held.access.nhs_number == nhs_number)
            .map(|held| held.access.clone())
            .collect()
    }

    fn front(&self) -> Option<HeldSearch> {
        self.queue().searches.front().cloned()
    }

    /// Holds one search, unless `limit` are held, and returns once it is
    /// spilled (synced), with the others pending then. Blocks.
    fn push(&self, search: HeldSearch, limit: usize) -> Holding {
        let record = spill::encode(&search);
        let mut queue = self.queue();
        if queue.searches.len() >= limit {
            return Holding::Refused(queue.searches.len());
        }
        queue.searches.push_back(search);
        let held = queue.searches.len();
        if !queue.spilled {
            return Holding::Held { held, spilled: false };
        }
        match record {
            Ok(record) => queue.pending.extend_from_slice(&record),
            Err(error) => {
                tracing::error!(%error, "cannot encode a held notification for the spill file; holding it in memory only");
                metrics::counter!("cpis_spill_failures_total").increment(1);
                return Holding::Held { held, spilled: false };
            }
        }
        let written = Arc::clone(&queue.pending_written);
        queue.pending_count += 1;
        queue.issued += 1;
        let ticket = queue.issued;
        while queue.written_through < ticket {
            if queue.writing {
                queue = self.wait(queue);
            } else {
                queue = self.write_pending(queue);
            }
        }
        Holding::Held { held, spilled: written.get() == Some(&true) }
    }

    /// Writes every pending record with one sync, the queue unlocked meanwhile.
    fn write_pending<'a>(&'a self, mut queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        queue.writing = true;
        drop(queue);
        let mut spill = self.spill();
        // Taken once the file is ours: records pending meanwhile join this sync.
        let (records, count, through, written) = {
            let mut queue = self.queue();
            let written = std::mem::take(&mut queue.pending_written);
            let taken = (std::mem::take(&mut queue.pending), queue.pending_count, queue.issued, written);
            queue.pending_count = 0;
            taken
        };
        let result = match spill.as_mut() {
            Some(spill) => spill.append_records(&records),
            None => Ok(()),
        };
        if let (Err(error), Some(spill)) = (&result, spill.as_ref()) {
            // Still held in memory: lost only if the process stops before the store recovers.
            tracing::error!(%error, count, path = %spill.path().display(), "cannot write held notifications to the spill file; holding them in memory only");
            metrics::counter!("cpis_spill_failures_total").increment(count as u64);
        }
        let _ = written.set(result.is_ok());
        drop(spill);
        let mut queue = self.queue();
        queue.writing = false;
        queue.written_through = queue.written_through.max(through);
        self.written.notify_all();
        queue
    }

    /// Drops the oldest held search, now stored; empties the spill once nothing is held, or
    /// rewrites it with only those held once many stored ones linger in it. Blocks.
    fn pop_stored(&self) -> usize {
        let mut queue = self.queue();
        queue.searches.pop_front();
        queue.stale += 1;
        let left = queue.searches.len();
        if !queue.spilled || (left > 0 && queue.stale < COMPACT_AFTER.max(left)) {
            return left;
        }
        while queue.writing {
            queue = self.wait(queue);
        }
        queue.writing = true;
        // Pending records (the newest searches) are not in the file yet: their writer appends them after.
        let written = queue.searches.len().saturating_sub(queue.pending_count);
        let keep: Vec<HeldSearch> = queue.searches.iter().take(written).cloned().collect();
        drop(queue);
        let compacted = match self.spill().as_mut() {
            Some(spill) if keep.is_empty() => spill.clear().map(|()| spill.path().to_owned()),
            Some(spill) => spill.rewrite(&keep).map(|()| spill.path().to_owned()),
            None => Ok(Default::default()),
        };
        let mut queue = self.queue();
        queue.writing = false;
        match compacted {
            Ok(_) => queue.stale = 0,
            // Harmless: a restart skips what is already stored.
            Err(error) => tracing::warn!(%error, "cannot compact the spill file"),
        }
        self.written.notify_all();
        left
    }
}

impl Relay {
    /// Stores a search's access and notifications, resolving once they are
    /// durable; if the store fails they are held (spilled and synced first)
    /// and retried until the store takes it. Either way the access joins the
    /// person's recent accesses and the search is answered. The one error:
    /// the store is broken for good (the process is stopping to replay its
    /// journal) and the spill could not be written either, so the
    /// notification would not survive the restart: the caller is told to
    /// retry rather than be answered as if it were kept.
    pub(super) async fn commit_access(&self, access: AccessEvent, drafts: Vec<NotificationDraft>) -> Result<()> {
        let error = match self.shared.store.record_access(access.clone(), drafts.clone()).await {
            Ok(Recorded::Notified(notifications)) => {
                self.remember(&access);
                self.shared.hub.publish(&notifications);
                return Ok(());
            }
            // Another node stored this request within the window: this search is its retry.
            Ok(Recorded::Repeated) => return Ok(()),
            Err(error) => error,
        };
        tracing::error!(%error, held = self.shared.hub.held() + 1, "could not store an access notification; holding it for retry");
        let broken = matches!(error, StoreError::Broken(_));
        match self.hold(HeldSearch { access: access.clone(), drafts }).await {
            Some(spilled) if spilled || !broken => {
                self.remember(&access);
                Ok(())
            }
            // Refused over the hold limit, it is not remembered: a racing copy of
            // the request then tries again rather than counting on it.
            None if !broken => Ok(()),
            _ => {
                tracing::error!(
                    "the store is broken and the spill file could not be written: this search is answered UNAVAILABLE so that the client retries"
                );
                Err(Error::Unavailable(
                    "the relay's store failed and the relay is restarting; this search's notification could not be kept: retry the search".into(),
                ))
            }
        }
    }

    /// Holds a search: `Some(spilled)` once held (spilled: synced to the
    /// spill file), `None` when refused over the limit.
    async fn hold(&self, search: HeldSearch) -> Option<bool> {
        let relay = self.clone();
        let limit = self.shared.settings.max_held_notifications;
        let notifications = search.drafts.len();
        let holding = tokio::task::spawn_blocking(move || relay.shared.hub.held.push(search, limit)).await;
        let kept = match holding {
            Ok(Holding::Held { held, spilled }) => {
                self.held_changed(held);
                Some(spilled)
            }
            Ok(Holding::Refused(held)) => {
                tracing::error!(
                    held,
                    limit,
                    notifications,
                    "too many notifications held while the store fails: this search's notifications are refused, not kept"
                );
                metrics::counter!("cpis_notifications_refused_total").increment(notifications as u64);
                self.held_changed(held);
                None
            }
            Err(error) => {
                tracing::error!(%error, "holding a notification did not finish");
                None
            }
        };
        self.start_retrying();
        kept
    }

    fn held_changed(&self, held: usize) {
        metrics::gauge!("cpis_notifications_held").set(held as f64);
        self.shared.health.set_held(held);
    }

    fn start_retrying(&self) {
        if !self.shared.hub.held.retrying.swap(true, Ordering::AcqRel) {
            let relay = self.clone();
            self.spawn_task(async move { relay.retry_held().await });
        }
    }

    /// One attempt at the oldest held search: `None` when none is held,
    /// else whether the store took it.
    async fn retry_oldest(&self) -> Option<bool> {
        let held = &self.shared.hub.held;
        let _turn = held.retry_turn.lock().await;
        let HeldSearch { access, drafts } = held.front()?;
        let (person, id) = (access.nhs_number, access.id);
        match self.shared.store.record_access(access, drafts).await {
            Ok(recorded) => {
                match recorded {
                    Recorded::Notified(notifications) => self.shared.hub.publish(&notifications),
                    // Another node stored the same request while this one was held:
                    // it was a retry after all, and is no longer one of the person's accesses.
                    Recorded::Repeated => self.shared.recent.forget(person, id),
                }
                let relay = self.clone();
                match tokio::task::spawn_blocking(move || relay.shared.hub.held.pop_stored()).await {
                    Ok(left) => self.held_changed(left),
                    Err(error) => tracing::error!(%error, "releasing a stored notification did not finish"),
                }
                Some(true)
            }
            Err(_) => Some(false),
        }
    }

    /// Retries held notifications in order with capped backoff until all are
    /// stored; the store is healthy again once none is held and a write succeeded.
    async fn retry_held(&self) {
        let held = &self.shared.hub.held;
        let (first, longest) = self.shared.settings.held_retry_backoff;
        let mut backoff = first;
        let mut draining = self.shared.draining.subscribe();
        // Shutdown retries what is still held itself, for the rest of the grace period.
        let mut wait = async |backoff| {
            tokio::select! {
                () = tokio::time::sleep(backoff) => true,
                () = super::until_draining(&mut draining) => false,
            }
        };
        // The store has just failed: wait before the first attempt too.
        if !wait(backoff).await {
            held.retrying.store(false, Ordering::Release);
            return;
        }
        loop {
            match self.retry_oldest().await {
                Some(true) => backoff = first,
                Some(false) => {
                    backoff = (backoff * 2).min(longest);
                    if !wait(backoff).await {
                        held.retrying.store(false, Ordering::Release);
                        return;
                    }
                }
                None => {
                    held.retrying.store(false, Ordering::Release);
                    // A search may have held one between the check and the flag:
                    // take the work back, or leave it to the task that search started.
                    if held.len() > 0 && !held.retrying.swap(true, Ordering::AcqRel) {
                        continue;
                    }
                    if held.len() == 0 {
                        tracing::info!("held access notifications are all stored");
                    }
                    return;
                }
            }
        }
    }

    /// Shutdown: keeps retrying held notifications until none is held or
    /// `deadline` passes; returns how many are still held (they stay in the spill).
    /// A broken store takes nothing before the restart: no attempt is made.
    pub async fn store_held_until(&self, deadline: tokio::time::Instant) -> usize {
        if self.store_broken().is_some() {
            return self.shared.hub.held();
        }
        let attempts = async {
            loop {
                match self.retry_oldest().await {
                    Some(true) => {}
                    Some(false) => tokio::time::sleep(SHUTDOWN_RETRY).await,
                    None => return,
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, attempts).await;
        self.shared.hub.held()
    }

    /// Shutdown, once the grace period's retries are over: closes the spill
    /// (what is held stays in it for the next start) and releases the data
    /// directory, so that a relay started next (in this process too) may open it.
    pub async fn close_spill(&self) {
        let relay = self.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || relay.shared.hub.held.close()).await {
            tracing::error!(%error, "closing the spill file did not finish");
        }
    }

    /// Start: reads the spill, skips every search whose access the store
    /// already has (stored before a crash emptied the spill), rewrites the
    /// spill with the rest, holds them again and starts retrying.
    pub(super) async fn reload_held(&self) -> Result<(), StoreError> {
        let Some(dir) = self.shared.settings.spill_dir.clone() else { return Ok(()) };
        let io = |error: std::io::Error| StoreError::Io(format!("spill file in {}: {error}", dir.display()));
        let opening = dir.clone();
        let (spill, loaded) = tokio::task::spawn_blocking(move || Spill::open(&opening))
            .await
            .map_err(|error| StoreError::Io(error.to_string()))?
            .map_err(io)?;
        if loaded.unreadable_bytes > 0 {
            tracing::error!(
                bytes = loaded.unreadable_bytes,
                path = %spill.path().display(),
                preserved = %loaded.preserved.as_deref().unwrap_or(std::path::Path::new("")).display(),
                kept = loaded.held.len(),
                "the spill file has torn or corrupt records; they are skipped, the records around them kept, and the file as found preserved"
            );
        }
        let spilled = loaded.held.len();
        let mut stored_ids: HashMap<NhsNumber, Vec<u128>> = HashMap::new();
        let mut searches = VecDeque::new();
        for search in loaded.held {
            let nhs_number = search.access.nhs_number;
            let ids = match stored_ids.entry(nhs_number) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let stored = self.shared.store.accesses_of(nhs_number).await?;
                    entry.insert(stored.into_iter().map(|access| access.id).collect())
                }
            };
            if !ids.contains(&search.access.id) {
                self.remember(&search.access);
                searches.push_back(search);
            }
        }
        let held = searches.len();
        let mut spill = spill;
        let (spill, searches) = tokio::task::spawn_blocking(move || {
            let rewritten = if searches.is_empty() { spill.clear() } else { spill.rewrite(&searches) };
            rewritten.map(|()| (spill, searches))
        })
        .await
        .map_err(|error| StoreError::Io(error.to_string()))?
        .map_err(io)?;
        self.shared.hub.held.install(spill, searches);
        self.held_changed(held);
        if spilled > 0 {
            tracing::warn!(
                spilled,
                already_stored = spilled - held,
                held,
                "reloaded held access notifications from the spill file"
            );
        }
        if held > 0 {
            self.start_retrying();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::relay::spill::tests::search;

    /// The ids in the spill file of `dir`, read beside the (locked) open spill.
    fn spilled_ids(dir: &std::path::Path) -> Vec<u128> {
        let bytes = std::fs::read(dir.join(crate::relay::spill::SPILL_FILE)).unwrap();
        let mut ids = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            let held: HeldSearch = postcard::from_bytes(&rest[12..12 + len]).unwrap();
            ids.push(held.access.id);
            rest = &rest[12 + len..];
        }
        ids
    }

    #[test]
    fn the_spill_keeps_only_held_searches_once_stored_ones_linger_and_empties_when_none_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let held = Held::default();
        held.install(Spill::open(dir.path()).unwrap().0, VecDeque::new());
        let total = COMPACT_AFTER as u128 + 3;
        for id in 0..total {
            assert!(matches!(held.push(search(id), usize::MAX), Holding::Held { .. }));
        }
        assert!(matches!(held.push(search(total), total as usize), Holding::Refused(_)), "the bound");
        for _ in 0..COMPACT_AFTER - 1 {
            held.pop_stored();
        }
        assert_eq!(spilled_ids(dir.path()).len(), total as usize, "not yet compacted");
        held.pop_stored();
        assert_eq!(spilled_ids(dir.path()), (COMPACT_AFTER as u128..total).collect::<Vec<_>>());
        while held.len() > 0 {
            held.pop_stored();
        }
        assert!(spilled_ids(dir.path()).is_empty());
    }

    #[test]
    fn searches_held_during_a_spill_sync_share_the_next_one_and_reads_never_wait_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let held = std::sync::Arc::new(Held::default());
        held.install(Spill::open(dir.path()).unwrap().0, VecDeque::new());
        const SEARCHES: u128 = 6;
        // The file is busy, as during a slow sync: every search's record waits.
        let busy = held.spill();
        let pushers: Vec<_> = (0..SEARCHES)
            .map(|id| {
                let held = std::sync::Arc::clone(&held);
                std::thread::spawn(move || matches!(held.push(search(id), usize::MAX), Holding::Held { .. }))
            })
            .collect();
        // Each search is held in memory at once, and read without waiting for the file.
        while held.len() < SEARCHES as usize {
            std::thread::yield_now();
        }
        let nhs_number = search(0).access.nhs_number;
        assert_eq!(held.accesses_of(nhs_number).len(), SEARCHES as usize);
        assert!(pushers.iter().all(|pusher| !pusher.is_finished()), "nobody answers before the sync");
        drop(busy);
        for pusher in pushers {
            assert!(pusher.join().unwrap());
        }
        assert_eq!(held.spill().as_ref().unwrap().syncs(), 1, "one sync for the whole batch");
        let mut spilled = spilled_ids(dir.path());
        spilled.sort();
        assert_eq!(spilled, (0..SEARCHES).collect::<Vec<_>>());
    }
}
