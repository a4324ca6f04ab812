//! The baseline for `bench --baseline`: a bare tonic `Lookup` server on the
//! same TLS configuration that answers every search with a canned response
//! of the same size as the relay's, doing no work of its own. The bench
//! saves the relay's responses in a directory and starts the echo from it in
//! its own process (`bench --scenario echo`).

use std::{collections::HashSet, sync::Arc};

use tokio::{net::TcpListener, sync::oneshot};
use tonic::{Request, Response, Status};

use crate::{
    proto::{SearchRequest, SearchResponse, lookup_server::Lookup, lookup_server::LookupServer},
    tls,
};

pub struct EchoLookup {
    flagged_numbers: Arc<HashSet<String>>,
    flagged: SearchResponse,
    unflagged: SearchResponse,
}

#[tonic::async_trait]
impl Lookup for EchoLookup {
    async fn search(&self, request: Request<SearchRequest>) -> Result<Response<SearchResponse>, Status> {
        let flagged = self.flagged_numbers.contains(&request.get_ref().nhs_number);
        Ok(Response::new(if flagged { self.flagged.clone() } else { self.unflagged.clone() }))
    }
}

/// A running echo server; dropping the handle stops it.
pub struct EchoServer {
    pub address: std::net::SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// The relay's flagged response (protobuf) in the echo's directory.
pub const FLAGGED_RESPONSE: &str = "flagged.pb";
/// The relay's unflagged response (protobuf).
pub const UNFLAGGED_RESPONSE: &str = "unflagged.pb";
/// Flagged NHS numbers, one a line.
pub const FLAGGED_NUMBERS: &str = "flagged.txt";

/// Serves the echo with the responses saved in `dir`.
pub async fn start_from_dir(
    tls_config: Arc<rustls::ServerConfig>,
    dir: &std::path::Path,
) -> std::io::Result<EchoServer> {
    use prost::Message;
    let response = |name: &str| -> std::io::Result<SearchResponse> {
        let bytes = std::fs::read(dir.join(name))?;
        SearchResponse::decode(bytes.as_slice())
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))
    };
    let numbers = std::fs::read_to_string(dir.join(FLAGGED_NUMBERS))?;
    let numbers = Arc::new(numbers.lines().map(str::to_owned).collect());
    start(tls_config, numbers, response(FLAGGED_RESPONSE)?, response(UNFLAGGED_RESPONSE)?).await
}

/// Serves the echo on `127.0.0.1:0` with the relay's TLS configuration.
pub async fn start(
    tls_config: Arc<rustls::ServerConfig>,
    flagged_numbers: Arc<HashSet<String>>,
    flagged: SearchResponse,
    unflagged: SearchResponse,
) -> std::io::Result<EchoServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let incoming = tls::incoming(
        listener,
        tls::ServerTls::fixed(tls_config),
        tls::Alpn::H2,
        std::time::Duration::from_secs(10),
        Default::default(),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let service = LookupServer::new(EchoLookup { flagged_numbers, flagged, unflagged });
    tokio::spawn(async move {
        let served =
            tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        if let Err(error) = served.await {
            tracing::error!(%error, "echo server failed");
        }
    });
    Ok(EchoServer { address, _stop: stop })
}
