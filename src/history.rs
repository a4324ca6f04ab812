//! Access histories as clinicians see them, and retried searches.
//!
//! A person's recent accesses are held in memory ([`crate::recent`]); a
//! search lists at most [`PREVIOUS_ACCESSES_SHOWN`] of them. This module owns
//! two rules: which previous accesses a search shows, and when a search is a
//! client's retry of an earlier one (the same organisation, user, person,
//! care setting and `request_id` within 24 hours: [`RequestKey`]), which must
//! not notify again. Searches in flight claim their request here. A copy of
//! the request that arrives while the first is still committing waits for
//! that commit to end, then looks again: it is answered as a retry once the
//! first is durable, and takes over if the first failed. No copy is ever
//! answered ahead of the durability of the notification it relies on.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use dashmap::DashMap;
use tokio::sync::watch;

use crate::{
    model::RequestKey,
    recent::{RecentAccess, request_hash},
};

/// How many previous accesses a search shows.
pub const PREVIOUS_ACCESSES_SHOWN: usize = 25;
/// A repeat search by the same user within this window is listed once.
pub const SAME_USER_WINDOW: Duration = Duration::hours(24);
/// How long a request id identifies a retry of the same search.
pub const REQUEST_ID_WINDOW: Duration = Duration::hours(24);
/// The newest unscheduled accesses kept per person (beyond those of the last
/// 24 hours): the 25 shown with room for the same users' repeats within 24
/// hours folded into them. Only a person looked up more than this many times
/// by repeating users could list fewer than 25.
pub const HISTORY_READ: usize = 128;

/// Requests being searched right now.
#[derive(Default)]
pub struct History {
    in_flight: Arc<DashMap<RequestKey, watch::Receiver<bool>>>,
    /// Copies waiting for their first copy's commit.
    waiting: watch::Sender<usize>,
}

/// A request claimed while its search and its commit run; released on drop,
/// which wakes the copies waiting for it.
pub struct Claim {
    in_flight: Arc<DashMap<RequestKey, watch::Receiver<bool>>>,
    key: RequestKey,
    done: watch::Sender<bool>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.in_flight.remove(&self.key);
        self.done.send_replace(true);
    }
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims a request until the claim is dropped. While another search
    /// holds it (a retry racing its original), waits for that search to end
    /// and tries again: the caller then sees the original's access, if it
    /// was stored, and can tell that it is a retry.
    pub async fn claim(&self, key: &RequestKey) -> Claim {
        loop {
            let mut ended = match self.in_flight.entry(key.clone()) {
                dashmap::Entry::Vacant(vacant) => {
                    let (done, receiver) = watch::channel(false);
                    vacant.insert(receiver);
                    return Claim { in_flight: Arc::clone(&self.in_flight), key: key.clone(), done };
                }
                dashmap::Entry::Occupied(taken) => taken.get().clone(),
            };
            let _waiting = Waiting::new(&self.waiting);
            // Closed or true: the first copy's search has ended either way.
            let _ = ended.wait_for(|done| *done).await;
        }
    }

    /// Copies of requests waiting for their first copy's commit, as it changes.
    pub fn waiting(&self) -> watch::Receiver<usize> {
        self.waiting.subscribe()
    }
}

/// Counts a copy waiting for its original, in `cpis_search_retries_waiting`.
struct Waiting<'a>(&'a watch::Sender<usize>);

impl<'a> Waiting<'a> {
    fn new(count: &'a watch::Sender<usize>) -> Self {
        count.send_modify(|waiting| *waiting += 1);
        metrics::gauge!("cpis_search_retries_waiting").set(*count.borrow() as f64);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|waiting| *waiting -= 1);
        metrics::gauge!("cpis_search_retries_waiting").set(*self.0.borrow() as f64);
    }
}

/// Whether a request was already made within the window before `now`.
pub fn made_within_window(made_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    made_at.is_some_and(|at| now - at < REQUEST_ID_WINDOW)
}

/// Whether accesses hold this request within the window before `now`.
pub fn is_repeat(accesses: &[RecentAccess], key: &RequestKey, now: DateTime<Utc>) -> bool {
    let hash = request_hash(key);
    accesses.iter().any(|access| access.request == hash && made_within_window(Some(access.accessed_at), now))
}

/// The listing rule: walking oldest to newest, an unscheduled access is
/// listed unless the same user (organisation and user id) has a listed
/// access less than 24 hours before it. Decides `listed` for the accesses
/// from `from` on, those before it being decided already.
pub fn mark_listed(oldest_first: &mut [RecentAccess], from: usize) {
    for index in from..oldest_first.len() {
        let (before, rest) = oldest_first.split_at_mut(index);
        let access = &mut rest[0];
        access.listed = !access.scheduled
            && !before
                .iter()
                .rev()
                .take_while(|earlier| access.accessed_at - earlier.accessed_at < SAME_USER_WINDOW)
                .any(|earlier| earlier.listed && earlier.who.user_key == access.who.user_key);
    }
}

/// What a search shows: the 25 newest listed accesses (see [`mark_listed`]),
/// newest first. Scheduled accesses are never listed (they stay in the audit
/// log), nor is the access of the request `excluded` (a retry shows what its
/// original showed).
pub fn listed_accesses(oldest_first: &[RecentAccess], excluded: Option<u64>) -> Vec<RecentAccess> {
    // Sized once: collected from a filter, the list grew (and was copied) three times on its way to 25.
    let mut listed = Vec::with_capacity(PREVIOUS_ACCESSES_SHOWN.min(oldest_first.len()));
    listed.extend(
        oldest_first
            .iter()
            .rev()
            .filter(|access| access.listed && Some(access.request) != excluded)
            .take(PREVIOUS_ACCESSES_SHOWN)
            .cloned(),
    );
    listed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{AccessEvent, Accessor, CareSetting},
        nhs::NhsNumber,
        recent::Recent,
    };

    fn access(minutes: i64, organisation: &str, user: &str) -> AccessEvent {
        AccessEvent {
            id: minutes as u128,
            accessed_at: DateTime::UNIX_EPOCH + Duration::minutes(minutes),
            nhs_number: NhsNumber::parse("9990000026").unwrap(),
            organisation_ods_code: organisation.into(),
            organisation_name: "Org".into(),
            care_setting: CareSetting::EmergencyDepartment,
            accessor: Accessor { user_id: user.into(), name: "U".into(), role_code: String::new() },
            request_id: format!("r{minutes}"),
            scheduled: false,
        }
    }

    /// The accesses as memory holds them, oldest first.
    fn held(events: &[AccessEvent]) -> Vec<RecentAccess> {
        let recent = Recent::new();
        events.iter().for_each(|event| recent.record(event));
        recent.with(events[0].nhs_number, <[RecentAccess]>::to_vec)
    }

    fn minutes(listed: &[RecentAccess]) -> Vec<i64> {
        listed.iter().map(|access| access.accessed_at.timestamp() / 60).collect()
    }

    #[test]
    fn scheduled_accesses_are_never_listed_nor_hide_a_later_one() {
        let gp_look = AccessEvent { scheduled: true, ..access(0, "RR8", "a") };
        assert_eq!(minutes(&listed_accesses(&held(&[gp_look, access(60, "RR8", "a")]), None)), vec![60]);
    }

    #[test]
    fn same_user_within_24_hours_is_listed_once_the_first() {
        let events =
            [access(0, "RR8", "a"), access(60, "RR8", "a"), access(23 * 60, "RR8", "a"), access(25 * 60, "RR8", "a")];
        assert_eq!(minutes(&listed_accesses(&held(&events), None)), vec![25 * 60, 0]);
    }

    #[test]
    fn an_access_arriving_out_of_order_is_listed_as_its_time_says() {
        // Another node's access can be older than one already held.
        let recent = Recent::new();
        recent.record(&access(60, "RR8", "a"));
        recent.record(&access(0, "RR8", "a"));
        let held = recent.with(access(0, "RR8", "a").nhs_number, <[RecentAccess]>::to_vec);
        assert_eq!(minutes(&listed_accesses(&held, None)), vec![0], "the later one is the same user within 24 hours");
    }

    #[test]
    fn same_user_id_at_another_organisation_is_another_user() {
        assert_eq!(listed_accesses(&held(&[access(0, "RR8", "a"), access(1, "RJ1", "a")]), None).len(), 2);
    }

    #[test]
    fn only_the_25_newest_are_shown_newest_first() {
        let events: Vec<_> = (0..40).map(|i| access(i, "RR8", &format!("user{i}"))).collect();
        let listed = listed_accesses(&held(&events), None);
        assert_eq!(listed.len(), PREVIOUS_ACCESSES_SHOWN);
        assert_eq!(&*listed[0].who.user_id, "user39");
        assert_eq!(&*listed[24].who.user_id, "user15");
    }

    #[test]
    fn a_retry_does_not_list_its_own_original() {
        let events = [access(0, "RR8", "a"), access(5, "RR8", "b")];
        let own = request_hash(&events[1].request_key());
        assert_eq!(minutes(&listed_accesses(&held(&events), Some(own))), vec![0]);
    }

    #[test]
    fn a_request_repeats_only_within_the_window_and_with_every_part_equal() {
        let events = [access(0, "RR8", "a")];
        let key = events[0].request_key();
        let made = held(&events);
        let start = DateTime::UNIX_EPOCH;
        assert!(is_repeat(&made, &key, start + Duration::hours(23)));
        assert!(!is_repeat(&made, &key, start + Duration::hours(25)), "the window has passed");
        let other_organisation = RequestKey { organisation_ods_code: "RJ1".into(), ..key.clone() };
        let other_user = RequestKey { user_id: "b".into(), ..key.clone() };
        let other_setting = RequestKey { care_setting: CareSetting::MaternityUnit, ..key.clone() };
        let other_id = RequestKey { request_id: "r1".into(), ..key.clone() };
        for different in [other_organisation, other_user, other_setting, other_id] {
            assert!(!is_repeat(&made, &different, start), "{different:?} is a new search");
        }
    }

    #[tokio::test]
    async fn a_racing_copy_waits_for_the_first_claim_to_end() {
        let history = Arc::new(History::new());
        let key = access(0, "RR8", "a").request_key();
        let for_another_person = RequestKey { nhs_number: NhsNumber::parse("9990000034").unwrap(), ..key.clone() };
        let first = history.claim(&key).await;
        drop(history.claim(&for_another_person).await); // the same id for another person is another search
        let racing = tokio::spawn({
            let (history, key) = (Arc::clone(&history), key.clone());
            async move {
                let _claim = history.claim(&key).await;
            }
        });
        history.waiting().wait_for(|waiting| *waiting == 1).await.unwrap();
        assert!(!racing.is_finished(), "the copy waits while the first holds the claim");
        drop(first);
        racing.await.unwrap();
        assert_eq!(*history.waiting().borrow(), 0);
        drop(history.claim(&key).await);
    }
}
