//! Recent accesses in memory: what a search lists as a person's previous
//! accesses, and what recognises a client's retry, without a store read on
//! the search path.
//!
//! Each person searched holds, oldest first, their newest
//! [`HISTORY_READ`] unscheduled accesses and
//! every access (scheduled ones too) of the last
//! [`REQUEST_ID_WINDOW`], up to
//! [`MAX_KEPT`]. The store stays the system of record: this is rebuilt from it
//! on start and written by the same code path that commits an access, after
//! the commit (or after the access is held for retry while the store fails).
//!
//! Memory: an access is 48 bytes here, and a person with one access costs
//! the map slot alone (a `SmallVec` holds one inline). Who searched (organisation, user) is
//! interned, shared by every access that user made, and the request is kept as
//! a 64-bit keyed hash of its [`RequestKey`](crate::model::RequestKey): compared only with the same
//! person's requests of the last 24 hours, a false match is about n / 2^64
//! for n such requests.
//!
//! The people map is a `DashMap`: a search reads one shard under its read
//! lock for the few microseconds the listing takes; a commit writes one entry.

use std::{hash::BuildHasher, sync::Arc};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use smallvec::SmallVec;

use super::{
    HISTORY_READ, REQUEST_ID_WINDOW,
    access::{RecentAccess, Who, hash_request, request_hasher},
    listing::mark_listed,
};
use crate::{
    model::{AccessEvent, AccessView},
    nhs::{FastHash, NhsNumber},
};

/// Most accesses kept for one person, even within the request window: a
/// person looked up more often than this in a day has their oldest requests
/// of the day forgotten here (a retry of one notifies again: a duplicate,
/// never a loss).
pub const MAX_KEPT: usize = 4096;

/// Interned [`Who`]s by a hash of their text; equal hashes are compared in full.
#[derive(Default)]
struct Interner {
    by_hash: DashMap<u64, Vec<Arc<Who>>>,
}

impl Interner {
    fn intern(&self, parts: [&str; 5]) -> Arc<Who> {
        let hash = request_hasher().hash_one(parts);
        let same = |who: &&Arc<Who>| {
            [&*who.organisation_ods_code, &*who.organisation_name, &*who.user_id, &*who.name, &*who.role_code] == parts
        };
        if let Some(found) = self.by_hash.get(&hash).and_then(|whos| whos.iter().find(same).cloned()) {
            return found;
        }
        let mut whos = self.by_hash.entry(hash).or_default();
        if let Some(found) = whos.iter().find(same) {
            return Arc::clone(found);
        }
        let who = Arc::new(Who {
            organisation_ods_code: parts[0].into(),
            organisation_name: parts[1].into(),
            user_id: parts[2].into(),
            name: parts[3].into(),
            role_code: parts[4].into(),
            user_key: request_hasher().hash_one((parts[0], parts[2])),
        });
        whos.push(Arc::clone(&who));
        who
    }

    /// Forgets users no access refers to any longer.
    fn prune(&self) {
        self.by_hash.retain(|_, whos| {
            whos.retain(|who| Arc::strong_count(who) > 1);
            !whos.is_empty()
        });
    }
}

/// Every person's recent accesses; a cheap handle.
#[derive(Clone, Default)]
pub struct Recent {
    shared: Arc<AccessesByPerson>,
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent").field("people", &self.shared.people.len()).finish_non_exhaustive()
    }
}

/// A person's accesses, oldest first; the one most people have is kept in
/// the map's own slot, with no allocation of its own.
type Accesses = SmallVec<[RecentAccess; 1]>;

/// Each person's recent accesses, and the interned text of who made them.
#[derive(Default)]
struct AccessesByPerson {
    people: DashMap<NhsNumber, Accesses, FastHash>,
    who: Interner,
}

impl Recent {
    pub fn new() -> Self {
        Self::default()
    }

    fn remembered(&self, view: &AccessView<'_>) -> RecentAccess {
        let who = self.shared.who.intern([
            view.organisation_ods_code,
            view.organisation_name,
            view.accessor.user_id,
            view.accessor.name,
            view.accessor.role_code,
        ]);
        RecentAccess {
            accessed_at: view.accessed_at,
            request: hash_request(
                view.organisation_ods_code,
                view.accessor.user_id,
                view.nhs_number,
                view.care_setting,
                view.request_id,
            ),
            who,
            id: [(view.id >> 64) as u64, view.id as u64],
            care_setting: view.care_setting,
            scheduled: view.scheduled,
            listed: false,
        }
    }

    /// Adds an access just committed (or held for retry).
    pub fn record(&self, access: &AccessEvent) {
        self.record_view(&access.view());
    }

    /// Adds an access just committed, as stored; one already known is ignored.
    pub(crate) fn record_view(&self, access: &AccessView<'_>) {
        let recent = self.remembered(access);
        let mut accesses = self.shared.people.entry(access.nhs_number).or_default();
        let at = accesses.partition_point(|kept| (kept.accessed_at, kept.id()) < (recent.accessed_at, recent.id()));
        if accesses.get(at).is_some_and(|kept| kept.id() == recent.id()) {
            return; // already known (a held search reloaded after it was stored)
        }
        // Exactly one more slot while a person has few accesses (most have one or two, and
        // a doubled capacity would cost more than they do); amortised growth beyond.
        if accesses.len() < 8 {
            accesses.reserve_exact(1);
        }
        accesses.insert(at, recent);
        mark_listed(&mut accesses, at);
        let newest = accesses.last().map_or(access.accessed_at, |last| last.accessed_at);
        trim(&mut accesses, newest);
    }

    /// Forgets one access (held, then found to repeat a request another node stored).
    pub(crate) fn forget(&self, nhs_number: NhsNumber, id: u128) {
        let id = [(id >> 64) as u64, id as u64];
        self.shared.people.remove_if_mut(&nhs_number, |_, accesses| {
            accesses.retain(|access| access.id != id);
            mark_listed(accesses, 0);
            accesses.is_empty()
        });
    }

    /// Builds a person's accesses from their stored ones, any order. The
    /// request window is taken back from their newest access: at worst a few
    /// more are kept than the window needs.
    pub(crate) fn load_person<'a>(&self, nhs_number: NhsNumber, views: impl IntoIterator<Item = AccessView<'a>>) {
        let mut accesses: Accesses = views.into_iter().map(|view| self.remembered(&view)).collect();
        let Some(newest) = accesses.iter().map(|access| access.accessed_at).max() else { return };
        accesses.sort_by_key(|access| (access.accessed_at, access.id()));
        accesses.dedup_by_key(|access| access.id());
        mark_listed(&mut accesses, 0);
        trim(&mut accesses, newest);
        if !accesses.is_empty() {
            self.shared.people.insert(nhs_number, accesses);
        }
    }

    /// Runs `read` over a person's accesses, oldest first, under the entry's read lock.
    pub fn with<T>(&self, nhs_number: NhsNumber, read: impl FnOnce(&[RecentAccess]) -> T) -> T {
        match self.shared.people.get(&nhs_number) {
            Some(accesses) => read(&accesses),
            None => read(&[]),
        }
    }

    /// Converts accesses read from the store (newest first) into memory's
    /// form, oldest first, for a store that other nodes write.
    pub fn convert<'a>(&self, newest_first: impl IntoIterator<Item = AccessView<'a>>) -> Vec<RecentAccess> {
        let mut accesses: Vec<RecentAccess> = newest_first.into_iter().map(|view| self.remembered(&view)).collect();
        accesses.reverse();
        mark_listed(&mut accesses, 0);
        accesses
    }

    /// Retention: forgets accesses made before `before`; returns how many.
    pub fn expire(&self, before: DateTime<Utc>) -> usize {
        let mut removed = 0;
        self.shared.people.retain(|_, accesses| {
            let kept = accesses.partition_point(|access| access.accessed_at < before);
            if kept > 0 {
                removed += kept;
                accesses.drain(..kept);
                accesses.shrink_to_fit();
            }
            !accesses.is_empty()
        });
        self.shared.who.prune();
        removed
    }

    /// Accesses held in memory, for status and benchmarks.
    pub fn len(&self) -> usize {
        self.shared.people.iter().map(|entry| entry.value().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.people.is_empty()
    }

    /// People with accesses held in memory.
    pub fn people(&self) -> usize {
        self.shared.people.len()
    }
}

/// Keeps, of accesses sorted oldest first, the newest [`HISTORY_READ`]
/// unscheduled ones and everything within the request window before `now`,
/// at most [`MAX_KEPT`].
fn trim(accesses: &mut Accesses, now: DateTime<Utc>) {
    let window_start = now - REQUEST_ID_WINDOW;
    let oldest_in_window = accesses.first().is_none_or(|oldest| oldest.accessed_at > window_start);
    if oldest_in_window && accesses.len() <= MAX_KEPT {
        return; // the common case: nothing is old enough to go
    }
    // The position of the oldest of the newest HISTORY_READ unscheduled accesses.
    let mut unscheduled = 0;
    let mut listed_from = 0;
    for (index, access) in accesses.iter().enumerate().rev() {
        if !access.scheduled {
            unscheduled += 1;
            if unscheduled == HISTORY_READ {
                listed_from = index;
                break;
            }
        }
    }
    let before = accesses.len();
    let mut index = 0;
    accesses.retain(|access| {
        let keep = access.accessed_at > window_start || (!access.scheduled && index >= listed_from);
        index += 1;
        keep
    });
    if accesses.len() > MAX_KEPT {
        let excess = accesses.len() - MAX_KEPT;
        accesses.drain(..excess);
    }
    if accesses.len() < before && accesses.capacity() > 2 * accesses.len() {
        accesses.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::{
        accesses::request_hash,
        model::{Accessor, CareSetting, RequestKey},
    };

    fn access(minutes: i64, user: &str, request: &str, scheduled: bool) -> AccessEvent {
        AccessEvent {
            id: minutes as u128 + 1,
            accessed_at: DateTime::UNIX_EPOCH + Duration::minutes(minutes),
            nhs_number: NhsNumber::parse("9990000026").unwrap(),
            organisation_ods_code: "RR8".into(),
            organisation_name: "Org".into(),
            care_setting: if scheduled { CareSetting::GeneralPractice } else { CareSetting::EmergencyDepartment },
            accessor: Accessor { user_id: user.into(), name: "U".into(), role_code: String::new() },
            request_id: request.into(),
            scheduled,
        }
    }

    fn times(recent: &Recent) -> Vec<i64> {
        let nhs = NhsNumber::parse("9990000026").unwrap();
        recent.with(nhs, |accesses| accesses.iter().map(|a| a.accessed_at.timestamp() / 60).collect())
    }

    #[test]
    fn accesses_are_kept_in_time_order_whatever_order_they_arrive_in() {
        let recent = Recent::new();
        for minutes in [5, 1, 3] {
            recent.record(&access(minutes, "a", &format!("r{minutes}"), false));
        }
        assert_eq!(times(&recent), vec![1, 3, 5]);
    }

    #[test]
    fn only_the_newest_unscheduled_and_the_last_day_are_kept() {
        let recent = Recent::new();
        let day = 24 * 60;
        recent.record(&access(0, "gp", "old-scheduled", true));
        for i in 0..HISTORY_READ as i64 + 10 {
            recent.record(&access(1 + i, "a", &format!("r{i}"), false));
        }
        // Two days later: one more access. The scheduled read has left the window, and
        // of the older unscheduled ones only the newest HISTORY_READ - 1 remain.
        recent.record(&access(3 * day, "a", "late", false));
        let kept = times(&recent);
        assert_eq!(kept.len(), HISTORY_READ);
        assert_eq!(kept.first(), Some(&(11 + 1)), "the oldest unscheduled beyond the bound are gone");
        assert_eq!(kept.last(), Some(&(3 * day)));
        // Within the window, everything is kept (a retry of any of them is recognised).
        let busy = Recent::new();
        for i in 0..HISTORY_READ as i64 + 10 {
            busy.record(&access(i, "a", &format!("r{i}"), i % 2 == 0));
        }
        assert_eq!(times(&busy).len(), HISTORY_READ + 10);
    }

    #[test]
    fn a_request_is_known_by_its_whole_key() {
        let recent = Recent::new();
        let made = access(0, "a", "id-1", false);
        recent.record(&made);
        let key = made.request_key();
        let nhs = made.nhs_number;
        let known =
            |key: &RequestKey| recent.with(nhs, |accesses| accesses.iter().any(|a| a.request == request_hash(key)));
        assert!(known(&key));
        assert!(!known(&RequestKey { user_id: "b".into(), ..key.clone() }));
        assert!(!known(&RequestKey { request_id: "id-2".into(), ..key.clone() }));
        assert!(!known(&RequestKey { care_setting: CareSetting::MaternityUnit, ..key.clone() }));
    }

    #[test]
    fn users_are_shared_between_accesses_and_forgotten_with_them() {
        let recent = Recent::new();
        recent.record(&access(0, "a", "r0", false));
        recent.record(&access(1, "a", "r1", false));
        let nhs = NhsNumber::parse("9990000026").unwrap();
        recent.with(nhs, |accesses| assert!(Arc::ptr_eq(&accesses[0].who, &accesses[1].who)));
        assert_eq!(recent.expire(DateTime::UNIX_EPOCH + Duration::minutes(10)), 2);
        assert!(recent.is_empty());
        assert!(recent.shared.who.by_hash.is_empty(), "no access refers to the user any more");
    }

    #[test]
    fn an_access_costs_48_bytes() {
        assert_eq!(std::mem::size_of::<RecentAccess>(), 48);
    }
}
