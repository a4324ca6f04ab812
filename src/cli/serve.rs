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
    /// Days acknowledged notifications are kept.
    #[arg(long, env = "CPIS_NOTIFICATION_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub notification_retention_days: u32,
    /// Days access history is kept.
    #[arg(long, env = "CPIS_ACCESS_RETENTION_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
    pub access_retention_days: u32,
    /// Seconds between retention passes.
    #[arg(long, env = "CPIS_RETENTION_INTERVAL_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_interval_secs: u64,
}

impl ServeArgs {
    pub fn relay_settings(&self) -> RelaySettings {
        RelaySettings {
            acked_notification_retention: chrono::Duration::days(self.notification_retention_days.into()),
            access_retention: chrono::Duration::days(self.access_retention_days.into()),
            retention_interval: std::time::Duration::from_secs(self.retention_interval_secs),
            ..RelaySettings::default()
        }
    }
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
    let relay = Relay::open(store, Arc::new(SystemClock), args.relay_settings())
        .await
        .map_err(|error| CliError::Failed(format!("cannot load the store: {error}")))?;
    let listener = bind(args.listen, "--listen").await?;
    let admin = bind(args.admin_listen, "--admin-listen").await?;
    let (grpc_address, admin_address) = (local_address(&listener)?, local_address(&admin)?);
    // One stable line on stdout for supervisors and tests that bind port 0.
    println!("cpis-relay listening: grpc={grpc_address} admin={admin_address}");
    tracing::info!(admin = %admin_address, "admin endpoints: /healthz /readyz /metrics");
    relay.spawn_retention();
    server::run(listener, Some(admin), relay, ServerOptions::new(tls_config), shutdown_signal())
        .await
        .map_err(|error| CliError::Failed(error.to_string()))?;
    Ok(exit::OK)
}

fn local_address(listener: &TcpListener) -> Result<SocketAddr, CliError> {
    listener.local_addr().map_err(|error| CliError::Failed(error.to_string()))
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
