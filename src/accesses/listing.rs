//! The rules over a person's recent accesses: which previous accesses a
//! search lists (the same user within [`SAME_USER_WINDOW`] once, the first;
//! scheduled reads never; at most [`PREVIOUS_ACCESSES_SHOWN`], newest first),
//! and whether a request repeats one made within [`REQUEST_ID_WINDOW`].

use chrono::{DateTime, Utc};

use super::{
    PREVIOUS_ACCESSES_SHOWN, REQUEST_ID_WINDOW, SAME_USER_WINDOW,
    access::{RecentAccess, request_hash},
};
use crate::model::RequestKey;

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
    use chrono::Duration;

    use super::*;
    use crate::{
        accesses::{Recent, test_access as access},
        model::{AccessEvent, CareSetting},
    };

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
}
