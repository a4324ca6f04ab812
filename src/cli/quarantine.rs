//! `cpis-relay quarantine`: what an operator does with searches the relay set
//! aside because the store refused their record every time (see
//! `relay::quarantine`). `list` shows them without personal data, `export`
//! writes them whole (JSON Lines, owner-only) for the local authorities to
//! be told by other means, and `replay` stores them once the cause is fixed
//! (the relay on that data directory stopped), keeping those still refused.

use std::{io::Write, path::PathBuf};

use clap::{Args, Subcommand};

use super::{CliError, exit};
use crate::relay::{
    quarantine::{self, Quarantined},
    spill::Spill,
};

#[derive(Debug, Args)]
pub struct QuarantineArgs {
    #[command(subcommand)]
    command: QuarantineCommand,
}

#[derive(Debug, Subcommand)]
enum QuarantineCommand {
    /// List the quarantined searches: when, where from, which authorities, why (no personal data).
    List {
        #[arg(long, env = "CPIS_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
    },
    /// Write the quarantined searches whole (with the person's NHS number) as JSON Lines, readable by the owner only.
    Export {
        #[arg(long, env = "CPIS_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        /// A new file (an existing one is not overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Store the quarantined searches (stop the relay on this data directory first);
    /// those the store still refuses stay quarantined with its new reason.
    Replay(super::store_args::StoreArgs),
}

pub(super) async fn run(args: QuarantineArgs) -> Result<u8, CliError> {
    match args.command {
        QuarantineCommand::List { data_dir } => {
            let contents = read(&data_dir)?;
            println!("{} searches quarantined in {}", contents.len(), data_dir.display());
            for (index, entry) in contents.iter().enumerate() {
                println!("{}", describe(index, entry));
            }
            Ok(exit::OK)
        }
        QuarantineCommand::Export { data_dir, out } => {
            let contents = read(&data_dir)?;
            export(&contents, &out)?;
            println!("{} quarantined searches written to {}", contents.len(), out.display());
            Ok(exit::OK)
        }
        QuarantineCommand::Replay(store) => replay(store).await,
    }
}

fn read(data_dir: &std::path::Path) -> Result<Vec<Quarantined>, CliError> {
    if !data_dir.is_dir() {
        return Err(CliError::Config(format!("data_dir: {} is not a directory", data_dir.display())));
    }
    let contents = quarantine::read(data_dir).map_err(|error| {
        CliError::Failed(format!("{}: {error}", data_dir.join(quarantine::QUARANTINE_FILE).display()))
    })?;
    if contents.unreadable_bytes > 0 {
        eprintln!(
            "warning: {} bytes of the quarantine file are torn or corrupt and were skipped",
            contents.unreadable_bytes
        );
    }
    Ok(contents.quarantined)
}

/// One line per search, without the person or the clinician.
fn describe(index: usize, entry: &Quarantined) -> String {
    let access = &entry.search.access;
    let authorities: Vec<&str> = entry.search.drafts.iter().map(|draft| draft.la_ods_code.as_str()).collect();
    format!(
        "#{index} access {} at {} by {} ({}), notifies {}; quarantined {} after {} attempts: {}",
        uuid::Uuid::from_u128(access.id),
        access.accessed_at.to_rfc3339(),
        access.organisation_ods_code,
        access.care_setting.display_name(),
        if authorities.is_empty() { "no one (scheduled)".to_owned() } else { authorities.join(", ") },
        entry.quarantined_at.to_rfc3339(),
        entry.attempts,
        entry.error
    )
}

fn export(contents: &[Quarantined], out: &std::path::Path) -> Result<(), CliError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let failed = |error: std::io::Error| CliError::Failed(format!("{}: {error}", out.display()));
    let mut file = options.open(out).map_err(failed)?;
    for entry in contents {
        let line = serde_json::to_string(entry).map_err(|error| CliError::Failed(error.to_string()))?;
        writeln!(file, "{line}").map_err(failed)?;
    }
    file.sync_all().map_err(failed)
}

async fn replay(store: super::store_args::StoreArgs) -> Result<u8, CliError> {
    let data_dir = store.data_dir.clone();
    let contents = read(&data_dir)?;
    if contents.is_empty() {
        println!("nothing is quarantined in {}", data_dir.display());
        return Ok(exit::OK);
    }
    // The data directory's lock: no relay may append meanwhile.
    let locking = data_dir.clone();
    let _lock = tokio::task::spawn_blocking(move || Spill::open(&locking))
        .await
        .map_err(|error| CliError::Failed(error.to_string()))?
        .map_err(|error| CliError::Failed(format!("{error} (stop the relay first)")))?;
    let store = store.open().await?;
    let (mut stored, mut kept) = (0, Vec::new());
    for mut entry in contents {
        let search = &entry.search;
        match store.record_access(search.access.clone(), search.drafts.clone()).await {
            Ok(_) => stored += 1,
            Err(error) => {
                entry.error = error.to_string();
                entry.attempts += 1;
                kept.push(entry);
            }
        }
    }
    let rewriting = data_dir.clone();
    let still = kept.clone();
    tokio::task::spawn_blocking(move || quarantine::rewrite(&rewriting, &still))
        .await
        .map_err(|error| CliError::Failed(error.to_string()))?
        .map_err(|error| CliError::Failed(format!("rewriting the quarantine: {error}")))?;
    println!("{stored} quarantined searches stored; {} still refused", kept.len());
    for (index, entry) in kept.iter().enumerate() {
        println!("{}", describe(index, entry));
    }
    Ok(if kept.is_empty() { exit::OK } else { exit::FAILURE })
}
