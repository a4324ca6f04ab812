//! What `cpis-relay bench` is asked for: the scenario and its settings.
//! Apart from `bench`, which dispatches to the scenarios, so that the
//! scenarios' modules (`bench_grpc`, `bench_day`, `bench_day_faults`) take
//! their arguments from here and never import their dispatcher.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::{certs, config::StoreKind};

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
