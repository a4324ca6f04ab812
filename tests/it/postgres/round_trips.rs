//! One round trip per flagged search on PostgreSQL. Node A reaches the
//! database through a proxy that counts the round trips (ReadyForQuery
//! messages) and statements of its connections
//! (tests/it/helpers/cut_proxy.rs); node B shares the database directly. A
//! flagged search answered one at a time costs A one round trip and one
//! statement: its batch's statement, prepared once per pooled connection, on
//! a connection the pool hands out without a query, and no read of the
//! access log afterwards (A ignores the hints of its own commits, and its
//! reads start past the positions it took). Before, each search was
//! followed by a read of the log, woken by the search's own hint: two.

use std::{sync::Arc, time::Duration};

use crate::helpers::cut_proxy::CutProxy;
use crate::helpers::postgres::{PgCluster, pg_options, pg_relay};
use crate::helpers::*;
use cpis_relay::{clock::ManualClock, proto::PlanType, relay::RelaySettings};

/// Flagged searches counted, one at a time.
const SEARCHES: u64 = 40;

async fn node(pki: &Pki, clock: &Arc<ManualClock>, url: &str) -> TestRelay {
    let settings = RelaySettings {
        // No background work of the node's own while searches are counted: no poll,
        // no checkpoint, no retention pass (each runs once at start, before counting).
        feed_poll_interval: Duration::from_secs(3600),
        checkpoint_interval: Duration::from_secs(3600),
        retention_interval: Duration::from_secs(3600),
        search_rate_per_second: 0.0,
        ..RelaySettings::default()
    };
    pg_relay(pki, clock, &pg_options(url, 4, Duration::from_secs(5)), settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagged_search_costs_its_node_one_round_trip() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let proxy = CutProxy::start(format!("127.0.0.1:{}", cluster.port).parse().unwrap()).await;
    let (pki, clock) = (Pki::new(), Arc::new(ManualClock::new(test_start())));
    let a = node(&pki, &clock, &proxy.url_for(&url)).await;
    let b = node(&pki, &clock, &url).await;
    let child = nhs(4301);
    a.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let version = *a.relay.plan_version().borrow();
    let mut seen = b.relay.plan_version();
    tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|held| *held >= version)).await.unwrap().unwrap();

    let mut lookup = a.lookup().await;
    // Warm: each pooled connection prepares the batch statement the first time it carries one.
    for n in 0..8 {
        let user = format!("warm-{n}");
        assert!(lookup.search(search_request(&child, &user, &user)).await.unwrap().into_inner().flagged);
    }
    let before = proxy.work();
    for n in 0..SEARCHES {
        let user = format!("counted-{n}");
        assert!(lookup.search(search_request(&child, &user, &user)).await.unwrap().into_inner().flagged);
    }
    // A search on B, then A lists it: A's follower handles hints in commit order, so
    // by then it has handled (or ignored) the hints of all A's own searches too.
    clock.advance(chrono::Duration::seconds(1));
    b.lookup().await.search(search_request(&child, "on-b", "on-b")).await.unwrap();
    let stored: u64 = cluster.psql("cpis", "SELECT size FROM cpis_log").parse().unwrap();
    let mut followed = a.relay.access_position();
    tokio::time::timeout(Duration::from_secs(10), followed.wait_for(|held| *held >= stored))
        .await
        .expect("A follows B's access within 10 s")
        .unwrap();
    let work = proxy.work() - before;
    eprintln!(
        "{SEARCHES} flagged searches one at a time on A, then one read of B's access: \
         {} round trips, {} statements, {} rows",
        work.round_trips, work.statements, work.rows
    );
    // One per search and one for the read of B's access; two to spare for
    // anything A does on its own meanwhile (a readiness check).
    assert!(work.round_trips <= SEARCHES + 1 + 2, "{work:?}: more than one round trip per search");
    assert!(work.statements <= SEARCHES + 1 + 2, "{work:?}: more than one statement per search");

    // A lists B's access (the newest), read from the log, and its own, from memory:
    // the 25 most recent of them (A's all share one time on the test's clock).
    let listed = lookup.search(search_request(&child, "after", "after")).await.unwrap().into_inner();
    let users: Vec<String> =
        listed.previous_accesses.iter().map(|access| access.accessor.clone().unwrap().user_id).collect();
    assert_eq!(users.first().map(String::as_str), Some("on-b"), "{users:?}");
    assert_eq!(users.len(), 25, "{users:?}");
    assert!(users[1..].iter().all(|user| user.starts_with("counted-") || user.starts_with("warm-")), "{users:?}");
}
