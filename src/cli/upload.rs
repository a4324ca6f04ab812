//! `cpis-relay upload FILE`: reads a CSV or JSON Lines file, sends the rows
//! of the caller's local authority as one upload stream with progress on a
//! terminal, and prints the relay's per-record report against file lines.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::Channel;

use super::{CliError, ClientArgs, exit};
use crate::{
    proto::{self, UploadHeader, UploadMessage, plans_client::PlansClient, upload_message::Body},
    records_file, synth,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Incremental,
    FullRefresh,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// CSV with a header row, or JSON Lines (.jsonl).
    pub file: PathBuf,
    #[arg(long, env = "CPIS_UPLOAD_MODE", value_enum, default_value_t = ModeArg::Incremental)]
    pub mode: ModeArg,
    /// Local authority name (default: the certificate's O).
    #[arg(long, env = "CPIS_LA_NAME")]
    pub la_name: Option<String>,
    /// Office-hours phone of the children's social care team.
    #[arg(long, env = "CPIS_LA_OFFICE_HOURS_PHONE")]
    pub office_hours_phone: Option<String>,
    /// Out-of-hours (emergency duty team) phone.
    #[arg(long, env = "CPIS_LA_EMERGENCY_PHONE")]
    pub emergency_phone: Option<String>,
    /// FULL_REFRESH: the file is meant to remove a large share of this authority's plans. Without
    /// it the relay refuses a refresh that would remove more than its configured share (default
    /// 10 %) or that has more than its configured share of records rejected.
    #[arg(long, env = "CPIS_ALLOW_LARGE_REMOVAL")]
    pub allow_large_removal: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Streams one upload and returns the relay's report. `allow_large_removal`
/// (FULL_REFRESH only) says a large removal of the authority's plans is intended.
pub(super) async fn send(
    channel: Channel,
    mode: proto::UploadMode,
    allow_large_removal: bool,
    file_id: &str,
    authority: proto::LocalAuthority,
    records: Vec<proto::PlanRecord>,
    progress: &ProgressBar,
) -> Result<proto::UploadReport, tonic::Status> {
    let header = UploadMessage {
        body: Some(Body::Header(UploadHeader {
            mode: mode as i32,
            file_id: file_id.to_owned(),
            local_authority: Some(authority),
            allow_large_removal,
        })),
    };
    let progress = progress.clone();
    let messages = futures::stream::iter(std::iter::once(header).chain(records.into_iter().map(move |record| {
        progress.inc(1);
        UploadMessage { body: Some(Body::Record(record)) }
    })));
    Ok(PlansClient::new(channel).max_encoding_message_size(1 << 20).upload(messages).await?.into_inner())
}

pub(super) async fn run(args: UploadArgs) -> Result<u8, CliError> {
    let rows = records_file::read(&args.file).map_err(|error| CliError::Data(error.to_string()))?;
    let (channel, identity) = args.client.channel("la-706").await?;
    let known = synth::authority(&identity.ods_code);
    let required = |value: Option<String>, known: Option<String>, flag: &str| {
        value
            .or(known)
            .ok_or_else(|| CliError::Config(format!("{flag} is required for local authority {}", identity.ods_code)))
    };
    let authority = proto::LocalAuthority {
        ods_code: identity.ods_code.clone(),
        name: args.la_name.clone().unwrap_or_else(|| identity.organisation_name.clone()),
        office_hours_phone: required(
            args.office_hours_phone.clone(),
            known.as_ref().map(|la| la.office_hours_phone.clone()),
            "--office-hours-phone",
        )?,
        emergency_phone: required(
            args.emergency_phone.clone(),
            known.as_ref().map(|la| la.emergency_phone.clone()),
            "--emergency-phone",
        )?,
    };

    let mut lines = Vec::new();
    let mut records = Vec::new();
    let mut unreadable = Vec::new();
    let mut other_authorities = 0u64;
    for row in rows {
        if row.la_ods_code.as_deref().is_some_and(|la| la != identity.ods_code) {
            other_authorities += 1;
            continue;
        }
        match row.record {
            Ok(record) => {
                lines.push(row.line);
                records.push(record);
            }
            Err(message) => unreadable.push((row.line, message)),
        }
    }
    if other_authorities > 0 {
        eprintln!(
            "skipped {other_authorities} rows of other local authorities (this certificate is for {})",
            identity.ods_code
        );
    }
    let mode = match args.mode {
        ModeArg::Incremental => proto::UploadMode::Incremental,
        ModeArg::FullRefresh => proto::UploadMode::FullRefresh,
    };
    if mode == proto::UploadMode::FullRefresh && !unreadable.is_empty() {
        for (line, message) in &unreadable {
            eprintln!("line {line}: {}", crate::text::escape_control(message));
        }
        return Err(CliError::Data(format!(
            "{} unreadable rows: a FULL_REFRESH would remove their plans, so nothing was sent; fix the file",
            unreadable.len()
        )));
    }
    let progress = ProgressBar::new(records.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} uploading {pos}/{len} records {wide_bar} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let file_id = args.file.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let report = send(channel, mode, args.allow_large_removal, &file_id, authority, records, &progress).await?;
    progress.finish_and_clear();

    let status = proto::UploadStatus::try_from(report.status).map(|status| status.as_str_name()).unwrap_or("UNKNOWN");
    println!(
        "{status}: loaded {}, rejected {}, removed {}; the relay received {} records",
        report.loaded,
        report.rejected + unreadable.len() as u64,
        report.removed,
        report.received
    );
    if mode == proto::UploadMode::FullRefresh {
        println!("  the authority held {} plans before this refresh", report.current_plans);
    }
    for count in &report.rejection_counts {
        println!("  {} {}", count.count, crate::text::escape_control(&count.reason));
    }
    for (line, message) in &unreadable {
        println!("  line {line}: UNREADABLE_ROW {}", crate::text::escape_control(message));
    }
    for rejection in &report.rejections {
        let line = lines.get(rejection.index as usize).copied().unwrap_or_default();
        println!(
            "  line {line}: {} {} (NHS number {:?})",
            crate::text::escape_control(&rejection.reason),
            crate::text::escape_control(&rejection.message),
            rejection.nhs_number
        );
    }
    if report.rejected > report.rejections.len() as u64 {
        println!("  ... {} more rejections, counted above", report.rejected - report.rejections.len() as u64);
    }
    let all_loaded = report.status == proto::UploadStatus::AllLoaded as i32 && unreadable.is_empty();
    Ok(if all_loaded { exit::OK } else { exit::NOT_ALL_LOADED })
}
