//! Following the other relay nodes of a shared store (PostgreSQL): their
//! plan changes reach this node's index, in the feed's version order; their
//! accesses reach its recent accesses in memory, in the access log's order,
//! so a search here lists them (and knows their requests) without reading the
//! store; and their notification and acknowledgement positions reach its
//! hub, so a subscriber here wakes for a search answered on another node.
//!
//! Hints from the store (LISTEN/NOTIFY) make this prompt; a poll every
//! `feed_poll_interval` makes it correct without them.
//!
//! How far behind the index may be is `cpis_index_lag_seconds`: the time
//! since the start of the last poll that read everything (plans, accesses,
//! positions) without an error. A node that cannot hear the database keeps
//! answering searches from its index (a flag shown from a slightly old index
//! is safer than none), holds their notifications, and reports NOT_SERVING
//! once a write fails, so load balancers send clinicians elsewhere; the gauge
//! and its alert say how old what it answers from may be. A node's own plan
//! change first applies every earlier version it has not seen, then itself,
//! all under the plan-write lock, so the index applies versions in order
//! whichever node wrote them.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{MutexGuard, broadcast::error::RecvError, watch};

use super::Relay;
use crate::{
    error::{Error, Result},
    store::{Change, Feed, Hint, PlanChanges, StoreError},
    stored::StoredPlan,
};

/// Plan changes read from the feed at a time.
const FEED_PAGE: usize = 64;

/// Accesses read from the log at a time.
const ACCESS_PAGE: usize = 2_048;

/// Pages of accesses one read takes at most before the follower turns to
/// positions and hints (the rest at the next poll).
const ACCESS_PAGES_PER_READ: usize = 8;

/// How far one read of the accesses got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Followed {
    /// Up to the log's end as it was read.
    All,
    /// Some pages; more remain.
    Partly,
    /// A read failed.
    Failed,
}

/// Publishes `cpis_clock_offset_seconds`: how far this machine's wall
/// clock is ahead of the database's (negative: behind), halfway through the
/// round trip. Every node stamps the accesses it stores, and the plans it
/// loads, with its own clock: a node whose clock is off shows clinicians and
/// local authorities access times off by as much, and its alert says so.
async fn measure_clock_offset(feed: &Arc<dyn Feed>) {
    let before = chrono::Utc::now();
    let database = feed.database_time().await;
    let after = chrono::Utc::now();
    match database {
        Ok(database) => {
            let here = before + (after - before) / 2;
            let offset = (here - database).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
            metrics::gauge!("cpis_clock_offset_seconds").set(offset);
        }
        Err(error) => tracing::debug!(%error, "cannot read the database's clock; the clock offset is not updated"),
    }
}

/// When the last complete read of each half of the other nodes' commits
/// started: the index lags by the older of the two.
struct ReadStarts {
    plans: Instant,
    others: Instant,
}

impl Relay {
    /// Follows the feed until the relay drains, on two tasks: plan changes
    /// on one, accesses and notification positions on the other. A
    /// clinician's flag never waits behind the accesses: after a partition
    /// heals, tens of thousands of them may be read while other nodes keep
    /// adding more (seen: a node that showed a plan change made during the
    /// cut only after 5-60 s, its one follower reading accesses meanwhile).
    pub(super) fn spawn_follower(&self, feed: Arc<dyn Feed>) {
        self.spawn_lag_gauge();
        let started = *self.shared.caught_up.borrow();
        let starts = Arc::new(std::sync::Mutex::new(ReadStarts { plans: started, others: started }));
        self.spawn_plan_follower(Arc::clone(&feed), Arc::clone(&starts));
        self.spawn_access_follower(feed, starts);
    }

    fn spawn_plan_follower(&self, feed: Arc<dyn Feed>, starts: Arc<std::sync::Mutex<ReadStarts>>) {
        let relay = self.clone();
        let mut hints = feed.hints();
        let mut draining = self.shared.draining.subscribe();
        self.spawn_task(async move {
            let mut ticks = tokio::time::interval(relay.shared.settings.feed_poll_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let read = |relay: Relay, feed: Arc<dyn Feed>, starts: Arc<std::sync::Mutex<ReadStarts>>| async move {
                let started = Instant::now();
                if relay.follow_plans(&feed).await {
                    relay.read_complete(&starts, |starts| starts.plans = started);
                }
            };
            loop {
                tokio::select! {
                    _ = ticks.tick() => read(relay.clone(), Arc::clone(&feed), Arc::clone(&starts)).await,
                    hint = hints.recv() => match hint {
                        Ok(Hint::Plans | Hint::Resync) | Err(RecvError::Lagged(_)) => {
                            read(relay.clone(), Arc::clone(&feed), Arc::clone(&starts)).await;
                        }
                        Ok(Hint::Notified(_) | Hint::Acked(..)) => {}
                        Err(RecvError::Closed) => return,
                    },
                    () = super::until_draining(&mut draining) => return,
                }
            }
        });
    }

    fn spawn_access_follower(&self, feed: Arc<dyn Feed>, starts: Arc<std::sync::Mutex<ReadStarts>>) {
        let relay = self.clone();
        let mut hints = feed.hints();
        let mut draining = self.shared.draining.subscribe();
        self.spawn_task(async move {
            let mut ticks = tokio::time::interval(relay.shared.settings.feed_poll_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => relay.resync_others(&feed, &starts).await,
                    hint = hints.recv() => match hint {
                        Ok(Hint::Notified(positions)) => {
                            // Accesses first: a subscriber woken here for another node's
                            // search finds that search listed here too. While a catch-up
                            // is under way (not all read), the next poll's positions wake it.
                            if relay.follow_accesses(&feed).await == Followed::All {
                                for (la, sequence) in positions {
                                    relay.shared.hub.observe(&la, sequence, None);
                                }
                            }
                        }
                        Ok(Hint::Acked(la, through)) => relay.shared.hub.observe(&la, 0, Some(through)),
                        Ok(Hint::Plans) => {}
                        Ok(Hint::Resync) | Err(RecvError::Lagged(_)) => relay.resync_others(&feed, &starts).await,
                        Err(RecvError::Closed) => return,
                    },
                    () = super::until_draining(&mut draining) => return,
                }
            }
        });
    }

    /// Reads the accesses and every authority's positions.
    async fn resync_others(&self, feed: &Arc<dyn Feed>, starts: &std::sync::Mutex<ReadStarts>) {
        let started = Instant::now();
        // Positions even when the accesses are not all read yet: a subscriber
        // here must not wait for a catch-up of accesses to hear of a notification.
        let accesses = self.follow_accesses(feed).await;
        let positions = self.observe_cursors(feed).await;
        if let Err(error) = &positions {
            tracing::warn!(%error, "cannot read notification positions from the store; retrying at the next poll");
        }
        if accesses == Followed::All && positions.is_ok() {
            self.read_complete(starts, |starts| starts.others = started);
            measure_clock_offset(feed).await;
        }
    }

    /// Records a complete read of one half; the index is caught up to the older half's start.
    fn read_complete(&self, starts: &std::sync::Mutex<ReadStarts>, set: impl FnOnce(&mut ReadStarts)) {
        let oldest = {
            let mut starts = starts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            set(&mut starts);
            starts.plans.min(starts.others)
        };
        self.shared.caught_up.send_if_modified(|at| {
            let newer = oldest > *at;
            *at = (*at).max(oldest);
            newer
        });
    }

    /// Publishes `cpis_index_lag_seconds` every second until the relay drains,
    /// on its own task: a poll stuck on a dead connection must not freeze it.
    fn spawn_lag_gauge(&self) {
        let relay = self.clone();
        let mut draining = self.shared.draining.subscribe();
        self.spawn_task(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        metrics::gauge!("cpis_index_lag_seconds").set(relay.index_lag().as_secs_f64());
                    }
                    () = super::until_draining(&mut draining) => return,
                }
            }
        });
    }

    /// How far behind the other nodes' commits this node's index and recent
    /// accesses may be: zero for a store this process alone writes.
    pub fn index_lag(&self) -> Duration {
        if self.shared.store.feed().is_none() {
            return Duration::ZERO;
        }
        self.shared.caught_up.borrow().elapsed()
    }

    /// When the last complete read of the other nodes' commits started.
    pub fn caught_up(&self) -> watch::Receiver<Instant> {
        self.shared.caught_up.subscribe()
    }

    pub(super) async fn observe_cursors(&self, feed: &Arc<dyn Feed>) -> Result<(), StoreError> {
        for cursor in feed.cursors().await? {
            self.shared.hub.observe(&cursor.la_ods_code, cursor.last_sequence, Some(cursor.acked_through));
        }
        Ok(())
    }

    /// Reads the accesses committed since the last read (this node's own
    /// among them, already known) into the recent accesses: at most
    /// [`ACCESS_PAGES_PER_READ`] pages, so a node catching up while others
    /// keep committing still reads positions between (the next poll goes on).
    async fn follow_accesses(&self, feed: &Arc<dyn Feed>) -> Followed {
        for _ in 0..ACCESS_PAGES_PER_READ {
            let from = *self.shared.access_position.borrow();
            match feed.accesses_from(from, ACCESS_PAGE).await {
                Ok(page) => {
                    for access in &page.accesses {
                        match access.view() {
                            Ok(view) => self.shared.recent.record_view(&view),
                            Err(error) => tracing::error!(%error, "an access in the store cannot be read; skipped"),
                        }
                    }
                    self.shared.access_position.send_if_modified(|held| {
                        let newer = page.next > *held;
                        *held = (*held).max(page.next);
                        newer
                    });
                    if page.accesses.len() < ACCESS_PAGE {
                        return Followed::All;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read other nodes' accesses from the store; retrying at the next poll");
                    return Followed::Failed;
                }
            }
        }
        Followed::Partly
    }

    /// The access log position this node's recent accesses include everything before.
    pub fn access_position(&self) -> watch::Receiver<u64> {
        self.shared.access_position.subscribe()
    }

    async fn follow_plans(&self, feed: &Arc<dyn Feed>) -> bool {
        let writes = self.shared.plan_writes.lock().await;
        match self.apply_feed(&writes, feed, u64::MAX).await {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "cannot follow plan changes from the store; retrying at the next poll");
                false
            }
        }
    }

    /// Before a plan change of its own at `version` reaches the index: every
    /// earlier version first. Nothing to do for a store with no feed.
    pub(super) async fn catch_up_before(&self, writes: &MutexGuard<'_, ()>, version: u64) -> Result<()> {
        if let Some(feed) = self.shared.store.feed() {
            self.apply_feed(writes, &feed, version.saturating_sub(1)).await?;
        }
        Ok(())
    }

    /// Records that the index holds the plan change at `version`.
    pub(super) fn applied_plan_version(&self, _writes: &MutexGuard<'_, ()>, version: u64) {
        self.shared.plan_version.send_if_modified(|held| {
            let newer = version > *held;
            if newer {
                *held = version;
            }
            newer
        });
    }

    /// Applies feed changes after the index's version, up to `through`.
    async fn apply_feed(&self, writes: &MutexGuard<'_, ()>, feed: &Arc<dyn Feed>, through: u64) -> Result<()> {
        loop {
            let after = *self.shared.plan_version.borrow();
            if after >= through {
                return Ok(());
            }
            match feed.plan_changes_after(after, FEED_PAGE).await? {
                PlanChanges::Changes(changes) if changes.is_empty() => return Ok(()),
                PlanChanges::Changes(changes) => {
                    for (version, change) in changes {
                        if version > through {
                            return Ok(());
                        }
                        self.apply_to_index(change).await?;
                        self.applied_plan_version(writes, version);
                    }
                }
                PlanChanges::Gap => self.reload_plans(writes).await?,
            }
        }
    }

    async fn apply_to_index(&self, change: Change) -> Result<()> {
        let index = self.shared.index.clone();
        match change {
            Change::UpsertPlans { authority, plans, .. } => {
                self.shared.hub.register_authority(&authority.ods_code);
                index.set_authority(authority);
                super::plans::off_runtime(move || index.upsert(plans.iter().cloned())).await?;
            }
            Change::ReplacePlans { authority, plans, .. } => {
                self.shared.hub.register_authority(&authority.ods_code);
                let la = authority.ods_code.clone();
                index.set_authority(authority);
                super::plans::off_runtime(move || index.replace_authority(&la, plans.iter().cloned())).await?;
            }
            Change::DeletePlans { la_ods_code, nhs_number, plan_type, .. } => {
                index.remove(&la_ods_code, nhs_number, plan_type);
            }
            _ => {
                return Err(Error::Store(StoreError::Corrupt(
                    "the plan feed holds a change that is not a plan's".into(),
                )));
            }
        }
        self.publish_plan_gauges();
        Ok(())
    }

    /// The feed no longer holds what this node missed: every authority's
    /// plans are replaced by the store's, each atomically for readers.
    async fn reload_plans(&self, writes: &MutexGuard<'_, ()>) -> Result<()> {
        tracing::warn!("this node fell behind the plan feed's retention; reloading every plan from the store");
        let snapshot = self.shared.store.load().await?;
        let mut by_authority: std::collections::HashMap<String, Vec<StoredPlan>> = std::collections::HashMap::new();
        for plan in snapshot.plans {
            by_authority.entry(plan.la_ods_code().to_owned()).or_default().push(plan);
        }
        let index = self.shared.index.clone();
        let mut codes = index.authority_codes();
        codes.extend(by_authority.keys().cloned());
        codes.sort_unstable();
        codes.dedup();
        for authority in snapshot.authorities {
            self.shared.hub.register_authority(&authority.ods_code);
            index.set_authority(authority);
        }
        super::plans::off_runtime(move || {
            for la in codes {
                let plans = by_authority.remove(&la).unwrap_or_default();
                index.replace_authority(&la, plans);
            }
        })
        .await?;
        self.applied_plan_version(writes, snapshot.plan_version);
        self.publish_plan_gauges();
        Ok(())
    }
}
