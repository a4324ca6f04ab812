//! `cpis-relay bench`: arguments, dispatch, and the in-process store
//! scenarios (fill, startup, retention). The gRPC scenarios are in
//! `bench_grpc`: by default they start the relay as its own `serve` process on
//! 127.0.0.1 (embedded store in a temporary directory) so that a run is one
//! command; `--server` targets a running relay instead.

use std::{path::PathBuf, sync::Arc, time::Instant};

use clap::{Args, ValueEnum};
use serde_json::json;

use super::{CliError, exit};
use crate::{
    bench::{self, echo},
    certs, client,
    clock::{Clock, ManualClock, SystemClock},
    config::StoreKind,
    proto,
    relay::{Relay, RelaySettings},
    store::embedded::EmbeddedStore,
    synth,
    tls::{self, PemFiles},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Searches over gRPC and mutual TLS (the default).
    Load,
    /// Fill --data-dir with --people and --notifications (in-process), for `startup`.
    Fill,
    /// Open --data-dir and rebuild the relay in a fresh process: time to ready and memory.
    Startup,
    /// Steady flagged searches, all acknowledged, over --days of simulated time with retention on: store size per day.
    Retention,
    /// Flagged searches paced at --rate per second over gRPC; time from each answer to its notification at a subscriber.
    Delivery,
    /// A FULL_REFRESH of --records plans over gRPC, into a small set and then replacing itself: records per second.
    Refresh,
    /// Serve the echo baseline from the responses in --data-dir (what --baseline starts in its own process).
    Echo,
    /// A day of England replayed against --nodes relay nodes on --store postgres://... (scripts/national-day.sh).
    NationalDay,
}

#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Scenario::Load)]
    pub scenario: Scenario,
    /// A running relay to load; default: start one in-process.
    #[arg(long, env = "CPIS_SERVER")]
    pub server: Option<String>,
    /// delivery: subscribe through this relay instead (another node on the same PostgreSQL).
    #[arg(long)]
    pub subscribe_server: Option<String>,
    /// Store of the relay the bench starts.
    #[arg(long, default_value = "embedded")]
    pub store: StoreKind,
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Searches in flight per connection.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Measured seconds (per target with --baseline).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 0.5)]
    pub flagged_ratio: f64,
    /// Synthetic people loaded first (at most 900,000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=crate::synth::MAX_PEOPLE as u64))]
    pub people: usize,
    /// Also measure a bare tonic echo server with the same TLS and message sizes, alternating with the relay.
    #[arg(long)]
    pub baseline: bool,
    #[arg(long)]
    pub json: bool,
    #[arg(long, env = "CPIS_CERTS_DIR", default_value = certs::DEV_DIR)]
    pub certs_dir: PathBuf,
    /// Store directory for fill and startup.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Notifications made by fill.
    #[arg(long, default_value_t = 0)]
    pub notifications: usize,
    /// Simulated days for the retention soak.
    #[arg(long, default_value_t = 400)]
    pub days: u32,
    /// Flagged searches per simulated day in the retention soak.
    #[arg(long, default_value_t = 2_000)]
    pub searches_per_day: usize,
    /// Searches per second in the delivery scenario.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// Records of the FULL_REFRESH in the refresh scenario.
    #[arg(long, default_value_t = 150_000)]
    pub records: usize,
    /// Load scenario: FULL_REFRESHes of this many records run back to back (as 706) while searches are measured.
    #[arg(long, default_value_t = 0)]
    pub refresh_records: usize,
    /// national-day: relay nodes started on the --store.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// national-day: local authorities.
    #[arg(long, default_value_t = crate::bench::national_day::ENGLAND_AUTHORITIES)]
    pub authorities: usize,
    /// national-day: flagged people across the authorities.
    #[arg(long, default_value_t = 135_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=crate::synth::MAX_PEOPLE as u64 * 8 / 10))]
    pub flagged: usize,
    /// national-day: authorities whose notifications a `deliver` agent posts to the bench's webhook receiver.
    #[arg(long, default_value_t = 12)]
    pub agents: usize,
    /// national-day: unscheduled-care organisations searching, each with its own certificate and connection.
    #[arg(long, default_value_t = 300)]
    pub organisations: usize,
    /// national-day: searches in the whole day.
    #[arg(long, default_value_t = 200_000)]
    pub day_searches: usize,
    /// national-day: real seconds the day lasts (the speed-up is 86,400 / this).
    #[arg(long, default_value_t = 600.0)]
    pub day_seconds: f64,
    /// national-day: share of searches that find a flagged person.
    #[arg(long, default_value_t = 0.1)]
    pub flagged_share: f64,
    /// national-day: run the last node with its clock this many seconds ahead
    /// (negative: behind), under libfaketime (`apt-get install faketime`).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub skew_last_node_secs: i64,
    /// national-day: hold every chunk between the nodes and the database this
    /// long, in each direction (a delaying proxy: this kernel has no netem).
    #[arg(long, default_value_t = 0)]
    pub db_delay_ms: u64,
    /// national-day: plus or minus this much, drawn per chunk.
    #[arg(long, default_value_t = 0)]
    pub db_jitter_ms: u64,
    /// national-day: break the network at set hours (node 1 cut off from the
    /// database at 05:00, node 2 from its clients at 10:00, slow and lossy
    /// links 12:00-14:00). Needs root, inside a network namespace of its own:
    /// `scripts/national-day.sh --faults` makes one.
    #[arg(long)]
    pub network_faults: bool,
}

fn failed(error: impl std::fmt::Display) -> CliError {
    CliError::Failed(error.to_string())
}

pub async fn run(args: BenchArgs) -> Result<u8, CliError> {
    certs::ensure_dev(&args.certs_dir).map_err(failed)?;
    match args.scenario {
        Scenario::Load => super::bench_grpc::load_scenario(&args).await,
        Scenario::Fill => fill(&args).await,
        Scenario::Startup => {
            let dir = args.data_dir.clone().ok_or_else(|| CliError::Config("--data-dir is required".into()))?;
            let report = bench::startup(&args.store, &dir, Arc::new(SystemClock)).await.map_err(failed)?;
            println!("{}", serde_json::to_string_pretty(&report).map_err(failed)?);
            Ok(exit::OK)
        }
        Scenario::Retention => retention(&args).await,
        Scenario::Delivery => super::bench_grpc::delivery(&args).await,
        Scenario::Refresh => super::bench_grpc::refresh(&args).await,
        Scenario::Echo => echo(&args).await,
        Scenario::NationalDay => super::bench_day::national_day(&args).await,
    }
}

/// The echo baseline in this process, until SIGTERM or SIGINT.
async fn echo(args: &BenchArgs) -> Result<u8, CliError> {
    let dir = args.data_dir.clone().ok_or_else(|| CliError::Config("--data-dir is required".into()))?;
    let server_pem = PemFiles::in_dir(&args.certs_dir, "server").read().map_err(failed)?;
    let tls_config = tls::server_config(&server_pem).map_err(failed)?;
    let server = echo::start_from_dir(tls_config, &dir).await.map_err(failed)?;
    println!("cpis-relay echo listening: grpc={}", server.address);
    super::serve::shutdown_signal().await;
    Ok(exit::OK)
}

async fn fill(args: &BenchArgs) -> Result<u8, CliError> {
    let dir = args.data_dir.clone().ok_or_else(|| CliError::Config("--data-dir is required".into()))?;
    let store = bench::open_store(&args.store, &dir).await.map_err(failed)?;
    // The fill loads up to the whole test range, one FULL_REFRESH per authority.
    // The access log is signed with the data directory's key, so `audit verify --data-dir` checks the fill.
    let log_signer = match args.store {
        StoreKind::Embedded => Some(Arc::new(
            crate::access_log::load_or_create_signer(
                crate::access_log::DEFAULT_LOG_NAME,
                &dir.join(crate::access_log::DEFAULT_KEY_FILE),
            )
            .map_err(|error| CliError::Failed(error.to_string()))?
            .0,
        )),
        _ => None,
    };
    let settings = RelaySettings { max_upload_records: synth::MAX_PEOPLE * 2, log_signer, ..RelaySettings::default() };
    let relay = Relay::open(store, Arc::new(SystemClock), settings).await.map_err(failed)?;
    let today = chrono::Utc::now().date_naive();
    let started = Instant::now();
    let flagged = bench::load_people(&relay, args.people, today).await.map_err(failed)?;
    let loaded_in = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let answered = bench::search_many(&relay, &flagged, args.notifications, 512, "fill").await;
    let searched_in = started.elapsed().as_secs_f64();
    // The tree of every access and a signed checkpoint of it, as a relay's keeper leaves them.
    let started = Instant::now();
    if let Some(keeper) = relay.log_keeper() {
        keeper.run(|keeper| keeper.checkpoint()).await.map_err(failed)?;
    }
    let logged_in = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"people": args.people, "plans_seconds": loaded_in, "searches": answered, "searches_seconds": searched_in,
               "access_log_seconds": logged_in, "store_bytes": bench::directory_bytes(&dir)})
    );
    Ok(exit::OK)
}

async fn retention(args: &BenchArgs) -> Result<u8, CliError> {
    let dir = tempfile::tempdir().map_err(failed)?;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let store = Arc::new(EmbeddedStore::open(dir.path()).map_err(failed)?);
    let relay = Relay::open(store, clock.clone(), RelaySettings::default()).await.map_err(failed)?;
    let flagged = bench::load_people(&relay, args.people, clock.today()).await.map_err(failed)?;
    let mut sizes = Vec::new();
    let mut retained: u64 = 0;
    for day in 1..=args.days {
        retained += bench::search_many(&relay, &flagged, args.searches_per_day, 256, &format!("d{day}")).await as u64;
        bench::ack_all(&relay).await.map_err(failed)?;
        clock.advance(chrono::Duration::days(1));
        retained -= relay.expire().await.map_err(failed)?.accesses;
        if day == 1 || day % 50 == 0 || day == args.days {
            let bytes = bench::directory_bytes(dir.path());
            eprintln!("day {day}: store {:.1} MiB, {retained} accesses retained", bytes as f64 / 1048576.0);
            sizes.push(json!({"day": day, "store_bytes": bytes, "accesses": retained}));
        }
    }
    println!("{}", json!({"searches_per_day": args.searches_per_day, "people": args.people, "sizes": sizes}));
    Ok(exit::OK)
}

/// The flagged people of an external relay: 706's exported plans, or, when
/// 706 holds none, synthetic people uploaded for 706 and 855 first.
pub(super) async fn upload_to_external(args: &BenchArgs, url: &str) -> Result<Vec<String>, CliError> {
    let unavailable = |error: client::ClientError| CliError::Unavailable(error.to_string());
    let la_706 = PemFiles::in_dir(&args.certs_dir, "la-706").read().map_err(failed)?;
    let channel = client::connect(url, &la_706, None).await.map_err(unavailable)?;
    let mut exported =
        proto::plans_client::PlansClient::new(channel).export(proto::ExportRequest {}).await?.into_inner();
    let mut held = Vec::new();
    while let Some(record) = futures::StreamExt::next(&mut exported).await {
        held.push(record?.nhs_number);
    }
    if !held.is_empty() {
        eprintln!("the target holds {} plans of 706; searching those, uploading nothing", held.len());
        return Ok(held);
    }
    let records = synth::generate(args.people, 2026, chrono::Utc::now().date_naive());
    let mut flagged = Vec::new();
    for (identity, ods_code) in [("la-706", "706"), ("la-855", "855")] {
        let pem = PemFiles::in_dir(&args.certs_dir, identity).read().map_err(failed)?;
        let channel = client::connect(url, &pem, None).await.map_err(unavailable)?;
        let mine: Vec<proto::PlanRecord> =
            records.iter().filter(|r| r.la_ods_code == ods_code).map(|r| r.record.clone()).collect();
        flagged.extend(mine.iter().map(|record| record.nhs_number.clone()));
        let authority = bench::wire_authority(ods_code).ok_or_else(|| failed("no synthetic authority"))?;
        let progress = indicatif::ProgressBar::hidden();
        super::upload::send(channel, proto::UploadMode::Incremental, false, "bench", authority, mine, &progress)
            .await?;
    }
    Ok(flagged)
}
