//! Fault injection for tests, outside every real store: [`FaultyStore`]
//! wraps a store and makes its writes fail, as a full or broken disk or an
//! unreachable database would, or wait, as a slow disk would, holding the
//! changes until released, or refuses one user's searches as a database
//! refuses a value it cannot keep. Reads pass through untouched.
//!
//! `serve` wraps its store in one only in debug builds, when the test-only
//! `CPIS_TEST_FAIL_STORE_WRITES=1` is set.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use futures::{FutureExt, future::BoxFuture};
use tokio::sync::watch;

use super::{Applied, Change, Feed, Snapshot, Store, StoreError};
use crate::{
    model::{AccessEvent, Notification},
    nhs::NhsNumber,
};

/// Switches shared by a [`FaultyStore`] and the test that drives it.
#[derive(Debug, Clone)]
pub struct Faults {
    failing: Arc<AtomicBool>,
    /// Writes still to fail, one each, before writes pass again.
    fail_next: Arc<AtomicUsize>,
    stalled: Arc<watch::Sender<bool>>,
    /// Changes waiting while writes are stalled, for tests to wait on.
    waiting: Arc<watch::Sender<usize>>,
    /// Searches by this user are refused ([`StoreError::Rejected`]).
    refused_user: Arc<std::sync::Mutex<Option<String>>>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            failing: Arc::default(),
            fail_next: Arc::default(),
            stalled: Arc::new(watch::Sender::new(false)),
            waiting: Arc::new(watch::Sender::new(0)),
            refused_user: Arc::default(),
        }
    }
}

impl Faults {
    /// While stalled, writes wait (and hold their changes) instead of reaching the store.
    pub fn stall_writes(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }

    /// How many changes are waiting; changes as writes start and stop waiting.
    pub fn stalled_changes(&self) -> watch::Receiver<usize> {
        self.waiting.subscribe()
    }

    /// While failing, every write fails before it reaches the store.
    pub fn fail_writes(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The next `count` writes fail, then writes pass again.
    pub fn fail_next_writes(&self, count: usize) {
        self.fail_next.store(count, Ordering::SeqCst);
    }

    /// Every search by `user_id` (while set) is refused for the record's sake,
    /// as PostgreSQL refuses a value it cannot keep, whatever it is batched with.
    pub fn refuse_searches_by(&self, user_id: Option<&str>) {
        *self.refused_user.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = user_id.map(str::to_owned);
    }

    fn refuses(&self, change: &Change) -> bool {
        let Change::RecordAccess { access, .. } = change else { return false };
        let refused = self.refused_user.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        refused.as_deref() == Some(access.accessor.user_id.as_str())
    }

    async fn before_write(&self) -> Result<(), StoreError> {
        let mut stalled = self.stalled.subscribe();
        if *stalled.borrow_and_update() {
            self.waiting.send_modify(|waiting| *waiting += 1);
            let _ = stalled.wait_for(|stalled| !*stalled).await;
            self.waiting.send_modify(|waiting| *waiting -= 1);
        }
        let one_of_the_next =
            self.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok();
        if one_of_the_next || self.failing.load(Ordering::SeqCst) { Err(StoreError::Injected) } else { Ok(()) }
    }
}

/// A store whose writes [`Faults`] can fail or stall.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: Faults,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner, faults: Faults::default() }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }
}

impl Store for FaultyStore {
    fn load(&self) -> BoxFuture<'static, Result<Snapshot, StoreError>> {
        self.inner.load()
    }

    fn apply(&self, change: Change) -> BoxFuture<'static, Result<Applied, StoreError>> {
        let (inner, faults) = (Arc::clone(&self.inner), self.faults.clone());
        async move {
            faults.before_write().await?;
            if faults.refuses(&change) {
                return Err(StoreError::Rejected("refused by the test's fault switch".into()));
            }
            inner.apply(change).await
        }
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

    fn feed(&self) -> Option<Arc<dyn Feed>> {
        self.inner.feed()
    }

    fn broken(&self) -> Option<super::Broken> {
        self.inner.broken()
    }

    fn access_log(&self) -> Option<Arc<dyn crate::store::log::AccessLog>> {
        self.inner.access_log()
    }
}
