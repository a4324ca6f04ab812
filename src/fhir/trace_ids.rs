//! TraceIDs a client reuses. The door's idempotency key is the TraceID with
//! the resource searched, and the store's request key adds the organisation,
//! user, person and care setting, so a reused TraceID never suppresses
//! another user's or another person's notification. A client that reuses
//! TraceIDs is still a defect worth seeing: this remembers the recent ones
//! (a bounded, oldest-first memory) and counts every one seen again for
//! another search in `cpis_fhir_trace_id_reused_total`. It never refuses a
//! search and holds no personal data (only a hash of who searched what).

use std::{
    collections::{HashMap, VecDeque},
    hash::{DefaultHasher, Hash, Hasher},
    sync::Mutex,
};

/// TraceIDs remembered; older ones are forgotten first.
const REMEMBERED: usize = 50_000;

/// The recent TraceIDs and what each searched.
#[derive(Default)]
pub(crate) struct TraceIds {
    /// A std mutex: held for a map lookup and insert, never across an await.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    searched: HashMap<String, u64>,
    order: VecDeque<String>,
}

impl TraceIds {
    /// Notes a search; true (and counted) when `trace_id` was seen for another search.
    pub(crate) fn note(&self, trace_id: &str, search: &[&str]) -> bool {
        let mut hasher = DefaultHasher::new();
        search.hash(&mut hasher);
        let fingerprint = hasher.finish();
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(earlier) = seen.searched.get(trace_id) {
            let reused = *earlier != fingerprint;
            if reused {
                metrics::counter!("cpis_fhir_trace_id_reused_total").increment(1);
            }
            return reused;
        }
        if seen.order.len() >= REMEMBERED
            && let Some(oldest) = seen.order.pop_front()
        {
            seen.searched.remove(&oldest);
        }
        seen.order.push_back(trace_id.to_owned());
        seen.searched.insert(trace_id.to_owned(), fingerprint);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_id_seen_again_for_another_search_is_reuse_and_a_retry_is_not() {
        let ids = TraceIds::default();
        assert!(!ids.note("t1", &["RR8", "u1", "9434765919", "CareTeam"]));
        assert!(!ids.note("t1", &["RR8", "u1", "9434765919", "CareTeam"]), "a retry");
        assert!(ids.note("t1", &["RR8", "u2", "9434765919", "CareTeam"]), "another user");
        assert!(ids.note("t1", &["RR8", "u1", "9434765919", "AuditEvent"]), "another resource");
        assert!(!ids.note("t2", &["RR8", "u2", "9434765919", "CareTeam"]));
    }
}
