//! Oversight of reads: an auditor's read of a person's access
//! trail is itself recorded (who read whose trail, when, and which accesses
//! it showed), and a user who searches more distinct people within one clock
//! hour than `unusual_access_distinct_people_per_hour` raises
//! `cpis_unusual_access_total{organisation}` and one warning per window.
//!
//! Neither carries personal data. People and users are named by a keyed hash
//! (SipHash under a key drawn at random when the relay starts): lines of one
//! run can be linked, but nobody without the key can test a guessed NHS
//! number against them (the number space is small enough to enumerate, so an
//! unkeyed hash would not do). An audit read also names the ids of the
//! accesses it returned, which the store keeps with the person. The line
//! (`cpis_relay::audit` target, info) is for operators; the durable record is
//! the read itself, stored as an access of kind audit in the tamper-evident
//! access log before anything is returned (see `Relay::access_log`), where the
//! store keeps that log.
//!
//! Memory is bounded: windows are fixed clock hours and a new window drops
//! the last one's users; a user's distinct people are remembered only until
//! they pass the threshold (at most threshold + 1 of them), then only the
//! fact; at most [`MAX_TRACKED_USERS`] users are tracked per window.

use std::{
    collections::HashSet,
    hash::{BuildHasher, Hash, RandomState},
    sync::atomic::{AtomicBool, AtomicI64, Ordering},
};

use chrono::{DateTime, Utc};
use dashmap::DashMap;

use crate::{
    auth::Identity,
    error::Result,
    model::AccessEvent,
    nhs::{FastHash, NhsNumber},
};

/// Users tracked in one hour; beyond it new users are not counted (warned once per window).
pub(super) const MAX_TRACKED_USERS: usize = 200_000;
/// Access ids named in one audit read's log line.
const MAX_ACCESS_IDS_LOGGED: usize = 20;
const WINDOW_SECS: i64 = 3600;

pub(super) struct Oversight {
    threshold: usize,
    key: RandomState,
    /// The current window (hours since the epoch).
    window: AtomicI64,
    users: DashMap<u64, UserWindow>,
    full_warned: AtomicBool,
}

/// One user's searches in one window.
struct UserWindow {
    window: i64,
    people: HashSet<NhsNumber, FastHash>,
    raised: bool,
}

impl UserWindow {
    fn new(window: i64) -> Self {
        Self { window, people: HashSet::default(), raised: false }
    }
}

impl Oversight {
    pub(super) fn new(threshold: usize) -> Self {
        Self {
            threshold,
            key: RandomState::new(),
            window: AtomicI64::new(i64::MIN),
            users: DashMap::new(),
            full_warned: AtomicBool::new(false),
        }
    }

    /// A keyed hash, shown as 16 hex digits.
    fn pseudonym(&self, value: impl Hash) -> String {
        format!("{:016x}", self.key.hash_one(value))
    }

    /// Records an auditor's read of `nhs_number`'s access trail and its outcome.
    pub(super) fn audit_read(
        &self,
        identity: &Identity,
        nhs_number: NhsNumber,
        at: DateTime<Utc>,
        result: &Result<Vec<AccessEvent>>,
    ) {
        metrics::counter!("cpis_audit_reads_total", "organisation" => identity.ods_code.clone()).increment(1);
        let person = self.pseudonym(("person", nhs_number));
        let at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        match result {
            Ok(accesses) => {
                let ids: Vec<String> = accesses
                    .iter()
                    .take(MAX_ACCESS_IDS_LOGGED)
                    .map(|access| uuid::Uuid::from_u128(access.id).to_string())
                    .collect();
                tracing::info!(
                    target: "cpis_relay::audit",
                    auditor = %identity.ods_code,
                    role = %identity.role,
                    person = %person,
                    at = %at,
                    accesses = accesses.len(),
                    access_ids = %ids.join(","),
                    "audit trail read"
                );
            }
            Err(_) => tracing::warn!(
                target: "cpis_relay::audit",
                auditor = %identity.ods_code,
                role = %identity.role,
                person = %person,
                at = %at,
                "audit trail read failed"
            ),
        }
    }

    /// Counts a search of `nhs_number` by `user_id` of `organisation` at `now`.
    pub(super) fn searched(&self, organisation: &str, user_id: &str, nhs_number: NhsNumber, now: DateTime<Utc>) {
        let window = now.timestamp().div_euclid(WINDOW_SECS);
        self.rotate(window);
        let user = self.key.hash_one(("user", organisation, user_id));
        {
            let mut entry = match self.users.get_mut(&user) {
                Some(entry) => entry,
                None => {
                    if self.users.len() >= MAX_TRACKED_USERS {
                        if !self.full_warned.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                users = MAX_TRACKED_USERS,
                                "unusual access: too many users searching this hour; new users are not counted"
                            );
                        }
                        return;
                    }
                    // The organisation's counter exists, at zero, from its first search on.
                    metrics::counter!("cpis_unusual_access_total", "organisation" => organisation.to_owned())
                        .increment(0);
                    self.users.entry(user).or_insert_with(|| UserWindow::new(window))
                }
            };
            if entry.window != window {
                *entry = UserWindow::new(window);
            }
            if entry.raised {
                return;
            }
            entry.people.insert(nhs_number);
            if entry.people.len() <= self.threshold {
                return;
            }
            entry.raised = true;
            entry.people = HashSet::default();
        }
        metrics::counter!("cpis_unusual_access_total", "organisation" => organisation.to_owned()).increment(1);
        let window_start = DateTime::from_timestamp(window * WINDOW_SECS, 0).unwrap_or_default();
        tracing::warn!(
            organisation = %organisation,
            user = %format!("{user:016x}"),
            threshold = self.threshold,
            window_start = %window_start.to_rfc3339(),
            "unusual access: a user searched more distinct people within one hour than \
             unusual_access_distinct_people_per_hour"
        );
    }

    /// Moves to `window` if it is newer, dropping the users of older windows.
    fn rotate(&self, window: i64) {
        let current = self.window.load(Ordering::Acquire);
        if window > current
            && self.window.compare_exchange(current, window, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.users.retain(|_, user| user.window >= window);
            self.full_warned.store(false, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.users.iter().map(|user| user.people.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(n: u64) -> NhsNumber {
        (999_000_000u64..).filter_map(NhsNumber::complete).nth(n as usize).unwrap()
    }

    #[test]
    fn memory_is_bounded_by_the_threshold_and_the_window() {
        let oversight = Oversight::new(3);
        let start: DateTime<Utc> = "2026-06-01T09:00:00Z".parse().unwrap();
        for n in 0..3 {
            oversight.searched("RR8", "u1", person(n), start);
            oversight.searched("RR8", "u1", person(n), start);
        }
        assert_eq!(oversight.remembered(), 3, "repeats of one person count once");
        for n in 3..50 {
            oversight.searched("RR8", "u1", person(n), start);
        }
        assert_eq!(oversight.remembered(), 0, "past the threshold only the fact is kept");
        oversight.searched("RR8", "u2", person(1), start);
        oversight.searched("RR8", "u2", person(2), start + chrono::Duration::hours(1));
        assert_eq!(oversight.users.len(), 1, "a new window drops the last one's users");
        assert_eq!(oversight.remembered(), 1);
    }
}
