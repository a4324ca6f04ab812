//! Access histories: every retained unscheduled-care access of a flagged
//! person, the "previous accesses" rule shown to clinicians, and the recent
//! request ids that make a retried search notify once. In memory, rebuilt
//! from the store on start; the store is written by the relay, not here.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use dashmap::DashMap;

use crate::{model::AccessEvent, nhs::NhsNumber};

/// How many previous accesses a search shows.
pub const PREVIOUS_ACCESSES_SHOWN: usize = 25;
/// A repeat search by the same user within this window is listed once.
pub const SAME_USER_WINDOW: Duration = Duration::hours(24);
/// How long a request id is remembered for de-duplicating retries.
pub const REQUEST_ID_WINDOW: Duration = Duration::hours(24);

#[derive(Default)]
pub struct History {
    /// Oldest first, per person.
    people: DashMap<NhsNumber, Vec<Arc<AccessEvent>>>,
    /// (organisation ODS code, request id) -> when first seen.
    requests: DashMap<(String, String), DateTime<Utc>>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds from stored accesses (any order).
    pub fn load(&self, accesses: impl IntoIterator<Item = AccessEvent>, now: DateTime<Utc>) {
        for access in accesses {
            if now - access.accessed_at < REQUEST_ID_WINDOW {
                self.requests
                    .insert((access.organisation_ods_code.clone(), access.request_id.clone()), access.accessed_at);
            }
            self.record(Arc::new(access));
        }
    }

    /// Claims a request id for an organisation; false when it was already
    /// seen within the window (a retry).
    pub fn claim_request(&self, organisation_ods_code: &str, request_id: &str, now: DateTime<Utc>) -> bool {
        match self.requests.entry((organisation_ods_code.to_owned(), request_id.to_owned())) {
            dashmap::Entry::Occupied(seen) if now - *seen.get() < REQUEST_ID_WINDOW => false,
            dashmap::Entry::Occupied(mut stale) => {
                stale.insert(now);
                true
            }
            dashmap::Entry::Vacant(vacant) => {
                vacant.insert(now);
                true
            }
        }
    }

    pub fn record(&self, access: Arc<AccessEvent>) {
        let mut events = self.people.entry(access.nhs_number).or_default();
        let position = events.partition_point(|event| event.accessed_at <= access.accessed_at);
        events.insert(position, access);
    }

    /// Previous accesses shown to a clinician, newest first, leaving out the
    /// access made by `request` (organisation, request id) if any.
    pub fn previous(&self, nhs_number: NhsNumber, request: (&str, &str)) -> Vec<Arc<AccessEvent>> {
        let Some(events) = self.people.get(&nhs_number) else { return Vec::new() };
        let earlier: Vec<&Arc<AccessEvent>> = events
            .iter()
            .filter(|event| (event.organisation_ods_code.as_str(), event.request_id.as_str()) != request)
            .collect();
        listed_accesses(&earlier)
    }

    /// Every retained access of a person, oldest first.
    pub fn all(&self, nhs_number: NhsNumber) -> Vec<Arc<AccessEvent>> {
        self.people.get(&nhs_number).map(|events| events.clone()).unwrap_or_default()
    }

    /// Number of retained accesses.
    pub fn len(&self) -> usize {
        self.people.iter().map(|events| events.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }

    /// Drops accesses before `accesses_before` and request ids past their window.
    pub fn expire(&self, accesses_before: DateTime<Utc>, now: DateTime<Utc>) -> usize {
        let mut removed = 0;
        self.people.retain(|_, events| {
            let keep_from = events.partition_point(|event| event.accessed_at < accesses_before);
            removed += keep_from;
            events.drain(..keep_from);
            !events.is_empty()
        });
        self.requests.retain(|_, seen| now - *seen < REQUEST_ID_WINDOW);
        removed
    }
}

/// The listing rule: walking oldest to newest, an access is listed unless
/// the same user (organisation and user id) has a listed access less than 24
/// hours before it; then the 25 newest listed, newest first.
pub fn listed_accesses(oldest_first: &[&Arc<AccessEvent>]) -> Vec<Arc<AccessEvent>> {
    let mut last_listed: std::collections::HashMap<(&str, &str), DateTime<Utc>> = std::collections::HashMap::new();
    let mut listed = Vec::new();
    for event in oldest_first {
        let user = (event.organisation_ods_code.as_str(), event.accessor.user_id.as_str());
        if last_listed.get(&user).is_some_and(|&at| event.accessed_at - at < SAME_USER_WINDOW) {
            continue;
        }
        last_listed.insert(user, event.accessed_at);
        listed.push(Arc::clone(event));
    }
    listed.into_iter().rev().take(PREVIOUS_ACCESSES_SHOWN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Accessor, CareSetting};

    fn access(minutes: i64, organisation: &str, user: &str) -> Arc<AccessEvent> {
        Arc::new(AccessEvent {
            id: minutes as u128,
            accessed_at: DateTime::UNIX_EPOCH + Duration::minutes(minutes),
            nhs_number: NhsNumber::parse("9990000026").unwrap(),
            organisation_ods_code: organisation.into(),
            organisation_name: "Org".into(),
            care_setting: CareSetting::EmergencyDepartment,
            accessor: Accessor { user_id: user.into(), name: "U".into(), role_code: String::new() },
            request_id: format!("r{minutes}"),
        })
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
    fn a_request_id_is_claimed_once_within_the_window() {
        let history = History::new();
        let now = DateTime::UNIX_EPOCH;
        assert!(history.claim_request("RR8", "req-1", now));
        assert!(!history.claim_request("RR8", "req-1", now + Duration::hours(23)));
        assert!(history.claim_request("RJ1", "req-1", now), "request ids are scoped per organisation");
        assert!(history.claim_request("RR8", "req-1", now + Duration::hours(25)));
    }
}
