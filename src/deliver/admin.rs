//! The agent's admin HTTP endpoints on `--admin-listen`:
//! - `GET /healthz`: 200 `ok` while the agent is subscribed to a relay and
//!   the notification in flight (if any) has waited less than
//!   `unhealthy_after_secs` for its sinks; otherwise 503 with the reason
//!   (no personal data). A receiver that is down for long, or a relay that
//!   cannot be reached, therefore shows as unhealthy.
//! - `GET /metrics`: Prometheus text (see [`super::metrics`]).

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::net::TcpListener;

use super::metrics::Status;

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    status: Status,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics)).with_state(status);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

async fn healthz(State(status): State<Status>) -> (StatusCode, String) {
    match status.health() {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {reason}\n")),
    }
}

async fn metrics(State(status): State<Status>) -> String {
    status.refresh_gauges();
    crate::telemetry::metrics().render()
}
