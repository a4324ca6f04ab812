//! The national-day bench's webhook receiver: a real HTTP server on
//! 127.0.0.1 (`POST /la/{ods}`) that the local authorities' `deliver` agents
//! post to, noting when each notification arrived, its webhook id, its
//! sequence and the searcher's user id (the bench makes one per search), so
//! the bench can match arrivals to answers, count duplicates and find losses.
//! It answers 200 to every well-formed notification; signatures are checked
//! by the `deliver` tests, not here.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};

use crate::deliver::payload::NotificationBody;

/// One notification as it arrived.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub la_ods_code: String,
    pub webhook_id: String,
    pub sequence: u64,
    pub user_id: String,
    pub at: Instant,
}

/// Everything received so far, in arrival order.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<Arrival>>>);

impl Received {
    pub fn snapshot(&self) -> Vec<Arrival> {
        self.0.lock().map(|arrivals| arrivals.clone()).unwrap_or_default()
    }
}

async fn receive(
    State(received): State<Received>,
    Path(la_ods_code): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = Instant::now();
    let Ok(notification) = serde_json::from_slice::<NotificationBody>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let webhook_id = headers.get("webhook-id").and_then(|id| id.to_str().ok()).unwrap_or_default().to_owned();
    let arrival = Arrival {
        la_ods_code,
        webhook_id,
        sequence: notification.sequence,
        user_id: notification.accessor.user_id,
        at,
    };
    match received.0.lock() {
        Ok(mut arrivals) => {
            arrivals.push(arrival);
            StatusCode::OK
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Starts the receiver on 127.0.0.1:0; it runs until the process ends.
pub async fn start() -> std::io::Result<(SocketAddr, Received)> {
    let received = Received::default();
    let app = Router::new().route("/la/{ods}", post(receive)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the bench's webhook receiver stopped");
        }
    });
    Ok((address, received))
}
