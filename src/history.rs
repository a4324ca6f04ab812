//! Access histories as clinicians see them, and retried searches.
//!
//! A person's accesses live in the store and are read when that person is
//! searched, so memory does not grow with history and start-up does not read
//! it. This module owns two rules over such a list: which previous accesses a
//! search shows, and when a search is a client's retry of an earlier one (the
//! same organisation, person and `request_id` within 24 hours), which must
//! not notify again. Searches in flight claim their request here, so that a
//! retry racing its still-uncommitted original is recognised too.

use chrono::{DateTime, Duration, Utc};
use dashmap::DashSet;

use crate::{model::AccessEvent, nhs::NhsNumber};

/// How many previous accesses a search shows.
pub const PREVIOUS_ACCESSES_SHOWN: usize = 25;
/// A repeat search by the same user within this window is listed once.
pub const SAME_USER_WINDOW: Duration = Duration::hours(24);
/// How long a request id identifies a retry of the same search.
pub const REQUEST_ID_WINDOW: Duration = Duration::hours(24);

/// (organisation ODS code, person, request id).
type RequestKey = (String, NhsNumber, String);

/// Requests being searched right now.
#[derive(Default)]
pub struct History {
    in_flight: DashSet<RequestKey>,
}

/// A request claimed while its search runs; released on drop.
pub struct Claim<'a> {
    in_flight: &'a DashSet<RequestKey>,
    key: RequestKey,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.in_flight.remove(&self.key);
    }
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims a request for the length of its search; `None` when the same
    /// request is already being searched (a retry racing its original).
    pub fn claim(&self, organisation_ods_code: &str, nhs_number: NhsNumber, request_id: &str) -> Option<Claim<'_>> {
        let key = (organisation_ods_code.to_owned(), nhs_number, request_id.to_owned());
        // `then`, not `then_some`: a refused claim must not build (and so drop,
        // releasing) a `Claim` for the key the search in flight holds.
        self.in_flight.insert(key.clone()).then(|| Claim { in_flight: &self.in_flight, key })
    }
}

/// Whether a person's accesses already hold this organisation's request
/// made within the window before `now`: the search is then a retry.
pub fn is_repeat(accesses: &[AccessEvent], organisation_ods_code: &str, request_id: &str, now: DateTime<Utc>) -> bool {
    accesses.iter().any(|access| {
        access.organisation_ods_code == organisation_ods_code
            && access.request_id == request_id
            && now - access.accessed_at < REQUEST_ID_WINDOW
    })
}

/// The listing rule: walking oldest to newest, an access is listed unless
/// the same user (organisation and user id) has a listed access less than 24
/// hours before it; then the 25 newest listed, newest first.
pub fn listed_accesses(oldest_first: &[&AccessEvent]) -> Vec<AccessEvent> {
    let mut last_listed: std::collections::HashMap<(&str, &str), DateTime<Utc>> = std::collections::HashMap::new();
    let mut listed = Vec::new();
    for event in oldest_first {
        let user = (event.organisation_ods_code.as_str(), event.accessor.user_id.as_str());
        if last_listed.get(&user).is_some_and(|&at| event.accessed_at - at < SAME_USER_WINDOW) {
            continue;
        }
        last_listed.insert(user, event.accessed_at);
        listed.push(*event);
    }
    listed.into_iter().rev().take(PREVIOUS_ACCESSES_SHOWN).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Accessor, CareSetting};

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
        }
    }

    #[test]
    fn same_user_within_24_hours_is_listed_once_the_first() {
        let events =
            [access(0, "RR8", "a"), access(60, "RR8", "a"), access(23 * 60, "RR8", "a"), access(25 * 60, "RR8", "a")];
        let refs: Vec<_> = events.iter().collect();
        let listed: Vec<i64> = listed_accesses(&refs).iter().map(|e| e.accessed_at.timestamp() / 60).collect();
        assert_eq!(listed, vec![25 * 60, 0]);
    }

    #[test]
    fn same_user_id_at_another_organisation_is_another_user() {
        let events = [access(0, "RR8", "a"), access(1, "RJ1", "a")];
        let refs: Vec<_> = events.iter().collect();
        assert_eq!(listed_accesses(&refs).len(), 2);
    }

    #[test]
    fn only_the_25_newest_are_shown_newest_first() {
        let events: Vec<_> = (0..40).map(|i| access(i, "RR8", &format!("user{i}"))).collect();
        let refs: Vec<_> = events.iter().collect();
        let listed = listed_accesses(&refs);
        assert_eq!(listed.len(), PREVIOUS_ACCESSES_SHOWN);
        assert_eq!(listed[0].accessor.user_id, "user39");
        assert_eq!(listed[24].accessor.user_id, "user15");
    }

    #[test]
    fn a_request_repeats_within_the_window_for_the_same_organisation_and_person() {
        let made = [access(0, "RR8", "a")];
        let start = DateTime::UNIX_EPOCH;
        assert!(is_repeat(&made, "RR8", "r0", start + Duration::hours(23)));
        assert!(!is_repeat(&made, "RR8", "r0", start + Duration::hours(25)), "the window has passed");
        assert!(!is_repeat(&made, "RJ1", "r0", start), "request ids are scoped per organisation");
        assert!(!is_repeat(&made, "RR8", "r1", start));
    }

    #[test]
    fn a_request_in_flight_is_claimed_once_and_released_when_done() {
        let history = History::new();
        let person = NhsNumber::parse("9990000026").unwrap();
        let other = NhsNumber::parse("9990000034").unwrap();
        let first = history.claim("RR8", person, "req-1");
        assert!(first.is_some());
        assert!(history.claim("RR8", person, "req-1").is_none(), "a racing retry");
        assert!(history.claim("RR8", person, "req-1").is_none(), "a refused claim leaves the first one held");
        assert!(history.claim("RR8", other, "req-1").is_some(), "the same id for another person is another search");
        drop(first);
        assert!(history.claim("RR8", person, "req-1").is_some(), "released when the search ends");
    }
}
