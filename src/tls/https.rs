//! HTTPS for the FHIR door (`fhir`) and the browser view (`web`) over the relay's own TLS: the same server
//! certificate and client-certificate verification as gRPC (`tls::incoming`),
//! HTTP/1.1 only, each request carrying its connection's [`PeerInfo`] as gRPC
//! requests do. On stop, no new connection is accepted and requests in flight
//! finish within the grace period.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::StreamExt;
use tonic::transport::server::Connected;
use tower::ServiceExt;

use crate::tls::{self, PeerInfo};

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `stop` turns true, then drains;
/// `door` names it in logs.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    door: &'static str,
    listener: TcpListener,
    tls: tls::ServerTls,
    handshake_timeout: Duration,
    limits: tls::ConnectionLimits,
    grace_period: Duration,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    // The gRPC configuration offers only h2; this door speaks HTTP/1.1.
    let local_addr = listener.local_addr().ok();
    let mut incoming = tls::incoming(listener, tls, tls::Alpn::Http1, handshake_timeout, limits);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    if let Some(local_addr) = local_addr {
        tracing::info!(%local_addr, door, "serving over mutual TLS");
    }
    loop {
        let connection = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(connection)) => connection,
                Some(Err(error)) => {
                    tracing::warn!(%error, door, "accepting a connection failed");
                    continue;
                }
                None => break,
            },
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let peer: PeerInfo = connection.connect_info();
        let service = router.clone().map_request(move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer.clone());
            request
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(connection), hyper_util::service::TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, door, "connection ended with an error");
            }
        });
    }
    drop(incoming);
    if tokio::time::timeout(grace_period, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            grace_period_s = grace_period.as_secs(),
            door,
            "requests still open at the end of the grace period"
        );
    }
}
