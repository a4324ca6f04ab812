//! A store that keeps everything in process memory: for tests and for
//! benchmarks that compare against the durable store. It loses everything
//! on exit and must never be the store of a real deployment.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use futures::{FutureExt, future::BoxFuture};

use super::{Applied, Change, Cursor, ExpiryCounts, Snapshot, Store, StoreError};
use crate::{
    model::{AccessEvent, LocalAuthority, Notification, PlanType},
    nhs::NhsNumber,
    stored::{StoredAccess, StoredPlan},
};

type PlanKey = (String, NhsNumber, PlanType);

fn key_of(plan: &StoredPlan) -> PlanKey {
    (plan.la_ods_code().to_owned(), plan.nhs_number(), plan.plan_type())
}

#[derive(Default, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    authorities: HashMap<String, LocalAuthority>,
    plans: BTreeMap<PlanKey, StoredPlan>,
    /// By person, then time, in their stored form, as the embedded store reads them.
    accesses: BTreeMap<(NhsNumber, i64, u128), StoredAccess>,
    /// Time order, for retention.
    access_times: BTreeMap<(i64, u128), NhsNumber>,
    notifications: BTreeMap<(String, u64), Notification>,
    cursors: HashMap<String, Cursor>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_state<T>(&self, work: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&mut state)
    }
}

impl State {
    fn apply(&mut self, change: Change) -> Result<Applied, StoreError> {
        Ok(match change {
            Change::UpsertPlans { authority, plans } => {
                self.authorities.insert(authority.ods_code.clone(), authority);
                for plan in plans.iter() {
                    self.plans.insert(key_of(plan), plan.clone());
                }
                Applied::Committed
            }
            Change::ReplacePlans { authority, plans } => {
                self.plans.retain(|(la, _, _), _| *la != authority.ods_code);
                self.authorities.insert(authority.ods_code.clone(), authority);
                for plan in plans.iter() {
                    self.plans.insert(key_of(plan), plan.clone());
                }
                Applied::Committed
            }
            Change::DeletePlans { la_ods_code, nhs_number, plan_type } => {
                self.plans.retain(|(la, nhs, kind), _| {
                    !(*la == la_ods_code && *nhs == nhs_number && plan_type.is_none_or(|wanted| wanted == *kind))
                });
                Applied::Committed
            }
            Change::RecordAccess { access, drafts } => {
                let mut notified = Vec::with_capacity(drafts.len());
                for draft in drafts {
                    let cursor = self
                        .cursors
                        .entry(draft.la_ods_code.clone())
                        .or_insert_with(|| Cursor { la_ods_code: draft.la_ods_code.clone(), ..Cursor::default() });
                    cursor.last_sequence += 1;
                    let notification = Notification { sequence: cursor.last_sequence, draft, access: access.clone() };
                    self.notifications
                        .insert((notification.draft.la_ods_code.clone(), notification.sequence), notification.clone());
                    notified.push(notification);
                }
                let at = access.accessed_at.timestamp_micros();
                self.access_times.insert((at, access.id), access.nhs_number);
                let stored = StoredAccess::encode(&access)?;
                self.accesses.insert((access.nhs_number, at, access.id), stored);
                Applied::Notified(notified)
            }
            Change::Ack { la_ods_code, through } => {
                let cursor = self
                    .cursors
                    .entry(la_ods_code.clone())
                    .or_insert_with(|| Cursor { la_ods_code: la_ods_code.clone(), ..Cursor::default() });
                cursor.acked_through = cursor.acked_through.max(through.min(cursor.last_sequence));
                Applied::Committed
            }
            Change::Expire(expiry) => {
                let mut counts = ExpiryCounts::default();
                let plans_before = self.plans.len();
                self.plans.retain(|_, plan| plan.is_visible_on(expiry.today));
                counts.plans = (plans_before - self.plans.len()) as u64;
                let cursors = &self.cursors;
                let notifications_before = self.notifications.len();
                self.notifications.retain(|(la, sequence), notification| {
                    let acked = cursors.get(la).is_some_and(|cursor| *sequence <= cursor.acked_through);
                    !(acked && notification.access.accessed_at < expiry.acked_notifications_before)
                });
                counts.notifications = (notifications_before - self.notifications.len()) as u64;
                let keep = self.access_times.split_off(&(expiry.accesses_before.timestamp_micros(), 0));
                for ((at, id), nhs) in std::mem::replace(&mut self.access_times, keep) {
                    self.accesses.remove(&(nhs, at, id));
                    counts.accesses += 1;
                }
                Applied::Expired(counts)
            }
        })
    }
}

impl Store for MemoryStore {
    fn load(&self) -> BoxFuture<'static, Result<Snapshot, StoreError>> {
        let snapshot = self.with_state(|state| {
            let recent = crate::recent::Recent::new();
            let mut people = state.accesses.iter().peekable();
            while let Some(((nhs_number, _, _), first)) = people.next() {
                let mut views = vec![first.view()?];
                while let Some((_, access)) = people.next_if(|((next, _, _), _)| next == nhs_number) {
                    views.push(access.view()?);
                }
                recent.load_person(*nhs_number, views);
            }
            Ok(Snapshot {
                authorities: state.authorities.values().cloned().collect(),
                plans: state.plans.values().cloned().collect(),
                cursors: state.cursors.values().cloned().collect(),
                plan_version: 0,
                recent,
                access_position: 0,
            })
        });
        async move { snapshot }.boxed()
    }

    fn apply(&self, change: Change) -> BoxFuture<'static, Result<Applied, StoreError>> {
        let result = self.with_state(|state| state.apply(change));
        async move { result }.boxed()
    }

    fn accesses_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<AccessEvent>, StoreError>> {
        let accesses = self.with_state(|state| {
            state
                .accesses
                .range((nhs_number, i64::MIN, 0)..=(nhs_number, i64::MAX, u128::MAX))
                .map(|(_, access)| access.view().map(|view| view.to_event()))
                .collect::<Result<Vec<_>, _>>()
        });
        async move { accesses }.boxed()
    }

    fn notifications_after(
        &self,
        la_ods_code: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        let page = self.with_state(|state| {
            state
                .notifications
                .range((la_ods_code.to_owned(), after.saturating_add(1))..=(la_ods_code.to_owned(), u64::MAX))
                .take(limit)
                .map(|(_, notification)| notification.clone())
                .collect()
        });
        async move { Ok(page) }.boxed()
    }
}
