//! Connecting to a relay as a client over mutual TLS, for the CLI, the
//! demo, the load generator and tests.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::tls::{self, PemText};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("server address {address:?}: {message}")]
    Address { address: String, message: String },
    #[error("cannot connect to {address}: {source}")]
    Connect { address: String, source: tonic::transport::Error },
}

/// Opens a channel to `server` (`https://host:port`, or `host:port`),
/// presenting `pem`'s certificate and trusting only `pem`'s CA. The TLS server
/// name is `server_name`, or the host of `server`.
pub async fn connect(server: &str, pem: &PemText, server_name: Option<&str>) -> Result<Channel, ClientError> {
    endpoint(server, pem, server_name)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect { address: server.to_owned(), source })
}

/// How often a client pings the relay, and how long it waits for the answer
/// before it drops the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint [`connect`] uses, for callers that build several channels.
pub fn endpoint(server: &str, pem: &PemText, server_name: Option<&str>) -> Result<Endpoint, ClientError> {
    tls::install_crypto_provider();
    let url = if server.contains("://") { server.to_owned() } else { format!("https://{server}") };
    let address_error = |message: String| ClientError::Address { address: server.to_owned(), message };
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|error| address_error(format!("{error}")))?;
    let host = uri.host().ok_or_else(|| address_error("has no host".into()))?.to_owned();
    let name = server_name.map(str::to_owned).unwrap_or(host);
    Endpoint::from_shared(url)
        .map_err(|error| address_error(error.to_string()))?
        .tls_config(tls::client_config(pem, &name))
        .map_err(|error| address_error(error.to_string()))
        .map(|endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(10))
                .tcp_nodelay(true)
                // A relay that stops answering without closing the connection (a cut
                // link) is noticed within 20 s: a subscriber then moves to another node.
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
        })
}
