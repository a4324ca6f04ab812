//! The tamper-evident access log on PostgreSQL (issue 20): searches and an
//! auditor's read take positions from `cpis_log` across two nodes, the
//! keepers build one tree, and `audit verify` finds a deleted, altered or
//! swapped row at its position after tampering with the rows by hand (psql);
//! retention removes a signed prefix and the rest still verifies.

use std::{sync::Arc, time::Duration};

use crate::helpers::postgres::{PgCluster, pg_options, pg_relay};
use crate::helpers::*;
use cpis_relay::{
    access_log::{LogFinding, LogReport, verify_log},
    clock::ManualClock,
    proto::{AccessLogRequest, PlanType},
    relay::RelaySettings,
    store::{
        Store,
        postgres::{PostgresOptions, PostgresStore},
    },
    transparency::{LogSigner, audit::Finding},
};

fn options(url: &str) -> PostgresOptions {
    pg_options(url, 4, Duration::from_secs(5))
}

/// A node on `url` whose access log is signed with `signer` (every node shares the key).
async fn node(pki: &Pki, clock: &Arc<ManualClock>, url: &str, signer: &Arc<LogSigner>) -> TestRelay {
    let settings = RelaySettings { log_signer: Some(Arc::clone(signer)), ..RelaySettings::default() };
    pg_relay(pki, clock, &options(url), settings).await
}

async fn verify(url: &str, signer: &Arc<LogSigner>) -> LogReport {
    let store = PostgresStore::open(&options(url)).await.unwrap();
    let log = store.access_log().unwrap();
    let verifier = signer.verifier().clone();
    tokio::task::spawn_blocking(move || verify_log(log.as_ref(), &verifier)).await.unwrap().unwrap()
}

fn leaf_positions(report: &LogReport) -> Vec<u64> {
    let mut positions: Vec<u64> = report
        .findings
        .iter()
        .filter_map(|finding| match finding {
            LogFinding::Tree(Finding::LeafDiffers { position } | Finding::RecordMissing { position }) => {
                Some(*position)
            }
            _ => None,
        })
        .collect();
    positions.sort_unstable();
    positions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_rows_are_found_at_their_positions() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let signer = Arc::new(LogSigner::generate_ephemeral("test.example/log").unwrap());
    let (pki, clock) = (Pki::new(), Arc::new(ManualClock::new(test_start())));
    let a = node(&pki, &clock, &url, &signer).await;
    let b = node(&pki, &clock, &url, &signer).await;
    let child = nhs(3001);
    a.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    for n in 0..12 {
        let relay = if n % 2 == 0 { &a } else { &b };
        relay.lookup().await.search(search_request(&child, &format!("u{n}"), &format!("r{n}"))).await.unwrap();
        if n == 5 {
            collect(
                relay
                    .audit()
                    .await
                    .access_log(AccessLogRequest { nhs_number: child.clone() })
                    .await
                    .unwrap()
                    .into_inner(),
            )
            .await;
        }
        if n % 4 == 3 {
            // Both nodes' keepers append to the one tree; each signs what it sees.
            let keeper = relay.relay.log_keeper().unwrap().clone();
            keeper.run(|keeper| keeper.checkpoint()).await.unwrap();
        }
    }
    let keeper = a.relay.log_keeper().unwrap().clone();
    let latest = keeper.run(|keeper| keeper.checkpoint()).await.unwrap();
    assert_eq!(latest.checkpoint.size, 13, "twelve searches and the auditor's read");
    assert_eq!(cluster.psql("cpis", "SELECT position FROM cpis_audit_reads"), "6");
    let clean = verify(&url, &signer).await;
    assert!(clean.is_clean(), "{:?}", clean.findings);
    assert_eq!((clean.next_position, clean.tree_size), (13, 13));

    // Delete one, alter one field (the last byte of its request id), swap two.
    cluster.psql("cpis", "DELETE FROM cpis_accesses WHERE position = 4");
    cluster.psql(
        "cpis",
        "UPDATE cpis_accesses SET record = overlay(record PLACING '\\x5a'::bytea FROM length(record) FOR 1) WHERE position = 7",
    );
    cluster.psql("cpis", "UPDATE cpis_accesses SET position = -1 WHERE position = 2");
    cluster.psql("cpis", "UPDATE cpis_accesses SET position = 2 WHERE position = 10");
    cluster.psql("cpis", "UPDATE cpis_accesses SET position = 10 WHERE position = -1");
    let report = verify(&url, &signer).await;
    assert!(!report.is_clean());
    assert_eq!(leaf_positions(&report), vec![2, 4, 7, 10], "{:?}", report.findings);

    // A row filed at another record's position (across the two tables), and one past the log's end:
    // each kept outside the log, each a finding (verify once walked the positions only).
    cluster.psql("cpis", "UPDATE cpis_audit_reads SET position = 3 WHERE position = 6");
    cluster.psql("cpis", "UPDATE cpis_accesses SET position = 1000 WHERE position = 11");
    let report = verify(&url, &signer).await;
    let outside: Vec<String> = report
        .findings
        .iter()
        .filter_map(|finding| match finding {
            LogFinding::Outside(outside) => Some(outside.describe()),
            _ => None,
        })
        .collect();
    assert_eq!(
        outside,
        [
            "log position 3 does not hold this record",
            "log position 3 does not hold this record",
            "log position 1000 does not hold this record"
        ],
        "{:?}",
        report.findings
    );

    // The CLI says the same and exits 1.
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), signer.verifier().to_string()).unwrap();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
            .args(["audit", "verify", "--store", &url, "--verifier-key"])
            .arg(key.path())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(1), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("FINDING position 4: the record is missing"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_a_signed_prefix_of_the_shared_log() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let signer = Arc::new(LogSigner::generate_ephemeral("test.example/log").unwrap());
    let (pki, clock) = (Pki::new(), Arc::new(ManualClock::new(test_start())));
    let a = node(&pki, &clock, &url, &signer).await;
    let child = nhs(3002);
    a.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    for n in 0..3 {
        a.lookup().await.search(search_request(&child, &format!("old{n}"), "")).await.unwrap();
    }
    clock.advance(chrono::Duration::days(300));
    for n in 0..2 {
        a.lookup().await.search(search_request(&child, &format!("new{n}"), "")).await.unwrap();
    }
    clock.advance(chrono::Duration::days(100));
    let counts = a.relay.expire().await.unwrap();
    assert_eq!(counts.accesses, 3, "the three searches older than 365 days");
    assert_eq!(cluster.psql("cpis", "SELECT retained_from FROM cpis_log"), "3");
    let report = verify(&url, &signer).await;
    assert!(report.is_clean(), "{:?}", report.findings);
    assert_eq!((report.retained_from, report.next_position, report.retention_notes), (3, 5, 1));
}

/// Keepers on three nodes appending to the one tree at the same moment
/// while searches commit on all of them: each append is a compare-and-set
/// on the tree's size, so one wins each round and the others reopen the tree
/// and go on. Afterwards the tree holds every access once, in position
/// order, and verifies. (The other tests run keepers one after another, so
/// the race was never exercised.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepers_on_several_nodes_appending_at_once_build_one_tree_that_verifies() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let signer = Arc::new(LogSigner::generate_ephemeral("test.example/log").unwrap());
    let (pki, clock) = (Pki::new(), Arc::new(ManualClock::new(test_start())));
    let nodes = [
        node(&pki, &clock, &url, &signer).await,
        node(&pki, &clock, &url, &signer).await,
        node(&pki, &clock, &url, &signer).await,
    ];
    let child = nhs(3002);
    nodes[0].load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    // Every node follows the upload before it searches.
    let version = *nodes[0].relay.plan_version().borrow();
    for node in &nodes[1..] {
        let mut seen = node.relay.plan_version();
        tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|held| *held >= version)).await.unwrap().unwrap();
    }
    const ROUNDS: usize = 20;
    let mut work = Vec::new();
    for (n, relay) in nodes.iter().enumerate() {
        let mut lookup = relay.lookup().await;
        let keeper = relay.relay.log_keeper().unwrap().clone();
        let child = child.clone();
        work.push(tokio::spawn(async move {
            let mut sizes = Vec::new();
            for round in 0..ROUNDS {
                let user = format!("n{n}-{round}");
                assert!(lookup.search(search_request(&child, &user, &user)).await.unwrap().into_inner().flagged);
                // Each keeper appends what it finds, racing the others' appends.
                sizes.push(keeper.run(|keeper| keeper.checkpoint()).await.unwrap().checkpoint.size);
            }
            sizes
        }));
    }
    for task in work {
        let sizes = task.await.unwrap();
        assert!(sizes.windows(2).all(|pair| pair[0] <= pair[1]), "a keeper's checkpoints only grow: {sizes:?}");
    }
    // A search held (its write slower than the timeout on a busy machine) is stored by its retry.
    for node in &nodes {
        wait_for_health(node, tonic_health::pb::health_check_response::ServingStatus::Serving).await;
    }
    let keeper = nodes[1].relay.log_keeper().unwrap().clone();
    let latest = keeper.run(|keeper| keeper.checkpoint()).await.unwrap();
    assert_eq!(latest.checkpoint.size, (3 * ROUNDS) as u64, "every search once in the tree");
    let report = verify(&url, &signer).await;
    assert!(report.is_clean(), "{:?}", report.findings);
    assert_eq!((report.next_position, report.tree_size), (3 * ROUNDS as u64, 3 * ROUNDS as u64));
}

/// Issue 28 item 4: a running node whose shared store is rewritten behind its
/// back (the tree's rows, as a consistent rewrite of the log would need)
/// refuses its next signature, turns not ready and goes on refusing; `audit
/// verify` names where the log first differs. Before, the keeper checked
/// only the tree it held in memory and signed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_rows_are_rewritten_while_it_runs_refuses_to_sign() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let signer = Arc::new(LogSigner::generate_ephemeral("test.example/log").unwrap());
    let (pki, clock) = (Pki::new(), Arc::new(ManualClock::new(test_start())));
    let a = node(&pki, &clock, &url, &signer).await;
    let child = nhs(3031);
    a.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let keeper = a.relay.log_keeper().unwrap().clone();
    for n in 0..4 {
        a.lookup().await.search(search_request(&child, &format!("u{n}"), &format!("r{n}"))).await.unwrap();
        keeper.run(|keeper| keeper.checkpoint()).await.unwrap();
    }
    assert!(verify(&url, &signer).await.is_clean());

    cluster.psql("cpis", "UPDATE cpis_log_tree SET hash = sha256(hash)");
    a.lookup().await.search(search_request(&child, "u4", "r4")).await.unwrap();
    let refused = keeper.run(|keeper| keeper.checkpoint()).await.unwrap_err();
    assert!(refused.to_string().contains("refusing to sign"), "{refused}");
    assert!(refused.to_string().contains("rewritten"), "{refused}");
    let mut health = a.relay.store_health();
    tokio::time::timeout(
        Duration::from_secs(10),
        health.wait_for(|health| *health == cpis_relay::relay::StoreHealth::Failing),
    )
    .await
    .expect("not ready once the keeper refuses")
    .unwrap();
    assert!(keeper.run(|keeper| keeper.checkpoint()).await.is_err(), "and it goes on refusing");
    let report = verify(&url, &signer).await;
    assert!(report.findings.contains(&LogFinding::Tree(Finding::TreeMismatch { size: 4 })), "{:?}", report.findings);
}

/// An authority's delivery agent checks its notifications against the log
/// two nodes share: subscribed through one node, its notifications made on
/// the other, each proved in a checkpoint whichever node answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_confirms_its_notifications_in_the_log_two_nodes_share() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let signer = Arc::new(LogSigner::generate_ephemeral("test.example/log").unwrap());
    let (pki, clock) = (Pki::new(), Arc::new(ManualClock::new(test_start())));
    let nodes = [node(&pki, &clock, &url, &signer).await, node(&pki, &clock, &url, &signer).await];
    agent::notify(&nodes[0], 0, 3, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = cpis_relay::deliver::config::DeliverSettings {
        server: vec![nodes[1].url(), nodes[0].url()],
        outbox: Some(dir.path().join("outbox")),
        log_verifier_key: Some(signer.verifier().to_string()),
        ..agent::settings(&nodes[1], dir.path())
    };
    let agent = agent::RunningAgent::start(&nodes[1], settings);
    let mut progress = agent.status.log_progress();
    let done = *tokio::time::timeout(
        Duration::from_secs(60),
        progress.wait_for(|progress| progress.confirmed >= 6 && progress.unconfirmed == 0),
    )
    .await
    .expect("every notification confirmed")
    .unwrap();
    assert_eq!(done.problems, 0, "{done:?}");
    assert!(agent.status.health().is_ok(), "{:?}", agent.status.health());
    agent.stop().await;
}
