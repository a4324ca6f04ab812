//! A seeded run of faults on two relay nodes and their database, each on a
//! test host of its own (tests/it/helpers/netns.rs), while searchers send
//! flagged searches to both and retry each unanswered one as clients do:
//! with the same request id, on the other node. The seed picks the faults
//! and their order: a node SIGKILLed and restarted on its data directory, a
//! node cut off from the database for a few seconds, the database restarted,
//! a request with text no store keeps (refused by field), and a search whose
//! record the database refuses (a constraint added for a moment), which the
//! node quarantines and the operator replays at the end. A failure prints
//! the seed; `CPIS_FAULT_SEED` replays it and `CPIS_FAULT_STEPS` makes the
//! run longer (`scripts/fault-run.sh`).
//!
//! Afterwards every answered search is notified exactly once and in
//! sequence, SQL holds one access and one notification per request, the
//! access log's positions are gapless, and `audit verify` finds nothing.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cpis_relay::{client, proto::lookup_client::LookupClient, tls::PemText};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::sync::watch;

use super::netns::{Host, Net};
use super::pg_load::*;
use super::postgres::PgCluster;
use super::*;

/// The name the nodes' certificates carry.
pub const SERVER_NAME: Option<&str> = Some("localhost");

/// A relay node on test host `host`, on the database at `url`, with its data
/// in `dir` (kept across restarts: the spill and the quarantine live there).
pub async fn node_in(net: &Net, host: &Host, pki: &Pki, url: &str, dir: &Path, extra: &[&str]) -> Running {
    use tokio::io::AsyncBufReadExt;
    pki.write_server_layout(&dir.join("certs"));
    let mut child = net
        .command(host, env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["serve", "--listen", "0.0.0.0:0", "--admin-listen", "0.0.0.0:0"])
        .args(serve_layout(dir))
        .args(["--store", url, "--store-allow-plaintext", "--feed-poll-ms", "200", "--search-rate-per-second", "0"])
        .args(["--store-write-timeout-ms", "2000", "--grace-period-secs", "2"])
        .args(extra)
        .env("CPIS_LOG", std::env::var("CPIS_NODE_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // To look into a failure: CPIS_NODE_LOG sets the nodes' log filter and
    // CPIS_NODE_LOG_DIR keeps each host's log (a restarted node appends).
    let log_path = std::env::var_os("CPIS_NODE_LOG_DIR").map(|dir| Path::new(&dir).join(format!("{}.log", host.ip)));
    tokio::spawn(async move {
        match log_path {
            Some(path) => {
                let mut log = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await?;
                tokio::io::copy(&mut stderr, &mut log).await
            }
            None => tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await,
        }
    });
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.unwrap().unwrap().unwrap();
    let port = |name: &str| -> u16 {
        let address = line.split_whitespace().find_map(|word| word.strip_prefix(name)).expect("the listening line");
        address.rsplit(':').next().unwrap().parse().unwrap()
    };
    let (grpc, admin) = (port("grpc="), port("admin="));
    Running {
        child,
        url: format!("https://{}:{grpc}", host.ip),
        admin: format!("{}:{admin}", host.ip).parse().unwrap(),
        stderr: None,
        listening: line,
    }
}

/// A gauge of a node's metrics, 0 when absent.
pub async fn gauge(node: &Running, name: &str) -> f64 {
    relay_metric(node.admin, name).await.unwrap_or(0.0)
}

/// Polls `check` every 100 ms until it holds; panics after `within`.
pub async fn until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The nodes' current addresses (a restarted node has new ports).
type Urls = Arc<Mutex<[String; 2]>>;

/// Searches until `stop`, each retried (same user, same request id, the
/// other node next) until answered or 40 attempts fail; answered ones are
/// recorded. Returns how many were never answered.
async fn searcher(
    task: usize,
    urls: Urls,
    ed: PemText,
    people: Vec<String>,
    answered: Answered,
    count: Count,
    stop: watch::Receiver<bool>,
) -> usize {
    let mut clients: HashMap<String, LookupClient<tonic::transport::Channel>> = HashMap::new();
    let mut unanswered = 0;
    for i in 0.. {
        if *stop.borrow() {
            return unanswered;
        }
        let user = format!("t{task}-{i}");
        let person = &people[(task * 7 + i * 13) % people.len()];
        let mut done = false;
        for attempt in 0..40 {
            let url = urls.lock().unwrap()[(task + attempt) % 2].clone();
            let client = match clients.get_mut(&url) {
                Some(client) => client,
                None => match client::connect(&url, &ed, SERVER_NAME).await {
                    Ok(channel) => clients.entry(url.clone()).or_insert(LookupClient::new(channel)),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            // A guard per attempt: a node answers within its write timeout, or is gone.
            let call =
                tokio::time::timeout(Duration::from_secs(10), client.search(search_request(person, &user, &user)));
            match call.await {
                Ok(Ok(answer)) => {
                    assert!(answer.into_inner().flagged, "{user}: the person is flagged");
                    done = true;
                    break;
                }
                Ok(Err(status)) => {
                    assert_ne!(status.code(), tonic::Code::InvalidArgument, "{user}: {status:?}");
                    clients.remove(&url);
                }
                Err(_) => {
                    clients.remove(&url);
                }
            }
            // The client's backoff before its retry.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if done {
            answered.lock().unwrap().insert(user);
            count.send_modify(|answered| *answered += 1);
        } else {
            unanswered += 1;
        }
    }
    unanswered
}

/// One fault of the run.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill(usize),
    Cut(usize, u64),
    RestartDatabase,
    PoisonText(usize),
    RefusedRecord(usize),
}

fn fault(rng: &mut StdRng) -> Fault {
    let node = rng.random_range(0..2);
    match rng.random_range(0..5) {
        0 => Fault::Kill(node),
        1 => Fault::Cut(node, rng.random_range(2..6)),
        2 => Fault::RestartDatabase,
        3 => Fault::PoisonText(node),
        _ => Fault::RefusedRecord(node),
    }
}

/// The seed: `CPIS_FAULT_SEED`, or a new one (printed, to replay a failure).
pub fn seed() -> u64 {
    std::env::var("CPIS_FAULT_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(rand::random)
}

/// Runs `steps` faults chosen by `seed` and checks what must hold after them.
pub async fn run(mut net: Net, seed: u64, steps: usize) {
    println!("fault run: seed {seed} (CPIS_FAULT_SEED={seed} replays it), {steps} steps");
    let mut rng = StdRng::seed_from_u64(seed);
    let (db, hosts) = (net.host("db", 2), [net.host("n1", 10), net.host("n2", 11)]);
    let cluster = PgCluster::start_in(&db.ns, &db.ip, &net.subnet());
    let url = cluster.create_database("cpis");
    let pki = Pki::new();
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));
    let people = nhs_numbers(30);
    // One key for the deployment, outside the data directories.
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("access-log.key");
    let key_arg = key.to_str().unwrap().to_owned();
    // Created by the first node to start (nodes off loopback create a key only when asked).
    let extra = ["--log-key", key_arg.as_str(), "--create-log-key", "--checkpoint-interval-secs", "1"];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut nodes = Vec::new();
    for (host, dir) in hosts.iter().zip(&dirs) {
        nodes.push(node_in(&net, host, &pki, &url, dir.path(), &extra).await);
    }
    load_people(&nodes[0].url, SERVER_NAME, &la, &people).await;
    let (load, stop) = Load::new();
    let (answered, count) = (Arc::clone(&load.answered), Arc::clone(&load.count));
    // Node 2 follows the upload through the database before searches reach it.
    let mut lookup = LookupClient::new(client::connect(&nodes[1].url, &ed, SERVER_NAME).await.unwrap());
    for probe in 0.. {
        let user = format!("follow-probe-{probe}");
        let answer = lookup.search(search_request(&people[people.len() - 1], &user, &user)).await.unwrap();
        if answer.into_inner().flagged {
            answered.lock().unwrap().insert(user);
            break;
        }
        assert!(probe < 600, "node 2 never followed the upload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let urls: Urls = Arc::new(Mutex::new([nodes[0].url.clone(), nodes[1].url.clone()]));

    let searchers: Vec<_> = (0..4)
        .map(|task| {
            let (urls, ed, people) = (Arc::clone(&urls), ed.clone(), people.clone());
            let (answered, count, stop) = (Arc::clone(&answered), Arc::clone(&count), load.stop.clone());
            tokio::spawn(searcher(task, urls, ed, people, answered, count, stop))
        })
        .collect();
    wait_for_count(&count, 50).await;

    for step in 0..steps {
        let fault = fault(&mut rng);
        println!("step {step}: {fault:?}");
        match fault {
            Fault::Kill(i) => {
                nodes[i].child.start_kill().unwrap();
                nodes[i].child.wait().await.unwrap();
                let so_far = *count.borrow();
                wait_for_count(&count, so_far + 20).await;
                nodes[i] = node_in(&net, &hosts[i], &pki, &url, dirs[i].path(), &extra).await;
                urls.lock().unwrap()[i] = nodes[i].url.clone();
            }
            Fault::Cut(i, seconds) => {
                net.cut(&hosts[i], &db.ip);
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                net.heal(&hosts[i]);
            }
            Fault::RestartDatabase => {
                cluster.pg_ctl_stop("fast");
                cluster.pg_ctl_start();
            }
            Fault::PoisonText(i) => {
                let mut lookup = LookupClient::new(client::connect(&nodes[i].url, &ed, SERVER_NAME).await.unwrap());
                let refused = lookup.search(search_request(&people[0], "nul\u{0}user", "nul")).await.unwrap_err();
                assert_eq!(field_violation(&refused).0, "accessor.user_id");
            }
            Fault::RefusedRecord(i) => {
                let user = format!("poison-{step}");
                let before = gauge(&nodes[i], "cpis_notifications_quarantined").await;
                cluster.psql(
                    "cpis",
                    &format!("ALTER TABLE cpis_accesses ADD CONSTRAINT refuses CHECK (user_id <> '{user}')"),
                );
                let mut lookup = LookupClient::new(client::connect(&nodes[i].url, &ed, SERVER_NAME).await.unwrap());
                assert!(lookup.search(search_request(&people[1], &user, &user)).await.unwrap().into_inner().flagged);
                answered.lock().unwrap().insert(user);
                until(Duration::from_secs(60), "the refused search is quarantined", || async {
                    gauge(&nodes[i], "cpis_notifications_quarantined").await > before
                })
                .await;
                cluster.psql("cpis", "ALTER TABLE cpis_accesses DROP CONSTRAINT refuses");
            }
        }
        let so_far = *count.borrow();
        wait_for_count(&count, so_far + 30).await;
    }
    stop.send_replace(true);
    let mut unanswered = 0;
    for searcher in searchers {
        unanswered += searcher.await.unwrap();
    }
    for node in &nodes {
        // The busiest runs leave thousands held on a node cut off under load: written at the store's pace.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let held = gauge(node, "cpis_notifications_held").await;
            let ready = admin_get(node.admin, "/readyz").await.0;
            if held == 0.0 && ready == 200 {
                break;
            }
            let forked = gauge(node, "cpis_access_log_forked").await;
            assert!(
                Instant::now() < deadline,
                "every held notification written within 120 s: {held} still held, /readyz {ready}, log forked {forked}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The operator: stop the nodes, replay what each quarantined, start one again.
    for node in &mut nodes {
        let pid = node.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let exit = tokio::time::timeout(Duration::from_secs(60), node.child.wait()).await.unwrap().unwrap();
        assert!(exit.success(), "{exit:?}");
    }
    for (host, dir) in hosts.iter().zip(&dirs) {
        let replayed = net
            .command(host, env!("CARGO_BIN_EXE_cpis-relay"))
            .args(["quarantine", "replay", "--store-allow-plaintext", "--store", &url, "--data-dir"])
            .arg(dir.path().join("data"))
            .output()
            .await
            .unwrap();
        assert!(replayed.status.success(), "{replayed:?}");
    }
    let node = node_in(&net, &hosts[0], &pki, &url, dirs[0].path(), &extra).await;
    let read = every_answered_search_notified(&node.url, SERVER_NAME, &la, &answered).await;
    exactly_once(&cluster);
    let gaps = cluster.psql(
        "cpis",
        "SELECT (SELECT size FROM cpis_log) - count(DISTINCT position) FROM \
         (SELECT position FROM cpis_accesses UNION ALL SELECT position FROM cpis_audit_reads) AS logged",
    );
    assert_eq!(gaps, "0", "every log position holds one record");
    until(Duration::from_secs(60), "the keeper's tree covers the log", || async {
        cluster.psql("cpis", "SELECT size = tree_size FROM cpis_log") == "t"
    })
    .await;
    let verified = net
        .command(&hosts[0], env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["audit", "verify", "--store-allow-plaintext", "--store", &url, "--verifier-key"])
        .arg(keys.path().join("access-log.pub"))
        .output()
        .await
        .unwrap();
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    println!(
        "fault run {seed}: {} answered ({unanswered} never answered in 40 attempts), {read} notifications read, each once",
        answered.lock().unwrap().len()
    );
}
