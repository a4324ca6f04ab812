//! A flagged search's commit, and what happens when the store does not take
//! it. The clinician is answered anyway (safety over silence): the search is
//! held (`held`: in memory and in the spill file, synced before the answer),
//! retried until the store takes it, retried through the shutdown grace
//! period and reloaded at start. Beyond `max_held_notifications` a search is
//! still answered but its notifications are refused with an error log and
//! `cpis_notifications_refused_total`: never dropped silently.
//!
//! Three rules keep one fault from stalling the node:
//! - Once a write has failed and searches are held (so their retries will
//!   find out when the store is back), the node knows its store is failing:
//!   until a write succeeds again (a retry, an acknowledgement), a new
//!   search is held at once (milliseconds: one spill sync) instead of waiting
//!   for a write the store will not take, and is stored by the retries. The
//!   first write that succeeds ends it: new searches write directly while the
//!   retries drain the queue beside them (were they held for as long as any
//!   search is, a queue under steady load would only empty when a round of
//!   retries outran the arrivals: tens of seconds, seen in the cut-off test).
//! - Retries take the oldest held searches together (one round trip of the
//!   store's batch writer), so the queue drains at the store's pace once it
//!   is back, not one search per round trip.
//! - A failure of the store (a connection, a disk) is told apart from the
//!   store refusing one record ([`StoreError::is_about_the_record`]). A
//!   refused search is tried again alone; refused alone
//!   [`QUARANTINE_AFTER`] times, it is set aside in the quarantine
//!   (`quarantine`), durably, and the searches behind it go on.

use std::{collections::HashSet, sync::atomic::Ordering, time::Duration};

use super::{
    NotificationState, Relay,
    held::Holding,
    quarantine::{QUARANTINE_AFTER, Quarantine, Quarantined},
    spill::{HeldSearch, Spill},
};
use crate::{
    error::{Error, Result},
    model::{AccessEvent, NotificationDraft},
    nhs::NhsNumber,
    store::{StoreError, writes::Recorded},
};

/// Wait between attempts while shutting down: the grace period is short.
const SHUTDOWN_RETRY: Duration = Duration::from_millis(100);

/// Held searches retried together: one batch of the store's writer.
const RETRY_BATCH: usize = 256;

/// What one retry round did.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    /// Nothing is held.
    Empty,
    /// Some held searches were stored or set aside.
    Progress,
    /// Nothing moved: the store failed, or refused what it was given.
    Stuck,
}

impl Relay {
    /// Stores a search's access and notifications, resolving once they are
    /// durable; if the store fails, or is known to be failing (the last write
    /// failed and searches are held), they are held (spilled and synced first) and retried
    /// until the store takes it. Either way the access joins the person's
    /// recent accesses and the search is answered. The one error: the store
    /// is broken for good (the process is stopping to replay its journal)
    /// and the spill could not be written either, so the notification would
    /// not survive the restart: the caller is told to retry rather than be
    /// answered as if it were kept.
    pub(super) async fn commit_access(
        &self,
        access: AccessEvent,
        drafts: Vec<NotificationDraft>,
    ) -> Result<NotificationState> {
        // Known failing: a write failed, and the held searches' retries will
        // find out when the store is back (so `held > 0`: with none held,
        // nothing would retry, and a search tries the store itself). A queue
        // at its limit would refuse the search unasked: the store is tried.
        // The flag first: one atomic load for a search while the store is well.
        if self.shared.health.writes_failing() {
            let (held, limit) = (self.shared.hub.held(), self.shared.settings.max_held_notifications);
            if held > 0 && held < limit {
                tracing::debug!(held, "the store is failing: this search is held, not written");
                let kept = self.hold(HeldSearch { access: access.clone(), drafts }).await;
                return self.held_outcome(&access, kept, self.store_broken().is_some());
            }
        }
        let error = match self.shared.store.record_access(access.clone(), drafts.clone()).await {
            Ok(Recorded::Notified(notifications)) => {
                // The fan-out: subscribers of each owning authority are woken.
                let notify = crate::traced_span!("notify", notifications = notifications.len());
                notify.in_scope(|| {
                    self.remember(&access);
                    self.shared.hub.publish(&notifications);
                });
                return Ok(NotificationState::Stored);
            }
            // Another node stored this request within the window: this search is its retry.
            Ok(Recorded::Repeated) => return Ok(NotificationState::Repeat),
            Err(error) => error,
        };
        let held = self.shared.hub.held();
        tracing::error!(%error, held = held + 1, "could not store an access notification; holding it for retry");
        let broken = matches!(error, StoreError::Broken(_));
        let kept = self.hold(HeldSearch { access: access.clone(), drafts }).await;
        self.held_outcome(&access, kept, broken)
    }

    /// What a search's caller is told once [`Self::hold`] answered `kept`.
    fn held_outcome(&self, access: &AccessEvent, kept: Option<bool>, broken: bool) -> Result<NotificationState> {
        match kept {
            Some(spilled) if spilled || !broken => {
                self.remember(access);
                Ok(NotificationState::Held)
            }
            // Refused over the hold limit, it is not remembered: a racing copy of
            // the request then tries again rather than counting on it.
            None if !broken => Ok(NotificationState::Refused),
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

    /// One retry round over the oldest held searches, together; each the
    /// store refused for its own sake is tried again alone, counted, and
    /// set aside once refused alone [`QUARANTINE_AFTER`] times.
    async fn retry_round(&self) -> Round {
        let held = &self.shared.hub.held;
        let _turn = held.retry_turn.lock().await;
        let batch = held.front(RETRY_BATCH);
        if batch.is_empty() {
            return Round::Empty;
        }
        let store = &self.shared.store;
        let results = futures::future::join_all(
            batch.iter().map(|search| store.record_access(search.access.clone(), search.drafts.clone())),
        )
        .await;
        let (mut released, mut refused, mut store_failed) = (HashSet::new(), Vec::new(), false);
        for (search, result) in batch.into_iter().zip(results) {
            match result {
                Ok(recorded) => {
                    self.stored_held(&search.access, recorded);
                    released.insert(search.access.id);
                }
                Err(error) if error.is_about_the_record() => refused.push(search),
                Err(_) => store_failed = true,
            }
        }
        // Refused beside others: maybe for another's sake (an embedded batch fails whole).
        for search in refused {
            if store_failed {
                break;
            }
            match store.record_access(search.access.clone(), search.drafts.clone()).await {
                Ok(recorded) => {
                    self.stored_held(&search.access, recorded);
                    released.insert(search.access.id);
                }
                Err(error) if error.is_about_the_record() => {
                    let attempts = held.refused(search.access.id);
                    tracing::warn!(%error, attempts, "the store refused a held search on its own");
                    if attempts >= QUARANTINE_AFTER && self.quarantine(search.clone(), attempts, &error).await {
                        released.insert(search.access.id);
                    }
                }
                Err(_) => store_failed = true,
            }
        }
        if released.is_empty() {
            return Round::Stuck;
        }
        let relay = self.clone();
        match tokio::task::spawn_blocking(move || relay.shared.hub.held.release(&released)).await {
            Ok(left) => self.held_changed(left),
            Err(error) => tracing::error!(%error, "releasing stored notifications did not finish"),
        }
        Round::Progress
    }

    /// A held search the store now has: its notifications go out.
    fn stored_held(&self, access: &AccessEvent, recorded: Recorded) {
        match recorded {
            Recorded::Notified(notifications) => self.shared.hub.publish(&notifications),
            // Another node stored the same request while this one was held:
            // it was a retry after all, and is no longer one of the person's accesses.
            Recorded::Repeated => self.shared.recent.forget(access.nhs_number, access.id),
        }
    }

    /// Sets a held search aside, durably; false (and it stays held) if the
    /// quarantine could not be written.
    async fn quarantine(&self, search: HeldSearch, attempts: u32, error: &StoreError) -> bool {
        let quarantined =
            Quarantined { search, quarantined_at: self.shared.clock.now(), attempts, error: error.to_string() };
        let notifications = quarantined.search.drafts.len();
        let relay = self.clone();
        let added = tokio::task::spawn_blocking(move || relay.shared.hub.held.quarantine().add(&quarantined)).await;
        match added {
            Ok(Ok(count)) => {
                metrics::gauge!("cpis_notifications_quarantined").set(count as f64);
                tracing::error!(
                    %error,
                    attempts,
                    notifications,
                    quarantined = count,
                    "the store refused a held search every time it was tried alone: it is set aside in the quarantine (cpis-relay quarantine list) and the searches held behind it go on"
                );
                true
            }
            Ok(Err(io)) => {
                tracing::error!(error = %io, "cannot write the quarantine file; the refused search stays held");
                false
            }
            Err(join) => {
                tracing::error!(error = %join, "setting a search aside did not finish; it stays held");
                false
            }
        }
    }

    /// Retries held notifications with capped backoff until none is held;
    /// the store is healthy again once none is held and a write succeeded.
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
            match self.retry_round().await {
                Round::Progress => backoff = first,
                Round::Stuck => {
                    backoff = (backoff * 2).min(longest);
                    if !wait(backoff).await {
                        held.retrying.store(false, Ordering::Release);
                        return;
                    }
                }
                Round::Empty => {
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
    pub(crate) async fn store_held_until(&self, deadline: tokio::time::Instant) -> usize {
        if self.store_broken().is_some() {
            return self.shared.hub.held();
        }
        let attempts = async {
            loop {
                match self.retry_round().await {
                    Round::Progress => {}
                    Round::Stuck => tokio::time::sleep(SHUTDOWN_RETRY).await,
                    Round::Empty => return,
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, attempts).await;
        self.shared.hub.held()
    }

    /// Shutdown, once the grace period's retries are over: closes the spill
    /// (what is held stays in it for the next start) and releases the data
    /// directory, so that a relay started next (in this process too) may open it.
    pub(crate) async fn close_spill(&self) {
        let relay = self.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || relay.shared.hub.held.close()).await {
            tracing::error!(%error, "closing the spill file did not finish");
        }
    }

    /// How many searches are set aside in the quarantine.
    pub fn quarantined(&self) -> usize {
        self.shared.hub.held.quarantine().count()
    }

    /// Start: reads the spill and the quarantine, skips every spilled search
    /// whose access the store already has (stored before a crash emptied the
    /// spill) or that is set aside, rewrites the spill with the rest, holds
    /// them again and starts retrying.
    pub(super) async fn reload_held(&self) -> Result<(), StoreError> {
        let Some(dir) = self.shared.settings.spill_dir.clone() else { return Ok(()) };
        let io = |error: std::io::Error| StoreError::Io(format!("spill file in {}: {error}", dir.display()));
        let opening = dir.clone();
        let (spill, loaded, quarantine, set_aside) = tokio::task::spawn_blocking(move || {
            let (spill, loaded) = Spill::open(&opening)?;
            // Opened under the spill's lock of the data directory.
            let quarantine = Quarantine::open(Some(&opening))?;
            let set_aside = super::quarantine::read(&opening)?;
            Ok::<_, std::io::Error>((spill, loaded, quarantine, set_aside))
        })
        .await
        .map_err(|error| StoreError::Io(error.to_string()))?
        .map_err(io)?;
        let quarantined = quarantine.count();
        metrics::gauge!("cpis_notifications_quarantined").set(quarantined as f64);
        if quarantined > 0 {
            tracing::error!(
                quarantined,
                path = %quarantine.path().unwrap_or_default().display(),
                "searches are set aside in the quarantine: their local authorities are not notified until an operator replays or exports them (cpis-relay quarantine list)"
            );
        }
        self.shared.hub.held.install_quarantine(quarantine);
        let set_aside: HashSet<u128> = set_aside.quarantined.iter().map(|entry| entry.search.access.id).collect();
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
        let mut stored_ids: std::collections::HashMap<NhsNumber, Vec<u128>> = Default::default();
        let mut searches = std::collections::VecDeque::new();
        for search in loaded.held {
            if set_aside.contains(&search.access.id) {
                continue;
            }
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
                already_stored_or_set_aside = spilled - held,
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
