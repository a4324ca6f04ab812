//! `cpis-relay deliver`: resolves the configuration (file < environment <
//! flags), loads the local authority's certificate, binds the admin port
//! and runs the delivery agent until SIGTERM or SIGINT. The agent itself
//! lives in [`crate::deliver`].

use std::path::PathBuf;

use clap::Args;
use tokio::net::TcpListener;

use super::{CliError, ClientArgs, exit, serve::shutdown_signal};
use crate::{
    auth::Role,
    deliver::{
        admin,
        config::{DeliverConfig, DeliverSettings},
    },
};

#[derive(Debug, Args)]
pub struct DeliverArgs {
    /// TOML file of settings (keys as the flags, with underscores).
    #[arg(long, env = "CPIS_DELIVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub settings: DeliverSettings,
}

/// Flags and environment over the file, then defaults.
pub(super) fn resolve(args: &DeliverArgs) -> Result<DeliverConfig, CliError> {
    let file = match &args.config {
        Some(path) => DeliverSettings::from_file(path).map_err(|error| CliError::Config(error.to_string()))?,
        None => DeliverSettings::default(),
    };
    args.settings.clone().over(file).resolve().map_err(|error| CliError::Config(error.to_string()))
}

pub(super) async fn run(args: DeliverArgs) -> Result<u8, CliError> {
    let config = resolve(&args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(exit::OK);
    }
    let client = ClientArgs {
        server: config.server[0].clone(),
        identity: config.identity.clone(),
        certs_dir: config.certs_dir.clone(),
        ca: config.ca.clone(),
        cert: config.cert.clone(),
        key: config.key.clone(),
    };
    let (pem, identity) = client.load("la-706")?;
    if identity.role != Role::SocialCare {
        return Err(CliError::Config(format!(
            "the certificate is for a {} organisation ({}); deliver needs a local authority's (social-care) certificate",
            identity.role, identity.ods_code
        )));
    }
    let agent = config.agent(pem).map_err(|error| CliError::Config(error.to_string()))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|error| CliError::Config(format!("configuration admin_listen: {}: {error}", config.admin_listen)))?;
    let admin_address = admin_listener.local_addr().map_err(|error| CliError::Failed(error.to_string()))?;
    // One stable line on stdout for supervisors and tests that bind port 0.
    println!("cpis-relay deliver: la={} admin={admin_address}", identity.ods_code);
    tracing::info!(
        la = %identity.ods_code,
        servers = ?config.server,
        webhook = config.webhook.is_some(),
        outbox = ?config.outbox,
        admin = %admin_address,
        "delivery agent starting"
    );
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(admin::serve(admin_listener, agent.status(), async {
        let _ = admin_stopped.await;
    }));
    agent.run(shutdown_signal()).await;
    let _ = stop_admin.send(());
    match admin_task.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "admin server failed"),
        Err(error) => tracing::warn!(%error, "admin server task failed"),
    }
    Ok(exit::OK)
}
