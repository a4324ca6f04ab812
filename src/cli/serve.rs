//! `cpis-relay serve`: opens the store, rebuilds the relay's memory from it,
//! binds the listeners and serves until SIGTERM or SIGINT.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use clap::{Args, ValueEnum};
use tokio::net::TcpListener;

use super::{CliError, exit};
use crate::{
    certs,
    clock::SystemClock,
    relay::{Relay, RelaySettings},
    server::{self, ServerOptions},
    store::{Store, embedded::EmbeddedStore, memory::MemoryStore},
    tls::{self, PemFiles},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Durable: one redb file in --data-dir.
    Embedded,
    /// In process memory, lost on exit: for tests and benchmarks only.
    Memory,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// gRPC (mutual TLS) listen address.
    #[arg(long, env = "CPIS_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Admin HTTP listen address: /healthz, /readyz, /metrics.
    #[arg(long, env = "CPIS_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Directory of the embedded store.
    #[arg(long, env = "CPIS_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    #[arg(long, env = "CPIS_STORE", value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,
    /// CA certificate (PEM) whose client certificates are accepted.
    #[arg(long, env = "CPIS_CA")]
    pub ca: Option<PathBuf>,
    /// Server certificate chain (PEM).
    #[arg(long, env = "CPIS_CERT")]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "CPIS_KEY")]
    pub key: Option<PathBuf>,
    /// Development certificates used when no TLS flag is given; created on first start.
    #[arg(long, env = "CPIS_CERTS_DIR", default_value = certs::DEV_DIR)]
    pub certs_dir: PathBuf,
}

/// The server's PEM files: all three flags, or none (the dev certificates).
fn pem_files(args: &ServeArgs) -> Result<PemFiles, CliError> {
    match (&args.ca, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => Ok(PemFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() }),
        (None, None, None) => {
            if certs::ensure_dev(&args.certs_dir).map_err(|error| CliError::Failed(error.to_string()))? {
                tracing::warn!(dir = %args.certs_dir.display(), "created development certificates; never use them in production");
            }
            Ok(PemFiles::in_dir(&args.certs_dir, "server"))
        }
        _ => {
            let missing: Vec<&str> = [("--ca", &args.ca), ("--cert", &args.cert), ("--key", &args.key)]
                .into_iter()
                .filter(|(_, value)| value.is_none())
                .map(|(flag, _)| flag)
                .collect();
            Err(CliError::Config(format!("TLS: give --ca, --cert and --key together (missing {})", missing.join(", "))))
        }
    }
}

pub async fn run(args: ServeArgs) -> Result<u8, CliError> {
    let pem = pem_files(&args)?.read().map_err(|error| CliError::Config(error.to_string()))?;
    let tls_config = tls::server_config(&pem).map_err(|error| CliError::Config(error.to_string()))?;
    let store: Arc<dyn Store> = match args.store {
        StoreKind::Embedded => {
            Arc::new(EmbeddedStore::open(&args.data_dir).map_err(|error| CliError::Failed(error.to_string()))?)
        }
        StoreKind::Memory => {
            tracing::warn!("the memory store loses everything on exit; never use it for real data");
            Arc::new(MemoryStore::new())
        }
    };
    let relay = Relay::open(store, Arc::new(SystemClock), RelaySettings::default())
        .await
        .map_err(|error| CliError::Failed(format!("cannot load the store: {error}")))?;
    let listener = bind(args.listen, "--listen").await?;
    let admin = bind(args.admin_listen, "--admin-listen").await?;
    tracing::info!(admin = %args.admin_listen, "admin endpoints: /healthz /readyz /metrics");
    server::run(listener, Some(admin), relay, ServerOptions::new(tls_config), shutdown_signal())
        .await
        .map_err(|error| CliError::Failed(error.to_string()))?;
    Ok(exit::OK)
}

async fn bind(address: SocketAddr, flag: &str) -> Result<TcpListener, CliError> {
    TcpListener::bind(address).await.map_err(|error| CliError::Config(format!("{flag} {address}: {error}")))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(terminate) => terminate,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT will stop the relay");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
