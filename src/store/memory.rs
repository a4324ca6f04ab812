//! A store that keeps everything in process memory: for tests and for
//! benchmarks that compare against the durable store. It loses everything
//! on exit and must never be the store of a real deployment.

use std::{
    collections::{BTreeMap, HashMap},
    ops::ControlFlow,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};

use super::{
    Applied, Change, Cursor, ExpiryCounts, Snapshot, Store, StoreError,
    log::{AccessLog, LeafProblem, LogBounds, LogEntry, NoteKind, StoredNote, TreeStore},
};
use crate::{
    model::{AccessEvent, AuditRead, LocalAuthority, Notification, PlanType},
    nhs::NhsNumber,
    plan_history::{PlanEvent, PlanEventKind},
    stored::{StoredAccess, StoredPlan},
    transparency::{Hash, HashStore, MemoryHashStore},
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
    /// Plans' changes by person, then time.
    plan_history: BTreeMap<(NhsNumber, i64, u128), PlanEvent>,
    /// By person, then time, in their stored form, as the embedded store reads them.
    accesses: BTreeMap<(NhsNumber, i64, u128), StoredAccess>,
    /// Time order, for retention.
    access_times: BTreeMap<(i64, u128), NhsNumber>,
    notifications: BTreeMap<(String, u64), Notification>,
    cursors: HashMap<String, Cursor>,
    /// The access log: every access and auditor's read by position.
    log: BTreeMap<u64, LogEntry>,
    log_ids: HashMap<u128, u64>,
    log_bounds: LogBounds,
    tree: MemoryHashStore,
    notes: Vec<StoredNote>,
    /// How many notes were ever stored: the next one's number.
    notes_stored: u64,
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
            Change::UpsertPlans { authority, plans, at } => {
                self.authorities.insert(authority.ods_code.clone(), authority);
                for plan in plans.iter() {
                    self.write_plan(plan, at)?;
                }
                Applied::Committed
            }
            Change::ReplacePlans { authority, plans, at } => {
                let la = authority.ods_code.clone();
                self.authorities.insert(authority.ods_code.clone(), authority);
                let kept: std::collections::HashSet<PlanKey> = plans.iter().map(key_of).collect();
                self.remove_plans(|key| key.0 == la && !kept.contains(key), at, PlanEventKind::Withdrawn);
                for plan in plans.iter() {
                    self.write_plan(plan, at)?;
                }
                Applied::Committed
            }
            Change::DeletePlans { la_ods_code, nhs_number, plan_type, at } => {
                self.remove_plans(
                    |(la, nhs, kind)| {
                        *la == la_ods_code && *nhs == nhs_number && plan_type.is_none_or(|wanted| wanted == *kind)
                    },
                    at,
                    PlanEventKind::Deleted,
                );
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
                self.append_to_log(LogEntry::Search(access));
                Applied::Notified(notified)
            }
            Change::RecordAudit(read) => {
                self.append_to_log(LogEntry::Audit(read));
                Applied::Committed
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
                let over: std::collections::HashSet<PlanKey> = (self.plans.iter())
                    .filter(|(_, plan)| !plan.is_retained_on(expiry.today))
                    .map(|(key, _)| key.clone())
                    .collect();
                counts.plans = self.remove_plans(|key| over.contains(key), expiry.now, PlanEventKind::Expired) as u64;
                let cutoff = expiry.accesses_before.timestamp_micros();
                let changes_before = self.plan_history.len();
                self.plan_history.retain(|(_, at, _), _| *at >= cutoff);
                counts.plan_changes = (changes_before - self.plan_history.len()) as u64;
                let cursors = &self.cursors;
                let notifications_before = self.notifications.len();
                self.notifications.retain(|(la, sequence), notification| {
                    let acked = cursors.get(la).is_some_and(|cursor| *sequence <= cursor.acked_through);
                    !(acked && notification.access.accessed_at < expiry.acked_notifications_before)
                });
                counts.notifications = (notifications_before - self.notifications.len()) as u64;
                // A prefix of the log, oldest position first (see `store::log`).
                let cutoff = expiry.accesses_before;
                let below = expiry.log_positions_below.min(self.log_bounds.next_position);
                while let Some(entry) = self.log.first_entry() {
                    let position = *entry.key();
                    let at = match entry.get() {
                        LogEntry::Search(access) => access.accessed_at,
                        LogEntry::Audit(read) => read.read_at,
                    };
                    if position >= below || at >= cutoff || counts.accesses as usize >= expiry.limit {
                        break;
                    }
                    let removed = entry.remove();
                    self.log_ids.remove(&removed.id());
                    if let LogEntry::Search(access) = removed {
                        let at = access.accessed_at.timestamp_micros();
                        self.access_times.remove(&(at, access.id));
                        self.accesses.remove(&(access.nhs_number, at, access.id));
                    }
                    self.log_bounds.retained_from = position + 1;
                    counts.accesses += 1;
                }
                Applied::Expired(counts)
            }
        })
    }
}

impl State {
    /// Writes one plan and its change, if it is one.
    fn write_plan(&mut self, plan: &StoredPlan, at: DateTime<Utc>) -> Result<(), StoreError> {
        let old = self.plans.insert(key_of(plan), plan.clone());
        if let Some(event) = PlanEvent::of_write(old.as_ref().map(StoredPlan::bytes), plan, at)? {
            self.add_event(event);
        }
        Ok(())
    }

    /// Removes the plans whose keys match, each with its event; returns how many.
    fn remove_plans(&mut self, doomed: impl Fn(&PlanKey) -> bool, at: DateTime<Utc>, kind: PlanEventKind) -> usize {
        let keys: Vec<PlanKey> = self.plans.keys().filter(|key| doomed(key)).cloned().collect();
        for (la, nhs_number, plan_type) in &keys {
            self.plans.remove(&(la.clone(), *nhs_number, *plan_type));
            self.add_event(PlanEvent::removal(at, la, *nhs_number, *plan_type, kind));
        }
        keys.len()
    }

    fn add_event(&mut self, event: PlanEvent) {
        self.plan_history.insert((event.nhs_number, event.at.timestamp_micros(), event.id), event);
    }

    fn append_to_log(&mut self, entry: LogEntry) {
        let position = self.log_bounds.next_position;
        self.log_bounds.next_position += 1;
        self.log_ids.insert(entry.id(), position);
        self.log.insert(position, entry);
    }
}

impl Store for MemoryStore {
    fn load(&self) -> BoxFuture<'static, Result<Snapshot, StoreError>> {
        let snapshot = self.with_state(|state| {
            let recent = crate::accesses::Recent::new();
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

    fn plan_history_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<PlanEvent>, StoreError>> {
        let events = self.with_state(|state| {
            let person = (nhs_number, i64::MIN, 0)..=(nhs_number, i64::MAX, u128::MAX);
            state.plan_history.range(person).map(|(_, event)| event.clone()).collect()
        });
        async move { Ok(events) }.boxed()
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

    fn notifications_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        let found = self.with_state(|state| {
            state
                .notifications
                .values()
                .filter(|notification| notification.access.nhs_number == nhs_number)
                .cloned()
                .collect()
        });
        async move { Ok(found) }.boxed()
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

    fn access_log(&self) -> Option<Arc<dyn AccessLog>> {
        Some(Arc::new(self.clone()))
    }
}

impl AccessLog for MemoryStore {
    fn records_outside(&self, limit: usize) -> Result<Vec<crate::store::log::OutsideRecord>, StoreError> {
        use crate::store::log::OutsideRecord;
        Ok(self.with_state(|state| {
            let mut outside = Vec::new();
            for (_, _, id) in state.accesses.keys() {
                match state.log_ids.get(id) {
                    None => outside.push(OutsideRecord::NoPosition { id: *id }),
                    Some(position) if state.log.get(position).is_none_or(|entry| entry.id() != *id) => {
                        outside.push(OutsideRecord::NotAt { id: *id, position: *position });
                    }
                    Some(_) => {}
                }
            }
            outside.truncate(limit);
            outside
        }))
    }

    fn bounds(&self) -> Result<LogBounds, StoreError> {
        Ok(self.with_state(|state| state.log_bounds))
    }

    fn leaf_hashes(
        &self,
        from: u64,
        to: u64,
        visit: &mut dyn FnMut(u64, Result<Hash, LeafProblem>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let to = to.min(self.with_state(|state| state.log_bounds.next_position));
        for position in from..to {
            let leaf = self.with_state(|state| match state.log.get(&position) {
                None => Err(LeafProblem::Missing),
                Some(entry) => entry.leaf_hash().map_err(|error| LeafProblem::Unreadable(error.to_string())),
            });
            if visit(position, leaf).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn entry_at(&self, position: u64) -> Result<Option<LogEntry>, StoreError> {
        Ok(self.with_state(|state| state.log.get(&position).cloned()))
    }

    fn position_of(&self, id: u128) -> Result<Option<u64>, StoreError> {
        Ok(self.with_state(|state| state.log_ids.get(&id).copied()))
    }

    fn searches_of(&self, nhs_number: NhsNumber) -> Result<Vec<(u64, AccessEvent)>, StoreError> {
        self.with_state(|state| {
            let mut searches = Vec::new();
            for ((_, _, id), access) in
                state.accesses.range((nhs_number, i64::MIN, 0)..=(nhs_number, i64::MAX, u128::MAX))
            {
                if let Some(position) = state.log_ids.get(id) {
                    searches.push((*position, access.view()?.to_event()));
                }
            }
            searches.sort_unstable_by_key(|(position, _)| *position);
            Ok(searches)
        })
    }

    fn audit_reads_of(&self, nhs_number: NhsNumber) -> Result<Vec<(u64, AuditRead)>, StoreError> {
        Ok(self.with_state(|state| {
            state
                .log
                .iter()
                .filter_map(|(position, entry)| match entry {
                    LogEntry::Audit(read) if read.nhs_number == nhs_number => Some((*position, read.clone())),
                    _ => None,
                })
                .collect()
        }))
    }

    fn tree(&self) -> TreeStore {
        Box::new(MemoryTree { state: Arc::clone(&self.state) })
    }

    fn add_note(&self, kind: NoteKind, text: &str) -> Result<(), StoreError> {
        self.with_state(|state| {
            state.notes_stored += 1;
            state.notes.push(StoredNote { sequence: state.notes_stored, kind, text: text.to_owned() });
        });
        Ok(())
    }

    fn notes(&self) -> Result<Vec<StoredNote>, StoreError> {
        Ok(self.with_state(|state| state.notes.clone()))
    }

    fn remove_notes(&self, sequences: &[u64]) -> Result<u64, StoreError> {
        Ok(self.with_state(|state| {
            let before = state.notes.len();
            state.notes.retain(|note| !sequences.contains(&note.sequence));
            (before - state.notes.len()) as u64
        }))
    }
}

/// The memory store's tree, inside its state.
struct MemoryTree {
    state: Arc<Mutex<State>>,
}

impl MemoryTree {
    fn with_tree<T>(&self, work: impl FnOnce(&mut MemoryHashStore) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&mut state.tree)
    }
}

impl HashStore for MemoryTree {
    type Error = StoreError;

    fn tree_size(&self) -> Result<u64, StoreError> {
        self.with_tree(|tree| tree.tree_size()).map_err(|error| StoreError::Corrupt(error.to_string()))
    }

    fn hash_at(&self, position: u64) -> Result<Hash, StoreError> {
        self.with_tree(|tree| tree.hash_at(position)).map_err(|error| StoreError::Corrupt(error.to_string()))
    }

    fn append(&mut self, hashes: &[Hash], tree_size: u64) -> Result<(), StoreError> {
        self.with_tree(|tree| tree.append(hashes, tree_size)).map_err(|error| StoreError::Corrupt(error.to_string()))
    }
}
