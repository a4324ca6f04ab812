//! Logs and metrics. `tracing` to stderr as text or JSON with the filter
//! from `CPIS_LOG`; the `metrics` recorder is Prometheus, rendered at
//! `/metrics` on the admin port. Personal data never goes into a metric
//! label, and only into `debug` or `trace` logs. With traces on (see
//! [`crate::traces`]) the same subscriber also feeds the trace exporter, and
//! JSON lines carry the active trace's ids.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{EnvFilter, filter::Targets, fmt, prelude::*};

use crate::traces::{self, TraceConfig, Traces};

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Latency buckets from 100 us to 5 s.
pub(crate) const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Lines the log writer may hold before a logging thread waits for it.
const LOG_BUFFER_LINES: usize = 64 * 1024;

/// Installs the global tracing subscriber. `CPIS_LOG` filters, else
/// `default_filter`. Lines are formatted on the calling thread but written
/// by a background thread through a buffer, so a slow terminal or journald
/// never holds a request; nothing is dropped (a full buffer makes the caller
/// wait). Keep the returned guard until exit: dropping it flushes the buffer.
pub(crate) fn init_logging(format: LogFormat, default_filter: &str) -> WorkerGuard {
    let filter = EnvFilter::try_from_env("CPIS_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (writer, guard) =
        NonBlockingBuilder::default().lossy(false).buffered_lines_limit(LOG_BUFFER_LINES).finish(std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let _already_set = match format {
        LogFormat::Text => {
            // Colour only on a terminal: log files and journald get plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            registry.with(fmt::layer().with_ansi(ansi).fmt_fields(EscapedFields).with_writer(writer)).try_init()
        }
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true).with_writer(writer))
            .try_init(),
    };
    guard
}

/// What [`init_logging_with_traces`] keeps running: keep it until exit.
/// Dropping it exports the spans still buffered, then flushes the log.
pub struct LogGuard {
    // Dropped first: the exporter may still log while it stops.
    traces: Option<Traces>,
    _writer: WorkerGuard,
}

impl LogGuard {
    /// The trace exporter, when traces are on.
    pub fn traces(&self) -> Option<&Traces> {
        self.traces.as_ref()
    }
}

/// [`init_logging`], and with `traces` the trace exporter too, fed by the
/// spans of [`traces::TARGET`] through its own filter: the log filter
/// (`CPIS_LOG`) neither hides them from the exporter nor shows them in logs.
/// Without `traces` this is exactly [`init_logging`]: nothing of the
/// tracing layer is built, and the log path costs what it did.
pub fn init_logging_with_traces(
    format: LogFormat,
    default_filter: &str,
    traces: Option<&TraceConfig>,
    service: &'static str,
) -> Result<LogGuard, String> {
    let Some(config) = traces else {
        return Ok(LogGuard { traces: None, _writer: init_logging(format, default_filter) });
    };
    let (traces, tracer) = traces::start(config, service)?;
    let filter = EnvFilter::try_from_env("CPIS_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (writer, guard) =
        NonBlockingBuilder::default().lossy(false).buffered_lines_limit(LOG_BUFFER_LINES).finish(std::io::stderr());
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        .with_level(false)
        .with_filter(Targets::new().with_target(traces::TARGET, tracing::Level::TRACE));
    let registry = tracing_subscriber::registry().with(spans);
    let _already_set = match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let logs = fmt::layer().with_ansi(ansi).fmt_fields(EscapedFields).with_writer(writer);
            registry.with(logs.with_filter(filter)).try_init()
        }
        LogFormat::Json => {
            let json = fmt::format().json().flatten_event(true).with_current_span(true);
            let logs = fmt::layer()
                .fmt_fields(fmt::format::JsonFields::new())
                .event_format(traces::logs::TraceIdsJson(json))
                .with_writer(writer);
            registry.with(logs.with_filter(filter)).try_init()
        }
    };
    Ok(LogGuard { traces: Some(traces), _writer: guard })
}

/// Text-log fields with every control character in a value escaped (see
/// [`crate::text::escape_control`]): a newline in a client's free text (a
/// file id, an error's message) cannot start a forged log line, and an
/// escape sequence cannot drive the terminal. tracing-subscriber 0.3.23
/// escapes ESC, BEL and C1 in messages but leaves newlines and carriage
/// returns raw, and `%` fields raw altogether. Field names are written
/// plainly (no italics), so an event's fields are always one line.
/// The JSON format escapes on its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct EscapedFields;

impl<'writer> fmt::FormatFields<'writer> for EscapedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = EscapingVisitor { writer: &mut writer, result: Ok(()), first: true };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'a, 'writer> {
    writer: &'a mut fmt::format::Writer<'writer>,
    result: std::fmt::Result,
    first: bool,
}

impl tracing::field::Visit for EscapingVisitor<'_, '_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let value = format!("{value:?}");
        let value = crate::text::escape_control(&value);
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = match field.name() {
            "message" => write!(self.writer, "{separator}{value}"),
            name => write!(self.writer, "{separator}{}={value}", name.strip_prefix("r#").unwrap_or(name)),
        };
    }
}

/// The process's Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        #[allow(
            clippy::expect_used,
            reason = "a constant, non-empty bucket list: fails only if the constant is emptied"
        )]
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), &LATENCY_BUCKETS)
            .expect("latency buckets are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only this one's");
        }
        describe_metrics();
        register_known_label_sets();
        handle
    })
}

/// Why a caller is refused, as `cpis_auth_denied_total{reason}` counts it.
pub const AUTH_DENIED_REASONS: [&str; 6] =
    ["tls_handshake", "tls_timeout", "no_identity", "wrong_role", "other_local_authority", "bearer_token"];

/// Every contract metric whose label values are known in advance, at zero,
/// so that alerts and `rate()` see them from start-up, before the first
/// event. Per-authority gauges are set as the relay learns its authorities.
fn register_known_label_sets() {
    for outcome in ["flagged", "unflagged", "invalid", "denied", "error"] {
        metrics::counter!("cpis_searches_total", "outcome" => outcome).absolute(0);
    }
    for status in ["all_loaded", "partial", "none_loaded"] {
        metrics::counter!("cpis_uploads_total", "status" => status).absolute(0);
    }
    for reason in AUTH_DENIED_REASONS {
        metrics::counter!("cpis_auth_denied_total", "reason" => reason).absolute(0);
    }
    for reason in crate::tls::HANDSHAKE_FAILURE_REASONS {
        metrics::counter!("cpis_tls_handshake_failures_total", "reason" => reason).absolute(0);
    }
    for listener in ["grpc", "fhir"] {
        metrics::counter!("cpis_connections_refused_total", "listener" => listener).absolute(0);
    }
    for reason in crate::tls::PEER_ENDED_REASONS {
        metrics::counter!("cpis_tls_peers_ended_total", "reason" => reason).absolute(0);
    }
    for outcome in crate::tls::RELOAD_OUTCOMES {
        metrics::counter!("cpis_tls_reloads_total", "outcome" => outcome).absolute(0);
    }
    metrics::counter!("cpis_notifications_emitted_total").absolute(0);
    metrics::counter!("cpis_notifications_delivered_total").absolute(0);
    metrics::gauge!("cpis_notifications_held").set(0.0);
    metrics::gauge!("cpis_notifications_quarantined").set(0.0);
    metrics::gauge!("cpis_access_log_forked").set(0.0);
    metrics::gauge!("cpis_search_retries_waiting").set(0.0);
    metrics::gauge!("cpis_index_lag_seconds").set(0.0);
    metrics::gauge!("cpis_clock_offset_seconds").set(0.0);
    metrics::counter!("cpis_notifications_refused_total").absolute(0);
    metrics::counter!("cpis_spill_failures_total").absolute(0);
    metrics::gauge!("cpis_store_broken").set(0.0);
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    metrics::gauge!("cpis_start_time_seconds").set(started.as_secs_f64());
    metrics::counter!("cpis_fhir_trace_id_reused_total").absolute(0);
    // Histograms appear once registered, with every bucket at zero.
    let _ = metrics::histogram!("cpis_search_duration_seconds");
    let _ = metrics::histogram!("cpis_store_sync_duration_seconds");
}

/// Help text for every metric the relay records.
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("cpis_searches_total", "Searches by outcome: flagged, unflagged, invalid, denied, error.");
    describe_histogram!(
        "cpis_search_duration_seconds",
        Unit::Seconds,
        "Time to answer a search, including the notification's commit."
    );
    describe_counter!("cpis_notifications_emitted_total", "Access notifications committed to the store.");
    describe_counter!(
        "cpis_notifications_delivered_total",
        "Access notifications sent on subscription streams (redeliveries included)."
    );
    describe_gauge!(
        "cpis_notification_backlog",
        "Notifications of a local authority not yet acknowledged (by sequence)."
    );
    describe_gauge!(
        "cpis_notification_oldest_unacked_seconds",
        Unit::Seconds,
        "Age of a local authority's oldest unacknowledged notification."
    );
    describe_gauge!("cpis_subscribers", "Open notification subscriptions of a local authority.");
    describe_gauge!(
        "cpis_search_retries_waiting",
        "Copies of a search request waiting for the first copy's commit before they are answered."
    );
    describe_gauge!(
        "cpis_notifications_held",
        "Searches whose notifications are held (in the spill file) because the store is failing."
    );
    describe_counter!(
        "cpis_notifications_refused_total",
        "Notifications refused because max_held_notifications searches were already held."
    );
    describe_counter!("cpis_spill_failures_total", "Held searches that could not be written to the spill file.");
    describe_gauge!(
        "cpis_notifications_quarantined",
        "Searches set aside in the quarantine: the store refused their record every time it was tried alone. Their local authorities are not notified until an operator replays or exports them."
    );
    describe_gauge!(
        "cpis_access_log_forked",
        "1 once the access log's tree no longer extends the last checkpoint this key signed: the keeper signs nothing more and the relay is not ready."
    );
    describe_gauge!("cpis_plans", "Plans held, by type.");
    describe_counter!("cpis_uploads_total", "Uploads by status: all_loaded, partial, none_loaded.");
    describe_histogram!(
        "cpis_store_sync_duration_seconds",
        Unit::Seconds,
        "Time of one durable store transaction (group commit)."
    );
    describe_counter!("cpis_store_commits_total", "Durable store transactions committed.");
    describe_counter!("cpis_store_changes_total", "Changes carried by committed store transactions.");
    describe_counter!("cpis_store_sync_failures_total", "Store transactions that failed.");
    describe_counter!("cpis_store_failures_total", "Operations that could not be stored, by operation.");
    describe_counter!(
        "cpis_store_refusals_total",
        "Writes the store refused for the record's sake (it is working), by operation."
    );
    describe_gauge!(
        "cpis_store_broken",
        "1 once the embedded store's journal could not be written or synced: the relay is stopping (exit status 74) to replay it."
    );
    describe_gauge!(
        "cpis_start_time_seconds",
        Unit::Seconds,
        "When this relay process started (Unix time): changes() of it counts restarts."
    );
    describe_counter!("cpis_auth_denied_total", "Refused callers by reason.");
    describe_counter!(
        "cpis_tls_handshake_failures_total",
        "Failed TLS handshakes by reason: certificate, protocol, io, timeout, displaced (at max_handshakes)."
    );
    describe_counter!(
        "cpis_connections_refused_total",
        "Connections closed at once because the listener was at max_connections."
    );
    describe_gauge!("cpis_connections_open", "Connections open (handshaking or established) by listener.");
    describe_gauge!("cpis_tls_handshakes_in_progress", "TLS handshakes in progress by listener.");
    describe_counter!(
        "cpis_tls_reloads_total",
        "Reloads of the TLS certificate, key, CA and CRLs by outcome: success, failure (the old configuration stays)."
    );
    describe_counter!(
        "cpis_rate_limited_total",
        "Searches refused because the organisation was over its search rate limit, by organisation (ODS code)."
    );
    describe_counter!("cpis_rpc_total", "gRPC calls by RPC and status code.");
    describe_histogram!("cpis_rpc_duration_seconds", Unit::Seconds, "gRPC handler time by RPC.");
    describe_counter!("cpis_retention_removed_total", "Records removed by retention, by kind.");
    describe_counter!(
        "cpis_audit_reads_total",
        "Auditors' reads of a person's access trail, by the auditor's organisation (each is logged)."
    );
    describe_counter!(
        "cpis_unusual_access_total",
        "Users who searched more distinct people within a clock hour than unusual_access_distinct_people_per_hour, by organisation."
    );
    describe_gauge!("cpis_startup_rebuild_seconds", Unit::Seconds, "Time to rebuild memory from the store at start.");
    describe_gauge!(
        "cpis_index_lag_seconds",
        Unit::Seconds,
        "How far behind the other nodes' commits this node's index may be: time since its last complete read of the shared store (0 with a store this node alone writes)."
    );
    describe_gauge!(
        "cpis_clock_offset_seconds",
        Unit::Seconds,
        "How far this node's wall clock is ahead of the shared store's (negative: behind), measured at each poll of the store; the times it stamps on accesses and plans are off by as much. 0 with a store this node alone writes."
    );
    describe_counter!(
        "cpis_tls_peers_ended_total",
        "Connections closed because the peer's client certificate was revoked (a reloaded CRL) or expired, by reason."
    );
    describe_counter!(
        "cpis_fhir_trace_id_reused_total",
        "FHIR searches whose TraceID a recent search by another user, of another person or resource already used."
    );
}

/// A log writer into a shared buffer, for tests of log lines.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct TestBuffer(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for TestBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::{fmt, prelude::*};

    use super::{EscapedFields, TestBuffer as Buffer};

    #[test]
    fn text_logs_escape_control_characters_so_no_line_can_be_forged() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry()
            .with(fmt::layer().with_ansi(false).fmt_fields(EscapedFields).with_writer(move || writer.clone()));
        let forged = "upload.csv\n2026-01-01T00:00:00Z ERROR cpis_relay: forged\x1b]0;evil\x07";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("upload", file = %forged);
            let _entered = span.enter();
            tracing::info!(file_id = %forged, debug = ?forged, "upload of {forged} done");
        });
        let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(logs.lines().count(), 1, "one event, one line: {logs}");
        assert!(!logs.contains('\x1b') && !logs.contains('\x07'), "{logs}");
        assert!(logs.contains("file_id=upload.csv\\n2026"), "{logs}");
        assert!(logs.contains("upload of upload.csv\\n2026"), "{logs}");
        assert!(logs.contains(" INFO upload{file=upload.csv\\n2026"), "{logs}");
    }
}
