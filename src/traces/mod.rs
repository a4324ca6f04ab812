//! Distributed traces (OpenTelemetry), off unless an OTLP endpoint is
//! configured. Owns the trace settings' checks, the tracer provider (OTLP
//! over gRPC on the tonic already linked, TLS with the one ring provider),
//! and W3C `traceparent` in and out: taken from a door's request headers,
//! written on the webhook POST and the `deliver` agent's calls, and stored
//! with each notification so that its delivery continues the search's trace.
//!
//! Spans are `tracing` spans of the target [`TARGET`] at TRACE level: with
//! traces off no filter enables them, so each costs one check of a cached
//! level hint and nothing is built. With traces on, only that target goes to
//! the exporter (never a log event), and the log filter does not see it.
//!
//! What a span may hold: operation names, door, gRPC method or HTTP route
//! template (never a path or query a client typed), outcome, status codes,
//! the organisation's ODS code (an organisation, not a person), counts and
//! sequence numbers. Never an NHS number, a name, an address, a user id or a
//! request id. Callers add fields; this module's doc is the list they keep to.

mod export;
pub mod https_doors;
pub mod logs;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracer, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::error::ConfigError;

/// The `tracing` target of every span that is exported.
pub const TARGET: &str = "cpis_trace";

/// The W3C Trace Context header (and gRPC metadata key).
pub const TRACEPARENT: &str = "traceparent";

/// Share of new traces sampled when traces are on and no ratio is set.
pub(crate) const DEFAULT_SAMPLE_RATIO: f64 = 0.1;

/// Set once traces are on in this process: the doors skip header parsing otherwise.
static ON: AtomicBool = AtomicBool::new(false);

/// The sample ratio of new traces, as the bits of an `f64` (set with [`ON`]).
static RATIO: AtomicU64 = AtomicU64::new(0);

/// Whether this process exports traces.
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Whether the span entered on this thread (a door's, or a span under it)
/// is sampled: false at once when traces are off.
pub fn sampled() -> bool {
    on() && Context::map_current(|context| context.span().span_context().is_sampled())
}

/// A span of [`TARGET`] under the current one, built only when the current
/// trace is sampled (else a disabled span): a request that is not sampled
/// costs its door's span alone, not its whole tree. Takes what
/// `tracing::trace_span!` takes after the target.
#[macro_export]
macro_rules! traced_span {
    ($($span:tt)+) => {
        if $crate::traces::sampled() {
            ::tracing::trace_span!(target: $crate::traces::TARGET, $($span)+)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// Checked trace settings: where to export, and how much to sample.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// OTLP/gRPC endpoint, `http://host:4317` or `https://...` (verified against the system's roots).
    pub endpoint: String,
    /// Share of new traces (those without a sampled parent) recorded, 0 to 1.
    /// A request whose `traceparent` is sampled is always recorded, one that is not never (parent-based).
    pub sample_ratio: f64,
}

impl TraceConfig {
    /// `None` when no endpoint is set (traces off). Errors name the setting.
    pub fn resolve(
        endpoint: Option<&str>,
        sample_ratio: Option<f64>,
        endpoint_key: &str,
        ratio_key: &str,
    ) -> Result<Option<Self>, ConfigError> {
        let ratio = sample_ratio.unwrap_or(DEFAULT_SAMPLE_RATIO);
        if !(0.0..=1.0).contains(&ratio) {
            return Err(ConfigError { key: ratio_key.into(), reason: format!("{ratio} is not between 0 and 1") });
        }
        let Some(endpoint) = endpoint.map(str::trim).filter(|endpoint| !endpoint.is_empty()) else {
            return Ok(None);
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|error| ConfigError { key: endpoint_key.into(), reason: format!("{endpoint}: {error}") })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(ConfigError {
                key: endpoint_key.into(),
                reason: format!("{endpoint}: must be http://HOST:PORT or https://HOST:PORT (OTLP over gRPC)"),
            });
        }
        Ok(Some(Self { endpoint: endpoint.to_owned(), sample_ratio: ratio }))
    }
}

/// The running exporter. Dropping it exports what is buffered and stops it.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Exports every finished span now (tests, and before exit).
    pub fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "could not export traces");
        }
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        ON.store(false, Ordering::Relaxed);
        if let Err(error) = self.provider.shutdown() {
            // The log writer may already be gone at exit.
            eprintln!("cpis-relay: stopping the trace exporter: {error}");
        }
    }
}

/// Starts the exporter and its provider; the tracer is for the `tracing` layer.
pub fn start(config: &TraceConfig, service: &'static str) -> Result<(Traces, SdkTracer), String> {
    let exporter = export::OwnRuntimeExporter::new(&config.endpoint)?;
    // The ratio is applied where a trace starts (`starts`), before any span is built: a span
    // reaches the provider only when its trace is sampled, and the provider follows its parent.
    let sampler = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(resource)
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "cpis-relay");
    RATIO.store(config.sample_ratio.to_bits(), Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    Ok((Traces { provider }, tracer))
}

/// Reads `traceparent` from HTTP headers (gRPC metadata are HTTP/2 headers).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// A single stored `traceparent`, as an extractor.
struct OneHeader<'a>(&'a str);

impl Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// Whether a trace goes on from `parent` (a caller's or a stored context):
/// sampling is parent-based, so a valid parent decides; without one a new
/// trace starts at the configured ratio. Decided before any span is built, so
/// a request that is not sampled costs a header lookup and nothing more.
fn starts(parent: &Context) -> bool {
    let span_context = parent.span().span_context().clone();
    if span_context.is_valid() {
        return span_context.is_sampled();
    }
    let ratio = f64::from_bits(RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || rand::random::<f64>() < ratio
}

/// The span of one request at a door (`grpc`, `fhir`, `browser`), continuing
/// the caller's trace when it sent a valid `traceparent`. `operation` is a
/// gRPC method or a route template. A disabled span when traces are off or
/// the request's trace is not sampled (then nothing under it is built either).
pub fn door_span(door: &'static str, operation: &str, headers: &http::HeaderMap) -> tracing::Span {
    if !on() {
        return tracing::Span::none();
    }
    let parent = if headers.contains_key(TRACEPARENT) {
        TraceContextPropagator::new().extract(&HeaderExtractor(headers))
    } else {
        Context::new()
    };
    if !starts(&parent) {
        return tracing::Span::none();
    }
    let span = tracing::trace_span!(
        target: TARGET,
        "door",
        otel.name = %format_args!("{door} {operation}"),
        otel.kind = "server",
        door,
        operation = %operation,
        status = tracing::field::Empty,
    );
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

/// A span continuing a stored `traceparent` (a notification's), or a new
/// trace (at the ratio) when there is none. `name` is the span's operation name.
pub(crate) fn continued_span(name: &'static str, traceparent: Option<&str>) -> tracing::Span {
    if !on() {
        return tracing::Span::none();
    }
    let parent = match traceparent {
        Some(traceparent) => TraceContextPropagator::new().extract(&OneHeader(traceparent)),
        None => Context::new(),
    };
    if !starts(&parent) {
        return tracing::Span::none();
    }
    let span = tracing::trace_span!(target: TARGET, "continued", otel.name = name, sequence = tracing::field::Empty);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

/// The `traceparent` of the innermost span entered on this thread, when a
/// trace is active: what is stored with a notification and sent onwards.
pub(crate) fn current_traceparent() -> Option<String> {
    if !on() {
        return None;
    }
    let context = Context::current();
    let span_context = context.span().span_context().clone();
    span_context.is_sampled().then(|| {
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8())
    })
}

/// The trace and span ids of the innermost span entered on this thread, for log lines.
pub(crate) fn current_ids() -> Option<(String, String)> {
    let context = Context::current();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
}

/// Adds the current `traceparent` to outgoing headers (the webhook POST).
pub(crate) fn inject(headers: &mut http::HeaderMap) {
    if let Some(value) = current_traceparent().and_then(|value| http::HeaderValue::from_str(&value).ok()) {
        headers.insert(TRACEPARENT, value);
    }
}

/// A stored `traceparent` as read back: kept only if it has the W3C shape
/// (`00-` 32 hex `-` 16 hex `-` 2 hex), so a damaged record never reaches a header.
pub(crate) fn checked_traceparent(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |part: &str, len: usize| part.len() == len && part.bytes().all(|byte| byte.is_ascii_hexdigit());
    (parts.len() == 4 && hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2))
        .then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_name_their_key() {
        let resolve = |endpoint, ratio| TraceConfig::resolve(endpoint, ratio, "otlp_endpoint", "trace_sample_ratio");
        assert_eq!(resolve(None, None).unwrap(), None);
        assert_eq!(resolve(Some("  "), Some(0.5)).unwrap(), None);
        let on = resolve(Some("http://127.0.0.1:4317"), None).unwrap().unwrap();
        assert_eq!(on.sample_ratio, DEFAULT_SAMPLE_RATIO);
        assert_eq!(resolve(Some("http://127.0.0.1:4317"), Some(1.5)).unwrap_err().key, "trace_sample_ratio");
        assert_eq!(resolve(Some("ftp://collector"), None).unwrap_err().key, "otlp_endpoint");
        assert_eq!(resolve(Some("not a url"), None).unwrap_err().key, "otlp_endpoint");
    }

    #[test]
    fn a_parent_decides_and_without_one_the_ratio_does() {
        let parent = |flags: &str| {
            let text = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
            TraceContextPropagator::new().extract(&OneHeader(&text))
        };
        RATIO.store(0.0f64.to_bits(), Ordering::Relaxed);
        assert!(starts(&parent("01")), "a sampled parent is followed");
        assert!(!starts(&parent("00")), "and one that is not");
        assert!(!starts(&Context::new()), "ratio 0 starts no trace of its own");
        RATIO.store(1.0f64.to_bits(), Ordering::Relaxed);
        assert!(!starts(&parent("00")), "whatever the ratio");
        assert!(starts(&Context::new()));
    }

    #[test]
    fn only_w3c_shaped_traceparents_are_kept() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(checked_traceparent(good).as_deref(), Some(good));
        assert_eq!(checked_traceparent("00-4bf92f35-00f067aa0ba902b7-01"), None);
        assert_eq!(checked_traceparent("9990000018"), None);
    }
}
