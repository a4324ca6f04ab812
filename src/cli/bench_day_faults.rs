//! The national day's links, network faults, and its clients' failing over
//! (see `bench_day`): an organisation's search that fails or gets no answer
//! in time goes to the next node, with the same `request_id`. With
//! `--db-delay-ms` or `--network-faults`, each node reaches the database
//! through proxies of its own (`bench::delay`), one per database host, so its
//! link can be slowed, made lossy or cut alone. `--network-faults` (root, in a
//! network namespace of its own: `scripts/national-day.sh --faults` makes
//! one) then breaks the network at these hours of the day:
//! - 05:00: node 1 cut off from the database for 30 s; an address changed
//!   through node 2 meanwhile is timed until node 1 shows it after the heal;
//! - 10:00: node 2 cut off from its clients for 30 s (the searches go to the
//!   other nodes, the `deliver` agents subscribed there move);
//! - 12:00 to 14:00: every node's link to the database 100 ms ± 50 ms each
//!   way, and 2 % of its packets lost.
//!
//! The script adds the database's faults (the synchronous standby away for
//! 60 s at 08:00, the primary killed and the standby promoted at 16:00) and
//! the last node's clock 5 minutes ahead (`--skew-last-node-secs 300`).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::{
    CliError,
    bench_args::BenchArgs,
    bench_day_uploads::{shows, upload},
};
use crate::{
    bench::{delay, faults::Firewall},
    config::StoreKind,
    model::LocalAuthority,
    proto::{self, lookup_client::LookupClient},
};

fn failed(error: impl std::fmt::Display) -> CliError {
    CliError::Failed(error.to_string())
}

/// How long each cut lasts.
const CUT_FOR: Duration = Duration::from_secs(30);
/// The slow spell's link, each way, and its packet loss.
const SLOW: (Duration, Duration, f64) = (Duration::from_millis(100), Duration::from_millis(50), 0.02);

/// How one node reaches the database.
pub(super) struct NodeLink {
    pub store: StoreKind,
    pub link: delay::Link,
    /// Its proxies' ports: its side of the link to the database.
    pub ports: Vec<u16>,
}

/// Each node's store URL: `store` itself, or (with a delay or network faults)
/// its own proxies in place of the database's hosts.
pub(super) async fn node_links(store: &StoreKind, args: &BenchArgs) -> Result<Vec<NodeLink>, CliError> {
    let nodes = args.nodes.max(1);
    let StoreKind::Postgres(url) = store else { unreachable!("the national day runs on PostgreSQL") };
    if args.db_delay_ms == 0 && !args.network_faults {
        return Ok((0..nodes)
            .map(|_| NodeLink { store: store.clone(), link: delay::Link::default(), ports: Vec::new() })
            .collect());
    }
    let url = url.expose();
    let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")).unwrap_or(url);
    let hosts_start = url.len() - rest.len() + rest.find('@').map_or(0, |at| at + 1);
    let hosts_end = url[hosts_start..].find(['/', '?']).map_or(url.len(), |end| hosts_start + end);
    let mut upstreams = Vec::new();
    for host in url[hosts_start..hosts_end].split(',') {
        let upstream = tokio::net::lookup_host(host)
            .await
            .map_err(|error| CliError::Config(format!("--store: {host}: {error}")))?
            .next()
            .ok_or_else(|| CliError::Config(format!("--store: {host} has no address (give host:port)")))?;
        upstreams.push(upstream);
    }
    let mut links = Vec::new();
    for _ in 0..nodes {
        let link = delay::Link::new(Duration::from_millis(args.db_delay_ms), Duration::from_millis(args.db_jitter_ms));
        let mut proxies = Vec::new();
        for upstream in &upstreams {
            proxies.push(delay::start(*upstream, link.clone()).await.map_err(failed)?);
        }
        let hosts: Vec<String> = proxies.iter().map(ToString::to_string).collect();
        let store = format!("{}{}{}", &url[..hosts_start], hosts.join(","), &url[hosts_end..]);
        links.push(NodeLink {
            store: store.parse().map_err(CliError::Config)?,
            link,
            ports: proxies.iter().map(|proxy| proxy.port()).collect(),
        });
    }
    if args.db_delay_ms > 0 {
        eprintln!("the nodes reach the database through {} ms +- {} ms each way", args.db_delay_ms, args.db_jitter_ms);
    }
    Ok(links)
}

/// A plan change made while node 1 is cut off from the database: through
/// node 2, by `authority`, of `record` (moved to a new address).
pub(super) struct CutProbe {
    pub upload_to_node2: Channel,
    pub authority: LocalAuthority,
    pub record: proto::PlanRecord,
    pub node1: LookupClient<Channel>,
}

/// The fault schedule of a day.
pub(super) struct Faults {
    firewall: Firewall,
    links: Vec<(delay::Link, Vec<u16>)>,
    grpc_ports: Vec<u16>,
    probe: CutProbe,
    delay: (Duration, Duration),
    started: Instant,
    events: Mutex<Vec<Value>>,
}

impl Faults {
    /// The schedule for these nodes (their links, in node order, and gRPC
    /// ports). Fails unless this process may make network faults.
    pub(super) fn new(
        links: &[NodeLink],
        grpc_ports: Vec<u16>,
        probe: CutProbe,
        args: &BenchArgs,
    ) -> Result<Arc<Self>, CliError> {
        let firewall = Firewall::new().map_err(|error| CliError::Config(format!("--network-faults: {error}")))?;
        Ok(Arc::new(Self {
            firewall,
            links: links.iter().map(|node| (node.link.clone(), node.ports.clone())).collect(),
            grpc_ports,
            probe,
            delay: (Duration::from_millis(args.db_delay_ms), Duration::from_millis(args.db_jitter_ms)),
            started: Instant::now(),
            events: Mutex::new(Vec::new()),
        }))
    }

    fn record(&self, event: Value) {
        eprintln!("fault: {event}");
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
    }

    /// Starts the faults of `hour` (an hour of the day lasts `hour_lasts`).
    pub(super) fn at_hour(self: &Arc<Self>, hour: usize, hour_lasts: Duration, chores: &mut JoinSet<()>) {
        let faults = Arc::clone(self);
        match hour {
            5 => chores.spawn(async move { faults.cut_from_database().await }),
            10 => chores.spawn(async move { faults.cut_from_clients().await }),
            12 => chores.spawn(async move { faults.slow_spell(hour_lasts * 2).await }),
            _ => return,
        };
    }

    fn fail(&self, what: &str, error: String) {
        self.record(json!({"fault": what, "error": error}));
    }

    async fn cut_from_database(&self) {
        let node = 0;
        let at = self.started.elapsed().as_secs_f64();
        for port in &self.links[node].1 {
            if let Err(error) = self.firewall.cut(*port) {
                return self.fail("node 1 cut off from the database", error);
            }
        }
        // A change that node 1 cannot hear while cut off.
        let mut record = self.probe.record.clone();
        let wanted = vec!["1 Partition Road".to_owned()];
        if let Some(address) = record.address.as_mut() {
            address.lines = wanted.clone();
        }
        let channel = self.probe.upload_to_node2.clone();
        let uploaded =
            upload(channel, proto::UploadMode::Incremental, &self.probe.authority, vec![record.clone()]).await;
        tokio::time::sleep(CUT_FOR).await;
        for port in &self.links[node].1 {
            if let Err(error) = self.firewall.heal(*port) {
                return self.fail("node 1 cut off from the database", error);
            }
        }
        let healed = Instant::now();
        let seen =
            uploaded.is_ok() && shows(&self.probe.node1, &record.nhs_number, &wanted, Duration::from_secs(60)).await;
        self.record(json!({
            "fault": "node 1 cut off from the database", "at_seconds": at, "for_seconds": CUT_FOR.as_secs(),
            "change_during_the_cut": uploaded.err().map_or_else(|| "uploaded through node 2".to_owned(), |e| e.to_string()),
            "change_on_node1_after_heal_ms": seen.then(|| healed.elapsed().as_secs_f64() * 1000.0),
        }));
    }

    async fn cut_from_clients(&self) {
        let node = 1 % self.grpc_ports.len();
        let at = self.started.elapsed().as_secs_f64();
        if let Err(error) = self.firewall.cut(self.grpc_ports[node]) {
            return self.fail("node 2 cut off from its clients", error);
        }
        tokio::time::sleep(CUT_FOR).await;
        if let Err(error) = self.firewall.heal(self.grpc_ports[node]) {
            return self.fail("node 2 cut off from its clients", error);
        }
        self.record(
            json!({"fault": "node 2 cut off from its clients", "at_seconds": at, "for_seconds": CUT_FOR.as_secs()}),
        );
    }

    async fn slow_spell(&self, lasts: Duration) {
        let at = self.started.elapsed().as_secs_f64();
        let (delay, jitter, loss) = SLOW;
        for (link, ports) in &self.links {
            link.set(delay, jitter);
            for port in ports {
                if let Err(error) = self.firewall.lossy(*port, loss) {
                    return self.fail("slow, lossy links to the database", error);
                }
            }
        }
        tokio::time::sleep(lasts).await;
        for (link, ports) in &self.links {
            link.set(self.delay.0, self.delay.1);
            for port in ports {
                if let Err(error) = self.firewall.heal(*port) {
                    return self.fail("slow, lossy links to the database", error);
                }
            }
        }
        self.record(json!({
            "fault": "every node's link to the database slow and lossy", "at_seconds": at,
            "for_seconds": lasts.as_secs_f64(), "delay_ms_each_way": delay.as_millis() as u64,
            "jitter_ms": jitter.as_millis() as u64, "packets_lost": loss,
        }));
    }

    /// What happened, in order.
    pub(super) fn report(&self) -> Value {
        Value::Array(self.events.lock().map(|events| events.clone()).unwrap_or_default())
    }
}

/// How long a search may take on one node before the next is tried: longer
/// than a node takes to answer while it cannot write (its store write
/// timeout), so only a node that cannot be reached is left.
const SEARCH_DEADLINE: Duration = Duration::from_secs(10);

/// A search through the first of `lookups` that answers; how many were tried.
pub(super) async fn search_failing_over(
    lookups: Vec<LookupClient<Channel>>,
    request: proto::SearchRequest,
) -> (Result<tonic::Response<proto::SearchResponse>, tonic::Status>, usize) {
    let (mut result, count) = (Err(tonic::Status::unavailable("no node to search")), lookups.len());
    for (tried, mut lookup) in lookups.into_iter().enumerate() {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(SEARCH_DEADLINE);
        result = lookup.search(call).await;
        match &result {
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                ) => {}
            _ => return (result, tried + 1),
        }
    }
    (result, count)
}
