//! Request keys on PostgreSQL go with their search's access: retention
//! removes a key in the statement that removes the access it names, and a key
//! claimed again (a day on) names the later access and stays until that one
//! goes. No request key outlives its access, and none goes before it.

use std::{sync::Arc, time::Duration};

use crate::helpers::postgres::{PgCluster, pg_options, pg_relay};
use crate::helpers::*;
use cpis_relay::{clock::ManualClock, proto::PlanType, relay::RelaySettings, transparency::LogSigner};

async fn node(pki: &Pki, clock: &Arc<ManualClock>, url: &str) -> TestRelay {
    let settings = RelaySettings {
        log_signer: Some(Arc::new(LogSigner::generate_ephemeral("test.example/log").unwrap())),
        // The test runs retention itself.
        retention_interval: Duration::from_secs(3600),
        ..RelaySettings::default()
    };
    pg_relay(pki, clock, &pg_options(url, 4, Duration::from_secs(5)), settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_key_goes_with_the_access_it_names_last() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let (pki, clock) = (Pki::new(), Arc::new(ManualClock::new(test_start())));
    let a = node(&pki, &clock, &url).await;
    let child = nhs(4401);
    a.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let requests = || cluster.psql("cpis", "SELECT count(*) || ' ' || count(DISTINCT access_id) FROM cpis_requests");
    let accesses = || cluster.psql("cpis", "SELECT count(*) FROM cpis_accesses");

    // The same request twice, a day apart: the second is a new search (outside the
    // 24-hour window), and the one key now names its access.
    a.lookup().await.search(search_request(&child, "u1", "same")).await.unwrap();
    a.lookup().await.search(search_request(&child, "u2", "other")).await.unwrap();
    clock.advance(chrono::Duration::days(2));
    a.lookup().await.search(search_request(&child, "u1", "same")).await.unwrap();
    assert_eq!((accesses(), requests()), ("3".into(), "2 2".into()));

    // A year on from the first two: they go, and the key only the first of them named.
    clock.advance(chrono::Duration::days(365 - 1));
    let counts = a.relay.expire().await.unwrap();
    assert_eq!(counts.accesses, 2, "the first two searches: {counts:?}");
    assert_eq!((accesses(), requests()), ("1".into(), "1 1".into()), "the re-claimed key stays with its access");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["store", "check", "--store", &cluster.url("cpis")])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", String::from_utf8_lossy(&check.stdout));

    // And past the third: it goes with its key.
    clock.advance(chrono::Duration::days(3));
    a.relay.expire().await.unwrap();
    assert_eq!((accesses(), requests()), ("0".into(), "0 0".into()));
}
