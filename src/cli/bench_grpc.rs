//! The `bench` scenarios over gRPC and mutual TLS: search load (optionally
//! against the echo baseline, and optionally with FULL_REFRESHes running),
//! notification delivery, and FULL_REFRESH throughput. The relay and the echo
//! each run in their own process (see [`crate::bench::process`]), the relay
//! exactly as `serve` runs it; this process only generates load.

use std::{
    collections::HashSet,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prost::Message;
use serde_json::json;

use super::{CliError, bench_args::BenchArgs, exit, top};
use crate::{
    bench::{self, load, process},
    client,
    proto::{self, lookup_client::LookupClient},
    synth,
    tls::{PemFiles, PemText},
};

fn failed(error: impl std::fmt::Display) -> CliError {
    CliError::Failed(error.to_string())
}

fn unavailable(error: impl std::fmt::Display) -> CliError {
    CliError::Unavailable(error.to_string())
}

/// Where the load goes: a relay process the bench started, or `--server`.
struct Target {
    url: String,
    relay: Option<process::ServerProcess>,
}

async fn target(args: &BenchArgs) -> Result<Target, CliError> {
    match &args.server {
        Some(url) => Ok(Target { url: url.clone(), relay: None }),
        None => {
            let relay = process::start_relay(&args.certs_dir, &args.store).await.map_err(failed)?;
            Ok(Target { url: relay.url.clone(), relay: Some(relay) })
        }
    }
}

fn pem(args: &BenchArgs, identity: &str) -> Result<PemText, CliError> {
    PemFiles::in_dir(&args.certs_dir, identity).read().map_err(failed)
}

/// Group-commit counters from the relay's `/metrics`: (commits, changes).
async fn commit_counters(relay: Option<&process::ServerProcess>) -> Option<(f64, f64)> {
    let scrape = top::scrape(relay?.admin?).await.ok()?;
    let total = |name: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|sample| sample.metric == name)
            .map(|sample| match sample.value {
                prometheus_parse::Value::Counter(value) | prometheus_parse::Value::Untyped(value) => value,
                _ => 0.0,
            })
            .sum()
    };
    Some((total("cpis_store_commits_total"), total("cpis_store_changes_total")))
}

/// Saves what the echo answers: the relay's own flagged response for a
/// person with 25 previous accesses (its steady-state size), its unflagged
/// response, and the flagged numbers.
async fn save_echo_responses(
    url: &str,
    ed: &PemText,
    flagged: &[String],
    unflagged: &str,
    dir: &Path,
) -> Result<(usize, usize), CliError> {
    let mut lookup = LookupClient::new(client::connect(url, ed, None).await.map_err(unavailable)?);
    let sample = &flagged[0];
    let mut flagged_response = proto::SearchResponse::default();
    for user in 0..=history_shown() {
        let request = bench::search_request(sample.clone(), format!("bench-sample-{user}"));
        flagged_response = lookup.search(request).await?.into_inner();
    }
    let unflagged_response =
        lookup.search(bench::search_request(unflagged.to_owned(), "bench-sample".into())).await?.into_inner();
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(dir.join(name), bytes).map_err(failed);
    write(bench::echo::FLAGGED_RESPONSE, flagged_response.encode_to_vec())?;
    write(bench::echo::UNFLAGGED_RESPONSE, unflagged_response.encode_to_vec())?;
    write(bench::echo::FLAGGED_NUMBERS, flagged.join("\n").into_bytes())?;
    Ok((flagged_response.encoded_len(), unflagged_response.encoded_len()))
}

fn history_shown() -> usize {
    crate::accesses::PREVIOUS_ACCESSES_SHOWN
}

/// FULL_REFRESHes of `records` plans as authority 706, back to back until
/// `stop`, counting those completed. The searches go to other authorities' people.
fn spawn_refresher(
    url: String,
    pem: PemText,
    records: Vec<proto::PlanRecord>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Result<(), CliError>> {
    tokio::spawn(async move {
        let channel = client::connect(&url, &pem, None).await.map_err(unavailable)?;
        let authority = bench::wire_authority("706").ok_or_else(|| failed("no synthetic authority 706"))?;
        let hidden = indicatif::ProgressBar::hidden();
        while !stop.load(Ordering::Acquire) {
            let mode = proto::UploadMode::FullRefresh;
            // Each refresh replaces the set the bench loaded before it: the removal is the point.
            super::upload::send(channel.clone(), mode, true, "bench", authority.clone(), records.clone(), &hidden)
                .await?;
            done.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    })
}

/// Distinct synthetic plan records, `count` of them.
fn refresh_records(count: usize) -> Vec<proto::PlanRecord> {
    let mut seen = HashSet::new();
    synth::generate(count.min(synth::MAX_PEOPLE), 2026, chrono::Utc::now().date_naive())
        .into_iter()
        .map(|synthetic| synthetic.record)
        .filter(|record| seen.insert((record.nhs_number.clone(), record.r#type)))
        .take(count)
        .collect()
}

pub(super) async fn load_scenario(args: &BenchArgs) -> Result<u8, CliError> {
    let ed = pem(args, "ed-rr8")?;
    let target = target(args).await?;
    let url = target.url.clone();
    let mut flagged = upload_to_external(args, &url).await?;
    let records = synth::generate(args.people, 2026, chrono::Utc::now().date_naive());
    if args.refresh_records > 0 {
        // Search only people whose plans the refreshes of 706 leave alone.
        let of_706: HashSet<&str> = records
            .iter()
            .filter(|record| record.la_ods_code == "706")
            .map(|record| record.record.nhs_number.as_str())
            .collect();
        flagged.retain(|nhs| !of_706.contains(nhs.as_str()));
    }
    if flagged.is_empty() {
        return Err(CliError::Config("no flagged people to search: raise --people".into()));
    }
    let unflagged: Vec<String> =
        synth::unflagged_numbers(&records, 10_000, 11).iter().map(ToString::to_string).collect();
    let options = load::LoadOptions {
        connections: args.connections,
        in_flight: args.in_flight,
        duration: Duration::from_secs_f64(args.duration / if args.baseline { 2.0 } else { 1.0 }),
        warmup: Duration::from_secs_f64(args.warmup),
        flagged_ratio: args.flagged_ratio,
        server_pid: None,
    };
    let echo_dir = tempfile::tempdir().map_err(failed)?;
    let echo = if args.baseline {
        let sizes = save_echo_responses(&url, &ed, &flagged, &unflagged[0], echo_dir.path()).await?;
        eprintln!("echo replies sized as the relay's: flagged {} bytes, unflagged {} bytes", sizes.0, sizes.1);
        Some(process::start_echo(&args.certs_dir, echo_dir.path()).await.map_err(failed)?)
    } else {
        None
    };
    let (stop_refreshing, refreshes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let refresher = (args.refresh_records > 0).then(|| {
        let records = refresh_records(args.refresh_records);
        let pem = pem(args, "la-706");
        pem.map(|pem| spawn_refresher(url.clone(), pem, records, Arc::clone(&stop_refreshing), Arc::clone(&refreshes)))
    });
    let refresher = refresher.transpose()?;

    let run = |url: String, server_pid: Option<u32>| {
        let (ed, flagged, unflagged) = (ed.clone(), flagged.clone(), unflagged.clone());
        let options = load::LoadOptions { server_pid, ..options.clone() };
        async move { load::run(&url, &ed, &flagged, &unflagged, &options).await.map_err(unavailable) }
    };
    let relay_pid = target.relay.as_ref().and_then(process::ServerProcess::pid);
    let commits_before = commit_counters(target.relay.as_ref()).await;
    let mut relay_runs = vec![run(url.clone(), relay_pid).await?];
    let mut echo_runs = Vec::new();
    if let Some(echo) = &echo {
        echo_runs.push(run(echo.url.clone(), echo.pid()).await?);
        relay_runs.push(run(url.clone(), relay_pid).await?);
        echo_runs.push(run(echo.url.clone(), echo.pid()).await?);
    }
    let commits_after = commit_counters(target.relay.as_ref()).await;
    stop_refreshing.store(true, Ordering::Release);
    if let Some(refresher) = refresher {
        refresher.await.map_err(failed)??;
    }
    let relay = combine(&relay_runs);
    let batch = match (commits_before, commits_after) {
        (Some((c0, n0)), Some((c1, n1))) if c1 > c0 => Some((n1 - n0) / (c1 - c0)),
        _ => None,
    };
    let mut report = json!({
        "target": if args.server.is_some() { "external" } else { "relay process" },
        "store": format!("{:?}", args.store).to_lowercase(),
        "connections": args.connections, "in_flight": args.in_flight, "flagged_ratio": args.flagged_ratio, "people": args.people,
        "relay": relay, "average_commit_batch": batch,
        "relay_rss_bytes": target.relay.as_ref().and_then(process::ServerProcess::resident_bytes),
        "relay_log_bytes": target.relay.as_ref().map(process::ServerProcess::log_bytes),
        "refresh_records": args.refresh_records, "refreshes_completed": refreshes.load(Ordering::Acquire),
    });
    report["relay"]["cpu"]["limit"] = json!(relay.cpu.limit());
    if !echo_runs.is_empty() {
        let echo = combine(&echo_runs);
        report["echo"] = json!(echo);
        report["echo"]["cpu"]["limit"] = json!(echo.cpu.limit());
        report["ratio"] = json!({
            "requests_per_second": relay.requests_per_second / echo.requests_per_second,
            "p99": relay.p99_us as f64 / echo.p99_us.max(1) as f64,
            "p99_extra_us": relay.p99_us as i64 - echo.p99_us as i64,
            "max_extra_us": relay.max_us as i64 - echo.max_us as i64,
        });
    }
    if args.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    if let Some(echo) = echo {
        echo.stop(Duration::from_secs(5)).await;
    }
    if let Some(relay) = target.relay {
        relay.stop(Duration::from_secs(30)).await;
    }
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
        total.flagged += run.flagged;
    }
    total.cpu = bench::cpu::CpuShare::mean(&runs.iter().map(|run| run.cpu).collect::<Vec<_>>());
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
    for name in ["relay", "echo"] {
        let cpu = &report[name]["cpu"];
        if cpu.is_null() {
            continue;
        }
        let cores = |value: &serde_json::Value| value.as_f64().map_or("?".to_owned(), |cores| format!("{cores:.2}"));
        let limit = cpu["limit"].as_str().unwrap_or("?");
        println!(
            "{name:<8} CPU: load generator {} cores, server {} cores, machine {:.0} % busy of {} cores: {}",
            cores(&cpu["client_cores"]),
            cores(&cpu["server_cores"]),
            cpu["machine_busy"].as_f64().unwrap_or(0.0) * 100.0,
            cpu["cores"],
            match limit {
                "client" => "the LOAD GENERATOR is the limit (it took at least as much CPU as the server)",
                "server" => "the server is the limit",
                "neither" => "the machine was not saturated (latency-bound)",
                _ => "limit unknown (server process not measured)",
            }
        );
    }
    if !report["ratio"].is_null() {
        println!(
            "relay / echo: throughput {:.3}, p99 {:.2}x ({} us more), slowest {} us more",
            report["ratio"]["requests_per_second"].as_f64().unwrap_or(0.0),
            report["ratio"]["p99"].as_f64().unwrap_or(0.0),
            report["ratio"]["p99_extra_us"],
            report["ratio"]["max_extra_us"]
        );
    }
    if let Some(batch) = report["average_commit_batch"].as_f64() {
        println!("average group-commit batch: {batch:.1} changes per durable transaction");
    }
    if let Some(rss) = report["relay_rss_bytes"].as_u64() {
        println!(
            "relay process: {:.0} MiB resident, {} bytes logged",
            rss as f64 / 1048576.0,
            report["relay_log_bytes"]
        );
    }
    if report["refresh_records"].as_u64().unwrap_or(0) > 0 {
        println!(
            "FULL_REFRESHes of {} records completed during the runs: {}",
            report["refresh_records"], report["refreshes_completed"]
        );
    }
}

/// Paces flagged searches over gRPC and times, for each, the gap between
/// the search's answer and its notification's arrival at the owning
/// authority's subscriber (both on this machine's clock; a notification that
/// beats the answer to the client counts as zero).
pub(super) async fn delivery(args: &BenchArgs) -> Result<u8, CliError> {
    let target = target(args).await?;
    let flagged: HashSet<String> = upload_to_external(args, &target.url).await?.into_iter().collect();
    let timings = Arc::new(bench::delivery::DeliveryTimings::default());
    let mut subscribers = Vec::new();
    let subscribe_url = args.subscribe_server.clone().unwrap_or_else(|| target.url.clone());
    for identity in ["la-706", "la-855"] {
        let channel = client::connect(&subscribe_url, &pem(args, identity)?, None).await.map_err(unavailable)?;
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
    let lookup =
        LookupClient::new(client::connect(&target.url, &pem(args, "ed-rr8")?, None).await.map_err(unavailable)?);
    // Only people of the subscribed authorities, so every answer has a notification to wait for.
    let watched: Vec<String> = synth::generate(args.people, 2026, chrono::Utc::now().date_naive())
        .into_iter()
        .filter(|record| ["706", "855"].contains(&record.la_ods_code.as_str()))
        .map(|record| record.record.nhs_number)
        .filter(|nhs| flagged.contains(nhs))
        .collect();
    if watched.is_empty() {
        return Err(CliError::Config("no people of 706 or 855 to search: raise --people".into()));
    }
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
    let latencies = timings.latencies.lock().map_err(|_| failed("latency histogram poisoned"))?.clone();
    println!(
        "{}",
        json!({"rate": args.rate, "searches": total, "answered": answered, "delivered": latencies.len(),
               "all_delivered": all_seen.is_ok(),
               "p50_us": latencies.value_at_quantile(0.5), "p99_us": latencies.value_at_quantile(0.99), "max_us": latencies.max()})
    );
    if let Some(relay) = target.relay {
        relay.stop(Duration::from_secs(30)).await;
    }
    Ok(exit::OK)
}

/// Times FULL_REFRESH uploads of `--records` plans as authority 706 over gRPC
/// (records built in memory first, so only the RPC is timed): the first
/// replaces the few plans the bench loaded, the second replaces itself.
pub(super) async fn refresh(args: &BenchArgs) -> Result<u8, CliError> {
    let target = target(args).await?;
    upload_to_external(&BenchArgs { people: 100, ..args.clone() }, &target.url).await?;
    let records = refresh_records(args.records);
    let channel = client::connect(&target.url, &pem(args, "la-706")?, None).await.map_err(unavailable)?;
    let authority = bench::wire_authority("706").ok_or_else(|| failed("no synthetic authority 706"))?;
    let hidden = indicatif::ProgressBar::hidden();
    let mut runs = Vec::new();
    for run in ["into_a_small_set", "replacing_itself"] {
        let started = Instant::now();
        let mode = proto::UploadMode::FullRefresh;
        // The first run replaces the small set the bench loaded: the removal is the point.
        let report =
            super::upload::send(channel.clone(), mode, true, "bench", authority.clone(), records.clone(), &hidden)
                .await?;
        let seconds = started.elapsed().as_secs_f64();
        if report.loaded != records.len() as u64 {
            return Err(failed(format!("{run}: loaded {} of {} records", report.loaded, records.len())));
        }
        runs.push(json!({"run": run, "records": report.loaded, "seconds": seconds,
                         "records_per_second": report.loaded as f64 / seconds}));
    }
    println!("{}", json!({"scenario": "refresh", "runs": runs}));
    if let Some(relay) = target.relay {
        relay.stop(Duration::from_secs(30)).await;
    }
    Ok(exit::OK)
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
        super::upload::send(channel, proto::UploadMode::Incremental, false, "bench", authority, mine, &progress)
            .await?;
    }
    Ok(flagged)
}
