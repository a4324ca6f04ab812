//! Timing of notification delivery for `bench --scenario delivery`: each
//! search's answer and its notification's arrival, matched by the
//! accessor's user id in whichever order they come.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use hdrhistogram::Histogram;
use tokio::sync::watch;

/// When a search was answered and when its notification arrived.
type Times = (Option<Instant>, Option<Instant>);

/// Answer and arrival times per search, matched by the accessor's user id.
pub struct DeliveryTimings {
    pending: Mutex<HashMap<String, Times>>,
    pub latencies: Mutex<Histogram<u64>>,
    answers: AtomicUsize,
    pub matched: watch::Sender<usize>,
}

impl Default for DeliveryTimings {
    fn default() -> Self {
        Self {
            pending: Default::default(),
            latencies: Mutex::new(super::load::latency_histogram(60_000_000)),
            answers: Default::default(),
            matched: watch::Sender::new(0),
        }
    }
}

impl DeliveryTimings {
    pub fn answered(&self, user: String, at: Instant) {
        self.answers.fetch_add(1, Ordering::AcqRel);
        self.complete(user, Some(at), None);
    }

    pub fn arrived(&self, user: String, at: Instant) {
        self.complete(user, None, Some(at));
    }

    pub fn answers(&self) -> usize {
        self.answers.load(Ordering::Acquire)
    }

    fn complete(&self, user: String, answered: Option<Instant>, arrived: Option<Instant>) {
        let Ok(mut pending) = self.pending.lock() else { return };
        let entry = pending.entry(user.clone()).or_default();
        entry.0 = entry.0.or(answered);
        entry.1 = entry.1.or(arrived);
        if let (Some(answered), Some(arrived)) = *entry {
            pending.remove(&user);
            if let Ok(mut latencies) = self.latencies.lock() {
                let _ = latencies.record(arrived.saturating_duration_since(answered).as_micros().max(1) as u64);
            }
            self.matched.send_modify(|count| *count += 1);
        }
    }
}
