//! Accesses in memory: each person's recent accesses, the rules a search
//! applies to them, and the searches in flight.
//!
//! The store is the system of record for accesses; this module holds what a
//! search needs of them without a store read on its path, rebuilt from the
//! store on start and written after each commit. It owns three things, one
//! file each:
//! - [`recent`]: every person's recent accesses ([`Recent`], a cheap handle),
//!   of [`RecentAccess`]es ([`access`]);
//! - [`listing`]: which previous accesses a search lists, and when a request
//!   repeats one already made (a client's retry, which must not notify again);
//! - [`claims`]: the searches in flight, claimed by their request, so that a
//!   retry racing its original waits for the original's commit.
//!
//! It knows nothing of the relay, the store or any door: they call it.

use chrono::Duration;

pub mod access;
pub mod claims;
pub mod listing;
pub mod recent;

pub use access::{RecentAccess, Who, request_hash};
pub use claims::{Claim, Claims};
pub use listing::{is_repeat, listed_accesses, made_within_window, mark_listed};
pub use recent::{MAX_KEPT, Recent};

/// How many previous accesses a search shows.
pub const PREVIOUS_ACCESSES_SHOWN: usize = 25;
/// A repeat search by the same user within this window is listed once.
pub(crate) const SAME_USER_WINDOW: Duration = Duration::hours(24);
/// How long a request id identifies a retry of the same search.
pub const REQUEST_ID_WINDOW: Duration = Duration::hours(24);
/// The newest unscheduled accesses kept per person (beyond those of the last
/// 24 hours): the 25 shown with room for the same users' repeats within 24
/// hours folded into them. Only a person looked up more than this many times
/// by repeating users could list fewer than 25.
pub(crate) const HISTORY_READ: usize = 128;

/// An emergency department's access to one synthetic person, `minutes` after
/// the epoch, by `user` of `organisation`: what the unit tests here list and claim.
#[cfg(test)]
pub(crate) fn test_access(minutes: i64, organisation: &str, user: &str) -> crate::model::AccessEvent {
    use crate::model::{AccessEvent, Accessor, CareSetting};
    AccessEvent {
        id: minutes as u128,
        accessed_at: chrono::DateTime::UNIX_EPOCH + Duration::minutes(minutes),
        nhs_number: crate::nhs::NhsNumber::parse("9990000026").unwrap(),
        organisation_ods_code: organisation.into(),
        organisation_name: "Org".into(),
        care_setting: CareSetting::EmergencyDepartment,
        accessor: Accessor { user_id: user.into(), name: "U".into(), role_code: String::new() },
        request_id: format!("r{minutes}"),
        scheduled: false,
    }
}
