//! `cpis-relay bench`: the load generator and store scenarios. By default it
//! starts its own relay in-process on 127.0.0.1 (embedded store in a
//! temporary directory) so that a run is one command; `--server` targets a
//! running relay instead.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use serde_json::json;
use tokio::net::TcpListener;

use super::{CliError, exit};
use crate::{
    bench::{self, echo, load},
    certs, client,
    clock::{Clock, ManualClock, SystemClock},
    config::StoreKind,
    proto::{self, lookup_client::LookupClient},
    relay::{Relay, RelaySettings},
    server::{self, ServerOptions},
    store::{Store, embedded::EmbeddedStore, memory::MemoryStore},
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
}

#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Scenario::Load)]
    pub scenario: Scenario,
    /// A running relay to load; default: start one in-process.
    #[arg(long, env = "CPIS_SERVER")]
    pub server: Option<String>,
    /// Store of the in-process relay.
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
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
}

fn failed(error: impl std::fmt::Display) -> CliError {
    CliError::Failed(error.to_string())
}

pub async fn run(args: BenchArgs) -> Result<u8, CliError> {
    certs::ensure_dev(&args.certs_dir).map_err(failed)?;
    match args.scenario {
        Scenario::Load => load_scenario(&args).await,
        Scenario::Fill => fill(&args).await,
        Scenario::Startup => {
            let dir = args.data_dir.clone().ok_or_else(|| CliError::Config("--data-dir is required".into()))?;
            let report = bench::startup(&dir, Arc::new(SystemClock)).await.map_err(failed)?;
            println!("{}", serde_json::to_string_pretty(&report).map_err(failed)?);
            Ok(exit::OK)
        }
        Scenario::Retention => retention(&args).await,
        Scenario::Delivery => delivery(&args).await,
        Scenario::Refresh => refresh(&args).await,
    }
}

async fn fill(args: &BenchArgs) -> Result<u8, CliError> {
    let dir = args.data_dir.clone().ok_or_else(|| CliError::Config("--data-dir is required".into()))?;
    let store = Arc::new(EmbeddedStore::open(&dir).map_err(failed)?);
    let relay = Relay::open(store, Arc::new(SystemClock), RelaySettings::default()).await.map_err(failed)?;
    let today = chrono::Utc::now().date_naive();
    let started = Instant::now();
    let flagged = bench::load_people(&relay, args.people, today).await.map_err(failed)?;
    let loaded_in = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let answered = bench::search_many(&relay, &flagged, args.notifications, 512, "fill").await;
    let searched_in = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"people": args.people, "plans_seconds": loaded_in, "searches": answered, "searches_seconds": searched_in,
               "store_bytes": bench::directory_bytes(&dir)})
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

/// Paces flagged searches over gRPC and times, for each, the gap between
/// the search's answer and its notification's arrival at the owning
/// authority's subscriber (both on this machine's clock; a notification that
/// beats the answer to the client counts as zero).
async fn delivery(args: &BenchArgs) -> Result<u8, CliError> {
    let server_pem = PemFiles::in_dir(&args.certs_dir, "server").read().map_err(failed)?;
    let tls_config = tls::server_config(&server_pem).map_err(failed)?;
    let (target, flagged) = start_in_process(args, tls_config).await?;
    let unavailable = |error: client::ClientError| CliError::Unavailable(error.to_string());
    let timings = Arc::new(bench::delivery::DeliveryTimings::default());
    let mut subscribers = Vec::new();
    for identity in ["la-706", "la-855"] {
        let pem = PemFiles::in_dir(&args.certs_dir, identity).read().map_err(failed)?;
        let channel = client::connect(&target.url, &pem, None).await.map_err(unavailable)?;
        let mut stream = proto::notifications_client::NotificationsClient::new(channel)
            .subscribe(proto::SubscribeRequest { after_sequence: None })
            .await?
            .into_inner();
        let timings = Arc::clone(&timings);
        subscribers.push(tokio::spawn(async move {
            while let Some(Ok(notification)) = futures::StreamExt::next(&mut stream).await {
                let user = notification.accessor.map(|accessor| accessor.user_id).unwrap_or_default();
                timings.arrived(user, Instant::now());
            }
        }));
    }
    let ed = PemFiles::in_dir(&args.certs_dir, "ed-rr8").read().map_err(failed)?;
    let lookup = LookupClient::new(client::connect(&target.url, &ed, None).await.map_err(unavailable)?);
    // Only people of the subscribed authorities, so every answer has a notification to wait for.
    let watched: Vec<String> = synth::generate(args.people, 2026, chrono::Utc::now().date_naive())
        .into_iter()
        .filter(|record| ["706", "855"].contains(&record.la_ods_code.as_str()))
        .map(|record| record.record.nhs_number)
        .filter(|nhs| flagged.contains(nhs))
        .collect();
    let total = (f64::from(args.rate) * args.duration) as usize;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1))));
    let mut searches = Vec::with_capacity(total);
    for i in 0..total {
        ticks.tick().await;
        let (mut lookup, timings) = (lookup.clone(), Arc::clone(&timings));
        let user = format!("delivery-{i}");
        let request = bench::search_request(watched[(i * 7919) % watched.len()].clone(), user.clone());
        searches.push(tokio::spawn(async move {
            if lookup.search(request).await.is_ok() {
                timings.answered(user, Instant::now());
            }
        }));
    }
    for search in searches {
        let _ = search.await;
    }
    let answered = timings.answers();
    let mut matched = timings.matched.subscribe();
    let all_seen = tokio::time::timeout(Duration::from_secs(30), matched.wait_for(|count| *count >= answered)).await;
    for subscriber in subscribers {
        subscriber.abort();
    }
    let latencies = timings.latencies.lock().map_err(|_| failed("latency histogram poisoned"))?;
    println!(
        "{}",
        json!({"rate": args.rate, "searches": total, "answered": answered, "delivered": latencies.len(),
               "all_delivered": all_seen.is_ok(),
               "p50_us": latencies.value_at_quantile(0.5), "p99_us": latencies.value_at_quantile(0.99), "max_us": latencies.max()})
    );
    drop(target);
    Ok(exit::OK)
}

/// Times FULL_REFRESH uploads of `--records` plans as authority 706 over gRPC
/// (records built in memory first, so only the RPC is timed): the first
/// replaces the few plans the bench loaded, the second replaces itself.
async fn refresh(args: &BenchArgs) -> Result<u8, CliError> {
    let server_pem = PemFiles::in_dir(&args.certs_dir, "server").read().map_err(failed)?;
    let tls_config = tls::server_config(&server_pem).map_err(failed)?;
    let quick = BenchArgs { people: 100, ..args.clone() };
    let (target, _) = start_in_process(&quick, tls_config).await?;
    let mut seen = HashSet::new();
    let records: Vec<proto::PlanRecord> =
        synth::generate(args.records.min(synth::MAX_PEOPLE), 2026, chrono::Utc::now().date_naive())
            .into_iter()
            .map(|synthetic| synthetic.record)
            .filter(|record| seen.insert((record.nhs_number.clone(), record.r#type)))
            .take(args.records)
            .collect();
    let pem = PemFiles::in_dir(&args.certs_dir, "la-706").read().map_err(failed)?;
    let channel =
        client::connect(&target.url, &pem, None).await.map_err(|error| CliError::Unavailable(error.to_string()))?;
    let authority = bench::wire_authority("706").ok_or_else(|| failed("no synthetic authority 706"))?;
    let hidden = indicatif::ProgressBar::hidden();
    let mut runs = Vec::new();
    for run in ["into_a_small_set", "replacing_itself"] {
        let started = Instant::now();
        let report = super::upload::send(
            channel.clone(),
            proto::UploadMode::FullRefresh,
            "bench",
            authority.clone(),
            records.clone(),
            &hidden,
        )
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        if report.loaded != records.len() as u64 {
            return Err(failed(format!("{run}: loaded {} of {} records", report.loaded, records.len())));
        }
        runs.push(json!({"run": run, "records": report.loaded, "seconds": seconds,
                         "records_per_second": report.loaded as f64 / seconds}));
    }
    println!("{}", json!({"scenario": "refresh", "runs": runs}));
    drop(target);
    Ok(exit::OK)
}

/// A relay started by the bench itself.
struct InProcess {
    url: String,
    store: Option<EmbeddedStore>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start_in_process(
    args: &BenchArgs,
    tls_config: Arc<rustls::ServerConfig>,
) -> Result<(InProcess, Vec<String>), CliError> {
    let dir = tempfile::tempdir().map_err(failed)?;
    let (store, embedded): (Arc<dyn Store>, Option<EmbeddedStore>) = match args.store {
        StoreKind::Embedded => {
            let store = EmbeddedStore::open(dir.path()).map_err(failed)?;
            (Arc::new(store.clone()), Some(store))
        }
        StoreKind::Memory => (Arc::new(MemoryStore::new()), None),
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let relay = Relay::open(store, clock.clone(), RelaySettings::default()).await.map_err(failed)?;
    let flagged = bench::load_people(&relay, args.people, clock.today()).await.map_err(failed)?;
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(failed)?;
    let address = listener.local_addr().map_err(failed)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut options = ServerOptions::new(tls_config);
    options.concurrency_per_connection = args.in_flight.max(1) * 2;
    tokio::spawn(server::run(listener, None, relay, options, async {
        let _ = stopped.await;
    }));
    Ok((
        InProcess { url: format!("https://localhost:{}", address.port()), store: embedded, _stop: stop, _dir: dir },
        flagged,
    ))
}

async fn load_scenario(args: &BenchArgs) -> Result<u8, CliError> {
    let server_pem = PemFiles::in_dir(&args.certs_dir, "server").read().map_err(failed)?;
    let tls_config = tls::server_config(&server_pem).map_err(failed)?;
    let ed = PemFiles::in_dir(&args.certs_dir, "ed-rr8").read().map_err(failed)?;
    let (target, url, flagged) = match &args.server {
        Some(url) => (None, url.clone(), upload_to_external(args, url).await?),
        None => {
            let (target, flagged) = start_in_process(args, Arc::clone(&tls_config)).await?;
            let url = target.url.clone();
            (Some(target), url, flagged)
        }
    };
    let records = synth::generate(args.people, 2026, chrono::Utc::now().date_naive());
    let unflagged: Vec<String> =
        synth::unflagged_numbers(&records, 10_000, 11).iter().map(ToString::to_string).collect();
    let options = load::LoadOptions {
        connections: args.connections,
        in_flight: args.in_flight,
        duration: Duration::from_secs_f64(args.duration / if args.baseline { 2.0 } else { 1.0 }),
        warmup: Duration::from_secs_f64(args.warmup),
        flagged_ratio: args.flagged_ratio,
    };
    let commits_before = target.as_ref().and_then(|t| t.store.as_ref()).map(EmbeddedStore::commit_stats);
    let loaded = |error: client::ClientError| CliError::Unavailable(error.to_string());
    let mut relay_runs = vec![load::run(&url, &ed, &flagged, &unflagged, &options).await.map_err(loaded)?];
    let commits_after = target.as_ref().and_then(|t| t.store.as_ref()).map(EmbeddedStore::commit_stats);
    let mut echo_runs = Vec::new();
    if args.baseline {
        let mut lookup = LookupClient::new(client::connect(&url, &ed, None).await.map_err(loaded)?);
        let sample = |nhs: &str| bench::search_request(nhs.to_owned(), "bench-sample".into());
        let flagged_response = lookup.search(sample(&flagged[0])).await?.into_inner();
        let unflagged_response = lookup.search(sample(&unflagged[0])).await?.into_inner();
        let numbers: Arc<HashSet<String>> = Arc::new(flagged.iter().cloned().collect());
        let echo = echo::start(tls_config, numbers, flagged_response, unflagged_response).await.map_err(failed)?;
        let echo_url = format!("https://localhost:{}", echo.address.port());
        echo_runs.push(load::run(&echo_url, &ed, &flagged, &unflagged, &options).await.map_err(loaded)?);
        relay_runs.push(load::run(&url, &ed, &flagged, &unflagged, &options).await.map_err(loaded)?);
        echo_runs.push(load::run(&echo_url, &ed, &flagged, &unflagged, &options).await.map_err(loaded)?);
    }
    let relay = combine(&relay_runs);
    let batch = match (commits_before, commits_after) {
        (Some((c0, n0)), Some((c1, n1))) if c1 > c0 => Some((n1 - n0) as f64 / (c1 - c0) as f64),
        _ => None,
    };
    let mut report = json!({
        "target": if args.server.is_some() { "external" } else { "in-process" },
        "store": format!("{:?}", args.store).to_lowercase(),
        "connections": args.connections, "in_flight": args.in_flight, "flagged_ratio": args.flagged_ratio, "people": args.people,
        "relay": relay, "average_commit_batch": batch,
    });
    if !echo_runs.is_empty() {
        let echo = combine(&echo_runs);
        report["echo"] = json!(echo);
        report["ratio"] = json!({
            "requests_per_second": relay.requests_per_second / echo.requests_per_second,
            "p99": relay.p99_us as f64 / echo.p99_us.max(1) as f64,
            "p99_extra_us": relay.p99_us as i64 - echo.p99_us as i64,
        });
    }
    if args.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    drop(target);
    Ok(exit::OK)
}

/// Sums requests and errors; latency figures are the worst of the runs.
fn combine(runs: &[load::LoadReport]) -> load::LoadReport {
    let mut total = load::LoadReport::default();
    for run in runs {
        total.requests += run.requests;
        total.errors += run.errors;
        total.seconds += run.seconds;
        total.p50_us = total.p50_us.max(run.p50_us);
        total.p90_us = total.p90_us.max(run.p90_us);
        total.p99_us = total.p99_us.max(run.p99_us);
        total.p999_us = total.p999_us.max(run.p999_us);
        total.max_us = total.max_us.max(run.max_us);
    }
    total.requests_per_second = total.requests as f64 / total.seconds.max(f64::EPSILON);
    total
}

fn print_table(report: &serde_json::Value) {
    println!(
        "target {} (store {}), {} connections x {} in flight, flagged ratio {}",
        report["target"], report["store"], report["connections"], report["in_flight"], report["flagged_ratio"]
    );
    println!(
        "{:<8} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "req/s", "errors", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us"
    );
    for name in ["relay", "echo"] {
        let row = &report[name];
        if row.is_null() {
            continue;
        }
        println!(
            "{:<8} {:>10.0} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            name,
            row["requests_per_second"].as_f64().unwrap_or(0.0),
            row["errors"],
            row["p50_us"],
            row["p90_us"],
            row["p99_us"],
            row["p999_us"],
            row["max_us"]
        );
    }
    if !report["ratio"].is_null() {
        println!(
            "relay / echo: throughput {:.3}, p99 {:.2}x ({} us more)",
            report["ratio"]["requests_per_second"].as_f64().unwrap_or(0.0),
            report["ratio"]["p99"].as_f64().unwrap_or(0.0),
            report["ratio"]["p99_extra_us"]
        );
    }
    if let Some(batch) = report["average_commit_batch"].as_f64() {
        println!("average group-commit batch: {batch:.1} changes per durable transaction");
    }
}

/// The flagged people of an external relay: 706's exported plans, or, when
/// 706 holds none, synthetic people uploaded for 706 and 855 first.
async fn upload_to_external(args: &BenchArgs, url: &str) -> Result<Vec<String>, CliError> {
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
        super::upload::send(channel, proto::UploadMode::Incremental, "bench", authority, mine, &progress).await?;
    }
    Ok(flagged)
}
