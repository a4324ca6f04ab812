//! Wires the relay to the network: the gRPC services over mutual TLS on a
//! bound listener, gRPC health and reflection, the admin HTTP endpoints
//! (`/healthz`, `/readyz`, `/metrics`), and, when given, the FHIR door and
//! the browser view over the same mutual TLS. [`run`] takes listeners, never
//! addresses, and a shutdown future, so tests run it on `127.0.0.1:0`.
//!
//! Shutdown: readiness and health flip to NOT_SERVING first, subscription
//! streams end so local authorities reconnect elsewhere, in-flight calls
//! finish, and after the grace period the server stops regardless.

use std::{future::Future, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::{net::TcpListener, sync::watch};
use tonic::server::NamedService;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    proto::{audit_server::AuditServer, notifications_server::NotificationsServer, plans_server::PlansServer},
    relay::{Relay, StoreHealth},
    service::{AuditService, LookupService, NotificationsService, PlansService},
    telemetry, tls,
};

/// Network settings of the gRPC server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The server's TLS configuration, replaceable while serving (see [`tls::ServerTls`]).
    pub tls: tls::ServerTls,
    pub handshake_timeout: Duration,
    /// Connections open at once per listener (handshaking or established);
    /// more are closed at once.
    pub max_connections: usize,
    /// TLS handshakes in progress at once per listener, a share of
    /// `max_connections`; a new connection displaces the oldest beyond it.
    pub max_handshakes: usize,
    /// A gRPC connection with no call in progress for this long is closed
    /// (one that never speaks HTTP/2 included).
    pub idle_timeout: Duration,
    /// How long in-flight calls may take to finish after shutdown begins.
    pub grace_period: Duration,
    /// Searches in progress across all connections; more are shed.
    pub max_concurrent_searches: usize,
    pub concurrency_per_connection: usize,
    pub max_concurrent_streams: u32,
    /// Deadline of every call but an upload (a unary call, or the start of a server stream).
    pub request_timeout: Duration,
    /// Deadline of an upload, which streams for as long as its file takes.
    pub upload_timeout: Duration,
    /// Uploads in progress across all connections; more are refused.
    pub max_concurrent_uploads: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub max_connection_age: Duration,
    /// Largest accepted message; upload records are sent one per message.
    pub max_message_bytes: usize,
}

impl ServerOptions {
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Self {
        Self {
            tls: tls::ServerTls::fixed(tls),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_handshakes: 256,
            idle_timeout: Duration::from_secs(300),
            grace_period: Duration::from_secs(20),
            max_concurrent_searches: 2048,
            concurrency_per_connection: 256,
            max_concurrent_streams: 512,
            request_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(600),
            max_concurrent_uploads: 4,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(30 * 60),
            max_message_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("admin server: {0}")]
    Admin(#[from] std::io::Error),
}

/// HTTP/2 receive window per stream (the default is 64 KiB, which makes a
/// large upload wait on window updates).
const UPLOAD_STREAM_WINDOW: u32 = 1024 * 1024;

const SERVICE_NAMES: [&str; 4] = [
    <LookupService as NamedService>::NAME,
    <PlansServer<PlansService> as NamedService>::NAME,
    <NotificationsServer<NotificationsService> as NamedService>::NAME,
    <AuditServer<AuditService> as NamedService>::NAME,
];

/// How long shutdown waits for the relay's own tasks when the grace period is spent.
const TASKS_GRACE: Duration = Duration::from_secs(10);

/// The HTTPS doors besides gRPC, each served only when given.
#[derive(Default)]
pub struct Doors {
    pub fhir: Option<crate::fhir::FhirDoor>,
    pub web: Option<crate::web::WebDoor>,
}

impl From<Option<crate::fhir::FhirDoor>> for Doors {
    fn from(fhir: Option<crate::fhir::FhirDoor>) -> Self {
        Self { fhir, web: None }
    }
}

/// Serves until `shutdown` resolves, then drains within the grace period.
/// The FHIR door and the browser view are served only when `doors` holds them.
pub async fn run(
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    doors: impl Into<Doors>,
    relay: Relay,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    // Install the recorder before anything records.
    let _ = telemetry::metrics();
    let Doors { fhir, web } = doors.into();
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let draining = watch::Sender::new(false);
    let ready = watch::Sender::new(true);
    let admin_stop = watch::Sender::new(false);
    relay.spawn_task(follow_store_health(relay.clone(), reporter.clone(), draining.subscribe(), ready.clone()));
    relay.spawn_gauges(Duration::from_secs(5));

    let metrics_url = admin_listener
        .as_ref()
        .and_then(|admin| admin.local_addr().ok())
        .map(|address| format!("http://{address}/metrics"));
    if let Some(admin_listener) = admin_listener {
        let admin = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(|| async { telemetry::metrics().render() }))
            .with_state(ready.subscribe());
        // The admin port outlives draining so that /readyz can say "not ready" until the end.
        let mut stop_admin = admin_stop.subscribe();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop_admin.wait_for(|stopped| *stopped).await;
            };
            if let Err(error) = axum::serve(admin_listener, admin).with_graceful_shutdown(stopped).await {
                tracing::error!(%error, "admin server failed");
            }
        });
    }

    // One edge for every door: their searches count against one limit, and they drain together.
    let edge = crate::edge::Edge::new(
        crate::edge::EdgeLimits {
            max_concurrent_searches: options.max_concurrent_searches,
            max_concurrent_uploads: options.max_concurrent_uploads,
        },
        draining.subscribe(),
    );
    let rpc_layer = crate::rpc::RpcLayer::new(
        crate::rpc::RpcLimits { request_timeout: options.request_timeout, upload_timeout: options.upload_timeout },
        edge.clone(),
    );
    let connection_limits = tls::ConnectionLimits {
        max_connections: options.max_connections,
        max_handshakes: options.max_handshakes,
        idle_timeout: Some(options.idle_timeout),
    };
    let fhir_stop = watch::Sender::new(false);
    let fhir_server = fhir.map(|door| {
        let router = crate::fhir::routes::router(relay.clone(), door.tokens, edge.clone());
        tokio::spawn(crate::tls::https::serve(
            "fhir",
            door.listener,
            options.tls.clone(),
            options.handshake_timeout,
            // HTTP/1.1 has its own header read timeout; calls are not counted there.
            tls::ConnectionLimits { idle_timeout: None, ..connection_limits },
            options.grace_period,
            router,
            fhir_stop.subscribe(),
        ))
    });

    let web_server = web.map(|door| {
        let settings =
            crate::web::WebSettings { tokens: door.tokens, edge: edge.clone(), ready: ready.subscribe(), metrics_url };
        tokio::spawn(crate::tls::https::serve(
            "web",
            door.listener,
            options.tls.clone(),
            options.handshake_timeout,
            tls::ConnectionLimits { idle_timeout: None, ..connection_limits },
            options.grace_period,
            crate::web::router(relay.clone(), settings),
            fhir_stop.subscribe(),
        ))
    });

    // Both reflection versions: grpcurl and Python's grpcio-reflection (and many
    // GUI clients) still speak only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder().build_v1()?;
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;
    let limit = options.max_message_bytes;
    let local_addr = listener.local_addr()?;
    let incoming =
        tls::incoming(listener, options.tls.clone(), tls::Alpn::H2, options.handshake_timeout, connection_limits);
    let (stop_serving, serving_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut in_flight = rpc_layer.in_flight();
    let serve = tonic::transport::Server::builder()
        .layer(rpc_layer)
        .concurrency_limit_per_connection(options.concurrency_per_connection)
        .max_concurrent_streams(options.max_concurrent_streams)
        .load_shed(true)
        .http2_keepalive_interval(Some(options.keepalive_interval))
        .http2_keepalive_timeout(Some(options.keepalive_timeout))
        .max_connection_age(options.max_connection_age)
        // Room for an upload stream to run ahead of the server's window updates.
        .initial_stream_window_size(Some(UPLOAD_STREAM_WINDOW))
        .initial_connection_window_size(Some(4 * UPLOAD_STREAM_WINDOW))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(LookupService::new(relay.clone()).max_decoding_message_size(limit))
        .add_service(PlansServer::new(PlansService::new(relay.clone())).max_decoding_message_size(limit))
        .add_service(
            NotificationsServer::new(NotificationsService::new(relay.clone())).max_decoding_message_size(limit),
        )
        .add_service(AuditServer::new(AuditService::new(relay.clone())).max_decoding_message_size(limit))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = serving_stopped.await;
        });
    tracing::info!(%local_addr, "serving cpis.v1 over mutual TLS");
    let mut serve = std::pin::pin!(serve);
    tokio::select! {
        result = &mut serve => return result.map_err(ServerError::from),
        () = shutdown => {}
    }
    // The FHIR door and the browser view stop accepting and drain alongside gRPC.
    fhir_stop.send_replace(true);

    tracing::info!(grace_period_s = options.grace_period.as_secs(), "shutting down: no longer ready, draining");
    draining.send_replace(true);
    ready.send_replace(false);
    for name in SERVICE_NAMES.into_iter().chain([""]) {
        reporter.set_service_status(name, ServingStatus::NotServing).await;
    }
    relay.begin_draining();
    // New calls are now refused with UNAVAILABLE; let those in flight finish
    // before the transport says goodbye to connections. The server future is
    // polled meanwhile, as it drives the connections.
    let deadline = tokio::time::Instant::now() + options.grace_period;
    tokio::select! {
        result = &mut serve => {
            store_held_before(&relay, deadline).await;
            finish(&relay, deadline).await;
            admin_stop.send_replace(true);
            return result.map_err(ServerError::from);
        }
        finished = tokio::time::timeout_at(deadline, async { in_flight.wait_for(|count| *count == 0).await.is_ok() }) => {
            if finished.is_err() {
                tracing::warn!(in_flight = *in_flight.borrow(), "calls still in flight at the end of the grace period");
            }
        }
    }
    let _ = stop_serving.send(());
    let result = match tokio::time::timeout_at(deadline, serve).await {
        Ok(result) => {
            tracing::info!("drained; stopped");
            result.map_err(ServerError::from)
        }
        Err(_) => {
            tracing::warn!(
                grace_period_s = options.grace_period.as_secs(),
                "grace period expired with calls still open; stopping anyway"
            );
            Ok(())
        }
    };
    for door in [fhir_server, web_server].into_iter().flatten() {
        let _ = tokio::time::timeout_at(deadline, door).await;
    }
    store_held_before(&relay, deadline).await;
    finish(&relay, deadline).await;
    admin_stop.send_replace(true);
    result
}

/// Lets the relay's background tasks end (the access log keeper signs its
/// last checkpoint) and closes the spill, so that the store and the data
/// directory are free for whatever runs next, in this process too.
async fn finish(relay: &Relay, deadline: tokio::time::Instant) {
    // A last checkpoint is owed even when the grace period is spent.
    relay.finish_tasks(deadline.max(tokio::time::Instant::now() + TASKS_GRACE)).await;
    relay.close_spill().await;
}

/// The rest of the grace period goes to notifications the store has not
/// taken yet: retried until they are stored or the period ends (then they
/// stay in the spill file for the next start).
async fn store_held_before(relay: &Relay, deadline: tokio::time::Instant) {
    let held = relay.hub().held();
    if held == 0 {
        return;
    }
    tracing::warn!(held, "retrying held access notifications for the rest of the grace period");
    let left = relay.store_held_until(deadline).await;
    if left == 0 {
        tracing::info!(stored = held, "held access notifications stored before stopping");
    }
}

/// Health and readiness follow the store: NOT_SERVING from a failed write
/// (of any kind) until a write succeeds and no notification is held.
async fn follow_store_health(
    relay: Relay,
    reporter: HealthReporter,
    mut draining: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
) {
    let mut store_health = relay.store_health();
    loop {
        let healthy = *store_health.borrow_and_update() == StoreHealth::Ok;
        if *draining.borrow() {
            return;
        }
        let status = if healthy { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in SERVICE_NAMES.into_iter().chain([""]) {
            reporter.set_service_status(name, status).await;
        }
        ready.send_replace(healthy);
        tokio::select! {
            changed = store_health.changed() => if changed.is_err() { return },
            _ = draining.wait_for(|draining| *draining) => return,
        }
    }
}

async fn readyz(State(ready): State<watch::Receiver<bool>>) -> impl IntoResponse {
    if *ready.borrow() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}
