//! Access histories as clinicians see them, and retried searches.
//!
//! A person's accesses live in the store; a search reads only the newest
//! [`HISTORY_READ`] of them, so a person searched hundreds of times costs the
//! same as one searched once, and memory does not grow with history. This
//! module owns two rules: which previous accesses a search shows, and when a
//! search is a client's retry of an earlier one (the same organisation, user,
//! person, care setting and `request_id` within 24 hours: [`RequestKey`]),
//! which must not notify again. Searches in flight claim their request here,
//! so that a retry racing its still-uncommitted original is recognised too;
//! the claim lives until the original's commit has finished, even if the
//! original's caller went away.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use dashmap::DashSet;

use crate::model::{AccessView, RequestKey};

/// How many previous accesses a search shows.
pub const PREVIOUS_ACCESSES_SHOWN: usize = 25;
/// A repeat search by the same user within this window is listed once.
pub const SAME_USER_WINDOW: Duration = Duration::hours(24);
/// How long a request id identifies a retry of the same search.
pub const REQUEST_ID_WINDOW: Duration = Duration::hours(24);
/// The newest accesses a search reads: the 25 shown with room for the same
/// users' repeats within 24 hours folded into them. Only a person looked up
/// more than this many times by repeating users could list fewer than 25.
pub const HISTORY_READ: usize = 128;

/// Requests being searched right now.
#[derive(Default)]
pub struct History {
    in_flight: Arc<DashSet<RequestKey>>,
}

/// A request claimed while its search and its commit run; released on drop.
pub struct Claim {
    in_flight: Arc<DashSet<RequestKey>>,
    key: RequestKey,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.in_flight.remove(&self.key);
    }
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims a request until the claim is dropped; `None` when the same
    /// request is already being searched (a retry racing its original).
    pub fn claim(&self, key: &RequestKey) -> Option<Claim> {
        // `then`, not `then_some`: a refused claim must not build (and so drop,
        // releasing) a `Claim` for the key the search in flight holds.
        self.in_flight.insert(key.clone()).then(|| Claim { in_flight: Arc::clone(&self.in_flight), key: key.clone() })
    }
}

/// Whether a request was already made within the window before `now`.
pub fn made_within_window(made_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    made_at.is_some_and(|at| now - at < REQUEST_ID_WINDOW)
}

/// Whether accesses (held in memory, say) hold this request within the window.
pub fn is_repeat(accesses: &[AccessView], key: &RequestKey, now: DateTime<Utc>) -> bool {
    accesses.iter().any(|access| access.is_request(key) && made_within_window(Some(access.accessed_at), now))
}

/// The listing rule: walking oldest to newest, an unscheduled access is
/// listed unless the same user (organisation and user id) has a listed access
/// less than 24 hours before it; then the 25 newest listed, newest first.
/// Scheduled accesses are never listed (they stay in the audit log).
pub fn listed_accesses<'a>(oldest_first: &[&AccessView<'a>]) -> Vec<AccessView<'a>> {
    let mut last_listed: std::collections::HashMap<(&str, &str), DateTime<Utc>> =
        std::collections::HashMap::with_capacity(oldest_first.len());
    let mut listed = Vec::with_capacity(oldest_first.len());
    for event in oldest_first.iter().filter(|event| !event.scheduled) {
        let user = (event.organisation_ods_code, event.accessor.user_id);
        if last_listed.get(&user).is_some_and(|&at| event.accessed_at - at < SAME_USER_WINDOW) {
            continue;
        }
        last_listed.insert(user, event.accessed_at);
        listed.push(**event);
    }
    listed.into_iter().rev().take(PREVIOUS_ACCESSES_SHOWN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{AccessEvent, Accessor, CareSetting},
        nhs::NhsNumber,
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

    #[test]
    fn scheduled_accesses_are_never_listed_nor_hide_a_later_one() {
        let gp_look = AccessEvent { scheduled: true, ..access(0, "RR8", "a") };
        let events = [gp_look, access(60, "RR8", "a")];
        let views: Vec<_> = events.iter().map(AccessEvent::view).collect();
        let refs: Vec<_> = views.iter().collect();
        let listed: Vec<i64> = listed_accesses(&refs).iter().map(|e| e.accessed_at.timestamp() / 60).collect();
        assert_eq!(listed, vec![60]);
    }

    #[test]
    fn same_user_within_24_hours_is_listed_once_the_first() {
        let events =
            [access(0, "RR8", "a"), access(60, "RR8", "a"), access(23 * 60, "RR8", "a"), access(25 * 60, "RR8", "a")];
        let views: Vec<_> = events.iter().map(AccessEvent::view).collect();
        let refs: Vec<_> = views.iter().collect();
        let listed: Vec<i64> = listed_accesses(&refs).iter().map(|e| e.accessed_at.timestamp() / 60).collect();
        assert_eq!(listed, vec![25 * 60, 0]);
    }

    #[test]
    fn same_user_id_at_another_organisation_is_another_user() {
        let events = [access(0, "RR8", "a"), access(1, "RJ1", "a")];
        let views: Vec<_> = events.iter().map(AccessEvent::view).collect();
        let refs: Vec<_> = views.iter().collect();
        assert_eq!(listed_accesses(&refs).len(), 2);
    }

    #[test]
    fn only_the_25_newest_are_shown_newest_first() {
        let events: Vec<_> = (0..40).map(|i| access(i, "RR8", &format!("user{i}"))).collect();
        let views: Vec<_> = events.iter().map(AccessEvent::view).collect();
        let refs: Vec<_> = views.iter().collect();
        let listed = listed_accesses(&refs);
        assert_eq!(listed.len(), PREVIOUS_ACCESSES_SHOWN);
        assert_eq!(listed[0].accessor.user_id, "user39");
        assert_eq!(listed[24].accessor.user_id, "user15");
    }

    #[test]
    fn a_request_repeats_only_within_the_window_and_with_every_part_equal() {
        let events = [access(0, "RR8", "a")];
        let key = events[0].request_key();
        let made = [events[0].view()];
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

    #[test]
    fn a_request_in_flight_is_claimed_once_and_released_when_done() {
        let history = History::new();
        let key = access(0, "RR8", "a").request_key();
        let for_another_person = RequestKey { nhs_number: NhsNumber::parse("9990000034").unwrap(), ..key.clone() };
        let first = history.claim(&key);
        assert!(first.is_some());
        assert!(history.claim(&key).is_none(), "a racing retry");
        assert!(history.claim(&key).is_none(), "a refused claim leaves the first one held");
        assert!(history.claim(&for_another_person).is_some(), "the same id for another person is another search");
        drop(first);
        assert!(history.claim(&key).is_some(), "released when the search ends");
    }
}
