//! `cpis-relay witness`: runs one access log witness ([`crate::witness`])
//! from its TOML configuration until SIGTERM or SIGINT; `witness init-key`
//! makes its Ed25519 key and prints the public key the relay and auditors
//! are given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::{CliError, exit, serve::shutdown_signal};
use crate::{
    transparency::{cosignature::Cosigner, key::generate_key_file},
    witness::{WitnessConfig, WitnessError},
};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct WitnessArgs {
    #[command(subcommand)]
    pub command: Option<WitnessCommand>,
    /// The witness's TOML file: name, key, state_dir, listen, logs, tls_cert and tls_key (see docs/proving.md, "Witnesses").
    #[arg(long, env = "CPIS_WITNESS_CONFIG", required = true)]
    pub config: Option<PathBuf>,
    /// Listen address, over the file's `listen` [default: 127.0.0.1:7380]
    #[arg(long, env = "CPIS_WITNESS_LISTEN")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum WitnessCommand {
    /// Make the witness's Ed25519 key (PKCS#8, mode 0600; never overwrites) and print its public key.
    InitKey {
        /// The witness's name, as its configuration will give it, e.g. `witness.la.example/cpis`.
        #[arg(long, env = "CPIS_WITNESS_NAME")]
        name: String,
        /// Where to write the key.
        #[arg(long, env = "CPIS_WITNESS_KEY")]
        key: PathBuf,
    },
}

fn config_error(error: WitnessError) -> CliError {
    match error {
        WitnessError::Config { .. } => CliError::Config(error.to_string()),
        other => CliError::Failed(other.to_string()),
    }
}

pub(super) async fn run(args: WitnessArgs) -> Result<u8, CliError> {
    if let Some(WitnessCommand::InitKey { name, key }) = args.command {
        generate_key_file(&key).map_err(|error| CliError::Config(format!("key: {error}")))?;
        let cosigner =
            Cosigner::from_key_file(&name, &key).map_err(|error| CliError::Config(format!("name: {error}")))?;
        println!("{}", cosigner.key());
        return Ok(exit::OK);
    }
    let path =
        args.config.ok_or_else(|| CliError::Config("config: the witness's configuration file is required".into()))?;
    let mut config = WitnessConfig::from_file(&path).map_err(config_error)?;
    if args.listen.is_some() {
        config.listen = args.listen;
    }
    let opened = config.clone();
    let (witness, tls) = tokio::task::spawn_blocking(move || Ok::<_, WitnessError>((opened.open()?, opened.tls()?)))
        .await
        .map_err(|error| CliError::Failed(error.to_string()))?
        .map_err(config_error)?;
    let listener = tokio::net::TcpListener::bind(config.listen())
        .await
        .map_err(|error| CliError::Config(format!("listen: {}: {error}", config.listen())))?;
    let address = listener.local_addr().map_err(|error| CliError::Failed(error.to_string()))?;
    // One stable line on stdout for supervisors and tests that bind port 0.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("cpis-relay witness listening: {scheme}={address} key={}", witness.cosigner().key());
    let witness = Arc::new(witness);
    let served = match tls {
        Some(tls) => crate::witness::https::serve_tls(listener, witness, tls, shutdown_signal()).await,
        None => crate::witness::serve(listener, witness, shutdown_signal()).await,
    };
    served.map_err(|error| CliError::Failed(error.to_string()))?;
    Ok(exit::OK)
}
