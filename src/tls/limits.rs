//! Connection caps of a TLS listener and the accounting of failed
//! handshakes.
//!
//! - At most `max_connections` connections are open (handshaking or
//!   established); over it a new TCP connection is closed at once, never
//!   queued, and counted in `cpis_connections_refused_total{listener}`.
//! - At most `max_handshakes` of them are still handshaking: a share of the
//!   cap, so connections that never authenticate cannot take the room an
//!   authenticated clinician needs. When they are all taken, a new
//!   connection displaces the oldest handshake in progress (which a real
//!   client completes in milliseconds, and a silent one never does).
//! - Failed handshakes are counted in
//!   `cpis_tls_handshake_failures_total{reason}` and logged at most once per
//!   [`LOG_INTERVAL`] with the number left unlogged since.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

/// Caps of one listener; see the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_handshakes: usize,
    /// A connection with no call in progress for this long is closed; `None` never.
    pub idle_timeout: Option<Duration>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { max_connections: 4096, max_handshakes: 256, idle_timeout: None }
    }
}

/// Reasons of `cpis_tls_handshake_failures_total{reason}`.
pub const HANDSHAKE_FAILURE_REASONS: [&str; 5] = ["certificate", "protocol", "io", "timeout", "displaced"];

/// At most one handshake-failure line per interval.
pub(super) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a handshake failed, as the metric labels it.
pub(super) fn failure_reason(error: &std::io::Error) -> &'static str {
    match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate | rustls::AlertDescription::UnknownCA,
            ),
        ) => "certificate",
        Some(_) => "protocol",
        None if error.kind() == std::io::ErrorKind::InvalidData => "protocol",
        None => "io",
    }
}

/// The open connections and handshakes in progress of one listener.
pub(super) struct Gate {
    limits: ConnectionLimits,
    /// `listener` label of the gauges: grpc or fhir.
    listener: &'static str,
    established: Arc<AtomicUsize>,
    next_id: AtomicU64,
    /// Handshakes in progress, oldest first, each with its displacement
    /// signal. A displaced handshake leaves the list (and stops counting) at once.
    handshaking: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
    failures: ThrottledLog,
}

/// Holds one of the listener's established-connection slots until dropped.
#[derive(Debug)]
pub(super) struct ConnectionSlot(Arc<Gate>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.established.fetch_sub(1, Ordering::AcqRel);
        let handshaking = self.0.lock();
        self.0.set_gauges(handshaking.len());
    }
}

/// A handshake in progress; leaves the list when dropped or established.
pub(super) struct HandshakeTicket {
    gate: Arc<Gate>,
    id: u64,
    /// Fires when a newer connection displaces this handshake.
    pub(super) displaced: oneshot::Receiver<()>,
}

impl HandshakeTicket {
    /// The handshake succeeded: the connection now holds an established slot.
    pub(super) fn establish(self) -> ConnectionSlot {
        let gate = Arc::clone(&self.gate);
        gate.established.fetch_add(1, Ordering::AcqRel);
        drop(self);
        ConnectionSlot(gate)
    }
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        let mut handshaking = self.gate.lock();
        handshaking.remove(&self.id);
        self.gate.set_gauges(handshaking.len());
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("listener", &self.listener).field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Gate {
    pub(super) fn new(limits: ConnectionLimits, alpn: super::Alpn) -> Arc<Self> {
        let listener = match alpn {
            super::Alpn::H2 => "grpc",
            super::Alpn::Http1 => "fhir",
        };
        let gate = Arc::new(Self {
            limits,
            listener,
            established: Arc::new(AtomicUsize::new(0)),
            next_id: AtomicU64::new(0),
            handshaking: Mutex::new(BTreeMap::new()),
            failures: ThrottledLog::default(),
        });
        gate.set_gauges(0);
        gate
    }

    pub(super) fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, oneshot::Sender<()>>> {
        self.handshaking.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_gauges(&self, handshaking: usize) {
        let open = self.established.load(Ordering::Acquire) + handshaking;
        metrics::gauge!("cpis_connections_open", "listener" => self.listener).set(open as f64);
        metrics::gauge!("cpis_tls_handshakes_in_progress", "listener" => self.listener).set(handshaking as f64);
    }

    /// A handshake ticket for a new connection, or `None` when the listener
    /// is at `max_connections` (the caller closes it at once). When
    /// `max_handshakes` are in progress the oldest is displaced instead.
    pub(super) fn admit(self: &Arc<Self>) -> Option<HandshakeTicket> {
        let (max_connections, max_handshakes) = (self.limits.max_connections, self.limits.max_handshakes.max(1));
        let mut handshaking = self.lock();
        let handshakes_full = handshaking.len() >= max_handshakes;
        let open = self.established.load(Ordering::Acquire) + handshaking.len();
        if open >= max_connections && !handshakes_full {
            drop(handshaking);
            metrics::counter!("cpis_connections_refused_total", "listener" => self.listener).increment(1);
            self.failures.note(|suppressed| {
                tracing::warn!(max_connections, suppressed, "at the connection limit: new connections are closed")
            });
            return None;
        }
        if handshakes_full && let Some((_, oldest)) = handshaking.pop_first() {
            let _ = oldest.send(());
        }
        let (displace, displaced) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        handshaking.insert(id, displace);
        self.set_gauges(handshaking.len());
        drop(handshaking);
        Some(HandshakeTicket { gate: Arc::clone(self), id, displaced })
    }

    /// Counts a failed handshake and logs it, rate-limited.
    pub(super) fn handshake_failed(&self, remote_addr: std::net::SocketAddr, reason: &'static str, error: &str) {
        metrics::counter!("cpis_tls_handshake_failures_total", "reason" => reason).increment(1);
        self.failures.note(|suppressed| {
            tracing::info!(%remote_addr, reason, error, suppressed, "TLS handshake failed");
        });
    }
}

/// At most one line per [`LOG_INTERVAL`]; the next one says how many were not logged.
#[derive(Default)]
struct ThrottledLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl ThrottledLog {
    fn note(&self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        let suppressed = {
            let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let (last, suppressed) = &mut *state;
            if last.is_some_and(|last| now.duration_since(last) < LOG_INTERVAL) {
                *suppressed += 1;
                return;
            }
            *last = Some(now);
            std::mem::take(suppressed)
        };
        log(suppressed);
    }
}

#[cfg(test)]
mod tests {
    use super::ThrottledLog;

    #[test]
    fn one_line_per_interval_and_the_rest_are_counted() {
        let log = ThrottledLog::default();
        let mut lines = Vec::new();
        for _ in 0..5 {
            log.note(|suppressed| lines.push(suppressed));
        }
        assert_eq!(lines, [0], "the first is logged, the next four within the interval are not");
        // The next line, once the interval has passed, says how many were not logged.
        log.state.lock().unwrap().0 = Some(std::time::Instant::now() - super::LOG_INTERVAL);
        log.note(|suppressed| lines.push(suppressed));
        assert_eq!(lines, [0, 4]);
    }
}
