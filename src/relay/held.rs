//! The held queue: searches of flagged people whose access and
//! notifications the store did not take yet, oldest first, in memory and in
//! the spill file (synced before the search answers). What is done with them
//! (held when the store fails, retried, quarantined, reloaded at start) is
//! `retry`; this module keeps the queue, its spill and each search's count
//! of refusals.
//!
//! Only one retry round runs at a time (`retry_turn`), so the background
//! retry and the shutdown retry never store one twice.
//!
//! Locks: the queue's mutex guards memory only and is never held across
//! file I/O, so a search reading held accesses never waits for a disk.
//! Spilling is group-committed: a search adds its record to a pending batch
//! and the first one to find no sync in progress writes the whole batch with
//! one sync (under the spill's own mutex) while the others wait for it, so a
//! burst of failing writes costs one fsync per batch, not one per search.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, atomic::AtomicBool},
};

use super::{
    quarantine::Quarantine,
    spill::{self, HeldSearch, Spill},
};
use crate::{model::AccessEvent, nhs::NhsNumber};
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
    /// Held searches (by access id) the store refused on their own, and how often.
    refusals: HashMap<u128, u32>,
}

/// The held searches and their spill.
#[derive(Default)]
pub(super) struct Held {
    /// A std mutex guarding memory only: never held across file I/O.
    queue: Mutex<Queue>,
    /// Signalled when a write of the spill ends.
    written: Condvar,
    /// The file: held only by the one writer, across its I/O, on the blocking pool.
    spill: Mutex<Option<Spill>>,
    pub(super) retrying: AtomicBool,
    pub(super) retry_turn: tokio::sync::Mutex<()>,
    /// Searches set aside (see `quarantine`); in memory until the data directory's is opened.
    quarantine: OnceLock<Quarantine>,
}

pub(super) enum Holding {
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
    pub(super) fn install(&self, spill: Spill, searches: VecDeque<HeldSearch>) {
        *self.spill() = Some(spill);
        *self.queue() = Queue { searches, spilled: true, ..Queue::default() };
    }

    pub(super) fn len(&self) -> usize {
        self.queue().searches.len()
    }

    /// Writes what is pending, then closes the spill (releasing the data
    /// directory's lock); searches held later stay in memory only. Blocks.
    pub(super) fn close(&self) {
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

    /// The oldest `count` held searches.
    pub(super) fn front(&self, count: usize) -> Vec<HeldSearch> {
        self.queue().searches.iter().take(count).cloned().collect()
    }

    /// The store refused held search `id` on its own once more: how often it has now.
    pub(super) fn refused(&self, id: u128) -> u32 {
        let mut queue = self.queue();
        let refusals = queue.refusals.entry(id).or_default();
        *refusals += 1;
        *refusals
    }

    /// Sets the quarantine of the data directory (at start, beside the spill).
    pub(super) fn install_quarantine(&self, quarantine: Quarantine) {
        if self.quarantine.set(quarantine).is_err() {
            tracing::error!("the quarantine was opened twice; the first one is kept");
        }
    }

    /// The quarantine: the data directory's once opened, else one in memory.
    pub(super) fn quarantine(&self) -> &Quarantine {
        self.quarantine.get_or_init(Quarantine::in_memory)
    }

    /// Holds one search, unless `limit` are held, and returns once it is
    /// spilled (synced), with the others pending then. Blocks.
    pub(super) fn push(&self, search: HeldSearch, limit: usize) -> Holding {
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

    /// Drops the oldest held search, now stored (see [`Held::release`]). Blocks.
    #[cfg(test)]
    fn pop_stored(&self) -> usize {
        let oldest = self.queue().searches.front().map(|search| search.access.id);
        self.release(&oldest.into_iter().collect())
    }

    /// Drops the held searches `ids` (stored, or set aside in the quarantine);
    /// empties the spill once nothing is held, or rewrites it with only those
    /// held once many released ones linger in it. Blocks.
    pub(super) fn release(&self, ids: &HashSet<u128>) -> usize {
        let mut queue = self.queue();
        let before = queue.searches.len();
        queue.searches.retain(|search| !ids.contains(&search.access.id));
        for id in ids {
            queue.refusals.remove(id);
        }
        queue.stale += before - queue.searches.len();
        let left = queue.searches.len();
        if !queue.spilled || (left > 0 && queue.stale < COMPACT_AFTER.max(left)) {
            return left;
        }
        // Pending records first, so that every held search is in the file the
        // rewrite replaces (those released need not be the oldest).
        while queue.writing || !queue.pending.is_empty() {
            queue = if queue.writing { self.wait(queue) } else { self.write_pending(queue) };
        }
        queue.writing = true;
        let keep: Vec<HeldSearch> = queue.searches.iter().cloned().collect();
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
