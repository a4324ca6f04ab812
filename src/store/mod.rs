//! The system of record. The [`Store`] trait is what the relay needs from
//! durable storage: apply a change and resolve only once it is durable
//! (callers use the typed writes of [`writes`]),
//! replay everything on start, read what a search needs of a person's
//! history (bounded, whatever its length), and page through a local
//! authority's notifications. The relay never touches storage any other way,
//! so the embedded (fjall) store and the in-memory store are interchangeable.
//! Reads that may touch the disk return futures and run off the async workers.
//!
//! Sequence numbers of notifications are assigned by the store, in commit
//! order per local authority, so a subscriber that has seen sequence N has
//! seen every committed notification of that authority up to N.
//!
//! A store that several relay nodes share (PostgreSQL) also offers a
//! [`Feed`]: what the other nodes committed, so that each node's index and
//! notification positions follow them.

pub mod check;
pub mod embedded;
pub mod error;
pub mod faults;
pub mod log;
pub mod memory;
pub mod postgres;
pub mod writes;

pub use error::StoreError;

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use futures::future::BoxFuture;

use crate::{
    model::{AccessEvent, AuditRead, LocalAuthority, Notification, NotificationDraft, PlanType},
    nhs::NhsNumber,
    plan_history::PlanEvent,
    stored::{StoredAccess, StoredPlan},
};

/// Set once a store can take no more writes until the process restarts. An
/// embedded (fjall) store whose journal append or sync failed refuses every
/// later commit ("poisoned": what reached the disk is unknown, and only the
/// replay of a restart recovers it), so the relay stops instead of holding
/// every search until its limit. Clones share the signal.
#[derive(Clone, Debug)]
pub struct Broken(Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Default for Broken {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(None)))
    }
}

impl Broken {
    /// Marks the store broken, with why; true the first time.
    pub fn set(&self, reason: &str) -> bool {
        self.0.send_if_modified(|state| {
            let first = state.is_none();
            if first {
                *state = Some(reason.to_owned());
            }
            first
        })
    }

    /// Why the store is broken, once it is.
    pub fn reason(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Resolves (with why) once the store is broken.
    pub async fn wait(&self) -> String {
        let mut state = self.0.subscribe();
        let reason = state.wait_for(Option::is_some).await.map(|reason| reason.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            // The sender lives in `self`: never closed while this waits.
            Err(_) => std::future::pending().await,
        }
    }
}

/// One change to the system of record, applied atomically.
#[derive(Debug, Clone)]
pub enum Change {
    /// Adds or replaces these plans of one local authority and records its
    /// details. Each plan change is made `at` the relay's time: the time its
    /// events in the plan history ([`crate::plan_history`]) carry.
    UpsertPlans { authority: LocalAuthority, plans: Arc<[StoredPlan]>, at: DateTime<Utc> },
    /// Makes the authority's plans exactly these (FULL_REFRESH).
    ReplacePlans { authority: LocalAuthority, plans: Arc<[StoredPlan]>, at: DateTime<Utc> },
    /// Deletes one authority's plans of a person: one type, or all.
    DeletePlans { la_ods_code: String, nhs_number: NhsNumber, plan_type: Option<PlanType>, at: DateTime<Utc> },
    /// A search of a flagged person: its access history entry and one
    /// notification per owning authority, which the store numbers.
    RecordAccess { access: AccessEvent, drafts: Vec<NotificationDraft> },
    /// An auditor's read of a person's access trail: an access of the log
    /// (kind audit) that notifies no one and is never listed to a clinician.
    RecordAudit(AuditRead),
    /// A cumulative acknowledgement.
    Ack { la_ods_code: String, through: u64 },
    /// Retention: removes what is past its keeping period.
    Expire(Expiry),
}

/// Cut-offs for retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// When the pass runs: the time of the plan history's "expired" events.
    pub now: DateTime<Utc>,
    /// Plans no longer visible on this day are removed.
    pub today: NaiveDate,
    /// Acknowledged notifications of accesses before this instant are removed.
    pub acked_notifications_before: DateTime<Utc>,
    /// Access history, and plans' history of changes, before this instant is removed.
    pub accesses_before: DateTime<Utc>,
    /// Accesses are removed oldest log position first, only below this
    /// position (the leaves the log keeper has put in the tree), and only
    /// while they are older than `accesses_before`: retention removes a
    /// prefix of the log.
    pub log_positions_below: u64,
    /// Most records of each kind one change removes, so that a pass never
    /// holds a writer for long; the caller repeats until less is removed.
    /// A store may remove more in one change (PostgreSQL deletes in one statement).
    pub limit: usize,
}

/// Records of each kind one retention change removes at most.
pub const EXPIRY_CHUNK: usize = 10_000;

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The change is durable and has nothing else to report.
    Committed,
    /// The notifications of a `RecordAccess`, with their sequence numbers.
    Notified(Vec<Notification>),
    /// A `RecordAccess` that repeats a request another node stored within
    /// the request window: nothing was stored and no one is notified.
    Repeated,
    Expired(ExpiryCounts),
    /// A plan change of a shared store, with its place in the plan feed.
    PlanVersion(u64),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiryCounts {
    pub plans: u64,
    /// Events of the plans' history of changes.
    pub plan_changes: u64,
    pub notifications: u64,
    pub accesses: u64,
}

/// A local authority's notification positions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub la_ods_code: String,
    /// The highest sequence assigned.
    pub last_sequence: u64,
    /// Everything up to here is acknowledged.
    pub acked_through: u64,
}

/// Everything the relay rebuilds its memory from on start. Notifications
/// and older access histories stay in the store: notifications are paged to
/// subscribers, accesses are read in full by auditors.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub authorities: Vec<LocalAuthority>,
    pub plans: Vec<StoredPlan>,
    pub cursors: Vec<Cursor>,
    /// The last plan change these plans include (shared stores; 0 otherwise).
    pub plan_version: u64,
    /// Every person's recent accesses.
    pub recent: crate::accesses::Recent,
    /// The access log position `recent` includes everything before (shared
    /// stores, whose other nodes' accesses are followed from there; 0 otherwise).
    pub access_position: u64,
}

pub trait Store: Send + Sync + 'static {
    /// Reads the whole state for the relay's in-memory index.
    fn load(&self) -> BoxFuture<'static, Result<Snapshot, StoreError>>;

    /// Applies a change; resolves once it is durable (or has failed and
    /// left nothing behind). What stores implement; the relay calls the
    /// typed writes of [`writes`] (`record_access`, `upsert_plans`, ...).
    fn apply(&self, change: Change) -> BoxFuture<'static, Result<Applied, StoreError>>;

    /// Every retained access of one person, oldest first (for auditors).
    fn accesses_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<AccessEvent>, StoreError>>;

    /// The retained history of changes of one person's plans, oldest first
    /// (for a subject access request).
    fn plan_history_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<PlanEvent>, StoreError>>;

    /// Every retained notification about one person, of every authority, by
    /// authority and sequence: read through an index by person, never by
    /// reading other people's (a subject access report).
    fn notifications_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>>;

    /// Up to `limit` notifications of one authority with sequence above `after`, in order.
    fn notifications_after(
        &self,
        la_ods_code: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>>;

    /// What other relay nodes commit, for a store they share; `None` when
    /// this process is the store's only writer.
    fn feed(&self) -> Option<Arc<dyn Feed>> {
        None
    }

    /// The signal of a store that can break for good (until a restart);
    /// `None` for one that recovers on its own once its disk or database does.
    fn broken(&self) -> Option<Broken> {
        None
    }

    /// The tamper-evident access log, for a store that keeps one
    /// (`None`: the store keeps no log positions yet).
    fn access_log(&self) -> Option<Arc<dyn log::AccessLog>> {
        None
    }
}

/// Plan changes committed after a version, in version (= commit) order.
#[derive(Debug)]
pub enum PlanChanges {
    /// Oldest first; empty when there are none.
    Changes(Vec<(u64, Change)>),
    /// Changes after the version asked for are no longer kept: reload everything.
    Gap,
}

/// A hint that another node committed something; correctness never
/// depends on hints arriving (a lost one is covered by polling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Plan changes were committed.
    Plans,
    /// Accesses were committed, and these authorities' notifications up to
    /// these sequences (none for scheduled reads).
    Notified(Vec<(String, u64)>),
    /// An authority acknowledged through a sequence.
    Acked(String, u64),
    /// Hints may have been missed (a reconnect): read everything.
    Resync,
}

/// What the other writers of a shared store committed.
pub trait Feed: Send + Sync + 'static {
    /// Plan changes after `version`, at most `limit`.
    fn plan_changes_after(&self, version: u64, limit: usize) -> BoxFuture<'static, Result<PlanChanges, StoreError>>;

    /// Every authority's committed positions.
    fn cursors(&self) -> BoxFuture<'static, Result<Vec<Cursor>, StoreError>>;

    /// Accesses committed at log positions from `position` on, at most `limit`,
    /// in position (= commit) order.
    fn accesses_from(&self, position: u64, limit: usize) -> BoxFuture<'static, Result<AccessPage, StoreError>>;

    /// Hints as they arrive.
    fn hints(&self) -> tokio::sync::broadcast::Receiver<Hint>;

    /// The shared store's clock now, to measure how far this node's clock is off.
    fn database_time(&self) -> BoxFuture<'static, Result<DateTime<Utc>, StoreError>>;
}

/// Accesses read from a shared store's log.
#[derive(Debug, Default)]
pub struct AccessPage {
    /// In position order.
    pub accesses: Vec<StoredAccess>,
    /// The position after the last one read: where the next page starts.
    pub next: u64,
}
