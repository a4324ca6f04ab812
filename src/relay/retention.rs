//! Background upkeep. Retention: plans past their visibility window, acknowledged
//! notifications past their keeping period and access history older than
//! its period are removed from the store in bounded chunks, then from memory. Runs on a timer
//! and on demand (tests drive it with a manual clock). Accesses go as a prefix of the
//! access log, only once the log keeper holds their leaves, and the keeper signs a
//! retention note naming the first position kept (see `crate::access_log`). Gauges of each
//! authority's notification state are refreshed on a short timer.

use tokio::task::JoinHandle;

use super::Relay;
use crate::store::{EXPIRY_CHUNK, Expiry, ExpiryCounts, StoreError};

impl Relay {
    /// One retention pass as of the relay clock's now, in chunks of at most
    /// [`EXPIRY_CHUNK`] records of each kind: searches commit between them,
    /// and uploads wait for one chunk at most, not for the whole pass.
    pub async fn expire(&self) -> Result<ExpiryCounts, StoreError> {
        let shared = &self.shared;
        let now = shared.clock.now();
        // Only leaves the tree holds, under a stored checkpoint, may go: the
        // keeper signs one first (and refuses, so nothing goes, if the log forked).
        let log_positions_below = match &shared.log_keeper {
            Some(keeper) => match keeper.run(|keeper| keeper.checkpoint()).await {
                Ok(signed) => signed.checkpoint.size,
                // Forked: keep every access (the evidence), expire the rest.
                Err(_) if keeper.forked().borrow().is_some() => 0,
                Err(error) => return Err(error),
            },
            None => u64::MAX,
        };
        let expiry = Expiry {
            now,
            log_positions_below,
            today: now.date_naive(),
            acked_notifications_before: now - shared.settings.acked_notification_retention,
            accesses_before: now - shared.settings.access_retention,
            limit: EXPIRY_CHUNK,
        };
        let mut counts = ExpiryCounts::default();
        loop {
            // Plan writes wait, so that store and index drop the same plans.
            let _writes = shared.plan_writes.lock().await;
            let chunk = shared.store.expire(expiry).await?;
            counts.plans += chunk.plans;
            counts.plan_changes += chunk.plan_changes;
            counts.notifications += chunk.notifications;
            counts.accesses += chunk.accesses;
            if chunk == ExpiryCounts::default() {
                break;
            }
        }
        let plans_in_memory = {
            let _writes = shared.plan_writes.lock().await;
            shared.index.remove_where(|plan| plan.is_retained_on(expiry.today))
        };
        if plans_in_memory > 0 {
            self.publish_plan_gauges();
        }
        if counts.accesses > 0
            && let Some(keeper) = &shared.log_keeper
        {
            let removed_before = expiry.accesses_before;
            keeper.run(move |keeper| keeper.record_retention(removed_before)).await?;
        }
        if let Some(keeper) = &shared.log_keeper
            && keeper.forked().borrow().is_none()
        {
            keeper.run(|keeper| keeper.thin_notes()).await?;
        }
        let accesses_in_memory = shared.recent.expire(expiry.accesses_before);
        metrics::counter!("cpis_retention_removed_total", "kind" => "plan").increment(counts.plans);
        metrics::counter!("cpis_retention_removed_total", "kind" => "plan_change").increment(counts.plan_changes);
        metrics::counter!("cpis_retention_removed_total", "kind" => "notification").increment(counts.notifications);
        metrics::counter!("cpis_retention_removed_total", "kind" => "access").increment(counts.accesses);
        tracing::info!(
            plans = counts.plans,
            plan_changes = counts.plan_changes,
            notifications = counts.notifications,
            accesses = counts.accesses,
            plans_in_memory,
            accesses_in_memory,
            "retention pass"
        );
        Ok(counts)
    }

    /// Refreshes notification gauges every `interval` until the relay drains.
    pub(crate) fn spawn_gauges(&self, interval: std::time::Duration) -> JoinHandle<()> {
        let relay = self.clone();
        let mut draining = self.shared.draining.subscribe();
        self.spawn_task(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => relay.refresh_notification_gauges().await,
                    () = super::until_draining(&mut draining) => return,
                }
            }
        })
    }

    /// Signs access log checkpoints every `checkpoint_interval`, through the
    /// drain too, and a last one once the relay's writes are over
    /// ([`Relay::finish_tasks`]: after the grace period's last commits and
    /// held retries), so that the last checkpoint covers them.
    ///
    /// With witnesses configured, the keeper first learns the checkpoint
    /// they last cosigned (its signatures must extend it), then a second
    /// task sends each checkpoint to them (`access_log::witnessing`), and the
    /// last one once the keeper signed it; the handle returned ends after both.
    pub fn spawn_log_keeper(&self) -> Option<JoinHandle<()>> {
        let keeper = self.shared.log_keeper.as_ref()?;
        let interval = self.shared.settings.checkpoint_interval;
        let keep = keeper.clone().keep(interval, self.shared.writes_over.subscribe());
        let Some(policy) = self.shared.settings.witnesses.clone() else { return Some(self.spawn_task(keep)) };
        let (signed_last, last_signed) = tokio::sync::watch::channel(false);
        let learning = keeper.clone();
        // Signatures (proofs, retention) wait for what the witnesses cosigned: a
        // store rewritten while the relay was stopped must not be signed, nor
        // its accesses expired, in the seconds before the keeper knows it.
        learning.await_witnessed();
        let witnessing =
            crate::access_log::witnessing::witness_checkpoints(keeper.clone(), policy.clone(), interval, last_signed);
        Some(self.spawn_task(async move {
            // What the witnesses last cosigned, before the first signature: the log must extend it.
            crate::access_log::witnessing::learn_witnessed(&learning, &policy).await;
            learning.witnessed_learned();
            let keeping = async move {
                keep.await;
                signed_last.send_replace(true);
            };
            tokio::join!(keeping, witnessing);
        }))
    }

    /// Runs [`Relay::expire`] now and then every `retention_interval` until the relay drains.
    pub(crate) fn spawn_retention(&self) -> JoinHandle<()> {
        let relay = self.clone();
        let mut draining = self.shared.draining.subscribe();
        self.spawn_task(async move {
            let mut ticks = tokio::time::interval(relay.shared.settings.retention_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        if let Err(error) = relay.expire().await {
                            tracing::error!(%error, "retention pass failed; will retry at the next interval");
                        }
                    }
                    () = super::until_draining(&mut draining) => return,
                }
            }
        })
    }
}
