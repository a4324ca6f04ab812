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

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use super::{
    Relay,
    spill::{HeldSearch, Spill},
};
use crate::{
    model::{AccessEvent, NotificationDraft},
    nhs::NhsNumber,
    store::{Applied, Change, StoreError},
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
    /// `None` without a data directory (the memory store): memory only.
    spill: Option<Spill>,
    /// Searches in the spill that are already stored.
    stale: usize,
}

/// The held searches and their spill.
#[derive(Default)]
pub struct Held {
    /// A std mutex: held briefly, and across spill I/O only on the blocking pool.
    queue: Mutex<Queue>,
    retrying: AtomicBool,
    retry_turn: tokio::sync::Mutex<()>,
}

enum Holding {
    Held(usize),
    Refused(usize),
}

impl Held {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn len(&self) -> usize {
        self.queue().searches.len()
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

    /// Spills (synced) and holds one search, unless `limit` are held. Blocks.
    fn push(&self, search: HeldSearch, limit: usize) -> Holding {
        let mut queue = self.queue();
        if queue.searches.len() >= limit {
            return Holding::Refused(queue.searches.len());
        }
        if let Some(spill) = &mut queue.spill
            && let Err(error) = spill.append(&search)
        {
            // Still held in memory: lost only if the process stops before the store recovers.
            tracing::error!(%error, path = %spill.path().display(), "cannot write a held notification to the spill file; holding it in memory only");
            metrics::counter!("cpis_spill_failures_total").increment(1);
        }
        queue.searches.push_back(search);
        Holding::Held(queue.searches.len())
    }

    /// Drops the oldest held search, now stored; empties the spill once nothing is held, or
    /// rewrites it with only those held once many stored ones linger in it. Blocks.
    fn pop_stored(&self) -> usize {
        let mut guard = self.queue();
        let queue = &mut *guard;
        queue.searches.pop_front();
        queue.stale += 1;
        let left = queue.searches.len();
        let Some(spill) = &mut queue.spill else { return left };
        let compacted = if left == 0 {
            spill.clear()
        } else if queue.stale >= COMPACT_AFTER.max(left) {
            spill.rewrite(&queue.searches)
        } else {
            return left;
        };
        match compacted {
            Ok(()) => queue.stale = 0,
            // Harmless: a restart skips what is already stored.
            Err(error) => tracing::warn!(%error, path = %spill.path().display(), "cannot compact the spill file"),
        }
        left
    }
}

impl Relay {
    /// Commits a search's access and notifications. Resolves once they are
    /// durable; if the store fails, the search still answers and they are
    /// held (spilled and synced first) and retried until the store takes them.
    /// Stores a search's access and notifications, or holds them for retry;
    /// either way the access joins the person's recent accesses. Returns
    /// false only when neither could be done (the hold limit refused it).
    pub(super) async fn commit_access(&self, access: AccessEvent, drafts: Vec<NotificationDraft>) -> bool {
        let change = Change::RecordAccess { access: access.clone(), drafts: drafts.clone() };
        match self.shared.store.apply(change).await {
            Ok(Applied::Notified(notifications)) => {
                self.remember(&access);
                self.shared.hub.publish(&notifications);
                true
            }
            Ok(other) => {
                tracing::error!(?other, "store answered a recorded access with something else");
                false
            }
            Err(error) => {
                tracing::error!(%error, held = self.shared.hub.held() + 1, "could not store an access notification; holding it for retry");
                // Refused over the hold limit, it is not remembered: a racing copy of
                // the request then tries again rather than counting on it.
                let kept = self.hold(HeldSearch { access: access.clone(), drafts }).await;
                if kept {
                    self.remember(&access);
                }
                kept
            }
        }
    }

    /// Whether the search is held (false: refused over the limit).
    async fn hold(&self, search: HeldSearch) -> bool {
        let relay = self.clone();
        let limit = self.shared.settings.max_held_notifications;
        let notifications = search.drafts.len();
        let holding = tokio::task::spawn_blocking(move || relay.shared.hub.held.push(search, limit)).await;
        let held = matches!(holding, Ok(Holding::Held(_)));
        match holding {
            Ok(Holding::Held(held)) => self.held_changed(held),
            Ok(Holding::Refused(held)) => {
                tracing::error!(
                    held,
                    limit,
                    notifications,
                    "too many notifications held while the store fails: this search's notifications are refused, not kept"
                );
                metrics::counter!("cpis_notifications_refused_total").increment(notifications as u64);
                self.held_changed(held);
            }
            Err(error) => tracing::error!(%error, "holding a notification did not finish"),
        }
        self.start_retrying();
        held
    }

    fn held_changed(&self, held: usize) {
        metrics::gauge!("cpis_notifications_held").set(held as f64);
        self.shared.health.set_held(held);
    }

    fn start_retrying(&self) {
        if !self.shared.hub.held.retrying.swap(true, Ordering::AcqRel) {
            let relay = self.clone();
            tokio::spawn(async move { relay.retry_held().await });
        }
    }

    /// One attempt at the oldest held search: `None` when none is held,
    /// else whether the store took it.
    async fn retry_oldest(&self) -> Option<bool> {
        let held = &self.shared.hub.held;
        let _turn = held.retry_turn.lock().await;
        let HeldSearch { access, drafts } = held.front()?;
        match self.shared.store.apply(Change::RecordAccess { access, drafts }).await {
            Ok(Applied::Notified(notifications)) => {
                self.shared.hub.publish(&notifications);
                let relay = self.clone();
                match tokio::task::spawn_blocking(move || relay.shared.hub.held.pop_stored()).await {
                    Ok(left) => self.held_changed(left),
                    Err(error) => tracing::error!(%error, "releasing a stored notification did not finish"),
                }
                Some(true)
            }
            Ok(_) | Err(_) => Some(false),
        }
    }

    /// Retries held notifications in order with capped backoff until all are
    /// stored; the store is healthy again once none is held and a write succeeded.
    async fn retry_held(&self) {
        let held = &self.shared.hub.held;
        let (first, longest) = self.shared.settings.held_retry_backoff;
        let mut backoff = first;
        // The store has just failed: wait before the first attempt too.
        tokio::time::sleep(backoff).await;
        loop {
            match self.retry_oldest().await {
                Some(true) => backoff = first,
                Some(false) => {
                    backoff = (backoff * 2).min(longest);
                    tokio::time::sleep(backoff).await;
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
    pub async fn store_held_until(&self, deadline: tokio::time::Instant) -> usize {
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
            tracing::error!(bytes = loaded.unreadable_bytes, path = %spill.path().display(), "the spill file ends in a torn or corrupt record; it is dropped");
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
        *self.shared.hub.held.queue() = Queue { searches, spill: Some(spill), stale: 0 };
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

    fn spilled_ids(dir: &std::path::Path) -> Vec<u128> {
        Spill::open(dir).unwrap().1.held.iter().map(|held| held.access.id).collect()
    }

    #[test]
    fn the_spill_keeps_only_held_searches_once_stored_ones_linger_and_empties_when_none_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let held = Held::default();
        *held.queue() = Queue { spill: Some(Spill::open(dir.path()).unwrap().0), ..Queue::default() };
        let total = COMPACT_AFTER as u128 + 3;
        for id in 0..total {
            assert!(matches!(held.push(search(id), usize::MAX), Holding::Held(_)));
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
}
