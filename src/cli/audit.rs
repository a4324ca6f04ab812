//! `cpis-relay audit`: an auditor's commands. `audit NHS_NUMBER` lists a
//! person's accesses (through the relay); `audit verify` recomputes the
//! access log of a store no relay has open and checks it against every
//! signed checkpoint; `audit proof` fetches, checks and prints proofs.

use std::path::Path;

use clap::{Args, Subcommand};

use super::{
    CliError, ClientArgs,
    audit_trusted::{TrustArgs, trusted_checkpoint, verifier_key},
    exit,
};
use crate::{
    access_log::{self, LogReport},
    store::{Store, embedded::EmbeddedStore},
    transparency::VerifierKey,
};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// List every retained access of this person (NHS number), as JSON lines.
    #[arg(required = true)]
    pub nhs_number: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the access log from an embedded store no relay has open (or a
    /// PostgreSQL store) and check it against every signed checkpoint; exit 1 on any finding.
    Verify(VerifyArgs),
    /// Fetch the latest checkpoint, an inclusion proof or a consistency proof from a relay, check it and print it.
    Proof(super::audit_proof::ProofArgs),
    /// Create the deployment's access log signing key (once, outside any data directory; every node
    /// is then given it with --log-key) and print its verifier key for auditors.
    InitKey(InitKeyArgs),
}

#[derive(Debug, Args)]
pub struct InitKeyArgs {
    /// Where to create the key (mode 0600; its verifier key is written beside it as access-log.pub).
    #[arg(long, env = "CPIS_LOG_KEY")]
    pub key: std::path::PathBuf,
    /// Name (origin) the log's checkpoints are signed under: the nodes' log_name.
    #[arg(long, env = "CPIS_LOG_NAME", default_value = access_log::DEFAULT_LOG_NAME)]
    pub log_name: String,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: super::store_args::StoreArgs,
    /// The verifier key you were given (`name+id+key`), or a file holding it. Required: a key
    /// read from the store being checked would vouch for whoever rewrote that store.
    #[arg(long, env = "CPIS_LOG_VERIFIER_KEY")]
    pub verifier_key: String,
    #[command(flatten)]
    pub trust: TrustArgs,
}

pub(super) async fn run(args: AuditArgs) -> Result<u8, CliError> {
    match args.command {
        Some(AuditCommand::Verify(verify)) => run_verify(verify).await,
        Some(AuditCommand::Proof(proof)) => super::audit_proof::run(proof).await,
        Some(AuditCommand::InitKey(init)) => init_key(&init),
        None => {
            let nhs_number = args.nhs_number.unwrap_or_default();
            super::clients::audit(nhs_number, args.client).await
        }
    }
}

/// `audit init-key`: creates the key, refusing one that exists (it may sign a log already).
fn init_key(args: &InitKeyArgs) -> Result<u8, CliError> {
    if args.key.exists() {
        return Err(CliError::Config(format!(
            "key: {} exists; a deployment's key is created once (keep it, or move it away to start a new log)",
            args.key.display()
        )));
    }
    if let Some(parent) = args.key.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|error| CliError::Config(format!("key: {}: {error}", parent.display())))?;
    }
    let (signer, _) = access_log::load_or_create_signer(&args.log_name, &args.key)
        .map_err(|error| CliError::Config(format!("key: {error}")))?;
    println!("{}", signer.verifier());
    Ok(exit::OK)
}

async fn run_verify(args: VerifyArgs) -> Result<u8, CliError> {
    let data_dir = args.store.data_dir.clone();
    let verifier = verifier_key(&args.verifier_key)?;
    let trusted = trusted_checkpoint(&args.trust, &verifier).await?;
    if let Some((checkpoint, witnesses)) = &trusted {
        println!(
            "trusted checkpoint: {} accesses, signed at {}, cosigned by {}",
            checkpoint.size,
            checkpoint.time.to_rfc3339(),
            if witnesses.is_empty() { "no witness (taken as given)".to_owned() } else { witnesses.join(", ") }
        );
    }
    let trusted = trusted.map(|(checkpoint, _)| checkpoint);
    let started = std::time::Instant::now();
    let report = match &args.store.store {
        crate::config::StoreKind::Embedded => {
            if !data_dir.is_dir() {
                return Err(CliError::Config(format!("data_dir: {} is not a directory", data_dir.display())));
            }
            tokio::task::spawn_blocking(move || verify_embedded(&data_dir, &verifier, trusted.as_ref()))
                .await
                .map_err(|error| CliError::Failed(error.to_string()))??
        }
        crate::config::StoreKind::Postgres(_) => {
            let store = args.store.open().await?;
            let log = store.access_log().ok_or_else(|| CliError::Failed("this store keeps no access log".into()))?;
            tokio::task::spawn_blocking(move || match &trusted {
                Some(trusted) => access_log::verify_log_against(log.as_ref(), &verifier, trusted),
                None => access_log::verify_log(log.as_ref(), &verifier),
            })
            .await
            .map_err(|error| CliError::Failed(error.to_string()))?
            .map_err(|error| CliError::Failed(error.to_string()))?
        }
        crate::config::StoreKind::Memory => {
            return Err(CliError::Config("store: the memory store has nothing to verify".into()));
        }
    };
    print!("{}", describe(&report));
    println!("checked in {:.2} s", started.elapsed().as_secs_f64());
    Ok(if report.is_clean() { exit::OK } else { exit::FAILURE })
}

/// Verifies the access log of the embedded store in `data_dir`. Blocks.
pub(super) fn verify_embedded(
    data_dir: &Path,
    verifier: &VerifierKey,
    trusted: Option<&crate::transparency::Checkpoint>,
) -> Result<LogReport, CliError> {
    let store = EmbeddedStore::open(data_dir).map_err(|error| CliError::Failed(error.to_string()))?;
    let log = store.access_log().ok_or_else(|| CliError::Failed("this store keeps no access log".into()))?;
    match trusted {
        Some(trusted) => access_log::verify_log_against(log.as_ref(), verifier, trusted),
        None => access_log::verify_log(log.as_ref(), verifier),
    }
    .map_err(|error| CliError::Failed(error.to_string()))
}

/// The report as an auditor reads it.
pub(super) fn describe(report: &LogReport) -> String {
    let mut text = format!(
        "access log: positions {} to {} held ({} records), tree of {}; {} of {} signed checkpoints recomputed, {} retention notes\n",
        report.retained_from,
        report.next_position.saturating_sub(1),
        report.next_position - report.retained_from,
        report.tree_size,
        report.checkpoints_matched,
        report.checkpoints,
        report.retention_notes,
    );
    for finding in &report.findings {
        text.push_str(&format!("  FINDING {finding}\n"));
    }
    if report.more_findings > 0 {
        text.push_str(&format!("  and {} more records that differ or are missing\n", report.more_findings));
    }
    text.push_str(if report.is_clean() {
        "verified: no record deleted, altered or reordered\n"
    } else {
        "NOT VERIFIED\n"
    });
    text
}
