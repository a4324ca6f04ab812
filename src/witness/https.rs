//! The witness's routes over TLS, when its configuration names a
//! certificate (`tls_cert`, `tls_key`): no client certificate is asked
//! (anyone may submit a signed checkpoint), HTTP/1.1. Each connection's
//! handshake is bounded; at shutdown the listener closes and connections
//! still open end with the process (a witness's write is atomic, so a
//! request cut short leaves either the old state or the new one).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio_rustls::TlsAcceptor;

use super::{Witness, router};

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `witness` over TLS with `tls` on `listener` until `shutdown` resolves.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    witness: Arc<Witness>,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let router = router(witness);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return Ok(()),
        };
        let (tcp, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly, keep serving.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else { return };
            let service = TowerToHyperService::new(router);
            let served =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            if let Err(error) = served {
                tracing::debug!(%error, "a witness connection ended with an error");
            }
        });
    }
}
