//! The relay's domain: search, plan maintenance, notifications and audit,
//! over the index, the store and the requests in flight. Everything here is
//! plain Rust testable without tonic; the gRPC services are thin adapters.
//!
//! Rules that hold across the submodules:
//! - identity comes from the caller's certificate (`Identity`), never from a request;
//! - every write reaches the store and is durable before memory changes, except
//!   a search's notification when the store is failing: the clinician's answer
//!   is never withheld, the notification is held (in the spill file when
//!   there is a data directory) and retried (see `notify` and `spill`);
//! - every store write goes through the reporting store of `health`, so
//!   readiness follows every write, not only notifications.

mod follow;
mod health;
mod held;
mod inbox;
mod notify;
mod oversight;
mod plans;
mod proofs;
pub mod quarantine;
pub mod rate;
mod retention;
mod retry;
mod search;
mod sent;
pub mod spill;
mod subject;
mod upload;
mod validate;

use std::sync::Arc;

use chrono::Duration;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::{
    accesses::Claims,
    auth::{Action, Identity, authorize},
    clock::Clock,
    error::Result,
    index::Index,
    model::AccessEvent,
    store::{Store, StoreError},
};

pub use inbox::{AuthorityBacklog, Inbox};
pub use notify::{Follower, Hub, MAX_INBOX_VIEWS_PER_LA};
pub use proofs::{LogStatus, MAX_NOTIFICATION_PROOFS, NotificationProof};
pub use search::{NotificationState, SearchOutcome, SearchQuery, ShownPlan};
pub use sent::{SentPlanRecord, SentPlanType, SentUploadHeader, UploadMode};
pub use subject::{LoggedAccess, SubjectAccess};
pub use upload::{UploadHeader, UploadOutcome, UploadStatus};
pub use validate::{MAX_TEXT_LEN, Rejection, RejectionReason};

/// Most records one upload may carry unless configured: room for the
/// largest authority's plans (tens of thousands) many times over, while the
/// worst upload the field limits allow stays within a few gigabytes.
pub(crate) const DEFAULT_MAX_UPLOAD_RECORDS: usize = 250_000;

/// Open subscriptions per local authority unless configured: a few nodes of
/// its case system with room for reconnections, not an unbounded number.
pub(crate) const DEFAULT_MAX_SUBSCRIPTIONS_PER_LA: usize = 16;
/// A user searching more distinct people than this in one clock hour is
/// unusual unless configured otherwise (`unusual_access_distinct_people_per_hour`).
pub(crate) const DEFAULT_UNUSUAL_ACCESS_PEOPLE: usize = 100;

/// Retention periods and limits; see `config` for their keys.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// Acknowledged notifications are kept this long after the access.
    pub acked_notification_retention: Duration,
    /// Access history is kept this long.
    pub access_retention: Duration,
    /// Most records one upload may carry.
    pub max_upload_records: usize,
    /// How often retention runs.
    pub retention_interval: std::time::Duration,
    /// A FULL_REFRESH that would remove more than this percentage of the
    /// LA's current plans is refused unless the header allows it.
    pub max_refresh_removal_percent: u32,
    /// A FULL_REFRESH (of an LA that holds plans) with more than this
    /// percentage of its records rejected is refused unless the header allows it.
    pub max_refresh_rejected_percent: u32,
    /// Where held notifications are spilled (the data directory); `None`
    /// (the memory store) holds them in memory only, lost on exit.
    pub spill_dir: Option<std::path::PathBuf>,
    /// Most searches held for retry while the store fails; beyond it a
    /// search still answers but its notifications are refused, loudly.
    pub max_held_notifications: usize,
    /// Searches a second per organisation (ODS code) and the burst above
    /// it; a rate of 0 is no limit. Off by default here (embedded uses,
    /// benchmarks); `serve` defaults to [`rate::DEFAULT_SEARCH_RATE_PER_SECOND`].
    pub search_rate_per_second: f64,
    pub search_burst: u32,
    /// Open subscriptions per local authority; more are refused.
    pub max_subscriptions_per_la: usize,
    /// First and longest wait between retries of held notifications.
    pub held_retry_backoff: (std::time::Duration, std::time::Duration),
    /// A shared store (PostgreSQL): how often other nodes' changes are read
    /// even when no hint announced them.
    pub feed_poll_interval: std::time::Duration,
    /// A user who searches more distinct people than this within one clock
    /// hour raises `cpis_unusual_access_total` and a warning (see `oversight`).
    pub unusual_access_distinct_people_per_hour: usize,
    /// The key the access log's checkpoints are signed with; `None` signs
    /// with a key made for this process only (tests, the memory store).
    pub log_signer: Option<Arc<crate::transparency::LogSigner>>,
    /// How often the access log keeper signs a checkpoint of a grown log.
    pub checkpoint_interval: std::time::Duration,
    /// The witnesses each checkpoint is sent to, if any.
    pub witnesses: Option<Arc<crate::access_log::WitnessPolicy>>,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            acked_notification_retention: Duration::days(30),
            access_retention: Duration::days(365),
            max_upload_records: DEFAULT_MAX_UPLOAD_RECORDS,
            retention_interval: std::time::Duration::from_secs(3600),
            max_refresh_removal_percent: 10,
            max_refresh_rejected_percent: 10,
            spill_dir: None,
            max_held_notifications: 100_000,
            max_subscriptions_per_la: DEFAULT_MAX_SUBSCRIPTIONS_PER_LA,
            search_rate_per_second: 0.0,
            search_burst: rate::DEFAULT_SEARCH_BURST,
            held_retry_backoff: (std::time::Duration::from_millis(50), std::time::Duration::from_secs(5)),
            feed_poll_interval: std::time::Duration::from_secs(1),
            unusual_access_distinct_people_per_hour: DEFAULT_UNUSUAL_ACCESS_PEOPLE,
            log_signer: None,
            checkpoint_interval: std::time::Duration::from_secs(crate::access_log::DEFAULT_CHECKPOINT_INTERVAL_SECS),
            witnesses: None,
        }
    }
}

/// Whether the store is taking writes; drives health and readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreHealth {
    Ok,
    /// The last write failed, or notifications are held and retried.
    Failing,
}

/// A cheap handle to the relay.
#[derive(Clone)]
pub struct Relay {
    shared: Arc<RelayState>,
}

/// Everything the relay's operations share: the index, the store, the
/// notification hub, the limits and the locks that order plan writes.
struct RelayState {
    index: Index,
    claims: Claims,
    /// Every person's recent accesses: what searches list, and what the
    /// request window needs.
    recent: crate::accesses::Recent,
    /// The access log position `recent` holds every access before (a store
    /// that other nodes write too, whose accesses are followed; 0 otherwise).
    access_position: watch::Sender<u64>,
    /// When the last complete read of the other nodes' commits started
    /// (shared stores; see `follow`).
    caught_up: watch::Sender<std::time::Instant>,
    hub: Hub,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: RelaySettings,
    /// Serialises plan writes so that the store and the index apply them in
    /// the same order.
    plan_writes: Mutex<()>,
    /// The last plan feed version the index holds (shared stores; 0 otherwise).
    plan_version: watch::Sender<u64>,
    health: Arc<health::WriteHealth>,
    /// Flipped once on shutdown: open subscriptions end so clients reconnect elsewhere.
    draining: watch::Sender<bool>,
    /// Flipped once the drain's last writes are done (in-flight calls, held
    /// retries): the access log keeper then signs its last checkpoint.
    writes_over: watch::Sender<bool>,
    /// The per-organisation search rate limit.
    search_rate: rate::RateLimiter,
    /// Audit-of-audit and the unusual-access signal.
    oversight: oversight::Oversight,
    /// The access log's tree and checkpoints, for a store that keeps a log.
    log_keeper: Option<crate::access_log::LogKeeper>,
    /// Every task the relay starts in the background, waited for at shutdown
    /// (see [`Relay::finish_tasks`]) so that none outlives it holding the store.
    tasks: tokio_util::task::TaskTracker,
}

impl Relay {
    /// Opens the relay over a store: rebuilds the index and the notification
    /// cursors from it (access histories stay in the store).
    pub async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: RelaySettings,
    ) -> Result<Self, StoreError> {
        // Metric handles resolved from here on must reach the process's recorder.
        let _recorder = crate::telemetry::metrics();
        let write_health = Arc::new(health::WriteHealth::new());
        let store: Arc<dyn Store> = Arc::new(health::ReportingStore::new(store, Arc::clone(&write_health)));
        // What the snapshot holds was committed after this (the index's lag counts from here).
        let started = std::time::Instant::now();
        let snapshot = store.load().await?;
        let loaded_in = started.elapsed();
        let index = Index::new();
        let hub = Hub::new();
        for cursor in &snapshot.cursors {
            hub.restore(cursor);
        }
        for authority in snapshot.authorities {
            hub.register_authority(&authority.ods_code);
            index.set_authority(authority);
        }
        let plan_count = snapshot.plans.len();
        let recent = snapshot.recent;
        index.upsert(snapshot.plans);
        let claims = Claims::new();
        tracing::info!(
            plans = plan_count,
            people = index.people(),
            recent_accesses = recent.len(),
            authorities = snapshot.cursors.len(),
            read_ms = loaded_in.as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state rebuilt from the store"
        );
        metrics::gauge!("cpis_startup_rebuild_seconds").set(started.elapsed().as_secs_f64());
        let oversight = oversight::Oversight::new(settings.unusual_access_distinct_people_per_hour);
        let log_keeper = match store.access_log() {
            Some(log) => Some(open_log_keeper(log, settings.log_signer.clone(), Arc::clone(&clock)).await?),
            None => None,
        };
        let relay = Self {
            shared: Arc::new(RelayState {
                index,
                claims,
                recent,
                access_position: watch::Sender::new(snapshot.access_position),
                caught_up: watch::Sender::new(started),
                hub,
                store,
                clock,
                search_rate: rate::RateLimiter::new(settings.search_rate_per_second, settings.search_burst),
                settings,
                plan_writes: Mutex::new(()),
                plan_version: watch::Sender::new(snapshot.plan_version),
                health: write_health,
                oversight,
                log_keeper,
                draining: watch::Sender::new(false),
                writes_over: watch::Sender::new(false),
                tasks: tokio_util::task::TaskTracker::new(),
            }),
        };
        relay.publish_plan_gauges();
        relay.follow_log_fork();
        relay.reload_held().await?;
        if let Some(feed) = relay.shared.store.feed() {
            relay.spawn_follower(feed);
        }
        Ok(relay)
    }

    /// Every retained access of a person, oldest first (auditors only),
    /// including any held while the store is failing. The read is itself
    /// audited (see `oversight`) and, where the store keeps the access log,
    /// stored first as an access of kind audit: refused if that fails.
    pub async fn access_log(&self, identity: &Identity, nhs_number: &str) -> Result<Vec<AccessEvent>> {
        self.access_log_by(identity, nhs_number, None, "").await
    }

    /// [`Relay::access_log`] naming the person who reads (from the request)
    /// and the request's id (one is generated when empty).
    pub(crate) async fn access_log_by(
        &self,
        identity: &Identity,
        nhs_number: &str,
        accessor: Option<crate::model::Accessor>,
        request_id: &str,
    ) -> Result<Vec<AccessEvent>> {
        authorize(identity, Action::ReadAccessLog)?;
        let nhs_number = validate::nhs_number_field(nhs_number, "nhs_number")?;
        let result = self.read_access_log(identity, nhs_number, accessor, request_id).await;
        self.shared.oversight.audit_read(identity, nhs_number, self.shared.clock.now(), &result);
        result
    }

    async fn read_access_log(
        &self,
        identity: &Identity,
        nhs_number: crate::nhs::NhsNumber,
        accessor: Option<crate::model::Accessor>,
        request_id: &str,
    ) -> Result<Vec<AccessEvent>> {
        self.record_audit_read(identity, nhs_number, accessor, request_id).await?;
        let mut accesses = self.shared.store.accesses_of(nhs_number).await?;
        let held = self.shared.hub.held_accesses_of(nhs_number);
        if !held.is_empty() {
            accesses.extend(held);
            accesses.sort_by_key(|access| (access.accessed_at, access.id));
        }
        Ok(accesses)
    }

    /// Stores an auditor's read of `nhs_number`'s records as an access of the
    /// log (where the store keeps one); an error when it cannot be stored.
    async fn record_audit_read(
        &self,
        identity: &Identity,
        nhs_number: crate::nhs::NhsNumber,
        accessor: Option<crate::model::Accessor>,
        request_id: &str,
    ) -> Result<()> {
        if self.shared.log_keeper.is_some() {
            let read_at = self.shared.clock.now();
            let id = crate::model::time_ordered_id(read_at);
            let read = crate::model::AuditRead {
                id,
                read_at,
                nhs_number,
                organisation_ods_code: identity.ods_code.clone(),
                organisation_name: identity.organisation_name.clone(),
                accessor: accessor.unwrap_or(crate::model::Accessor {
                    user_id: String::new(),
                    name: String::new(),
                    role_code: String::new(),
                }),
                request_id: if request_id.is_empty() {
                    uuid::Uuid::from_u128(id).to_string()
                } else {
                    request_id.to_owned()
                },
            };
            self.shared.store.record_audit(read).await?;
        }
        Ok(())
    }

    /// The access log keeper, where the store keeps a log.
    pub fn log_keeper(&self) -> Option<&crate::access_log::LogKeeper> {
        self.shared.log_keeper.as_ref()
    }

    /// Copies of a request waiting for their first copy's commit, as it changes.
    pub fn retries_waiting(&self) -> watch::Receiver<usize> {
        self.shared.claims.waiting()
    }

    pub fn store_health(&self) -> watch::Receiver<StoreHealth> {
        self.shared.health.subscribe()
    }

    /// The store's signal that it takes no more writes until a restart, for a store that can break so.
    pub(crate) fn broken_store(&self) -> Option<crate::store::Broken> {
        self.shared.store.broken()
    }

    /// Why the store is broken, once it is.
    pub fn store_broken(&self) -> Option<String> {
        self.broken_store().and_then(|broken| broken.reason())
    }

    /// Ends open subscription streams; part of graceful shutdown.
    /// Starts `work` on its own task, one [`Relay::finish_tasks`] waits for.
    pub(crate) fn spawn_task<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.shared.tasks.spawn(work)
    }

    /// Readiness follows the access log keeper's refusal to sign a forked log.
    fn follow_log_fork(&self) {
        let Some(keeper) = &self.shared.log_keeper else { return };
        let mut forked = keeper.forked();
        let health = Arc::clone(&self.shared.health);
        let mut draining = self.shared.draining.subscribe();
        self.spawn_task(async move {
            loop {
                health.set_log_forked(forked.borrow_and_update().is_some());
                tokio::select! {
                    changed = forked.changed() => if changed.is_err() { return },
                    () = until_draining(&mut draining) => return,
                }
            }
        });
    }

    /// Tasks the relay started that are still running (shutdown waits for them).
    pub fn background_tasks(&self) -> usize {
        self.shared.tasks.len()
    }

    /// Shutdown, once the relay drains: waits until `deadline` for every task
    /// it started to end (each ends when it sees the relay draining, after
    /// its last write), so that none holds the store open after this returns.
    pub(crate) async fn finish_tasks(&self, deadline: tokio::time::Instant) {
        // The grace period's calls and held retries are over: the keeper's last checkpoint covers them.
        self.shared.writes_over.send_replace(true);
        self.shared.tasks.close();
        if tokio::time::timeout_at(deadline, self.shared.tasks.wait()).await.is_err() {
            tracing::warn!(running = self.shared.tasks.len(), "background tasks still running at shutdown");
        }
    }

    pub(crate) fn begin_draining(&self) {
        self.shared.draining.send_replace(true);
    }

    pub fn index(&self) -> &Index {
        &self.shared.index
    }

    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// The last plan change of a shared store that the index holds; it
    /// changes as this node applies its own and other nodes' plan changes.
    pub fn plan_version(&self) -> watch::Receiver<u64> {
        self.shared.plan_version.subscribe()
    }

    fn publish_plan_gauges(&self) {
        let counts = self.shared.index.count_by_type();
        for plan_type in crate::model::PlanType::ALL {
            let count = counts.get(&plan_type).copied().unwrap_or(0);
            metrics::gauge!("cpis_plans", "type" => plan_type.code()).set(count as f64);
        }
    }
}

/// Opens the access log keeper on the blocking pool; without a configured
/// key it signs with one made for this process.
async fn open_log_keeper(
    log: Arc<dyn crate::store::log::AccessLog>,
    signer: Option<Arc<crate::transparency::LogSigner>>,
    clock: Arc<dyn Clock>,
) -> Result<crate::access_log::LogKeeper, StoreError> {
    let signer = match signer {
        Some(signer) => signer,
        None => Arc::new(
            crate::transparency::LogSigner::generate_ephemeral(crate::access_log::DEFAULT_LOG_NAME)
                .map_err(|error| StoreError::Io(error.to_string()))?,
        ),
    };
    tokio::task::spawn_blocking(move || crate::access_log::LogKeeper::open(log, signer, clock))
        .await
        .map_err(|error| StoreError::Io(error.to_string()))?
}

/// Resolves once the relay drains (or can no longer tell).
pub(crate) async fn until_draining(draining: &mut watch::Receiver<bool>) {
    let _ = draining.wait_for(|draining| *draining).await;
}
