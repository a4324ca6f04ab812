//! `cpis-relay serve`: resolves the configuration (file < environment <
//! flags), opens the store, rebuilds the relay's memory from it, binds the
//! listeners and serves until SIGTERM or SIGINT, or until the store breaks
//! for good (exit status 74, see `store::Broken`).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Args;
use tokio::net::TcpListener;

use super::{CliError, exit};
use crate::{
    auth::token::TokenVerifier,
    certs,
    clock::SystemClock,
    config::{ServeConfig, ServeSettings, StoreKind},
    fhir::FhirDoor,
    relay::Relay,
    server::{self, ServerOptions},
    store::{Store, embedded::EmbeddedStore, memory::MemoryStore, postgres::PostgresStore},
    tls::{self, PemFiles, ServerTls, ServerTlsFiles},
    web::WebDoor,
};

/// Debug builds only: `1` makes every store write fail from start (for tests of a failing store).
pub(super) const FAIL_STORE_WRITES_ENV: &str = "CPIS_TEST_FAIL_STORE_WRITES";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file of settings (keys as the flags, with underscores).
    #[arg(long, env = "CPIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub settings: ServeSettings,
}

/// Flags and environment over the file, then defaults.
pub(super) fn resolve(args: &ServeArgs) -> Result<ServeConfig, CliError> {
    let file = match &args.config {
        Some(path) => ServeSettings::from_file(path).map_err(|error| CliError::Config(error.to_string()))?,
        None => ServeSettings::default(),
    };
    args.settings.clone().over(file).resolve().map_err(|error| CliError::Config(error.to_string()))
}

/// The server's PEM files: the configured ones, or the dev certificates
/// (which the configuration refuses on a non-loopback address unless
/// `dev_certs` says so: see `config::development`).
fn pem_files(config: &ServeConfig) -> Result<PemFiles, CliError> {
    if let (Some(ca), Some(cert), Some(key)) = (&config.ca, &config.cert, &config.key) {
        return Ok(PemFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() });
    }
    if certs::ensure_dev(&config.certs_dir).map_err(|error| CliError::Failed(error.to_string()))? {
        tracing::warn!(dir = %config.certs_dir.display(), "created development certificates; never use them in production");
    }
    Ok(PemFiles::in_dir(&config.certs_dir, "server"))
}

pub(super) fn server_options(config: &ServeConfig, tls: tls::ServerTls) -> ServerOptions {
    ServerOptions {
        tls,
        handshake_timeout: Duration::from_secs(config.handshake_timeout_secs),
        max_connections: config.max_connections,
        max_handshakes: config.max_handshakes,
        idle_timeout: Duration::from_secs(config.connection_idle_timeout_secs),
        grace_period: Duration::from_secs(config.grace_period_secs),
        max_concurrent_searches: config.max_concurrent_searches,
        concurrency_per_connection: config.concurrency_per_connection,
        max_concurrent_streams: config.max_concurrent_streams,
        request_timeout: Duration::from_secs(config.request_timeout_secs),
        keepalive_interval: Duration::from_secs(config.keepalive_interval_secs),
        keepalive_timeout: Duration::from_secs(config.keepalive_timeout_secs),
        max_connection_age: Duration::from_secs(config.max_connection_age_secs),
        max_message_bytes: config.max_message_bytes,
        upload_timeout: Duration::from_secs(config.upload_timeout_secs),
        max_concurrent_uploads: config.max_concurrent_uploads,
    }
}

pub(super) async fn run(args: ServeArgs) -> Result<u8, CliError> {
    let config = resolve(&args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(exit::OK);
    }
    let tls_files = ServerTlsFiles { pem: pem_files(&config)?, crls: config.crl.clone() };
    let server_tls = ServerTls::from_files(tls_files).map_err(|error| CliError::Config(error.to_string()))?;
    let mut store: Arc<dyn Store> = match &config.store {
        StoreKind::Embedded => Arc::new(
            EmbeddedStore::open_with_cache(&config.data_dir, (config.store_cache_mb as usize).saturating_mul(1 << 20))
                .map_err(|error| CliError::Failed(error.to_string()))?,
        ),
        StoreKind::Memory => {
            tracing::warn!("the memory store loses everything on exit; never use it for real data");
            Arc::new(MemoryStore::new())
        }
        StoreKind::Postgres(url) => {
            let options =
                config.postgres_options().ok_or_else(|| CliError::Config("a postgres store has options".to_owned()))?;
            let store = PostgresStore::open(&options)
                .await
                .map_err(|error| CliError::Failed(format!("cannot open the PostgreSQL store {url}: {error}")))?;
            tracing::info!(store = %url, schema = crate::store::postgres::SCHEMA_VERSION, "PostgreSQL store open");
            Arc::new(store)
        }
    };
    // A test-only switch, in debug builds only: proves in a real process that
    // held notifications survive SIGTERM and SIGKILL while the store fails.
    if cfg!(debug_assertions) && std::env::var_os(FAIL_STORE_WRITES_ENV).is_some_and(|value| value == "1") {
        tracing::warn!("{FAIL_STORE_WRITES_ENV}=1: every store write fails (debug builds only, for tests)");
        let faulty = crate::store::faults::FaultyStore::new(store);
        faulty.faults().fail_writes(true);
        store = Arc::new(faulty);
    }
    let mut settings = config.relay_settings();
    settings.log_signer = log_signer(&config)?;
    if let Some(signer) = &settings.log_signer {
        check_recorded_key(&store, signer).await?;
    }
    let relay = Relay::open(store, Arc::new(SystemClock), settings)
        .await
        .map_err(|error| CliError::Failed(format!("cannot load the store: {error}")))?;
    let tokens = if config.fhir_listen.is_some() || crate::web::takes_bearer_tokens(&config) {
        Some(Arc::new(token_verifier(&config)?))
    } else {
        None
    };
    let listener = bind(config.listen, "listen").await?;
    let admin = bind(config.admin_listen, "admin_listen").await?;
    let (grpc_address, admin_address) = (local_address(&listener)?, local_address(&admin)?);
    let web = match config.web_listen {
        Some(address) => Some(WebDoor { listener: bind(address, "web_listen").await?, tokens: tokens.clone() }),
        None => None,
    };
    let fhir = match (config.fhir_listen, tokens) {
        (Some(address), Some(tokens)) => Some(FhirDoor { listener: bind(address, "fhir_listen").await?, tokens }),
        _ => None,
    };
    let mut fhir_text = match &fhir {
        Some(door) => format!(" fhir={}", local_address(&door.listener)?),
        None => String::new(),
    };
    if let Some(door) = &web {
        fhir_text.push_str(&format!(" web={}", local_address(&door.listener)?));
    }
    let watch = server_tls.spawn_watch(Duration::from_secs(config.tls_reload_interval_secs));
    let hangups = spawn_reload_on_hangup(server_tls.clone());
    // One stable line on stdout for supervisors and tests that bind port 0.
    println!("cpis-relay listening: grpc={grpc_address} admin={admin_address}{fhir_text}");
    tracing::info!(admin = %admin_address, "admin endpoints: /healthz /readyz /metrics");
    relay.spawn_retention();
    let log_keeper = relay.spawn_log_keeper();
    let options = server_options(&config, server_tls);
    let doors = server::Doors { fhir, web };
    // A broken store stops the relay as SIGTERM does (in-flight calls are answered), then exits 74.
    let broken = relay.broken_store();
    let stop = async {
        match &broken {
            Some(broken) => tokio::select! {
                () = shutdown_signal() => {}
                reason = broken.wait() => tracing::error!(%reason, "the store is broken: stopping so that a restart replays its journal"),
            },
            None => shutdown_signal().await,
        }
    };
    let served = server::run(listener, Some(admin), doors, relay.clone(), options, stop).await;
    watch.abort();
    hangups.abort();
    // The keeper signs a last checkpoint once the relay drains.
    if let Some(log_keeper) = log_keeper {
        let _ = log_keeper.await;
    }
    served.map_err(|error| CliError::Failed(error.to_string()))?;
    if let Some(reason) = relay.store_broken() {
        tracing::error!(
            %reason,
            status = exit::STORE_BROKEN,
            held = relay.hub().held(),
            data_dir = %config.data_dir.display(),
            "stopped because the store's journal could not be written or synced: free space or replace the disk, \
             then start the relay again (its supervisor does): the journal is replayed and held notifications reloaded \
             from the spill file (searches whose notification could not be spilled either were answered UNAVAILABLE)"
        );
        return Ok(exit::STORE_BROKEN);
    }
    let held = relay.hub().held();
    if held > 0 {
        match &config.store {
            StoreKind::Embedded | StoreKind::Postgres(_) => tracing::error!(
                held,
                spill = %config.data_dir.join(crate::relay::spill::SPILL_FILE).display(),
                "stopping with access notifications the store has not accepted; they stay in the spill file and are retried at the next start"
            ),
            StoreKind::Memory => tracing::error!(
                held,
                "stopping with access notifications the memory store never accepted; they are lost"
            ),
        }
    }
    Ok(exit::OK)
}

/// Refuses (exit 64) a key other than the one the log's newest stored
/// checkpoint is signed with, naming both key ids.
async fn check_recorded_key(
    store: &Arc<dyn Store>,
    signer: &Arc<crate::transparency::LogSigner>,
) -> Result<(), CliError> {
    let Some(log) = store.access_log() else { return Ok(()) };
    let verifier = signer.verifier().clone();
    let ours = (verifier.name().to_owned(), verifier.key_id());
    let recorded =
        tokio::task::spawn_blocking(move || crate::access_log::recorded_key_if_other(log.as_ref(), &verifier))
            .await
            .map_err(|error| CliError::Failed(error.to_string()))?
            .map_err(|error| CliError::Failed(format!("cannot read the access log's notes: {error}")))?;
    match recorded {
        None => Ok(()),
        Some((name, key_id)) => Err(CliError::Config(format!(
            "configuration log_key: this node's key {}+{:08x} is not the key the access log is signed with, {name}+{key_id:08x} \
             (its newest stored checkpoint): every node of a deployment signs with the one key",
            ours.0, ours.1
        ))),
    }
}

/// The access log's signing key: the configured file; when it is missing,
/// created with its public key beside it only if asked (`create_log_key`)
/// or in development (every listener on loopback, or `dev_certs`), refused
/// otherwise (exit 64). None for the memory store (the relay then signs
/// with a key of this process only: nothing it logs outlives it).
fn log_signer(config: &ServeConfig) -> Result<Option<Arc<crate::transparency::LogSigner>>, CliError> {
    if config.store == StoreKind::Memory {
        return Ok(None);
    }
    let development = config.dev_certs || config.non_loopback_listeners().is_empty();
    if !config.log_key.exists() && !config.create_log_key && !development {
        return Err(CliError::Config(format!(
            "configuration log_key: {} does not exist: create the deployment's key once with `cpis-relay audit init-key --key {}` \
             (outside the data directory, shared by every node), or start with --create-log-key",
            config.log_key.display(),
            config.log_key.display()
        )));
    }
    if let Some(parent) = config.log_key.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|error| CliError::Config(format!("configuration log_key: {}: {error}", parent.display())))?;
    }
    let (signer, created) = crate::access_log::load_or_create_signer(&config.log_name, &config.log_key)
        .map_err(|error| CliError::Config(format!("configuration log_key: {error}")))?;
    if created {
        tracing::warn!(
            key = %config.log_key.display(),
            verifier = %signer.verifier(),
            "created the access log's signing key; back it up, keep it private, and give auditors the verifier key"
        );
    } else {
        tracing::info!(verifier = %signer.verifier(), "access log signing key loaded");
    }
    Ok(Some(Arc::new(signer)))
}

/// The FHIR door's token verifier: the configured JWKS, or the development
/// one beside the development certificates (created if missing).
fn token_verifier(config: &ServeConfig) -> Result<TokenVerifier, CliError> {
    let path = match &config.fhir_jwks {
        Some(path) => path.clone(),
        None => {
            let using_dev_certificates = config.ca.is_none();
            if using_dev_certificates
                && certs::ensure_token_key(&config.certs_dir).map_err(|error| CliError::Failed(error.to_string()))?
            {
                tracing::warn!(dir = %config.certs_dir.display(), "created a development token signing key; never use it in production");
            }
            config.certs_dir.join(crate::auth::token::DEV_JWKS)
        }
    };
    TokenVerifier::from_jwks_file(&path, config.token_settings())
        .map_err(|error| CliError::Config(format!("configuration fhir_jwks: {error}")))
}

fn local_address(listener: &TcpListener) -> Result<SocketAddr, CliError> {
    listener.local_addr().map_err(|error| CliError::Failed(error.to_string()))
}

async fn bind(address: SocketAddr, key: &str) -> Result<TcpListener, CliError> {
    TcpListener::bind(address)
        .await
        .map_err(|error| CliError::Config(format!("configuration {key}: {address}: {error}")))
}

/// Reloads the TLS configuration on every SIGHUP. The handler is installed
/// before this returns, so a SIGHUP after the listening line never kills the process.
fn spawn_reload_on_hangup(server_tls: ServerTls) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    {
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        tokio::spawn(async move {
            let mut hangups = match hangups {
                Ok(hangups) => hangups,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGHUP; TLS files are still reloaded when they change");
                    return;
                }
            };
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the TLS configuration");
                let reloading = server_tls.clone();
                // A failure is logged and counted by the reload itself.
                let _ = tokio::task::spawn_blocking(move || reloading.reload()).await;
            }
        })
    }
    #[cfg(not(unix))]
    tokio::spawn(async move { drop(server_tls) })
}

/// Resolves on SIGTERM or SIGINT.
pub(super) async fn shutdown_signal() {
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
