//! The in-memory plan index: every plan by NHS number, read on each search
//! without a global lock.
//!
//! Readers take a cheap `Arc<[Slot]>` snapshot from a `DashMap` shard. A
//! FULL_REFRESH must be atomic for readers across many entries, which a map of
//! independent entries cannot give by itself, so plans carry the refresh
//! generations between which they exist and readers use a sequence lock:
//! read the generation, take the entry, read the generation again, and retry
//! on a change. A refresh stages its new plans (invisible to the current
//! generation) and marks the plans it replaces, publishes the next generation
//! with one atomic store, then sweeps what is no longer visible. A search
//! therefore sees the whole old set or the whole new set, never a mix.
//!
//! Writers are serialised by a mutex; plan changes are rare next to searches.
//! Plans are kept in their stored form ([`StoredPlan`]): bytes, decoded only
//! to show them. The index knows nothing of dates: visibility by date is the
//! relay's rule.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use dashmap::DashMap;

use crate::{
    model::{LocalAuthority, PlanType},
    nhs::{FastHash, NhsNumber},
    stored::StoredPlan,
};

/// A cheap handle to the shared index.
#[derive(Clone, Default)]
pub struct Index {
    shared: Arc<IndexTables>,
}

/// The index's maps (people, authorities) and its refresh generation.
#[derive(Default)]
struct IndexTables {
    /// One allocation per person: the slots themselves.
    people: DashMap<NhsNumber, Arc<[Slot]>, FastHash>,
    /// Each local authority's people, for refresh, export and counts.
    by_authority: DashMap<Arc<str>, HashSet<NhsNumber>>,
    authorities: DashMap<String, Arc<LocalAuthority>>,
    /// Published refresh generation: the sequence lock readers check.
    generation: AtomicU64,
    /// Slots not marked for removal, by plan type (see [`type_slot`]).
    live_by_type: [AtomicI64; 3],
    /// Serialises each write. Between staging and publishing a refresh the
    /// caller keeps other writers out (the relay holds its plan-write lock).
    writer: Mutex<()>,
}

/// A person's plans as one generation shows them; see [`Index::person`].
pub struct PersonPlans {
    slots: Option<Arc<[Slot]>>,
    generation: u64,
}

impl PersonPlans {
    pub fn iter(&self) -> impl Iterator<Item = &StoredPlan> {
        let generation = self.generation;
        self.slots
            .iter()
            .flat_map(|slots| slots.iter())
            .filter(move |slot| slot.visible_at(generation))
            .map(|slot| &slot.plan)
    }
}

/// A FULL_REFRESH staged but not yet visible; see [`Index::stage_replacement`].
#[must_use = "a staged refresh must be published or abandoned"]
pub(crate) struct StagedRefresh {
    la_ods_code: Arc<str>,
    generation: u64,
    touched: Vec<NhsNumber>,
    members: HashSet<NhsNumber>,
    removed: usize,
}

#[derive(Clone)]
struct Slot {
    plan: StoredPlan,
    /// Visible to readers of generations `from..until`.
    from: u64,
    until: u64,
}

fn type_slot(plan_type: PlanType) -> usize {
    match plan_type {
        PlanType::ChildProtection => 0,
        PlanType::LookedAfter => 1,
        PlanType::UnbornChildProtection => 2,
    }
}

/// Slots of each type that are not marked to end at a coming generation.
fn live_by_type(slots: &[Slot]) -> [i64; 3] {
    let mut counts = [0; 3];
    for slot in slots.iter().filter(|slot| slot.until == u64::MAX) {
        counts[type_slot(slot.plan.plan_type())] += 1;
    }
    counts
}

impl Slot {
    fn visible_at(&self, generation: u64) -> bool {
        self.from <= generation && generation < self.until
    }

    fn is_of(&self, la_ods_code: &str) -> bool {
        self.plan.la_ods_code() == la_ods_code
    }
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// All plans held for a person, of every local authority, as one
    /// consistent view, without copying them: the view shares the entry.
    pub fn person(&self, nhs_number: NhsNumber) -> PersonPlans {
        loop {
            let before = self.shared.generation.load(Ordering::Acquire);
            let entry = self.shared.people.get(&nhs_number).map(|entry| Arc::clone(entry.value()));
            let after = self.shared.generation.load(Ordering::Acquire);
            if before == after {
                return PersonPlans { slots: entry, generation: before };
            }
        }
    }

    /// [`Index::person`], copied out.
    pub fn plans(&self, nhs_number: NhsNumber) -> Vec<StoredPlan> {
        self.person(nhs_number).iter().cloned().collect()
    }

    pub fn authority(&self, ods_code: &str) -> Option<Arc<LocalAuthority>> {
        self.shared.authorities.get(ods_code).map(|authority| Arc::clone(authority.value()))
    }

    pub(crate) fn set_authority(&self, authority: LocalAuthority) {
        self.shared.authorities.insert(authority.ods_code.clone(), Arc::new(authority));
    }

    /// Adds or replaces plans (by local authority, person and type).
    pub fn upsert(&self, plans: impl IntoIterator<Item = StoredPlan>) {
        let _writer = self.lock_writer();
        for plan in plans {
            self.note_member(plan.shared_la_ods_code(), plan.nhs_number());
            self.update_entry(plan.nhs_number(), |slots| {
                slots.retain(|slot| !(slot.is_of(plan.la_ods_code()) && slot.plan.plan_type() == plan.plan_type()));
                slots.push(Slot { plan, from: 0, until: u64::MAX });
            });
        }
    }

    /// Removes a local authority's plans for a person: one type, or all of them.
    /// Returns how many were removed.
    pub fn remove(&self, la_ods_code: &str, nhs_number: NhsNumber, plan_type: Option<PlanType>) -> usize {
        let _writer = self.lock_writer();
        let mut removed = 0;
        self.update_entry(nhs_number, |slots| {
            let before = slots.len();
            slots
                .retain(|slot| !slot.is_of(la_ods_code) || plan_type.is_some_and(|kind| kind != slot.plan.plan_type()));
            removed = before - slots.len();
        });
        self.forget_member_if_gone(la_ods_code, nhs_number);
        removed
    }

    /// Makes `la_ods_code`'s plans exactly `plans`, atomically for readers.
    /// Returns how many of the previous plans are gone (not replaced).
    pub(crate) fn replace_authority(&self, la_ods_code: &str, plans: impl IntoIterator<Item = StoredPlan>) -> usize {
        let staged = self.stage_replacement(la_ods_code, plans);
        self.publish(staged)
    }

    /// First half of [`Index::replace_authority`]: adds the new set invisibly
    /// (it starts at the next generation) and marks the old set to end there.
    /// Readers see no change until [`Index::publish`]; [`Index::abandon`]
    /// undoes it. The caller must not change the index in between (the relay
    /// holds its plan-write lock), which lets staging run while the store
    /// commits the same refresh.
    pub(crate) fn stage_replacement(
        &self,
        la_ods_code: &str,
        plans: impl IntoIterator<Item = StoredPlan>,
    ) -> StagedRefresh {
        let _writer = self.lock_writer();
        let next = self.shared.generation.load(Ordering::Acquire) + 1;
        let mut incoming: HashMap<NhsNumber, Vec<StoredPlan>> = HashMap::new();
        for plan in plans {
            incoming.entry(plan.nhs_number()).or_default().push(plan);
        }
        let previous_members =
            self.shared.by_authority.get(la_ods_code).map(|members| members.clone()).unwrap_or_default();
        let members: HashSet<NhsNumber> = incoming.keys().copied().collect();
        let touched: Vec<NhsNumber> = previous_members.union(&members).copied().collect();
        let mut removed = 0;
        for nhs_number in &touched {
            let new_plans = incoming.remove(nhs_number).unwrap_or_default();
            self.update_entry(*nhs_number, |slots| {
                for slot in slots.iter_mut().filter(|slot| slot.is_of(la_ods_code)) {
                    slot.until = next;
                    if !new_plans.iter().any(|plan| plan.plan_type() == slot.plan.plan_type()) {
                        removed += 1;
                    }
                }
                slots.extend(new_plans.into_iter().map(|plan| Slot { plan, from: next, until: u64::MAX }));
            });
        }
        StagedRefresh { la_ods_code: la_ods_code.into(), generation: next, touched, members, removed }
    }

    /// Second half: one atomic store switches every reader to the new set,
    /// then what no reader can see any more is swept. Returns how many of the
    /// previous plans are gone (not replaced).
    pub(crate) fn publish(&self, staged: StagedRefresh) -> usize {
        let _writer = self.lock_writer();
        let next = staged.generation;
        self.shared.generation.store(next, Ordering::Release);
        for nhs_number in &staged.touched {
            self.update_entry(*nhs_number, |slots| slots.retain(|slot| slot.until > next));
        }
        self.shared.by_authority.insert(staged.la_ods_code, staged.members);
        staged.removed
    }

    /// Undoes a staged refresh that will not be published (its store commit failed).
    pub(crate) fn abandon(&self, staged: StagedRefresh) {
        let _writer = self.lock_writer();
        let next = staged.generation;
        for nhs_number in &staged.touched {
            self.update_entry(*nhs_number, |slots| {
                slots.retain(|slot| slot.from != next);
                for slot in slots.iter_mut().filter(|slot| slot.until == next) {
                    slot.until = u64::MAX;
                }
            });
        }
    }

    /// Removes plans that `still_wanted` rejects (retention); returns how many.
    pub(crate) fn remove_where(&self, still_wanted: impl Fn(&StoredPlan) -> bool) -> usize {
        let _writer = self.lock_writer();
        let doomed: Vec<NhsNumber> = self
            .shared
            .people
            .iter()
            .filter(|entry| entry.iter().any(|slot| !still_wanted(&slot.plan)))
            .map(|entry| *entry.key())
            .collect();
        let mut removed = 0;
        for nhs_number in doomed {
            let mut gone = Vec::new();
            self.update_entry(nhs_number, |slots| {
                slots.retain(|slot| {
                    let keep = still_wanted(&slot.plan);
                    if !keep {
                        gone.push(Arc::clone(slot.plan.shared_la_ods_code()));
                    }
                    keep
                })
            });
            removed += gone.len();
            for la_ods_code in gone {
                self.forget_member_if_gone(&la_ods_code, nhs_number);
            }
        }
        removed
    }

    /// Every local authority with details or plans here.
    pub(crate) fn authority_codes(&self) -> Vec<String> {
        let mut codes: Vec<String> = self.shared.authorities.iter().map(|entry| entry.key().clone()).collect();
        codes.extend(self.shared.by_authority.iter().map(|entry| entry.key().to_string()));
        codes.sort_unstable();
        codes.dedup();
        codes
    }

    /// Every plan a local authority holds, in NHS number order.
    pub(crate) fn plans_of(&self, la_ods_code: &str) -> Vec<StoredPlan> {
        let mut members: Vec<NhsNumber> = self
            .shared
            .by_authority
            .get(la_ods_code)
            .map(|members| members.iter().copied().collect())
            .unwrap_or_default();
        members.sort_unstable();
        members
            .into_iter()
            .flat_map(|nhs_number| self.plans(nhs_number))
            .filter(|plan| plan.la_ods_code() == la_ods_code)
            .collect()
    }

    /// Number of people with at least one plan.
    pub fn people(&self) -> usize {
        self.shared.people.len()
    }

    /// Plans held, by type, for the `cpis_plans` gauge: kept as changes are
    /// made, not counted by a scan. While a refresh is staged its new set is
    /// counted in place of the old.
    pub(crate) fn count_by_type(&self) -> HashMap<PlanType, usize> {
        PlanType::ALL
            .into_iter()
            .map(|plan_type| {
                let count = self.shared.live_by_type[type_slot(plan_type)].load(Ordering::Acquire);
                (plan_type, usize::try_from(count).unwrap_or(0))
            })
            .collect()
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Copy-on-write update of one person's slots; people with none leave the
    /// map. Every change goes through here, so the per-type counts are kept here.
    fn update_entry(&self, nhs_number: NhsNumber, change: impl FnOnce(&mut Vec<Slot>)) {
        let mut slots = self.shared.people.get(&nhs_number).map(|entry| entry.to_vec()).unwrap_or_default();
        let before = live_by_type(&slots);
        change(&mut slots);
        let after = live_by_type(&slots);
        for (counter, (after, before)) in self.shared.live_by_type.iter().zip(after.into_iter().zip(before)) {
            if after != before {
                counter.fetch_add(after - before, Ordering::AcqRel);
            }
        }
        if slots.is_empty() {
            self.shared.people.remove(&nhs_number);
        } else {
            self.shared.people.insert(nhs_number, slots.into());
        }
    }

    fn note_member(&self, la_ods_code: &Arc<str>, nhs_number: NhsNumber) {
        if let Some(mut members) = self.shared.by_authority.get_mut(la_ods_code.as_ref()) {
            members.insert(nhs_number);
            return;
        }
        self.shared.by_authority.entry(Arc::clone(la_ods_code)).or_default().insert(nhs_number);
    }

    fn forget_member_if_gone(&self, la_ods_code: &str, nhs_number: NhsNumber) {
        let still_held =
            self.shared.people.get(&nhs_number).is_some_and(|slots| slots.iter().any(|slot| slot.is_of(la_ods_code)));
        if !still_held && let Some(mut members) = self.shared.by_authority.get_mut(la_ods_code) {
            members.remove(&nhs_number);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicBool, Ordering},
        thread,
    };

    use super::*;

    fn plan(la: &str, nhs_number: NhsNumber, plan_type: PlanType, version: u64) -> StoredPlan {
        let plan = crate::model::Plan {
            la_ods_code: la.into(),
            local_id: version.to_string(),
            ..crate::model::test_plan(nhs_number, plan_type)
        };
        StoredPlan::encode(&plan, la.into()).unwrap()
    }

    fn people(count: u64) -> Vec<NhsNumber> {
        (999_000_000..).filter_map(NhsNumber::complete).take(count as usize).collect()
    }

    #[test]
    fn full_refresh_is_atomic_for_concurrent_readers() {
        let index = Index::new();
        let people = people(2_000);
        let version_of = |version: u64| {
            people.iter().map(|&nhs| plan("706", nhs, PlanType::ChildProtection, version)).collect::<Vec<_>>()
        };
        index.replace_authority("706", version_of(0));
        let done = AtomicBool::new(false);
        thread::scope(|scope| {
            for reader in 0..3 {
                let (index, people, done) = (&index, &people, &done);
                scope.spawn(move || {
                    // Sequential reads by one reader never go back to an older refresh,
                    // and a person present in every refresh never disappears.
                    let mut seen = 0u64;
                    let mut step = reader;
                    while !done.load(Ordering::Acquire) {
                        step = (step * 7 + 13) % people.len();
                        let plans = index.plans(people[step]);
                        assert_eq!(plans.len(), 1, "a person vanished or doubled during a refresh");
                        let version: u64 = plans[0].decode().unwrap().local_id.parse().unwrap();
                        assert!(version >= seen, "read refresh {version} after {seen}");
                        seen = version;
                    }
                });
            }
            for version in 1..=30 {
                index.replace_authority("706", version_of(version));
            }
            done.store(true, Ordering::Release);
        });
        assert_eq!(index.plans_of("706").len(), 2_000);
    }

    #[test]
    fn a_staged_refresh_is_invisible_until_published_and_abandoning_it_changes_nothing() {
        let index = Index::new();
        let people = people(3);
        index.replace_authority("706", vec![plan("706", people[0], PlanType::ChildProtection, 1)]);
        let staged = index.stage_replacement("706", vec![plan("706", people[1], PlanType::ChildProtection, 2)]);
        assert_eq!(index.plans(people[0]).len(), 1, "the old set is still what readers see");
        assert!(index.plans(people[1]).is_empty(), "the new set is not visible yet");
        index.abandon(staged);
        assert_eq!(index.count_by_type()[&PlanType::ChildProtection], 1, "abandoning restores the counts");
        assert_eq!(index.plans(people[0]).len(), 1);
        assert!(index.plans(people[1]).is_empty());
        let staged = index.stage_replacement("706", vec![plan("706", people[2], PlanType::ChildProtection, 3)]);
        assert_eq!(index.publish(staged), 1);
        assert!(index.plans(people[0]).is_empty() && index.plans(people[1]).is_empty());
        assert_eq!(index.plans_of("706").len(), 1);
        assert_eq!(index.plans(people[2])[0].decode().unwrap().local_id, "3");
    }

    #[test]
    fn refresh_of_one_authority_leaves_others_alone_and_counts_removals() {
        let index = Index::new();
        let people = people(4);
        index.upsert([plan("855", people[0], PlanType::LookedAfter, 0)]);
        index.replace_authority(
            "706",
            vec![
                plan("706", people[0], PlanType::ChildProtection, 0),
                plan("706", people[1], PlanType::ChildProtection, 0),
            ],
        );
        let counts = |index: &Index| PlanType::ALL.map(|kind| index.count_by_type()[&kind]);
        assert_eq!(counts(&index), [2, 1, 0]);
        let removed = index.replace_authority("706", vec![plan("706", people[2], PlanType::ChildProtection, 1)]);
        assert_eq!(removed, 2);
        assert_eq!(counts(&index), [1, 1, 0]);
        assert_eq!(index.plans(people[0]).len(), 1, "855's plan stays");
        assert!(index.plans(people[1]).is_empty());
        assert_eq!(index.plans_of("706").len(), 1);
        assert_eq!(index.remove("855", people[0], None), 1);
        assert_eq!(index.people(), 1);
        index.upsert([plan("706", people[2], PlanType::ChildProtection, 2)]);
        assert_eq!(counts(&index), [1, 0, 0], "a replaced plan is counted once");
        assert_eq!(index.remove_where(|_| false), 1);
        assert_eq!(counts(&index), [0, 0, 0]);
    }
}
