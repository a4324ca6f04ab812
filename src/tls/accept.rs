//! The accept loop of a TLS listener: TCP connections accepted within the
//! listener's caps (`limits`), TLS handshakes completed concurrently against
//! the configuration current at each one's start, and only verified
//! connections handed to the server, each with the caller's identity read
//! once and, for gRPC, an idle timer on its reads (`activity`).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::{
    Alpn, ServerTls,
    activity::{ConnectionActivity, IdleTimer},
    limits::{ConnectionLimits, ConnectionSlot, Gate, failure_reason},
    standing::Standing,
};
use crate::{auth::Identity, model::Accessor};

/// What the relay knows of a connection, in every request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote_addr: SocketAddr,
    /// The verified certificate's identity, or why it does not name one.
    pub identity: Result<Arc<Identity>, Arc<str>>,
    /// The person the certificate names, when it is a user's certificate
    /// (see [`crate::auth::user_from_certificate`]); `None` for an organisation's.
    pub user: Option<Arc<Accessor>>,
    /// The connection's calls in progress (see [`ConnectionActivity`]).
    pub activity: Arc<ConnectionActivity>,
}

/// A TLS connection whose client certificate has been verified.
pub struct AuthenticatedStream {
    inner: TlsStream<TcpStream>,
    peer: PeerInfo,
    idle: Option<IdleTimer>,
    /// Ends the connection once its peer is revoked or expired.
    standing: Standing,
    _slot: ConnectionSlot,
}

impl Connected for AuthenticatedStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for AuthenticatedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.standing.poll_ended(cx).is_ready() {
            // End of stream: the server closes the connection, ending its calls and subscriptions.
            return Poll::Ready(Ok(()));
        }
        if let Some(idle) = &mut self.idle
            && idle.poll_expired(cx).is_ready()
        {
            // End of stream: the server closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AuthenticatedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections within `limits` and completes TLS handshakes
/// concurrently (a slow client cannot hold up others), yielding only
/// verified connections. Ends when the consumer drops the stream.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
    alpn: Alpn,
    handshake_timeout: Duration,
    limits: ConnectionLimits,
) -> ReceiverStream<io::Result<AuthenticatedStream>> {
    let (sender, receiver) = mpsc::channel(64);
    let gate = Gate::new(limits, alpn);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => break,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(mut ticket) = gate.admit() else {
                // Over the connection cap: closed at once, never queued.
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let gate = Arc::clone(&gate);
            // The configuration current now: a reload affects new handshakes only.
            let acceptor = TlsAcceptor::from(tls.config(alpn));
            let sender = sender.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let handshake = tokio::select! {
                    handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)) => handshake,
                    _ = &mut ticket.displaced => {
                        gate.handshake_failed(remote_addr, "displaced", "displaced by a newer connection at max_handshakes");
                        return;
                    }
                };
                match handshake {
                    Ok(Ok(stream)) => {
                        let slot = ticket.establish();
                        let standing = Standing::new(
                            &tls,
                            stream.get_ref().1.peer_certificates().unwrap_or_default(),
                            remote_addr,
                        );
                        let leaf = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first());
                        let identity = leaf
                            .ok_or_else(|| Arc::<str>::from("no client certificate"))
                            .and_then(|leaf| Identity::from_certificate(leaf).map(Arc::new).map_err(Arc::from));
                        if let Err(reason) = &identity {
                            tracing::warn!(%remote_addr, %reason, "client certificate names no usable identity");
                        }
                        let user = match leaf.map(|leaf| crate::auth::user_from_certificate(leaf)) {
                            Some(Ok(user)) => user.map(Arc::new),
                            Some(Err(reason)) => {
                                tracing::warn!(%remote_addr, %reason, "client certificate names no usable user");
                                None
                            }
                            None => None,
                        };
                        let activity = ConnectionActivity::new();
                        let idle =
                            gate.limits().idle_timeout.map(|timeout| IdleTimer::new(Arc::clone(&activity), timeout));
                        let peer = PeerInfo { remote_addr, identity, user, activity };
                        let _ = sender
                            .send(Ok(AuthenticatedStream { inner: stream, peer, idle, standing, _slot: slot }))
                            .await;
                    }
                    Ok(Err(error)) => {
                        metrics::counter!("cpis_auth_denied_total", "reason" => "tls_handshake").increment(1);
                        gate.handshake_failed(remote_addr, failure_reason(&error), &error.to_string());
                    }
                    Err(_) => {
                        metrics::counter!("cpis_auth_denied_total", "reason" => "tls_timeout").increment(1);
                        gate.handshake_failed(remote_addr, "timeout", "no handshake within handshake_timeout");
                    }
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
