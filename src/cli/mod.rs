//! The `cpis-relay` command line: argument definitions (clap derive, every
//! option also an environment variable), dispatch, and exit statuses. Each
//! verb's work lives in a submodule; `main.rs` only calls [`main`].

mod audit;
mod audit_proof;
mod audit_trusted;
mod bench;
mod bench_args;
mod bench_day;
mod bench_day_faults;
mod bench_day_uploads;
mod bench_grpc;
mod clients;
mod deliver;
mod demo;
mod probe;
mod quarantine;
mod sar;
mod serve;
mod store_args;
mod subscribe_verify;
mod token;
mod top;
mod upload;
mod witness;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{
    auth::Identity,
    certs,
    telemetry::{self, LogFormat},
    tls::{PemFiles, PemText},
};

/// Exit statuses, after sysexits.h where one fits.
pub mod exit {
    pub const OK: u8 = 0;
    pub(crate) const FAILURE: u8 = 1;
    /// An upload that did not load every record.
    pub(crate) const NOT_ALL_LOADED: u8 = 2;
    /// EX_USAGE: bad arguments or configuration.
    pub(crate) const CONFIG: u8 = 64;
    /// EX_DATAERR: an input file that cannot be used.
    pub(crate) const DATA: u8 = 65;
    /// EX_UNAVAILABLE: the relay could not be reached or refused the call.
    pub const UNAVAILABLE: u8 = 69;
    /// EX_IOERR: `serve` stopped because the embedded store's journal could
    /// not be written or synced; restarting replays it.
    pub const STORE_BROKEN: u8 = 74;
}

#[derive(Debug, Parser)]
#[command(name = "cpis-relay", version, about = "Child protection information-sharing relay", long_about = None)]
pub(crate) struct Cli {
    /// Log format on stderr (filter with CPIS_LOG, default info).
    #[arg(long, global = true, env = "CPIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up: the size of the largest variant (every `serve` setting) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve(serve::ServeArgs),
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Offline checks of the embedded store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Write synthetic people (999 test-range NHS numbers) to a CSV or JSON Lines file.
    Synth(clients::SynthArgs),
    /// Upload a CSV or JSON Lines file of plans as a local authority.
    Upload(upload::UploadArgs),
    /// Search a person by NHS number as unscheduled care.
    Search(clients::SearchArgs),
    /// Follow a local authority's access notifications as JSON lines.
    Subscribe(clients::SubscribeArgs),
    /// Acknowledge notifications up to and including a sequence number.
    Ack(clients::AckArgs),
    /// Deliver a local authority's notifications to a signed webhook or an outbox folder, acknowledging only what was delivered.
    Deliver(deliver::DeliverArgs),
    /// Write a local authority's plans as CSV or JSON Lines.
    Export(clients::ExportArgs),
    /// Delete a local authority's plans of a person.
    Delete(clients::DeleteArgs),
    /// List every retained access of a person, as an auditor; `audit verify` checks the tamper-evident access log.
    Audit(audit::AuditArgs),
    /// Searches set aside because the store refused their record every time: list, export, replay.
    Quarantine(quarantine::QuarantineArgs),
    /// Write everything the relay holds about one person (subject access request), as an auditor: JSON and HTML with proofs.
    Sar(sar::SarArgs),
    /// Start a relay on the embedded defaults, load synthetic data, search and watch notifications arrive.
    Demo(demo::DemoArgs),
    /// Load generator and store scenarios (see PERFORMANCE.md).
    Bench(bench_args::BenchArgs),
    /// Live view of a relay's metrics for an operator's terminal.
    Top(top::TopArgs),
    /// Mint a development bearer token for the FHIR door.
    Token(token::TokenArgs),
    /// Ask an admin endpoint (/healthz, /readyz): exit 0 on 2xx (the container image's health check).
    Probe(probe::ProbeArgs),
    /// Run an access log witness (C2SP tlog-witness): cosigns a relay's checkpoints that extend the last it cosigned.
    Witness(witness::WitnessArgs),
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a development CA, a localhost server certificate and one client per role.
    Init {
        #[arg(long, env = "CPIS_CERTS_DIR", default_value = certs::DEV_DIR)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Verify a store and print counts per table: an embedded store no relay
    /// has open, or a PostgreSQL store (in one read-only snapshot, relays may run).
    Check(store_args::StoreArgs),
}

/// How a client reaches the relay and who it is.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Relay address.
    #[arg(long, env = "CPIS_SERVER", default_value = "https://localhost:50051")]
    pub server: String,
    /// A development identity in --certs-dir: ed-rr8, gp-y02, la-706, la-855 or auditor.
    #[arg(long = "as", env = "CPIS_IDENTITY")]
    pub identity: Option<String>,
    /// Directory of development certificates.
    #[arg(long, env = "CPIS_CERTS_DIR", default_value = certs::DEV_DIR)]
    pub certs_dir: PathBuf,
    /// CA certificate (PEM) that issued the relay's certificate.
    #[arg(long, env = "CPIS_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, env = "CPIS_CERT")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "CPIS_KEY")]
    pub key: Option<PathBuf>,
}

impl ClientArgs {
    /// The PEM files to use, given the verb's default identity.
    fn pem_files(&self, default_identity: &str) -> PemFiles {
        let name = self.identity.as_deref().unwrap_or(default_identity);
        let defaults = PemFiles::in_dir(&self.certs_dir, name);
        PemFiles {
            ca: self.ca.clone().unwrap_or(defaults.ca),
            cert: self.cert.clone().unwrap_or(defaults.cert),
            key: self.key.clone().unwrap_or(defaults.key),
        }
    }

    /// Reads the PEM files and the identity their certificate names.
    fn load(&self, default_identity: &str) -> Result<(PemText, Identity), CliError> {
        let files = self.pem_files(default_identity);
        let pem = files.read().map_err(|error| {
            CliError::Config(format!("{error} (run `cpis-relay certs init`, or pass --cert/--key/--ca)"))
        })?;
        let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem.cert.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| CliError::Config(format!("{}: no PEM certificate", files.cert.display())))?;
        let identity = Identity::from_certificate(&der)
            .map_err(|message| CliError::Config(format!("{}: {message}", files.cert.display())))?;
        Ok((pem, identity))
    }

    async fn channel(&self, default_identity: &str) -> Result<(tonic::transport::Channel, Identity), CliError> {
        let (pem, identity) = self.load(default_identity)?;
        let channel = crate::client::connect(&self.server, &pem, None)
            .await
            .map_err(|error| CliError::Unavailable(error.to_string()))?;
        Ok((channel, identity))
    }
}

use rustls::pki_types::pem::PemObject;

/// A failed command, with the exit status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    fn exit_status(&self) -> u8 {
        match self {
            Self::Config(_) => exit::CONFIG,
            Self::Data(_) => exit::DATA,
            Self::Unavailable(_) => exit::UNAVAILABLE,
            Self::Failed(_) => exit::FAILURE,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        // A field violation is the whole story for INVALID_ARGUMENT; otherwise the message is.
        let text = tonic_types::StatusExt::get_details_bad_request(&status)
            .map(|bad| {
                let violations: Vec<String> = bad
                    .field_violations
                    .iter()
                    .map(|violation| format!("{}: {}", violation.field, violation.description))
                    .collect();
                violations.join("; ")
            })
            .filter(|text| !text.is_empty())
            .unwrap_or_else(|| status.message().to_owned());
        // The relay's text, escaped: it reaches the terminal.
        let message = format!("relay answered {:?}: {}", status.code(), crate::text::escape_control(&text));
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted => {
                Self::Unavailable(message)
            }
            tonic::Code::InvalidArgument => Self::Data(message),
            _ => Self::Failed(message),
        }
    }
}

/// Parses arguments and runs the command; the process's exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { exit::CONFIG } else { exit::OK });
        }
    };
    crate::tls::install_crypto_provider();
    // The server and the delivery agent log at info; client verbs and the demo print their own output.
    let default_filter = if matches!(cli.command, Command::Serve(_) | Command::Deliver(_) | Command::Witness(_)) {
        "info"
    } else {
        "warn"
    };
    // Traces are set up with the logs, before the runtime; a bad trace setting is a configuration error.
    let traces = match trace_settings(&cli.command) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("cpis-relay: {error}");
            return ExitCode::from(error.exit_status());
        }
    };
    let service = if matches!(cli.command, Command::Deliver(_)) { "cpis-relay-deliver" } else { "cpis-relay" };
    // Held until the process ends: dropping it exports buffered spans and flushes buffered log lines.
    let _log_writer =
        match telemetry::init_logging_with_traces(cli.log_format, default_filter, traces.as_ref(), service) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("cpis-relay: configuration otlp_endpoint: {error}");
                return ExitCode::from(exit::CONFIG);
            }
        };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cpis-relay: cannot start the async runtime: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            eprintln!("cpis-relay: {error}");
            ExitCode::from(error.exit_status())
        }
    }
}

/// The trace settings of `serve` and `deliver` (resolved as they will be
/// again when they run); other verbs export no traces.
fn trace_settings(command: &Command) -> Result<Option<crate::traces::TraceConfig>, CliError> {
    match command {
        Command::Serve(args) if !args.print_config => Ok(serve::resolve(args)?.traces()),
        Command::Deliver(args) if !args.print_config => Ok(deliver::resolve(args)?.traces()),
        _ => Ok(None),
    }
}

async fn run(command: Command) -> Result<u8, CliError> {
    match command {
        Command::Serve(args) => serve::run(args).await,
        Command::Certs { command: CertsCommand::Init { out } } => {
            let written = certs::init(&out).map_err(|error| CliError::Failed(error.to_string()))?;
            for path in written {
                println!("{}", path.display());
            }
            Ok(exit::OK)
        }
        Command::Store { command: StoreCommand::Check(store) } => {
            let failed = |error: crate::store::StoreError| CliError::Failed(error.to_string());
            let data_dir = store.data_dir.clone();
            let report = match &store.store {
                crate::config::StoreKind::Postgres(url) => {
                    crate::store::postgres::check::check(&store.connect_options(url)).await.map_err(failed)?
                }
                crate::config::StoreKind::Memory => {
                    return Err(CliError::Config("store: the memory store has nothing to check".into()));
                }
                crate::config::StoreKind::Embedded => crate::store::check::check(&data_dir).map_err(failed)?,
            };
            println!("{}: integrity {}", report.path.display(), if report.integrity_ok { "ok" } else { "FAILED" });
            for (table, count) in &report.tables {
                println!("  {table:<14} {count:>12}");
            }
            for problem in &report.problems {
                println!("  problem: {problem}");
            }
            // The node's quarantine lives in its data directory, beside an embedded store.
            if data_dir.is_dir() {
                let quarantined = crate::relay::quarantine::read(&data_dir)
                    .map_err(|error| CliError::Failed(format!("quarantine in {}: {error}", data_dir.display())))?;
                println!("  {:<14} {:>12}", "quarantined", quarantined.quarantined.len());
                if !quarantined.quarantined.is_empty() {
                    println!(
                        "  warning: searches are quarantined in {}: their local authorities are not notified (cpis-relay quarantine list)",
                        data_dir.display()
                    );
                }
            }
            Ok(if report.integrity_ok { exit::OK } else { exit::FAILURE })
        }
        Command::Synth(args) => clients::synth(args),
        Command::Upload(args) => upload::run(args).await,
        Command::Search(args) => clients::search(args).await,
        Command::Subscribe(args) => clients::subscribe(args).await,
        Command::Ack(args) => clients::ack(args).await,
        Command::Deliver(args) => deliver::run(args).await,
        Command::Export(args) => clients::export(args).await,
        Command::Delete(args) => clients::delete(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Quarantine(args) => quarantine::run(args).await,
        Command::Sar(args) => sar::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Top(args) => top::run(args).await,
        Command::Token(args) => token::run(args),
        Command::Probe(args) => probe::run(args).await,
        Command::Witness(args) => witness::run(args).await,
    }
}
