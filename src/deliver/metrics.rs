//! What the delivery agent tells operators: its Prometheus metrics and the
//! shared [`Status`] behind them and behind `/healthz`.
//!
//! Metrics (all exposed from start, counters at 0 for both sink kinds):
//! - `cpis_deliver_delivered_total{sink}`: notifications a sink delivered
//!   (redeliveries after a restart included).
//! - `cpis_deliver_retries_total{sink}`: failed attempts that will be retried.
//! - `cpis_deliver_dead_lettered_total{sink}`: notifications a receiver
//!   refused (or that ran out of attempts), parked in the dead-letter directory.
//! - `cpis_deliver_backlog`: the highest sequence received from the relay
//!   minus the acknowledged sequence. Approximate: sequences may have gaps
//!   (so it is an upper bound), and notifications the relay holds but has not
//!   streamed yet (beyond the read-ahead) are not counted; the relay's own
//!   `cpis_notification_backlog{la}` is the exact figure.
//! - `cpis_deliver_oldest_undelivered_seconds`: age (from its `accessed_at`)
//!   of the notification being delivered, 0 when idle. Delivery is in order,
//!   so this is the oldest one the agent holds.
//! - `cpis_deliver_acked_sequence`, `cpis_deliver_connected` (0 or 1) and
//!   `cpis_deliver_reconnects_total`.
//! - `cpis_deliver_receiver_misconfigured{sink}`: 1 while the receiver's last
//!   answer says it is misconfigured (3xx, 401, 403, 404, 410, ...): delivery
//!   is retried, nothing is acknowledged, and `/healthz` fails until it takes one.
//!
//! - The access log check's own (see [`super::log_check`]):
//!   `cpis_deliver_log_confirmed_total`, `cpis_deliver_log_confirm_seconds`,
//!   `cpis_deliver_log_problems_total{kind}`, `cpis_deliver_log_problems`,
//!   `cpis_deliver_log_trusted_size`, `cpis_deliver_log_unconfirmed`,
//!   `cpis_deliver_log_oldest_unconfirmed_seconds`.
//!
//! Labels carry only the sink kind or the problem's kind: never personal data.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;

/// The kinds of sink, the only metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkKind {
    Webhook,
    Outbox,
}

impl SinkKind {
    pub const ALL: [SinkKind; 2] = [Self::Webhook, Self::Outbox];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Outbox => "outbox",
        }
    }
}

pub fn delivered(sink: SinkKind) {
    metrics::counter!("cpis_deliver_delivered_total", "sink" => sink.as_str()).increment(1);
}

pub fn retried(sink: SinkKind) {
    metrics::counter!("cpis_deliver_retries_total", "sink" => sink.as_str()).increment(1);
}

pub(crate) fn dead_lettered(sink: SinkKind) {
    metrics::counter!("cpis_deliver_dead_lettered_total", "sink" => sink.as_str()).increment(1);
}

pub(crate) fn reconnected() {
    metrics::counter!("cpis_deliver_reconnects_total").increment(1);
}

/// Installs the recorder, describes every metric and sets each to zero.
pub fn init() {
    use metrics::{Unit, describe_counter, describe_gauge};
    let _handle = crate::telemetry::metrics();
    describe_counter!("cpis_deliver_delivered_total", "Notifications delivered, by sink.");
    describe_counter!("cpis_deliver_retries_total", "Failed delivery attempts that will be retried, by sink.");
    describe_counter!(
        "cpis_deliver_dead_lettered_total",
        "Notifications refused by the receiver (or out of attempts) and parked in the dead-letter directory, by sink."
    );
    describe_counter!("cpis_deliver_reconnects_total", "Times the agent lost or could not open its subscription.");
    describe_gauge!(
        "cpis_deliver_backlog",
        "Highest sequence received from the relay minus the acknowledged one (approximate upper bound)."
    );
    describe_gauge!(
        "cpis_deliver_oldest_undelivered_seconds",
        Unit::Seconds,
        "Age of the notification being delivered, from the search that caused it; 0 when idle."
    );
    describe_gauge!("cpis_deliver_acked_sequence", "Highest sequence acknowledged to the relay by this agent.");
    describe_gauge!("cpis_deliver_connected", "1 while subscribed to a relay.");
    for sink in SinkKind::ALL {
        for name in ["cpis_deliver_delivered_total", "cpis_deliver_retries_total", "cpis_deliver_dead_lettered_total"] {
            metrics::counter!(name, "sink" => sink.as_str()).increment(0);
        }
    }
    metrics::counter!("cpis_deliver_reconnects_total").increment(0);
    describe_gauge!(
        "cpis_deliver_receiver_misconfigured",
        "1 while the receiver's last answer says it is misconfigured (3xx, 401, 403, 404, 410): retried, not acknowledged."
    );
    for sink in SinkKind::ALL {
        metrics::gauge!("cpis_deliver_receiver_misconfigured", "sink" => sink.as_str()).set(0.0);
    }
    for name in [
        "cpis_deliver_backlog",
        "cpis_deliver_oldest_undelivered_seconds",
        "cpis_deliver_acked_sequence",
        "cpis_deliver_connected",
    ] {
        metrics::gauge!(name).set(0.0);
    }
}

/// The agent's position and health, shared by the delivery loop, the
/// subscription reader and the admin endpoints. A cheap handle.
#[derive(Clone)]
pub struct Status {
    shared: Arc<AgentState>,
}

/// The agent's position (connected, last seen, acknowledged, in flight) and its health inputs.
struct AgentState {
    connected: AtomicBool,
    last_seen: AtomicU64,
    /// A watch so that tests and callers can wait for a position.
    acked: watch::Sender<u64>,
    /// The notification being delivered. A mutex: written twice per
    /// notification and read per scrape, never held across an await.
    in_flight: Mutex<Option<InFlight>>,
    unhealthy_after: Duration,
    /// Why each sink's receiver looks misconfigured, while it does. A mutex:
    /// written once per attempt, read per health check, never held across an await.
    misconfigured: Mutex<Vec<(SinkKind, String)>>,
    /// What the log check found, while it stands (see [`super::log_check`]).
    log_problem: Mutex<Option<String>>,
    /// The log check's progress, to read or wait on.
    log_progress: watch::Sender<LogProgress>,
}

/// How far the check of the relay's access log has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogProgress {
    /// Accesses in the checkpoint trusted.
    pub trusted_size: u64,
    /// Notifications whose access was proved in it, since start.
    pub confirmed: u64,
    /// Notifications delivered and not confirmed yet.
    pub unconfirmed: u64,
    /// Problems found since start.
    pub problems: u64,
}

#[derive(Clone, Copy)]
struct InFlight {
    accessed_at: Option<SystemTime>,
    since: Instant,
}

impl Status {
    /// `unhealthy_after`: how long one notification may wait for its sinks
    /// before `/healthz` reports the agent stuck.
    pub fn new(unhealthy_after: Duration) -> Self {
        Self {
            shared: Arc::new(AgentState {
                connected: AtomicBool::new(false),
                last_seen: AtomicU64::new(0),
                acked: watch::Sender::new(0),
                in_flight: Mutex::new(None),
                unhealthy_after,
                misconfigured: Mutex::new(Vec::new()),
                log_problem: Mutex::new(None),
                log_progress: watch::Sender::new(LogProgress::default()),
            }),
        }
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.shared.connected.store(connected, Ordering::Release);
        metrics::gauge!("cpis_deliver_connected").set(if connected { 1.0 } else { 0.0 });
    }

    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// A notification arrived from the relay.
    pub fn saw(&self, sequence: u64) {
        self.shared.last_seen.fetch_max(sequence, Ordering::AcqRel);
        self.set_backlog();
    }

    /// The relay confirmed acknowledgement through `sequence`.
    pub fn acked(&self, sequence: u64) {
        self.shared.acked.send_if_modified(|acked| {
            let newer = sequence > *acked;
            if newer {
                *acked = sequence;
            }
            newer
        });
        metrics::gauge!("cpis_deliver_acked_sequence").set(*self.shared.acked.borrow() as f64);
        self.set_backlog();
    }

    /// The acknowledged sequence, to read or wait on.
    pub fn acked_sequence(&self) -> watch::Receiver<u64> {
        self.shared.acked.subscribe()
    }

    fn set_backlog(&self) {
        let last = self.shared.last_seen.load(Ordering::Acquire);
        let acked = *self.shared.acked.borrow();
        metrics::gauge!("cpis_deliver_backlog").set(last.saturating_sub(acked) as f64);
    }

    pub fn delivering(&self, accessed_at: Option<SystemTime>) {
        if let Ok(mut in_flight) = self.shared.in_flight.lock() {
            *in_flight = Some(InFlight { accessed_at, since: Instant::now() });
        }
    }

    pub fn idle(&self) {
        if let Ok(mut in_flight) = self.shared.in_flight.lock() {
            *in_flight = None;
        }
        metrics::gauge!("cpis_deliver_oldest_undelivered_seconds").set(0.0);
    }

    /// The receiver of `sink` answered as a misconfigured one would
    /// (`Some(why)`), or took a delivery (`None`).
    pub(crate) fn receiver_misconfigured(&self, sink: SinkKind, reason: Option<String>) {
        if let Ok(mut misconfigured) = self.shared.misconfigured.lock() {
            misconfigured.retain(|(kind, _)| *kind != sink);
            if let Some(reason) = &reason {
                misconfigured.push((sink, reason.clone()));
            }
        }
        let value = if reason.is_some() { 1.0 } else { 0.0 };
        metrics::gauge!("cpis_deliver_receiver_misconfigured", "sink" => sink.as_str()).set(value);
    }

    /// What the check of the relay's access log found (`None`: nothing stands).
    pub(crate) fn set_log_problem(&self, problem: Option<String>) {
        if let Ok(mut standing) = self.shared.log_problem.lock() {
            *standing = problem;
        }
    }

    /// Updates the log check's progress.
    pub(crate) fn log_progress_changed(&self, change: impl FnOnce(&mut LogProgress)) {
        self.shared.log_progress.send_modify(change);
    }

    /// The log check's progress, to read or wait on.
    pub fn log_progress(&self) -> watch::Receiver<LogProgress> {
        self.shared.log_progress.subscribe()
    }

    fn in_flight(&self) -> Option<InFlight> {
        self.shared.in_flight.lock().ok().and_then(|in_flight| *in_flight)
    }

    /// Brings the time-based gauge up to date, before a scrape.
    pub(crate) fn refresh_gauges(&self) {
        let age = self
            .in_flight()
            .and_then(|in_flight| in_flight.accessed_at)
            .and_then(|accessed_at| SystemTime::now().duration_since(accessed_at).ok())
            .map_or(0.0, |age| age.as_secs_f64());
        metrics::gauge!("cpis_deliver_oldest_undelivered_seconds").set(age);
    }

    /// Healthy while subscribed to a relay, no receiver looks misconfigured,
    /// no notification has waited for its sinks longer than
    /// `unhealthy_after`, and the check of the access log found nothing;
    /// otherwise why not.
    pub fn health(&self) -> Result<(), String> {
        if let Some(problem) = self.shared.log_problem.lock().ok().and_then(|problem| problem.clone()) {
            return Err(problem);
        }
        if !self.connected() {
            return Err("not subscribed to a relay".into());
        }
        if let Some((sink, reason)) = self.shared.misconfigured.lock().ok().and_then(|list| list.first().cloned()) {
            return Err(format!("the {} receiver looks misconfigured ({reason}); retrying", sink.as_str()));
        }
        if let Some(in_flight) = self.in_flight() {
            let waited = in_flight.since.elapsed();
            if waited > self.shared.unhealthy_after {
                return Err(format!("a notification has waited {} s for delivery", waited.as_secs()));
            }
        }
        Ok(())
    }
}
