//! Mutual TLS. One rustls crypto provider (ring) chosen explicitly, server
//! and client configurations from PEM files, and the accepted-connection
//! stream that verifies client certificates during the handshake and reads
//! the caller's identity once per connection.
//!
//! A client without a certificate, or with one from another CA, fails the
//! handshake and never reaches a service.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::auth::Identity;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The one crypto provider of the process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process default so that no library picks another.
/// Safe to call more than once.
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

/// PEM material of one party: its trust anchor, certificate chain and key.
#[derive(Clone, Debug)]
pub struct PemFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl PemFiles {
    /// `ca.pem`, `NAME.pem` and `NAME.key` in `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self { ca: dir.join("ca.pem"), cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
    }

    pub fn read(&self) -> Result<PemText, TlsError> {
        Ok(PemText { ca: read_text(&self.ca)?, cert: read_text(&self.cert)?, key: read_text(&self.key)? })
    }
}

/// PEM text of one party.
#[derive(Clone)]
pub struct PemText {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|error| TlsError::File { path: path.to_owned(), message: error.to_string() })
}

/// The server side: client certificates required and verified against `pem.ca`.
pub fn server_config(pem: &PemText) -> Result<Arc<ServerConfig>, TlsError> {
    let config_error = |error: rustls::Error| TlsError::Config(error.to_string());
    let mut roots = RootCertStore::empty();
    for ca in certificates(&pem.ca, "CA")? {
        roots.add(ca).map_err(config_error)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
        .map_err(|error| TlsError::Config(format!("server key: {error}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(&pem.cert, "server certificate")?, key)
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn certificates(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Config(format!("{what}: {error}")))?;
    if certificates.is_empty() {
        return Err(TlsError::Config(format!("{what}: no PEM certificate found")));
    }
    Ok(certificates)
}

/// The client side, for tonic channels: trusts `pem.ca`, presents `pem.cert`.
pub fn client_config(pem: &PemText, server_name: &str) -> tonic::transport::ClientTlsConfig {
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pem.ca))
        .identity(tonic::transport::Identity::from_pem(&pem.cert, &pem.key))
        .domain_name(server_name)
}

/// What the relay knows of a connection, in every request's extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote_addr: SocketAddr,
    /// The verified certificate's identity, or why it does not name one.
    pub identity: Result<Arc<Identity>, Arc<str>>,
}

/// A TLS connection whose client certificate has been verified.
pub struct AuthenticatedStream {
    inner: TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl Connected for AuthenticatedStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for AuthenticatedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
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

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow
/// client cannot hold up others), yielding only verified connections. Ends
/// when the consumer drops the stream.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
) -> ReceiverStream<io::Result<AuthenticatedStream>> {
    let (sender, receiver) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
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
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .ok_or_else(|| Arc::<str>::from("no client certificate"))
                            .and_then(|leaf| Identity::from_certificate(leaf).map(Arc::new).map_err(Arc::from));
                        if let Err(reason) = &identity {
                            tracing::warn!(%remote_addr, %reason, "client certificate names no usable identity");
                        }
                        let peer = PeerInfo { remote_addr, identity };
                        let _ = sender.send(Ok(AuthenticatedStream { inner: stream, peer })).await;
                    }
                    Ok(Err(error)) => {
                        metrics::counter!("cpis_auth_denied_total", "reason" => "tls_handshake").increment(1);
                        tracing::info!(%remote_addr, %error, "TLS handshake refused");
                    }
                    Err(_) => {
                        metrics::counter!("cpis_auth_denied_total", "reason" => "tls_timeout").increment(1);
                        tracing::info!(%remote_addr, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
