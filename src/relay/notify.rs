//! Access notifications: committing them (and holding them when the store
//! fails), per-authority sequence watermarks, subscriptions that page a
//! backlog from the store and then follow live commits, and acknowledgements.
//!
//! Memory per authority is a few counters: a backlog, however long, stays in
//! the store and is read a page at a time as the subscriber drains it.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use dashmap::DashMap;
use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tracing::Instrument;

use super::{Relay, held::Held};
use crate::{
    auth::{Action, Identity, authorize},
    error::{Error, Result},
    model::{AccessEvent, Notification},
    store::Cursor,
};

/// Notifications read from the store per page of a subscription.
const PAGE_SIZE: usize = 256;

/// `cpis_notifications_emitted_total`, resolved once: counted on every flagged search.
fn emitted() -> &'static metrics::Counter {
    static EMITTED: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    EMITTED.get_or_init(|| {
        let _recorder = crate::telemetry::metrics();
        metrics::counter!("cpis_notifications_emitted_total")
    })
}

/// Per-authority notification positions.
#[derive(Default)]
pub struct Hub {
    authorities: DashMap<String, Arc<AuthorityChannel>>,
    /// Searches whose notifications could not be committed yet, oldest first.
    pub(super) held: Held,
}

struct AuthorityChannel {
    /// Highest committed sequence; subscribers wait on it.
    last_sequence: watch::Sender<u64>,
    acked_through: AtomicU64,
    /// Case systems' and `deliver` agents' subscriptions (`cpis_subscribers`).
    subscribers: AtomicUsize,
    /// Open browser inboxes: a budget of their own, so that tabs left open
    /// never take the subscriptions the authority's agents need.
    inbox_views: AtomicUsize,
    /// `cpis_notification_backlog{la}`, resolved once.
    backlog: metrics::Gauge,
    /// When the oldest unacknowledged notification's access was, as the
    /// gauge refresh last read it: what `/ops` shows, without a store read.
    oldest_unacked_at: std::sync::Mutex<Option<chrono::DateTime<chrono::Utc>>>,
}

impl AuthorityChannel {
    fn new(la_ods_code: &str, last_sequence: u64, acked_through: u64) -> Self {
        // Known from here on: every per-authority gauge is exposed, at zero until it is not.
        metrics::gauge!("cpis_subscribers", "la" => la_ods_code.to_owned()).set(0.0);
        metrics::gauge!("cpis_notification_oldest_unacked_seconds", "la" => la_ods_code.to_owned()).set(0.0);
        Self {
            last_sequence: watch::Sender::new(last_sequence),
            acked_through: AtomicU64::new(acked_through),
            subscribers: AtomicUsize::new(0),
            inbox_views: AtomicUsize::new(0),
            backlog: metrics::gauge!("cpis_notification_backlog", "la" => la_ods_code.to_owned()),
            oldest_unacked_at: std::sync::Mutex::new(None),
        }
    }

    /// Backlog is counted in sequence numbers; gaps make it an upper bound.
    fn set_backlog(&self) {
        let (last, acked) = (*self.last_sequence.borrow(), self.acked_through.load(Ordering::Acquire));
        self.backlog.set(last.saturating_sub(acked) as f64);
    }
}

/// Positions of one authority, for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorityPositions {
    pub la_ods_code: String,
    pub last_sequence: u64,
    pub acked_through: u64,
    pub subscribers: usize,
    /// As the last gauge refresh read it (`None` before, or with nothing unacknowledged).
    pub oldest_unacked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl AuthorityChannel {
    fn oldest_unacked_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        *self.oldest_unacked_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_oldest_unacked_at(&self, at: Option<chrono::DateTime<chrono::Utc>>) {
        *self.oldest_unacked_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = at;
    }
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    fn channel(&self, la_ods_code: &str) -> Arc<AuthorityChannel> {
        if let Some(channel) = self.authorities.get(la_ods_code) {
            return Arc::clone(channel.value());
        }
        Arc::clone(
            self.authorities
                .entry(la_ods_code.to_owned())
                .or_insert_with(|| Arc::new(AuthorityChannel::new(la_ods_code, 0, 0)))
                .value(),
        )
    }

    /// Makes an authority known (its gauges exposed) before its first notification.
    pub(super) fn register_authority(&self, la_ods_code: &str) {
        self.channel(la_ods_code);
    }

    pub(super) fn restore(&self, cursor: &Cursor) {
        let channel = AuthorityChannel::new(&cursor.la_ods_code, cursor.last_sequence, cursor.acked_through);
        channel.set_backlog();
        self.authorities.insert(cursor.la_ods_code.clone(), Arc::new(channel));
    }

    pub(super) fn publish(&self, notifications: &[Notification]) {
        for notification in notifications {
            let la = &notification.draft.la_ods_code;
            let channel = self.channel(la);
            channel.last_sequence.send_if_modified(|last| {
                let newer = notification.sequence > *last;
                if newer {
                    *last = notification.sequence;
                }
                newer
            });
            channel.set_backlog();
        }
        emitted().increment(notifications.len() as u64);
    }

    /// Positions committed elsewhere (another node of a shared store): never moves one back.
    pub(super) fn observe(&self, la_ods_code: &str, last_sequence: u64, acked_through: Option<u64>) {
        let channel = self.channel(la_ods_code);
        channel.last_sequence.send_if_modified(|last| {
            let newer = last_sequence > *last;
            if newer {
                *last = last_sequence;
            }
            newer
        });
        if let Some(acked) = acked_through {
            channel.acked_through.fetch_max(acked, Ordering::AcqRel);
        }
        channel.set_backlog();
    }

    /// Every authority's positions, in ODS code order.
    pub fn positions(&self) -> Vec<AuthorityPositions> {
        let mut positions: Vec<_> = self
            .authorities
            .iter()
            .map(|entry| AuthorityPositions {
                la_ods_code: entry.key().clone(),
                last_sequence: *entry.last_sequence.borrow(),
                acked_through: entry.acked_through.load(Ordering::Acquire),
                subscribers: entry.subscribers.load(Ordering::Acquire),
                oldest_unacked_at: entry.oldest_unacked_at(),
            })
            .collect();
        positions.sort_by(|a, b| a.la_ods_code.cmp(&b.la_ods_code));
        positions
    }

    /// Searches whose notifications are held for retry.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A person's accesses held for retry while the store fails, oldest first.
    pub(crate) fn held_accesses_of(&self, nhs_number: crate::nhs::NhsNumber) -> Vec<AccessEvent> {
        self.held.accesses_of(nhs_number)
    }
}

/// Open browser inboxes one authority may have at once, besides its
/// `max_subscriptions_per_la` subscriptions.
pub const MAX_INBOX_VIEWS_PER_LA: usize = 32;

/// Who follows an authority's notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follower {
    /// A case system or `deliver` agent: `Notifications.Subscribe`.
    Subscriber,
    /// A browser's open inbox.
    InboxView,
}

/// Counts a follower for as long as its stream lives.
struct SubscriberGuard {
    la_ods_code: String,
    channel: Arc<AuthorityChannel>,
    follower: Follower,
}

impl SubscriberGuard {
    /// Counts one more follower of its kind, unless the authority already has `max`.
    fn try_new(la_ods_code: String, channel: Arc<AuthorityChannel>, follower: Follower, max: usize) -> Option<Self> {
        let count = Self::counter(&channel, follower)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| (count < max).then_some(count + 1))
            .ok()?
            + 1;
        if follower == Follower::Subscriber {
            metrics::gauge!("cpis_subscribers", "la" => la_ods_code.clone()).set(count as f64);
        }
        Some(Self { la_ods_code, channel, follower })
    }

    fn counter(channel: &AuthorityChannel, follower: Follower) -> &AtomicUsize {
        match follower {
            Follower::Subscriber => &channel.subscribers,
            Follower::InboxView => &channel.inbox_views,
        }
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        let count = Self::counter(&self.channel, self.follower).fetch_sub(1, Ordering::AcqRel) - 1;
        if self.follower == Follower::Subscriber {
            metrics::gauge!("cpis_subscribers", "la" => self.la_ods_code.clone()).set(count as f64);
        }
    }
}

impl Relay {
    /// Retained notifications after `after_sequence` (or after the last
    /// acknowledged one), then live ones, until the client goes or the relay
    /// drains. An authority has at most `max_subscriptions_per_la` open at
    /// once; one more is RESOURCE_EXHAUSTED.
    pub fn subscribe(
        &self,
        identity: &Identity,
        after_sequence: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Notification>> + Send + 'static> {
        self.follow_notifications(identity, after_sequence, Follower::Subscriber)
    }

    /// [`Relay::subscribe`] for whoever follows: an open browser inbox has a
    /// budget of its own ([`MAX_INBOX_VIEWS_PER_LA`]) and is no subscriber.
    pub(crate) fn follow_notifications(
        &self,
        identity: &Identity,
        after_sequence: Option<u64>,
        follower: Follower,
    ) -> Result<impl Stream<Item = Result<Notification>> + Send + 'static> {
        authorize(identity, Action::Subscribe)?;
        let la_ods_code = identity.ods_code.clone();
        let channel = self.shared.hub.channel(&la_ods_code);
        let relay = self.clone();
        let store = Arc::clone(&self.shared.store);
        let mut draining = self.shared.draining.subscribe();
        let mut last_sequence = channel.last_sequence.subscribe();
        let (max, what) = match follower {
            Follower::Subscriber => {
                (self.shared.settings.max_subscriptions_per_la, "open subscriptions (max_subscriptions_per_la)")
            }
            Follower::InboxView => (MAX_INBOX_VIEWS_PER_LA, "inbox pages open in browsers"),
        };
        let Some(guard) = SubscriberGuard::try_new(la_ods_code.clone(), channel, follower, max) else {
            return Err(Error::ResourceExhausted(format!(
                "this local authority already has {max} {what}; close one first"
            )));
        };
        let stream = async_stream::try_stream! {
            let _guard = guard;
            // Resuming from the acknowledged position: on a shared store it may have
            // been acknowledged through another node a moment ago.
            let mut cursor = match after_sequence {
                Some(after) => after,
                None => relay.fresh_positions(&la_ods_code).await?.acked_through,
            };
            loop {
                if *draining.borrow() {
                    break;
                }
                let known = *last_sequence.borrow_and_update();
                let page = store.notifications_after(&la_ods_code, cursor, PAGE_SIZE).await?;
                if page.is_empty() {
                    // Everything committed up to `known` is delivered or expired.
                    cursor = cursor.max(known);
                    tokio::select! {
                        changed = last_sequence.wait_for(|last| *last > cursor) => if changed.is_err() { break },
                        () = super::until_draining(&mut draining) => break,
                    }
                    continue;
                }
                for notification in page {
                    cursor = notification.sequence;
                    metrics::counter!("cpis_notifications_delivered_total").increment(1);
                    yield notification;
                }
            }
        };
        Ok(stream.map(|item: Result<Notification, crate::store::StoreError>| item.map_err(Error::from)))
    }

    /// Refreshes the per-authority gauges: backlog, subscribers, and the age
    /// of the oldest unacknowledged notification (read from the store).
    pub async fn refresh_notification_gauges(&self) {
        let now = self.shared.clock.now();
        for position in self.shared.hub.positions() {
            let la = position.la_ods_code.clone();
            self.shared.hub.channel(&la).set_backlog();
            metrics::gauge!("cpis_subscribers", "la" => la.clone()).set(position.subscribers as f64);
            let (mut age, mut oldest_at) = (0.0, None);
            if position.last_sequence > position.acked_through {
                match self.shared.store.notifications_after(&la, position.acked_through, 1).await {
                    Ok(page) => {
                        if let Some(oldest) = page.first() {
                            age = (now - oldest.access.accessed_at).num_milliseconds().max(0) as f64 / 1000.0;
                            oldest_at = Some(oldest.access.accessed_at);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, la = %la, "cannot read the oldest unacknowledged notification");
                        oldest_at = position.oldest_unacked_at;
                    }
                }
            }
            self.shared.hub.channel(&la).set_oldest_unacked_at(oldest_at);
            metrics::gauge!("cpis_notification_oldest_unacked_seconds", "la" => la).set(age);
        }
    }

    /// An authority's positions, read from the store first when other nodes share it.
    async fn fresh_positions(&self, la_ods_code: &str) -> Result<AuthorityPositions, crate::store::StoreError> {
        if let Some(feed) = self.shared.store.feed() {
            self.observe_cursors(&feed).await?;
        }
        let channel = self.shared.hub.channel(la_ods_code);
        Ok(AuthorityPositions {
            la_ods_code: la_ods_code.to_owned(),
            last_sequence: *channel.last_sequence.borrow(),
            acked_through: channel.acked_through.load(Ordering::Acquire),
            subscribers: channel.subscribers.load(Ordering::Acquire),
            oldest_unacked_at: channel.oldest_unacked_at(),
        })
    }

    /// Cumulative acknowledgement; returns the authority's acknowledged position.
    pub async fn ack(&self, identity: &Identity, sequence: u64) -> Result<u64> {
        authorize(identity, Action::Ack)?;
        let la_ods_code = identity.ods_code.clone();
        let channel = self.shared.hub.channel(&la_ods_code);
        let mut last = *channel.last_sequence.borrow();
        if sequence > last {
            // Sent by another node of a shared store, perhaps, and not yet seen here.
            last = self.fresh_positions(&la_ods_code).await?.last_sequence;
        }
        if sequence > last {
            return Err(Error::invalid("sequence", format!("is beyond the last notification sent ({last})")));
        }
        let acked = channel.acked_through.load(Ordering::Acquire);
        if sequence <= acked {
            return Ok(acked);
        }
        let commit = crate::traced_span!("commit", acked_through = sequence);
        self.shared.store.ack(la_ods_code.clone(), sequence).instrument(commit).await?;
        let acked = channel.acked_through.fetch_max(sequence, Ordering::AcqRel).max(sequence);
        channel.set_backlog();
        Ok(acked)
    }
}
