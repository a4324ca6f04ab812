//! Store health in one place: every write the relay makes (upload, delete,
//! ack, retention, notification) goes through [`ReportingStore::apply`],
//! which reports its outcome here. The store is `Failing` while the last
//! write failed or any search's notifications are held, so readiness never
//! flaps to healthy while held notifications remain. A write the store
//! refused for the record's sake ([`StoreError::is_about_the_record`]) is
//! not a failing store: the held queue sets such a record aside. An access
//! log whose keeper refuses to sign (its tree no longer extends what it
//! signed) keeps the relay not ready too: what it stores could not be vouched for. Reads report nothing:
//! readiness is about whether what callers hand the relay is kept.

use std::sync::{Arc, Mutex};

use futures::{FutureExt, future::BoxFuture};
use tokio::sync::watch;

use super::StoreHealth;
use crate::{
    model::{AccessEvent, Notification},
    nhs::NhsNumber,
    store::{Applied, Change, Snapshot, Store, StoreError},
};

#[derive(Default)]
struct State {
    last_write_failed: bool,
    held: usize,
    /// The access log keeper refuses to sign: its tree no longer extends what it signed.
    log_forked: bool,
}

/// The inputs of store health and its published value.
pub(super) struct WriteHealth {
    state: Mutex<State>,
    /// `state.last_write_failed`, readable without the lock: every flagged
    /// search asks it before its write.
    last_write_failed: std::sync::atomic::AtomicBool,
    published: watch::Sender<StoreHealth>,
}

impl WriteHealth {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            last_write_failed: std::sync::atomic::AtomicBool::new(false),
            published: watch::Sender::new(StoreHealth::Ok),
        }
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<StoreHealth> {
        self.published.subscribe()
    }

    /// A write finished: `ok` says whether the store took it.
    pub(super) fn wrote(&self, ok: bool) {
        self.update(|state| state.last_write_failed = !ok);
    }

    /// Whether the last write to finish failed: the store is taken to be
    /// failing until a write (a held search's retry among them) succeeds.
    pub(super) fn writes_failing(&self) -> bool {
        self.last_write_failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many searches are held for retry now.
    pub(super) fn set_held(&self, held: usize) {
        self.update(|state| state.held = held);
    }

    /// Whether the access log's keeper refuses to sign (a forked log).
    pub(super) fn set_log_forked(&self, forked: bool) {
        self.update(|state| state.log_forked = forked);
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        // Published under the lock, so concurrent updates publish in the order they changed the state.
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut state);
        self.last_write_failed.store(state.last_write_failed, std::sync::atomic::Ordering::Relaxed);
        let failing = state.last_write_failed || state.held > 0 || state.log_forked;
        let health = if failing { StoreHealth::Failing } else { StoreHealth::Ok };
        self.published.send_if_modified(|published| {
            let changed = *published != health;
            *published = health;
            changed
        });
    }
}

fn operation(change: &Change) -> &'static str {
    match change {
        Change::UpsertPlans { .. } => "upsert_plans",
        Change::ReplacePlans { .. } => "replace_plans",
        Change::DeletePlans { .. } => "delete_plans",
        Change::RecordAccess { .. } => "record_access",
        Change::RecordAudit(_) => "record_audit",
        Change::Ack { .. } => "ack",
        Change::Expire(_) => "expire",
    }
}

/// The relay's store: the configured one, with every write's outcome reported to [`WriteHealth`].
pub(super) struct ReportingStore {
    inner: Arc<dyn Store>,
    health: Arc<WriteHealth>,
}

impl ReportingStore {
    pub(super) fn new(inner: Arc<dyn Store>, health: Arc<WriteHealth>) -> Self {
        Self { inner, health }
    }
}

impl Store for ReportingStore {
    fn load(&self) -> BoxFuture<'static, Result<Snapshot, StoreError>> {
        self.inner.load()
    }

    fn apply(&self, change: Change) -> BoxFuture<'static, Result<Applied, StoreError>> {
        let operation = operation(&change);
        let health = Arc::clone(&self.health);
        self.inner
            .apply(change)
            .map(move |result| {
                let taking_writes = match &result {
                    Ok(_) => true,
                    // The store answered, refusing one record: it is not failing.
                    Err(error) if error.is_about_the_record() => {
                        tracing::error!(%error, operation, "the store refused a record");
                        metrics::counter!("cpis_store_refusals_total", "operation" => operation).increment(1);
                        true
                    }
                    Err(error) => {
                        tracing::error!(%error, operation, "store write failed; not ready until a write succeeds");
                        metrics::counter!("cpis_store_failures_total", "operation" => operation).increment(1);
                        false
                    }
                };
                health.wrote(taking_writes);
                result
            })
            .boxed()
    }

    fn accesses_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<AccessEvent>, StoreError>> {
        self.inner.accesses_of(nhs_number)
    }

    fn plan_history_of(
        &self,
        nhs_number: NhsNumber,
    ) -> BoxFuture<'static, Result<Vec<crate::plan_history::PlanEvent>, StoreError>> {
        self.inner.plan_history_of(nhs_number)
    }

    fn feed(&self) -> Option<Arc<dyn crate::store::Feed>> {
        self.inner.feed()
    }

    fn broken(&self) -> Option<crate::store::Broken> {
        self.inner.broken()
    }

    fn access_log(&self) -> Option<Arc<dyn crate::store::log::AccessLog>> {
        self.inner.access_log()
    }

    fn notifications_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        self.inner.notifications_of(nhs_number)
    }

    fn notifications_after(
        &self,
        la_ods_code: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        self.inner.notifications_after(la_ods_code, after, limit)
    }
}
