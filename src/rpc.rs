//! The edge every gRPC call passes through: the access log line of each RPC
//! (the caller's ODS code, role, RPC, outcome and latency), the RPC metrics,
//! the [`Edge`]'s checks (refusal with UNAVAILABLE once the relay is draining,
//! load shedding of searches and uploads beyond their global limits with an
//! immediate RESOURCE_EXHAUSTED instead of a queue), and each call's deadline: an upload
//! streams for as long as its file takes and has its own, every other call
//! the unary one (a client's shorter `grpc-timeout` still wins, in tonic).
//! A message over the size limit is RESOURCE_EXHAUSTED here, not tonic's
//! OUT_OF_RANGE.
//!
//! The access log must not cost the clinician: a call that succeeds quickly
//! is logged at `debug` (turn it on with `CPIS_LOG=info,cpis_relay::rpc=debug`),
//! a failed or slow call at `info`. The durable audit trail is the store's,
//! not the log's. The span around a call is at `debug` too, so at the default
//! filter it is never built. Metric handles are resolved once, not per call.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use tokio::sync::watch;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::{
    edge::{Door, Edge, SLOW_CALL},
    tls::PeerInfo,
};

const SEARCH_PATH: &str = "/cpis.v1.Lookup/Search";
const UPLOAD_PATH: &str = "/cpis.v1.Plans/Upload";

/// The deadlines of gRPC calls (the global limits are the [`Edge`]'s).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RpcLimits {
    /// Deadline of every call but an upload.
    pub request_timeout: std::time::Duration,
    pub upload_timeout: std::time::Duration,
}

#[derive(Clone)]
pub(crate) struct RpcLayer {
    edge: Edge,
    limits: RpcLimits,
    in_flight: Arc<watch::Sender<usize>>,
}

impl RpcLayer {
    pub(crate) fn new(limits: RpcLimits, edge: Edge) -> Self {
        Self { edge, limits, in_flight: Arc::new(watch::Sender::new(0)) }
    }

    /// Calls being handled (a server stream counts until its handler has
    /// returned the stream); shutdown waits for this to reach zero.
    pub(crate) fn in_flight(&self) -> watch::Receiver<usize> {
        self.in_flight.subscribe()
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService { inner, edge: self.edge.clone(), limits: self.limits, in_flight: Arc::clone(&self.in_flight) }
    }
}

#[derive(Clone)]
pub(crate) struct RpcService<S> {
    inner: S,
    edge: Edge,
    limits: RpcLimits,
    in_flight: Arc<watch::Sender<usize>>,
}

/// Counts a call as in flight until dropped.
struct InFlight(Arc<watch::Sender<usize>>);

/// Only reaching zero wakes the watcher (the drain waits for it); the count
/// itself is always current, so a call does not pay for a wake-up.
impl InFlight {
    fn new(counter: &Arc<watch::Sender<usize>>) -> Self {
        counter.send_if_modified(|count| {
            *count += 1;
            false
        });
        Self(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_if_modified(|count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// A response body that holds its connection's call open until it ends.
struct CallBody {
    inner: tonic::body::Body,
    _call: crate::tls::CallGuard,
}

impl CallBody {
    fn wrap(inner: tonic::body::Body, call: crate::tls::CallGuard) -> tonic::body::Body {
        tonic::body::Body::new(Self { inner, _call: call })
    }
}

impl hyper::body::Body for CallBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// gRPC paths and their `Service.Method` label; unknown paths are grouped as "other".
const KNOWN: [(&str, &str); 13] = [
    ("/cpis.v1.Lookup/Search", "Lookup.Search"),
    ("/cpis.v1.Plans/Upload", "Plans.Upload"),
    ("/cpis.v1.Plans/Delete", "Plans.Delete"),
    ("/cpis.v1.Plans/Export", "Plans.Export"),
    ("/cpis.v1.Notifications/Subscribe", "Notifications.Subscribe"),
    ("/cpis.v1.Notifications/Ack", "Notifications.Ack"),
    ("/cpis.v1.Audit/AccessLog", "Audit.AccessLog"),
    ("/cpis.v1.Audit/LatestCheckpoint", "Audit.LatestCheckpoint"),
    ("/cpis.v1.Audit/InclusionProof", "Audit.InclusionProof"),
    ("/cpis.v1.Audit/ConsistencyProof", "Audit.ConsistencyProof"),
    ("/cpis.v1.Audit/SubjectAccess", "Audit.SubjectAccess"),
    ("/grpc.health.v1.Health/Check", "Health.Check"),
    ("/grpc.health.v1.Health/Watch", "Health.Watch"),
];
const OTHER: usize = KNOWN.len();

/// The label index of a gRPC path: a position in `KNOWN`, or `OTHER`.
fn rpc_index(path: &str) -> usize {
    KNOWN.iter().position(|(known, _)| *known == path).unwrap_or(OTHER)
}

fn rpc_label(index: usize) -> &'static str {
    KNOWN.get(index).map_or("other", |(_, name)| name)
}

const CODES: [tonic::Code; 17] = {
    use tonic::Code::*;
    [
        Ok,
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    ]
};

/// `cpis_rpc_total{rpc,code}` and `cpis_rpc_duration_seconds{rpc}` for every
/// known RPC and code, registered once (so they are also exposed at zero).
struct RpcMetrics {
    calls: Vec<[metrics::Counter; 17]>,
    durations: Vec<metrics::Histogram>,
}

fn rpc_metrics() -> &'static RpcMetrics {
    static METRICS: std::sync::OnceLock<RpcMetrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| {
        let _recorder = crate::telemetry::metrics();
        let calls = (0..=OTHER)
            .map(|rpc| {
                CODES
                    .map(|code| metrics::counter!("cpis_rpc_total", "rpc" => rpc_label(rpc), "code" => code_name(code)))
            })
            .collect();
        let durations =
            (0..=OTHER).map(|rpc| metrics::histogram!("cpis_rpc_duration_seconds", "rpc" => rpc_label(rpc))).collect();
        RpcMetrics { calls, durations }
    })
}

fn count_call(rpc: usize, code: tonic::Code) {
    rpc_metrics().calls[rpc][code as usize].increment(1);
}

/// The code's name as gRPC spells it in Rust, without allocating per call.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

fn refuse(rpc: usize, status: tonic::Status) -> http::Response<tonic::body::Body> {
    count_call(rpc, status.code());
    status.into_http()
}

/// One line per call: at info when it failed or was slow, else at debug.
fn access_log(rpc: usize, identity: Option<&crate::auth::Identity>, code: tonic::Code, elapsed: std::time::Duration) {
    let notable = code != tonic::Code::Ok || elapsed >= SLOW_CALL;
    if !(notable && tracing::enabled!(tracing::Level::INFO) || tracing::enabled!(tracing::Level::DEBUG)) {
        return;
    }
    let (organisation, role) =
        identity.map_or(("", "none"), |identity| (identity.ods_code.as_str(), identity.role.as_str()));
    let (rpc, outcome, latency_ms) = (rpc_label(rpc), code_name(code), elapsed.as_secs_f64() * 1000.0);
    if notable {
        tracing::info!(rpc, organisation, role, outcome, latency_ms, "rpc");
    } else {
        tracing::debug!(rpc, organisation, role, outcome, latency_ms, "rpc");
    }
}

/// tonic answers a message over the size limit with OUT_OF_RANGE; the
/// contract says RESOURCE_EXHAUSTED, and the relay sends OUT_OF_RANGE for
/// nothing else. Only a trailers-only answer (an error) carries it here.
fn over_size_is_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    if headers.get("grpc-status").is_some_and(|status| status.as_bytes() == b"11") {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

impl<S, B> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = rpc_index(request.uri().path());
        if let Err(refusal) = self.edge.refuse_if_draining(Door::Grpc) {
            return Box::pin(std::future::ready(Ok(refuse(rpc, refusal.into()))));
        }
        let path = request.uri().path();
        let permit = match path {
            SEARCH_PATH => Some(self.edge.search_permit(Door::Grpc)),
            UPLOAD_PATH => Some(self.edge.upload_permit()),
            _ => None,
        };
        let permit = match permit.transpose() {
            Ok(permit) => permit,
            Err(refusal) => return Box::pin(std::future::ready(Ok(refuse(rpc, refusal.into())))),
        };
        let deadline = if path == UPLOAD_PATH { self.limits.upload_timeout } else { self.limits.request_timeout };
        let peer = request.extensions().get::<PeerInfo>();
        // The connection is not idle while this call runs, its response stream included.
        let call = peer.map(|peer| peer.activity.begin_call());
        let identity = match peer.map(|peer| &peer.identity) {
            Some(Ok(identity)) => Some(Arc::clone(identity)),
            _ => None,
        };
        // Disabled (and free) unless debug logging is on for this module.
        let span = tracing::debug_span!(
            "rpc",
            rpc = rpc_label(rpc),
            organisation = %identity.as_deref().map_or("", |identity| identity.ods_code.as_str()),
            role = identity.as_deref().map_or("none", |identity| identity.role.as_str()),
        );
        // A trace's root here (or the caller's `traceparent` continued); a disabled span when traces are off.
        let traced = crate::traces::door_span("grpc", rpc_label(rpc), request.headers());
        // The clone that was made ready is the one to call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let in_flight = InFlight::new(&self.in_flight);
        Box::pin(async move {
            let started = Instant::now();
            let handled = inner.call(request).instrument(span).instrument(traced.clone());
            let response = match tokio::time::timeout(deadline, handled).await {
                Ok(response) => response.map(over_size_is_resource_exhausted),
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the relay's deadline for this call ({} s) expired",
                    deadline.as_secs()
                ))
                .into_http()),
            };
            drop(permit);
            drop(in_flight);
            let elapsed = started.elapsed();
            // Errors are trailers-only responses with the status in the headers;
            // a call that streams or succeeds reports OK here.
            let code = match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Unknown,
            };
            traced.record("status", code_name(code));
            count_call(rpc, code);
            rpc_metrics().durations[rpc].record(elapsed.as_secs_f64());
            // Inside the call's trace span: a JSON line carries its trace and span ids.
            traced.in_scope(|| access_log(rpc, identity.as_deref(), code, elapsed));
            match call {
                Some(call) => response.map(|response| response.map(|body| CallBody::wrap(body, call))),
                None => response,
            }
        })
    }
}
