//! Several relay nodes on one real PostgreSQL (a private cluster per test,
//! see tests/it/helpers/postgres.rs), each node in-process over real mTLS with
//! its own index: uploads on one node reach searches on another, a
//! notification written by one reaches a subscriber on another, request ids
//! and acknowledgements are shared, and the store keeps the contract the
//! embedded store keeps (sequences in commit order, none skipped).

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::helpers::postgres::{PgCluster, pg_options, pg_relay};
use crate::helpers::*;
use cpis_relay::{
    clock::ManualClock,
    proto::{AckRequest, PlanType, SubscribeRequest, UploadMode, UploadStatus},
    relay::RelaySettings,
    store::{
        Store,
        postgres::{PostgresOptions, PostgresStore},
        writes::Recorded,
    },
};
use tonic_health::pb::health_check_response::ServingStatus;

fn options(url: &str) -> PostgresOptions {
    pg_options(url, 8, Duration::from_secs(5))
}

/// A relay node on the database at `url`, sharing the PKI and clock of the others.
async fn node(pki: &Pki, clock: &Arc<ManualClock>, url: &str) -> TestRelay {
    let settings = RelaySettings {
        held_retry_backoff: (Duration::from_millis(20), Duration::from_millis(200)),
        ..RelaySettings::default()
    };
    pg_relay(pki, clock, &options(url), settings).await
}

/// Two nodes on a fresh database of a fresh cluster.
async fn two_nodes() -> (PgCluster, TestRelay, TestRelay) {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let (pki, clock) = (Pki::new(), Arc::new(ManualClock::new(test_start())));
    let a = node(&pki, &clock, &url).await;
    let b = node(&pki, &clock, &url).await;
    (cluster, a, b)
}

/// Waits until `follower`'s index holds every plan change `writer` has made.
async fn caught_up(writer: &TestRelay, follower: &TestRelay) {
    let version = *writer.relay.plan_version().borrow();
    assert!(version > 0, "the writer's plan changes are numbered");
    let mut seen = follower.relay.plan_version();
    tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|held| *held >= version))
        .await
        .expect("the other node follows within 10 s")
        .unwrap();
}

/// Waits until `node` holds in memory every access the database has stored.
async fn accesses_followed(cluster: &PgCluster, node: &TestRelay) -> u64 {
    let stored: u64 = cluster.psql("cpis", "SELECT size FROM cpis_log").parse().unwrap();
    let mut followed = node.relay.access_position();
    tokio::time::timeout(Duration::from_secs(10), followed.wait_for(|held| *held >= stored))
        .await
        .expect("the node follows the other nodes' accesses within 10 s")
        .unwrap();
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_on_a_search_on_b_notifies_a_subscriber_on_a_once_per_request_id() {
    let (cluster, a, b) = two_nodes().await;
    let child = nhs(10);
    let report = a.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    assert_eq!(report.loaded, 1);
    caught_up(&a, &b).await;

    let mut on_a = a.notifications("la-706").await;
    let mut stream = on_a.subscribe(SubscribeRequest { after_sequence: Some(0) }).await.unwrap().into_inner();
    let response = b.lookup().await.search(search_request(&child, "user-b", "req-1")).await.unwrap().into_inner();
    assert!(response.flagged, "node B shows the plan uploaded through node A");
    assert_eq!(response.person.unwrap().family_name, "Testchild");
    let first = next(&mut stream).await;
    assert_eq!((first.sequence, first.nhs_number.as_str()), (1, child.as_str()));
    assert_eq!(first.accessor.unwrap().user_id, "user-b");

    // The client retries through node A: answered the same, recognised as a retry (from
    // memory once A has followed B's access; by the database's request key before that).
    accesses_followed(&cluster, &a).await;
    let retry = a.lookup().await.search(search_request(&child, "user-b", "req-1")).await.unwrap().into_inner();
    assert!(retry.flagged);
    assert!(retry.previous_accesses.is_empty(), "a retry shows what its original showed");
    // The next notification is a new search's, so the retry made none.
    b.lookup().await.search(search_request(&child, "user-c", "req-2")).await.unwrap();
    let second = next(&mut stream).await;
    assert_eq!((second.sequence, second.accessor.unwrap().user_id.as_str()), (2, "user-c"));
    // Both nodes list the one earlier access by user-b to the next searcher, from memory:
    // node A holds node B's accesses once it has followed the access log.
    assert_eq!(accesses_followed(&cluster, &a).await, 2, "two accesses stored: the retry stored none");
    let third = a.lookup().await.search(search_request(&child, "user-d", "req-3")).await.unwrap().into_inner();
    let mut earlier: Vec<String> =
        third.previous_accesses.iter().map(|access| access.accessor.clone().unwrap().user_id).collect();
    earlier.sort();
    assert_eq!(earlier, ["user-b", "user-c"], "each earlier search once, whichever node took it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refresh_through_a_is_atomic_for_searches_on_b() {
    let (_cluster, a, b) = two_nodes().await;
    let numbers = nhs_numbers(3_000);
    let (old_only, kept, new_only) = (&numbers[..1_000], &numbers[1_000..2_000], &numbers[2_000..]);
    let set = |people: &[String]| people.iter().map(|n| record(n, PlanType::ChildProtection)).collect::<Vec<_>>();
    let mut plans = a.plans("la-706").await;
    let first = upload(&mut plans, "706", UploadMode::FullRefresh, set(&numbers[..2_000])).await.unwrap();
    assert_eq!(first.loaded, 2_000);
    caught_up(&a, &b).await;

    let refreshed = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(tokio::sync::Barrier::new(4));
    let mut searchers = Vec::new();
    for searcher in 0..3u64 {
        let lookup = b.lookup().await;
        let (old_only, kept, new_only) = (old_only.to_vec(), kept.to_vec(), new_only.to_vec());
        let (refreshed, ready) = (Arc::clone(&refreshed), Arc::clone(&ready));
        searchers.push(tokio::spawn(refresh_searcher(lookup, searcher, old_only, kept, new_only, refreshed, ready)));
    }
    ready.wait().await;
    let report = upload(&mut plans, "706", UploadMode::FullRefresh, set(&numbers[1_000..])).await.unwrap();
    assert_eq!(report.status, UploadStatus::AllLoaded as i32);
    assert_eq!((report.loaded, report.removed), (2_000, 1_000));
    caught_up(&a, &b).await;
    refreshed.store(true, Ordering::Release);
    for searcher in searchers {
        let (old_states, new_states) = searcher.await.unwrap();
        assert!(old_states > 0 && new_states > 0, "node B showed both whole sets: {old_states} old, {new_states} new");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_acknowledges_on_a_and_resumes_on_b_after_its_acknowledged_sequence() {
    let (_cluster, a, b) = two_nodes().await;
    let child = nhs(11);
    a.load("706", vec![record(&child, PlanType::LookedAfter)]).await;
    caught_up(&a, &b).await;
    for user in ["u1", "u2", "u3"] {
        b.lookup().await.search(search_request(&child, user, user)).await.unwrap();
    }
    let mut on_a = a.notifications("la-706").await;
    let mut stream = on_a.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();
    let received: Vec<u64> = [next(&mut stream).await, next(&mut stream).await, next(&mut stream).await]
        .iter()
        .map(|notification| notification.sequence)
        .collect();
    assert_eq!(received, [1, 2, 3]);
    assert_eq!(on_a.ack(AckRequest { sequence: 2 }).await.unwrap().into_inner().acked_through, 2);
    drop(stream);

    let mut on_b = b.notifications("la-706").await;
    let mut resumed = on_b.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();
    let third = next(&mut resumed).await;
    assert_eq!(third.sequence, 3, "node B resumes after the acknowledgement made on node A");
    assert_eq!(third.accessor.unwrap().user_id, "u3");
    // Acknowledging on B what B never sent itself (A did) is accepted.
    assert_eq!(on_b.ack(AckRequest { sequence: 3 }).await.unwrap().into_inner().acked_through, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_searches_on_both_nodes_get_every_sequence_once_in_order() {
    let (_cluster, a, b) = two_nodes().await;
    let people = nhs_numbers(20);
    a.load("706", people.iter().map(|n| record(n, PlanType::ChildProtection)).collect()).await;
    caught_up(&a, &b).await;
    let mut searchers = Vec::new();
    for (node, relay) in [(0, &a), (1, &b)] {
        for worker in 0..4 {
            let mut lookup = relay.lookup().await;
            let people = people.clone();
            searchers.push(tokio::spawn(async move {
                for i in 0..25 {
                    let user = format!("n{node}-w{worker}-{i}");
                    let request = search_request(&people[(worker * 7 + i) % people.len()], &user, &user);
                    assert!(lookup.search(request).await.unwrap().into_inner().flagged);
                }
            }));
        }
    }
    for searcher in searchers {
        searcher.await.unwrap();
    }
    let mut on_b = b.notifications("la-706").await;
    let mut stream = on_b.subscribe(SubscribeRequest { after_sequence: Some(0) }).await.unwrap().into_inner();
    let mut users = HashSet::new();
    for expected in 1..=200u64 {
        let notification = next(&mut stream).await;
        assert_eq!(notification.sequence, expected, "sequences are consecutive and in order");
        assert!(users.insert(notification.accessor.unwrap().user_id), "one notification per search");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_searches_answer_and_their_notifications_are_written_once_it_is_back() {
    let (cluster, a, b) = two_nodes().await;
    let child = nhs(12);
    a.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    caught_up(&a, &b).await;

    cluster.pg_ctl_stop("fast");
    let stopped = std::time::Instant::now();
    let response = a.lookup().await.search(search_request(&child, "while-down", "w1")).await.unwrap().into_inner();
    assert!(response.flagged, "the clinician is answered from the index while the database is down");
    wait_for_health(&a, ServingStatus::NotServing).await;
    assert_eq!(a.relay.hub().held(), 1);
    let mut plans = a.plans("la-706").await;
    let refused = upload(&mut plans, "706", UploadMode::Incremental, vec![record(&nhs(13), PlanType::LookedAfter)])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    // How far behind A may be counts from before the database went away, and keeps counting.
    assert!(a.relay.index_lag() >= stopped.elapsed(), "no complete read can have started since the stop");
    assert!(*a.relay.caught_up().borrow() < stopped);

    cluster.pg_ctl_start();
    let restarted = std::time::Instant::now();
    let mut caught_up = b.relay.caught_up();
    tokio::time::timeout(Duration::from_secs(10), caught_up.wait_for(|at| *at > restarted))
        .await
        .expect("B reads everything again within 10 s of the database's return")
        .unwrap();
    assert!(b.relay.index_lag() < restarted.elapsed() + Duration::from_millis(1));
    wait_for_health(&a, ServingStatus::Serving).await;
    let mut on_b = b.notifications("la-706").await;
    let mut stream = on_b.subscribe(SubscribeRequest { after_sequence: Some(0) }).await.unwrap().into_inner();
    let delivered = next(&mut stream).await;
    assert_eq!((delivered.sequence, delivered.accessor.unwrap().user_id.as_str()), (1, "while-down"));
    assert_eq!(a.relay.hub().held(), 0);
    // Written once: the next search is sequence 2.
    a.lookup().await.search(search_request(&child, "after", "w2")).await.unwrap();
    assert_eq!(next(&mut stream).await.sequence, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_schema_newer_than_it_knows_and_nodes_starting_together_migrate_once() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let settings = options(&url);
    let opened = futures::future::join_all((0..4).map(|_| PostgresStore::open(&settings))).await;
    assert!(opened.iter().all(Result::is_ok), "four nodes starting together all open the store");
    let versions = cluster.psql("cpis", "SELECT string_agg(version::text, ',') FROM cpis_schema_migrations");
    let every_version: Vec<String> = (1..=cpis_relay::store::postgres::SCHEMA_VERSION).map(|v| v.to_string()).collect();
    assert_eq!(versions, every_version.join(","), "each migration applied once");
    drop(opened);

    cluster.psql("cpis", "INSERT INTO cpis_schema_migrations (version) VALUES (99)");
    let refused = PostgresStore::open(&options(&url)).await.err().expect("a newer schema is refused");
    assert!(refused.to_string().contains("version 99, newer than this relay knows"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_export_retention_and_store_check_work_on_postgres() {
    use cpis_relay::proto::{AccessLogRequest, ExportRequest};
    let (cluster, a, b) = two_nodes().await;
    let (child, ended) = (nhs(14), nhs(15));
    let mut old = record(&ended, PlanType::LookedAfter);
    old.end_date = "2026-02-01".into();
    a.load("706", vec![record(&child, PlanType::ChildProtection), old]).await;
    caught_up(&a, &b).await;
    b.lookup().await.search(search_request(&child, "u1", "r1")).await.unwrap();

    // The auditor on A sees the access made on B; the LA's export on B has A's upload.
    let log =
        collect(a.audit().await.access_log(AccessLogRequest { nhs_number: child.clone() }).await.unwrap().into_inner())
            .await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].accessor.as_ref().unwrap().user_id, "u1");
    let exported = collect(b.plans("la-706").await.export(ExportRequest {}).await.unwrap().into_inner()).await;
    let mut exported: Vec<&str> = exported.iter().map(|plan| plan.nhs_number.as_str()).collect();
    exported.sort();
    assert_eq!(exported, [child.as_str(), ended.as_str()]);

    let store_check = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
            .args(["store", "check", "--store", &cluster.url("cpis")])
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let (status, report) = store_check();
    assert_eq!(status, Some(0), "{report}");
    assert!(report.contains("integrity ok") && report.contains("accesses"), "{report}");

    // Retention: a year and a month on, the ended plan, the acknowledged notification and the
    // accesses go (the search and the auditor's read, itself an access of the log).
    a.notifications("la-706").await.ack(AckRequest { sequence: 1 }).await.unwrap();
    a.clock.advance(chrono::Duration::days(400));
    let counts = a.relay.expire().await.unwrap();
    assert_eq!((counts.plans, counts.notifications, counts.accesses), (1, 1, 2));
    assert_eq!(cluster.psql("cpis", "SELECT count(*) FROM cpis_requests"), "0");
    assert!(b.lookup().await.search(search_request(&child, "u2", "r2")).await.unwrap().into_inner().flagged);

    // A notification removed behind the relay's back is a gap the check reports.
    cluster.psql("cpis", "DELETE FROM cpis_notifications WHERE sequence = 2");
    b.lookup().await.search(search_request(&child, "u3", "r3")).await.unwrap();
    let (status, report) = store_check();
    assert_eq!(status, Some(1), "{report}");
    assert!(report.contains("706 misses sequences 2..2"), "{report}");
}

/// A search of person 20 by `user`, notifying `authorities`, as the relay records it.
async fn recorded(store: &dyn Store, id: u128, user: &str, request: &str, authorities: &[&str]) -> Recorded {
    try_recorded(store, id, user, request, authorities).await.unwrap()
}

/// [`recorded`], with the store's error.
async fn try_recorded(
    store: &dyn Store,
    id: u128,
    user: &str,
    request: &str,
    authorities: &[&str],
) -> Result<Recorded, cpis_relay::store::StoreError> {
    use cpis_relay::model::{AccessEvent, Accessor, CareSetting, NotificationDraft, PlanType as Type};
    let access = AccessEvent {
        id,
        accessed_at: test_start(),
        nhs_number: cpis_relay::nhs::NhsNumber::parse(&nhs(20)).unwrap(),
        organisation_ods_code: "RR8".into(),
        organisation_name: "Leeds Teaching Hospitals".into(),
        care_setting: CareSetting::EmergencyDepartment,
        accessor: Accessor { user_id: user.into(), name: "Dr Test".into(), role_code: "R8000".into() },
        request_id: request.into(),
        scheduled: authorities.is_empty(),
    };
    let drafts = authorities
        .iter()
        .map(|la| NotificationDraft {
            la_ods_code: (*la).into(),
            notification_id: format!("n-{id}-{la}"),
            local_id: "L1".into(),
            plan_type: Type::ChildProtection,
            team_code: "T1".into(),
            traceparent: None,
        })
        .collect();
    store.record_access(access, drafts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accesses_take_gapless_log_positions_a_held_retry_gets_its_own_answer_and_a_repeat_stores_nothing() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let open = async || Arc::new(PostgresStore::open(&options(&url)).await.unwrap()) as Arc<dyn Store>;
    let (one, two) = (open().await, open().await);
    let sequences = |recorded: Recorded| match recorded {
        Recorded::Notified(notifications) => {
            notifications.iter().map(|n| (n.draft.la_ods_code.clone(), n.sequence)).collect::<Vec<_>>()
        }
        Recorded::Repeated => panic!("expected notifications, got a repeat"),
    };

    let first = recorded(&*one, 1, "u1", "r1", &["706", "A1B2C"]).await;
    assert_eq!(sequences(first), [("706".to_owned(), 1), ("A1B2C".to_owned(), 1)]);
    // The same access again through the other node (a held search whose answer was lost):
    // answered with what it stored, nothing stored twice.
    let again = recorded(&*two, 1, "u1", "r1", &["706", "A1B2C"]).await;
    assert_eq!(sequences(again), [("706".to_owned(), 1), ("A1B2C".to_owned(), 1)]);
    // The same request as a new search on the other node: a repeat, stored nowhere.
    assert_eq!(recorded(&*two, 2, "u1", "r1", &["706"]).await, Recorded::Repeated);
    // A scheduled read is stored and notifies no one, and so does its retry.
    assert_eq!(sequences(recorded(&*two, 3, "u2", "r2", &[]).await), []);
    assert_eq!(sequences(recorded(&*one, 3, "u2", "r2", &[]).await), []);
    // Two searches in flight together on both nodes share batches and still number in order.
    let (x, y) = tokio::join!(recorded(&*one, 4, "u3", "r3", &["706"]), recorded(&*two, 5, "u4", "r4", &["706"]));
    let mut numbered: Vec<u64> = [x, y].into_iter().flat_map(sequences).map(|(_, s)| s).collect();
    numbered.sort_unstable();
    assert_eq!(numbered, [2, 3]);

    let positions = cluster.psql("cpis", "SELECT string_agg(position::text, ',' ORDER BY position) FROM cpis_accesses");
    assert_eq!(positions, "0,1,2,3", "four accesses stored, positions gapless from 0");
    assert_eq!(cluster.psql("cpis", "SELECT size FROM cpis_log"), "4");
    // A third node reads every access in position order; a writer reads only the others'.
    let users = |page: &cpis_relay::store::AccessPage| -> Vec<String> {
        page.accesses.iter().map(|access| access.view().unwrap().accessor.user_id.to_owned()).collect()
    };
    let third = PostgresStore::open(&options(&url)).await.unwrap();
    let every = third.feed().unwrap().accesses_from(0, 2).await.unwrap();
    assert_eq!((users(&every)[..1].to_vec(), every.next), (vec!["u1".to_owned()], 2), "a full page: read on from 2");
    let rest = third.feed().unwrap().accesses_from(every.next, 10).await.unwrap();
    assert_eq!((rest.accesses.len(), rest.next), (2, 4), "the rest, and the log's end");
    let others = two.feed().unwrap().accesses_from(0, 10).await.unwrap();
    assert_eq!((users(&others), others.next), (vec!["u1".to_owned(), "u3".to_owned()], 4), "node two skips its own");
    let nothing = third.feed().unwrap().accesses_from(4, 10).await.unwrap();
    assert_eq!((nothing.accesses.len(), nothing.next), (0, 4), "nothing past the log's end");
}

/// A batch of searches PostgreSQL refuses for one record's sake (here a
/// CHECK constraint; in the field, a value it cannot keep) is split until
/// that record is alone: the searches batched with it are stored, and only
/// it gets the refusal, as `Rejected` (about the record, not the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_record_fails_alone_and_the_searches_batched_with_it_are_stored() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&options(&url)).await.unwrap());
    recorded(&*store, 100, "warm-up", "w", &["706"]).await;
    cluster.psql("cpis", "ALTER TABLE cpis_accesses ADD CONSTRAINT test_refuses CHECK (user_id <> 'poison')");
    let users: Vec<String> = (0..40).map(|i| if i == 17 { "poison".to_owned() } else { format!("good-{i}") }).collect();
    let results = futures::future::join_all(
        users.iter().enumerate().map(|(i, user)| try_recorded(&*store, 200 + i as u128, user, user, &["706"])),
    )
    .await;
    for (user, result) in users.iter().zip(&results) {
        match (user.as_str(), result) {
            ("poison", Err(error)) => assert!(error.is_about_the_record(), "{error}"),
            ("poison", Ok(answer)) => panic!("the refused record was stored: {answer:?}"),
            (_, Ok(Recorded::Notified(notifications))) => assert_eq!(notifications.len(), 1),
            (user, other) => panic!("{user}: {other:?}"),
        }
    }
    let stored = cluster.psql("cpis", "SELECT count(*) FROM cpis_notifications WHERE la_ods_code = '706'");
    assert_eq!(stored, "40", "the warm-up and the 39 batched with the refused one");
}

/// A search PostgreSQL always refuses no longer takes the node out of
/// service: it is quarantined, the node is ready again, and once the cause
/// is gone the operator replays it with the node stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_postgres_always_refuses_is_quarantined_and_replayed_once_the_cause_is_gone() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let (pki, clock) = (Pki::new(), Arc::new(ManualClock::new(test_start())));
    let node = node(&pki, &clock, &url).await;
    let child = nhs(21);
    node.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    cluster.psql("cpis", "ALTER TABLE cpis_accesses ADD CONSTRAINT test_refuses CHECK (user_id <> 'poison')");
    let searches = ["poison", "good-1", "good-2", "good-3", "good-4"].map(|user| {
        let (url, pem) = (node.url(), node.pki.client_pem("ed-rr8"));
        let child = child.clone();
        tokio::spawn(async move {
            let mut lookup = cpis_relay::proto::lookup_client::LookupClient::new(
                cpis_relay::client::connect(&url, &pem, None).await.unwrap(),
            );
            lookup.search(search_request(&child, user, user)).await.unwrap().into_inner().flagged
        })
    });
    for search in searches {
        assert!(search.await.unwrap(), "every clinician is answered");
    }
    let answered = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), wait_for_health(&node, ServingStatus::Serving))
        .await
        .expect("ready again once the refused search is quarantined");
    println!(
        "ready again {:?} after the refused search was answered (held retry backoff 20-200 ms)",
        answered.elapsed()
    );
    assert_eq!((node.relay.hub().held(), node.relay.quarantined()), (0, 1));
    let users = cluster.psql("cpis", "SELECT string_agg(user_id, ',' ORDER BY user_id) FROM cpis_accesses");
    assert_eq!(users, "good-1,good-2,good-3,good-4");

    cluster.psql("cpis", "ALTER TABLE cpis_accesses DROP CONSTRAINT test_refuses");
    let (_, store, _, dir) = node.stop().await;
    drop(store);
    let replayed = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["quarantine", "replay", "--store", &url, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(replayed.status.success(), "{replayed:?}");
    let notified = cluster.psql(
        "cpis",
        "SELECT count(*) FROM cpis_notifications n JOIN cpis_accesses a ON a.id = n.access_id WHERE a.user_id = 'poison'",
    );
    assert_eq!(notified, "1", "replayed: stored and notified once");
}
