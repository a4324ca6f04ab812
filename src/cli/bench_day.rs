//! `bench --scenario national-day`: a synthetic day of England replayed at a
//! chosen speed against several `serve` nodes on one PostgreSQL, each node
//! its own process started from this binary (default logging), the load
//! generator in this one. The day: every authority's FULL_REFRESH first, the
//! searches of a few hundred unscheduled-care organisations following the
//! daily curve ([`national_day::due_by`]), the nightly FULL_REFRESHes at 2
//! am, daytime incremental uploads changing addresses (each change timed
//! until every other node shows it), and `deliver` agents (real processes,
//! subscribed through every node) posting to a webhook receiver here
//! (the uploads are in `bench_day_uploads`).
//! The report: searches answered, notifications expected and delivered,
//! end-to-end latency (search answered -> receiver has it), duplicates,
//! losses (every answered flagged search's notification, at the receiver for
//! authorities with an agent, in the relay's backlog for the rest), and CPU
//! and peak memory per node.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use tokio::{sync::Semaphore, task::JoinSet};
use tonic::transport::Channel;

use super::{
    CliError,
    bench_args::BenchArgs,
    bench_day_faults::{CutProbe, Faults, NodeLink, node_links, search_failing_over},
    bench_day_uploads::{Uploads, change_some, incremental, nightly, plans_owned, refresh_all},
    exit,
};
use crate::{
    bench::{
        cpu,
        national_day::{Answered, Population, Tally, delivery_report, due_by, summary},
        process::{self, ServerProcess},
        receiver,
    },
    certs::{self, Authority},
    client,
    config::StoreKind,
    model::LocalAuthority,
    proto::{self, lookup_client::LookupClient, notifications_client::NotificationsClient},
    tls::PemText,
};

fn failed(error: impl std::fmt::Display) -> CliError {
    CliError::Failed(error.to_string())
}

/// Searches in flight at most across all organisations.
const MAX_IN_FLIGHT: usize = 2048;
/// How long the end of the day waits for the last notifications.
const DRAIN: Duration = Duration::from_secs(90);

struct Cluster {
    ca: Authority,
    ca_pem: String,
    urls: Vec<String>,
}

impl Cluster {
    fn identity(&self, ods_code: &str, organisation: &str, role: &str) -> Result<PemText, CliError> {
        let pair = self.ca.issue_client(ods_code, organisation, Some(role)).map_err(failed)?;
        Ok(PemText { ca: self.ca_pem.clone(), cert: pair.cert_pem, key: pair.key_pem })
    }

    async fn channel(&self, node: usize, pem: &PemText) -> Result<Channel, CliError> {
        client::connect(&self.urls[node % self.urls.len()], pem, None).await.map_err(failed)
    }

    /// A channel that connects at its first call.
    fn lazy_channel(&self, node: usize, pem: &PemText) -> Result<Channel, CliError> {
        Ok(client::endpoint(&self.urls[node % self.urls.len()], pem, None).map_err(failed)?.connect_lazy())
    }
}

pub(super) async fn national_day(args: &BenchArgs) -> Result<u8, CliError> {
    if !matches!(args.store, StoreKind::Postgres(_)) {
        return Err(CliError::Config(
            "--scenario national-day runs relay nodes on one PostgreSQL: give --store postgres://... \
             (scripts/national-day.sh starts one)"
                .into(),
        ));
    }
    if !(args.day_seconds > 0.0 && args.day_seconds.is_finite()) {
        return Err(CliError::Config(format!("--day-seconds must be a positive number, not {}", args.day_seconds)));
    }
    if !(0.0..=1.0).contains(&args.flagged_share) {
        return Err(CliError::Config(format!("--flagged-share must be from 0 to 1, not {}", args.flagged_share)));
    }
    if args.network_faults && args.day_seconds < 120.0 {
        return Err(CliError::Config(format!(
            "--network-faults needs --day-seconds of at least 120 (its 30 s cuts must end before the next fault), not {}",
            args.day_seconds
        )));
    }
    let work = tempfile::tempdir().map_err(failed)?;
    let certs_dir = work.path().join("certs");
    let (ca, _) = certs::init_keeping_ca(&certs_dir).map_err(failed)?;
    let ca_pem = ca.cert_pem();
    let population = Population::generate(
        args.authorities,
        args.flagged,
        (args.flagged / 2).max(1),
        2026,
        chrono::Utc::now().date_naive(),
    );
    let (cp, la, unborn) = population.mix();
    eprintln!(
        "national day: {} authorities, {} flagged people ({cp} CPPI, {la} LACI, {unborn} UCPI plans), {} nodes",
        population.authorities.len(),
        population.flagged.len(),
        args.nodes
    );
    let links = node_links(&args.store, args).await?;
    let mut nodes: Vec<ServerProcess> = Vec::new();
    for (node, link) in links.iter().enumerate() {
        let skewed = args.skew_last_node_secs != 0 && node + 1 == links.len();
        let environment = if skewed { skewed_clock(args.skew_last_node_secs)? } else { Vec::new() };
        nodes.push(process::start_relay_with(&certs_dir, &link.store, &environment).await.map_err(failed)?);
    }
    let cluster = Cluster { ca, ca_pem, urls: nodes.iter().map(|node| node.url.clone()).collect() };
    // Interrupted (Ctrl-C, SIGTERM), the day stops and every process it started is ended.
    let result = tokio::select! {
        result = run_day(args, &cluster, &population, (&nodes, &links), &certs_dir) => result,
        signal = interrupted() => Err(failed(format!("interrupted by {signal}: stopping the nodes and agents"))),
    };
    for (i, node) in nodes.into_iter().enumerate() {
        let _ = std::fs::copy(&node.log, work.path().join(format!("node{}.log", i + 1)));
        node.stop(Duration::from_secs(30)).await;
    }
    let report = result?;
    println!("{}", serde_json::to_string_pretty(&report).map_err(failed)?);
    let lost = report["notifications"]["lost"].as_u64().unwrap_or(u64::MAX);
    if lost == 0 {
        return Ok(exit::OK);
    }
    let kept = work.keep();
    eprintln!("notifications were lost: the nodes' and agents' logs are kept in {}", kept.display());
    Ok(exit::FAILURE)
}

/// Resolves at SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// libfaketime's variables for a node whose wall clock is `seconds` off
/// (its monotonic clock, which timers and deadlines use, left alone).
fn skewed_clock(seconds: i64) -> Result<Vec<(&'static str, String)>, CliError> {
    const LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    if !Path::new(LIBRARY).exists() {
        return Err(CliError::Config(format!("--skew-last-node-secs needs {LIBRARY}: apt-get install faketime")));
    }
    eprintln!("the last node's clock is {seconds:+} s off");
    Ok(vec![
        ("LD_PRELOAD", LIBRARY.into()),
        ("FAKETIME", format!("{seconds:+}s")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ("FAKETIME_NO_CACHE", "1".into()),
    ])
}

async fn run_day(
    args: &BenchArgs,
    cluster: &Cluster,
    population: &Population,
    (nodes, links): (&[ServerProcess], &[NodeLink]),
    certs_dir: &Path,
) -> Result<Value, CliError> {
    let authorities: HashMap<&str, &LocalAuthority> =
        population.authorities.iter().map(|authority| (authority.ods_code.as_str(), authority)).collect();
    let mut la_channels: HashMap<String, Channel> = HashMap::new();
    for (i, authority) in population.authorities.iter().enumerate() {
        let pem = cluster.identity(&authority.ods_code, &authority.name, "social-care")?;
        la_channels.insert(authority.ods_code.clone(), cluster.channel(i, &pem).await?);
    }
    let plans = population.plans_by_authority();
    let started = Instant::now();
    refresh_all(&la_channels, &authorities, &plans).await?;
    let initial_load_seconds = started.elapsed().as_secs_f64();
    eprintln!("loaded every authority's plans in {initial_load_seconds:.1} s");

    // The agents: a representative set of authorities, each through every node.
    let (address, received) = receiver::start().await.map_err(failed)?;
    let step = (population.authorities.len() / args.agents.max(1)).max(1);
    let agent_las: Vec<&LocalAuthority> = population.authorities.iter().step_by(step).take(args.agents).collect();
    let mut agents = Vec::new();
    for authority in &agent_las {
        agents.push(start_agent(
            cluster,
            authority,
            certs_dir,
            &format!("http://{address}/la/{}", authority.ods_code),
        )?);
    }
    let agent_set: HashSet<&str> = agent_las.iter().map(|authority| authority.ods_code.as_str()).collect();

    // Each organisation searches through one node, and through the next ones
    // when it fails or does not answer in time (as behind a load balancer).
    let mut searchers = Vec::new();
    for i in 0..args.organisations.max(1) {
        let pem = cluster.identity(&format!("RZ{i:03}"), &format!("SYNTHETIC TRUST {i}"), "unscheduled-care")?;
        let mut by_node = vec![LookupClient::new(cluster.channel(i, &pem).await?)];
        for next in 1..cluster.urls.len() {
            by_node.push(LookupClient::new(cluster.lazy_channel(i + next, &pem)?));
        }
        searchers.push(by_node);
    }
    let gp = cluster.identity("Y09999", "SYNTHETIC GP PRACTICE", "scheduled-care")?;
    let mut probes = Vec::new();
    for node in 0..cluster.urls.len() {
        probes.push(LookupClient::new(cluster.channel(node, &gp).await?));
    }
    let faults = if args.network_faults {
        let (la, records) = plans.iter().next().ok_or_else(|| failed("no authority holds a plan"))?;
        let authority = authorities[la];
        let pem = cluster.identity(&authority.ods_code, &authority.name, "social-care")?;
        let probe = CutProbe {
            upload_to_node2: cluster.channel(1, &pem).await?,
            authority: authority.clone(),
            record: records[0].clone(),
            node1: probes[0].clone(),
        };
        let grpc_ports = nodes.iter().map(ServerProcess::grpc_port).collect::<Option<Vec<u16>>>();
        Some(Faults::new(links, grpc_ports.ok_or_else(|| failed("a node's port is unknown"))?, probe, args)?)
    } else {
        None
    };

    let cpu_before: Vec<Option<f64>> = nodes.iter().map(|node| node.pid().and_then(cpu::process_cpu_seconds)).collect();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let uploads = Arc::new(tokio::sync::Mutex::new(Uploads::default()));
    let day_started = Instant::now();
    let mut rng = StdRng::seed_from_u64(20261206);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut searches = JoinSet::new();
    let mut chores = JoinSet::new();
    let (mut launched, mut hour_seen) = (0usize, None);
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    while launched < args.day_searches {
        ticks.tick().await;
        let fraction = day_started.elapsed().as_secs_f64() / args.day_seconds;
        let hour = ((fraction * 24.0) as usize).min(23);
        if hour_seen != Some(hour) {
            hour_seen = Some(hour);
            let seen =
                tally.lock().map(|tally| (tally.answered, tally.errors.values().sum::<u64>())).unwrap_or_default();
            eprintln!("{hour:02}:00  {launched} searches sent, {} answered, {} failed", seen.0, seen.1);
            if let Some(faults) = &faults {
                faults.at_hour(hour, Duration::from_secs_f64(args.day_seconds / 24.0), &mut chores);
            }
            if hour == 2 {
                let (channels, plans, uploads) = (la_channels.clone(), plans_owned(&plans), Arc::clone(&uploads));
                let authorities = population.authorities.clone();
                chores.spawn(async move { nightly(channels, authorities, plans, uploads).await });
            }
            if (9..=17).contains(&hour) {
                let changing = change_some(&population.plans, hour, &mut rng);
                let (channels, probes, uploads) = (la_channels.clone(), probes.clone(), Arc::clone(&uploads));
                let authorities = population.authorities.clone();
                chores.spawn(async move { incremental(channels, authorities, changing, probes, uploads).await });
            }
        }
        let due = ((due_by(fraction) * args.day_searches as f64) as usize).min(args.day_searches);
        while launched < due {
            let permit = Arc::clone(&permits).acquire_owned().await.map_err(failed)?;
            let target = if rng.random_bool(args.flagged_share) {
                let (nhs, la) = &population.flagged[rng.random_range(0..population.flagged.len())];
                (nhs.clone(), Some(la.clone()))
            } else {
                (population.unflagged[rng.random_range(0..population.unflagged.len())].clone(), None)
            };
            let lookups = searchers[launched % searchers.len()].clone();
            let tally = Arc::clone(&tally);
            let user = format!("nd-{launched}");
            searches.spawn(async move {
                let mut request = crate::bench::search_request(target.0, user.clone());
                // The same request on every node tried: the relay records it once.
                request.request_id = user.clone();
                let sent = Instant::now();
                let (result, tries) = search_failing_over(lookups, request).await;
                let at = Instant::now();
                drop(permit);
                let Ok(mut tally) = tally.lock() else { return };
                tally.retried += u64::from(tries > 1 && result.is_ok());
                tally.latencies.saturating_record((at - sent).as_micros() as u64);
                match result {
                    Ok(response) => {
                        tally.answered += 1;
                        match (response.into_inner().flagged, target.1) {
                            (true, Some(la_ods_code)) => {
                                tally.flagged.insert(user, Answered { at, la_ods_code });
                            }
                            (false, None) => {}
                            _ => tally.wrong += 1,
                        }
                    }
                    Err(status) => *tally.errors.entry(format!("{:?}", status.code())).or_default() += 1,
                }
            });
            launched += 1;
        }
        while searches.try_join_next().is_some() {}
    }
    while searches.join_next().await.is_some() {}
    while chores.join_next().await.is_some() {}
    let day_seconds = day_started.elapsed().as_secs_f64();
    eprintln!("the day's {launched} searches ended after {day_seconds:.1} s; waiting for the last notifications");

    let tally = std::mem::take(&mut *tally.lock().map_err(|_| failed("tally poisoned"))?);
    let ms = |micros: u64| micros as f64 / 1000.0;
    let expected_at_agents: HashSet<&str> = (tally.flagged.iter())
        .filter(|(_, answered)| agent_set.contains(answered.la_ods_code.as_str()))
        .map(|(user, _)| user.as_str())
        .collect();
    let drained = Instant::now();
    loop {
        let arrived: HashSet<String> = received.snapshot().into_iter().map(|arrival| arrival.user_id).collect();
        if expected_at_agents.iter().all(|user| arrived.contains(*user)) || drained.elapsed() > DRAIN {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_after: Vec<Option<f64>> = nodes.iter().map(|node| node.pid().and_then(cpu::process_cpu_seconds)).collect();
    for agent in agents {
        stop_agent(agent).await;
    }
    let arrivals = received.snapshot();
    let delivery = delivery_report(&tally, &arrivals, &expected_at_agents);
    let backlog = backlog_report(&tally, &la_channels, &agent_set).await?;
    let uploads = uploads.lock().await;
    let lost = delivery["lost"].as_u64().unwrap_or_default() + backlog["missing"].as_u64().unwrap_or_default();
    let propagation = summary(&uploads.propagation);
    let mut node_reports = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let cpu = cpu_before[i].zip(cpu_after[i]).map(|(before, after)| after - before);
        let gauges = gauges(node, &["cpis_clock_offset_seconds", "cpis_index_lag_seconds"]).await;
        node_reports.push(
            json!({"node": i + 1, "cpu_seconds": cpu, "cpu_cores_mean": cpu.map(|cpu| cpu / day_seconds),
               "peak_rss_mib": node.peak_resident_bytes().map(|bytes| bytes / (1024 * 1024)),
               "log_bytes": node.log_bytes(), "gauges_at_the_end": gauges}),
        );
    }
    Ok(json!({
        "scenario": "national-day",
        "authorities": population.authorities.len(),
        "flagged_people": population.flagged.len(),
        "plans": population.plans.len(),
        "nodes": nodes.len(),
        "agents": agent_las.len(),
        "organisations": searchers.len(),
        "day_seconds": day_seconds,
        "initial_load_seconds": initial_load_seconds,
        "searches": {"sent": launched, "answered": tally.answered, "flagged_answered": tally.flagged.len(),
                     "answered_wrongly": tally.wrong, "failed": tally.errors,
                     "answered_by_another_node": tally.retried,
                     "latency_ms": {"p50": ms(tally.latencies.value_at_quantile(0.5)),
                                    "p99": ms(tally.latencies.value_at_quantile(0.99)), "max": ms(tally.latencies.max())}},
        "notifications": {"expected": tally.flagged.len(), "at_agents": delivery, "in_backlogs": backlog, "lost": lost},
        "plan_changes": {"nightly_refresh_seconds": uploads.nightly_seconds, "incremental_uploads": uploads.incremental,
                         "records_changed": uploads.changed_records, "seen_on_every_node_ms": propagation,
                         "failures": uploads.failures},
        "nodes_use": node_reports,
        "faults": faults.map(|faults| faults.report()),
    }))
}

/// Some gauges of a node's `/metrics`, by name.
async fn gauges(node: &ServerProcess, names: &[&str]) -> Value {
    let Some(admin) = node.admin else { return Value::Null };
    let Ok(scrape) = super::top::scrape(admin).await else { return Value::Null };
    let mut found = serde_json::Map::new();
    for sample in scrape.samples.iter().filter(|sample| names.contains(&sample.metric.as_str())) {
        if let prometheus_parse::Value::Gauge(value) | prometheus_parse::Value::Untyped(value) = sample.value {
            found.insert(sample.metric.clone(), json!(value));
        }
    }
    Value::Object(found)
}

/// For authorities without an agent: every answered flagged search's
/// notification is in the relay's backlog, in increasing sequence order.
async fn backlog_report(
    tally: &Tally,
    channels: &HashMap<String, Channel>,
    agents: &HashSet<&str>,
) -> Result<Value, CliError> {
    use futures::StreamExt;
    let mut expected: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (user, answered) in &tally.flagged {
        if !agents.contains(answered.la_ods_code.as_str()) {
            expected.entry(answered.la_ods_code.as_str()).or_default().insert(user.as_str());
        }
    }
    let (mut missing, mut found, mut went_back) = (0usize, 0usize, 0u64);
    for (la, users) in expected {
        let mut client = NotificationsClient::new(channels[la].clone());
        let mut stream =
            client.subscribe(proto::SubscribeRequest { after_sequence: Some(0) }).await.map_err(failed)?.into_inner();
        let mut seen = HashSet::new();
        let mut last = 0;
        while seen.len() < users.len() {
            match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
                Ok(Some(Ok(notification))) => {
                    if notification.sequence <= last {
                        went_back += 1;
                    }
                    last = notification.sequence;
                    if let Some(accessor) = notification.accessor
                        && users.contains(accessor.user_id.as_str())
                    {
                        seen.insert(accessor.user_id);
                    }
                }
                _ => break,
            }
        }
        found += seen.len();
        missing += users.len() - seen.len();
    }
    Ok(json!({"found": found, "missing": missing, "sequence_went_back": went_back}))
}

/// A `deliver` agent for one authority, subscribed through every node.
fn start_agent(
    cluster: &Cluster,
    authority: &LocalAuthority,
    certs_dir: &Path,
    webhook: &str,
) -> Result<tokio::process::Child, CliError> {
    use base64::Engine;
    let name = format!("la-{}", authority.ods_code);
    let pair = cluster.ca.issue_client(&authority.ods_code, &authority.name, Some("social-care")).map_err(failed)?;
    certs::write_pair(certs_dir, &name, &pair).map_err(failed)?;
    let secret = certs_dir.join(format!("{name}.whsec"));
    let key: [u8; 32] = rand::random();
    std::fs::write(&secret, format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key)))
        .map_err(failed)?;
    std::fs::set_permissions(&secret, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600))
        .map_err(failed)?;
    let log = std::fs::File::create(certs_dir.join(format!("{name}.log"))).map_err(failed)?;
    let mut command = tokio::process::Command::new(std::env::current_exe().map_err(failed)?);
    command.arg("deliver");
    for url in &cluster.urls {
        command.args(["--server", url]);
    }
    command
        .arg("--cert")
        .arg(certs_dir.join(format!("{name}.pem")))
        .arg("--key")
        .arg(certs_dir.join(format!("{name}.key")))
        .arg("--ca")
        .arg(certs_dir.join("ca.pem"))
        .args(["--webhook", webhook, "--admin-listen", "127.0.0.1:0"])
        .arg("--dead-letter-dir")
        .arg(certs_dir.join(format!("{name}.dead-letter")))
        .current_dir(certs_dir)
        .arg("--secret-file")
        .arg(&secret)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    command.spawn().map_err(failed)
}

async fn stop_agent(mut agent: tokio::process::Child) {
    if let Some(pid) = agent.id() {
        let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
    }
    if tokio::time::timeout(Duration::from_secs(15), agent.wait()).await.is_err() {
        let _ = agent.kill().await;
    }
}
