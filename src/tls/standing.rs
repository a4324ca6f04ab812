//! A connected peer's standing: its certificate is checked again when the
//! TLS configuration reloads (a new CRL may revoke it) and when it expires.
//! A connection whose peer is revoked or expired ends: its reads end (EOF),
//! so the server closes it and every call and subscription on it with it,
//! instead of serving a revoked organisation until it reconnects. Counted in
//! `cpis_tls_peers_ended_total{reason}`.

use std::{
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use rustls::pki_types::CertificateDer;
use tokio::time::Sleep;
use tokio_stream::{Stream, wrappers::WatchStream};

use super::ServerTls;

/// Why a connection's peer lost its standing, as `cpis_tls_peers_ended_total{reason}` counts it.
pub const PEER_ENDED_REASONS: [&str; 2] = ["revoked", "expired"];

/// Watches one connection's peer.
pub(super) struct Standing {
    tls: ServerTls,
    chain: Vec<CertificateDer<'static>>,
    reloads: WatchStream<u64>,
    expiry: Pin<Box<Sleep>>,
    remote_addr: SocketAddr,
    ended: Option<&'static str>,
}

impl Standing {
    pub(super) fn new(tls: &ServerTls, chain: &[CertificateDer<'_>], remote_addr: SocketAddr) -> Self {
        let chain: Vec<CertificateDer<'static>> = chain.iter().map(|cert| cert.clone().into_owned()).collect();
        let until_expiry = chain.first().and_then(|leaf| time_left(leaf)).unwrap_or(Duration::MAX);
        Self {
            reloads: WatchStream::from_changes(tls.reloads()),
            tls: tls.clone(),
            chain,
            expiry: Box::pin(tokio::time::sleep(until_expiry)),
            remote_addr,
            ended: None,
        }
    }

    /// Ready once the peer is revoked or expired (and from then on).
    pub(super) fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.ended.is_some() {
            return Poll::Ready(());
        }
        if self.expiry.as_mut().poll(cx).is_ready() {
            return self.end("expired", "the client certificate expired".into());
        }
        while let Poll::Ready(Some(_)) = Pin::new(&mut self.reloads).poll_next(cx) {
            if let Err(reason) = self.tls.still_trusted(&self.chain) {
                return self.end("revoked", reason);
            }
        }
        Poll::Pending
    }

    fn end(&mut self, kind: &'static str, reason: String) -> Poll<()> {
        self.ended = Some(kind);
        metrics::counter!("cpis_tls_peers_ended_total", "reason" => kind).increment(1);
        tracing::warn!(remote_addr = %self.remote_addr, %reason, "closing a connection whose client certificate is no longer trusted");
        Poll::Ready(())
    }
}

/// Time until the certificate's notAfter; none if it cannot be read.
fn time_left(leaf: &CertificateDer<'_>) -> Option<Duration> {
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let not_after = certificate.validity().not_after.timestamp();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    // A second past notAfter: rustls still accepts a certificate at its notAfter.
    Some(Duration::from_secs(u64::try_from(not_after - now + 1).unwrap_or(0)))
}
