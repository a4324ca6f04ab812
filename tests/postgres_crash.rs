//! Failures of a deployment on PostgreSQL, with the real binary: relay
//! nodes are `cpis-relay serve` subprocesses on a private cluster (see
//! tests/support/postgres.rs). A relay node is SIGKILLed, the database is
//! restarted, the primary is killed and its synchronous standby promoted,
//! each while searches run. Afterwards every answered search has exactly one
//! access and one notification (checked in SQL), and a subscriber receives
//! every answered search's notification.

mod common;
#[path = "support/postgres.rs"]
mod postgres;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use cpis_relay::{
    client,
    proto::{PlanType, SubscribeRequest, UploadMode, UploadStatus, lookup_client::LookupClient},
    tls::PemText,
};
use postgres::PgCluster;
use tokio::sync::watch;

/// Answered searches, by user (each search has its own user and request id).
type Answered = Arc<Mutex<HashSet<String>>>;

/// A relay node as a subprocess on `url`, with its own data directory (the spill).
async fn node(pki: &Pki, url: &str) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    pki.write_server_layout(&dir.path().join("certs"));
    let mut running =
        start(dir.path(), &["--store", url, "--feed-poll-ms", "200", "--search-rate-per-second", "0"], "warn").await;
    // Drained, or a relay logging many failed writes would block on a full pipe.
    let mut stderr = running.stderr.take().unwrap();
    tokio::spawn(async move { tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await });
    (running, dir)
}

/// Loads `people` for la-706 through the node at `url`.
async fn load_people(url: &str, la: &PemText, people: &[String]) {
    let mut plans = cpis_relay::proto::plans_client::PlansClient::new(client::connect(url, la, None).await.unwrap());
    let records = people.iter().map(|n| record(n, PlanType::ChildProtection)).collect();
    let report = upload(&mut plans, "706", UploadMode::Incremental, records).await.unwrap();
    assert_eq!(report.status, UploadStatus::AllLoaded as i32);
}

/// Searchers against `url` until `stop`; each answered search is recorded
/// and counted. A failed search fails the test, unless the node `may_die`
/// (then its searchers stop at the first failure).
fn searchers(
    may_die: bool,
    url: &str,
    ed: &PemText,
    people: &[String],
    tag: &str,
    load: &Load,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Load { answered, count, stop } = load;
    (0..6)
        .map(|task| {
            let (url, ed, people, tag) = (url.to_owned(), ed.clone(), people.to_vec(), tag.to_owned());
            let (answered, count, stop) = (Arc::clone(answered), Arc::clone(count), stop.clone());
            tokio::spawn(async move {
                let Ok(channel) = client::connect(&url, &ed, None).await else { return };
                let mut lookup = LookupClient::new(channel);
                for i in 0.. {
                    if *stop.borrow() {
                        return;
                    }
                    let user = format!("{tag}-t{task}-{i}");
                    let person = &people[(task * 7 + i * 13) % people.len()];
                    match lookup.search(search_request(person, &user, &user)).await {
                        Ok(response) => {
                            assert!(response.into_inner().flagged);
                            answered.lock().unwrap().insert(user);
                            count.send_modify(|answered| *answered += 1);
                        }
                        Err(_) if may_die => return,
                        Err(status) => panic!("search failed: {status:?}"),
                    }
                }
            })
        })
        .collect()
}

/// Answered searches so far; waiters wait on it.
type Count = Arc<watch::Sender<usize>>;

/// What the searchers of a test share: what they answered, how many, and when to stop.
struct Load {
    answered: Answered,
    count: Count,
    stop: watch::Receiver<bool>,
}

impl Load {
    /// A load and the switch that stops its searchers.
    fn new() -> (Self, watch::Sender<bool>) {
        let (stop, stopped) = watch::channel(false);
        (Self { answered: Arc::default(), count: Arc::new(watch::Sender::new(0)), stop: stopped }, stop)
    }
}

/// (Never pass `*count.borrow()` here directly: the borrow would live across the wait.)
async fn wait_for_count(count: &Count, at_least: usize) -> usize {
    let mut answered = count.subscribe();
    let reached = tokio::time::timeout(Duration::from_secs(60), answered.wait_for(|answered| *answered >= at_least));
    *reached.await.unwrap_or_else(|_| panic!("fewer than {at_least} searches answered within 60 s")).unwrap()
}

/// Reads la-706's notifications from the start through `url` until every
/// answered search's has come; returns how many were read.
async fn every_answered_search_notified(url: &str, la: &PemText, answered: &Answered) -> usize {
    let mut notifications = cpis_relay::proto::notifications_client::NotificationsClient::new(
        client::connect(url, la, None).await.unwrap(),
    );
    let mut stream = notifications.subscribe(SubscribeRequest { after_sequence: Some(0) }).await.unwrap().into_inner();
    let mut missing = answered.lock().unwrap().clone();
    let (mut read, mut seen) = (0, HashSet::new());
    while !missing.is_empty() {
        let notification = tokio::time::timeout(Duration::from_secs(30), futures::StreamExt::next(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("{} answered searches were never notified", missing.len()))
            .unwrap()
            .unwrap();
        read += 1;
        assert_eq!(notification.sequence, read as u64, "sequences are consecutive from 1");
        let user = notification.accessor.unwrap().user_id;
        assert!(seen.insert(user.clone()), "{user} was notified twice");
        missing.remove(&user);
    }
    read
}

/// In SQL: one access per request, one notification per access (each person has one plan).
fn exactly_once(cluster: &PgCluster) {
    let duplicates = cluster.psql(
        "cpis",
        "SELECT count(*) - count(DISTINCT (organisation_ods_code, user_id, request_id)) FROM cpis_accesses",
    );
    assert_eq!(duplicates, "0", "no request stored twice");
    let counts = cluster.psql(
        "cpis",
        "SELECT (SELECT count(*) FROM cpis_accesses) || ' ' || (SELECT count(*) FROM cpis_notifications) || ' ' || \
         (SELECT count(DISTINCT access_id) FROM cpis_notifications) || ' ' || (SELECT max(sequence) FROM cpis_notifications)",
    );
    let counts: Vec<&str> = counts.split(' ').collect();
    assert!(counts.iter().all(|count| *count == counts[0]), "accesses, notifications, distinct, last: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_node_while_both_take_searches_loses_no_notification_and_duplicates_none() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let pki = Pki::new();
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));
    let people = nhs_numbers(30);
    let (mut a, _a_dir) = node(&pki, &url).await;
    load_people(&a.url, &la, &people).await;
    let (b, _b_dir) = node(&pki, &url).await;

    let (load, stop) = Load::new();
    let (answered, count) = (Arc::clone(&load.answered), Arc::clone(&load.count));
    let mut tasks = searchers(true, &a.url, &ed, &people, "a", &load);
    tasks.extend(searchers(false, &b.url, &ed, &people, "b", &load));
    wait_for_count(&count, 150).await;
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    let at_kill = *count.borrow();
    // Node B carries on alone.
    wait_for_count(&count, at_kill + 100).await;
    stop.send_replace(true);
    for task in tasks {
        task.await.unwrap();
    }
    let read = every_answered_search_notified(&b.url, &la, &answered).await;
    println!(
        "node A killed after {at_kill} answered searches; {} answered, {read} notifications read",
        *count.borrow()
    );
    exactly_once(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_postgres_under_load_holds_then_writes_every_notification_once() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let pki = Pki::new();
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));
    let people = nhs_numbers(30);
    let (a, _a_dir) = node(&pki, &url).await;
    load_people(&a.url, &la, &people).await;

    let (load, stop) = Load::new();
    let (answered, count) = (Arc::clone(&load.answered), Arc::clone(&load.count));
    let tasks = searchers(false, &a.url, &ed, &people, "a", &load);
    wait_for_count(&count, 100).await;
    cluster.pg_ctl_stop("immediate");
    let at_stop = *count.borrow();
    // Searches are still answered while the database is down: their notifications are held.
    wait_for_count(&count, at_stop + 100).await;
    let (status, _) = admin_get(a.admin, "/readyz").await;
    assert_eq!(status, 503, "not ready while notifications are held");
    cluster.pg_ctl_start();
    let at_start = *count.borrow();
    wait_for_count(&count, at_start + 100).await;
    stop.send_replace(true);
    for task in tasks {
        task.await.unwrap();
    }
    let read = every_answered_search_notified(&a.url, &la, &answered).await;
    println!("database down after {at_stop} answered searches; {read} notifications read");
    exactly_once(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_synchronous_standby_loses_nothing_acknowledged() {
    let primary = PgCluster::start();
    primary.create_database("cpis");
    let standby = primary.standby("standby1");
    primary.append_conf("synchronous_standby_names = 'standby1'\n");
    primary.psql("postgres", "SELECT pg_reload_conf()");
    // Commits now wait for the standby.
    primary.psql("cpis", "CREATE TABLE sync_probe (x int); DROP TABLE sync_probe");
    assert_eq!(primary.psql("postgres", "SELECT sync_state FROM pg_stat_replication"), "sync");
    let url = format!(
        "postgres://cpis@127.0.0.1:{},127.0.0.1:{}/cpis?target_session_attrs=read-write&connect_timeout=2&sslmode=disable",
        primary.port, standby.port
    );
    let pki = Pki::new();
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));
    let people = nhs_numbers(30);
    let (a, _a_dir) = node(&pki, &url).await;
    load_people(&a.url, &la, &people).await;
    // Started after the upload, so its index holds it from the start.
    let (b, _b_dir) = node(&pki, &url).await;

    let (load, stop) = Load::new();
    let (answered, count) = (Arc::clone(&load.answered), Arc::clone(&load.count));
    let mut tasks = searchers(false, &a.url, &ed, &people, "a", &load);
    tasks.extend(searchers(false, &b.url, &ed, &people, "b", &load));
    wait_for_count(&count, 150).await;
    primary.pg_ctl_stop("immediate");
    let at_kill = *count.borrow();
    standby.promote();
    wait_for_count(&count, at_kill + 150).await;
    stop.send_replace(true);
    for task in tasks {
        task.await.unwrap();
    }
    let read = every_answered_search_notified(&b.url, &la, &answered).await;
    println!("primary killed after {at_kill} answered searches; {read} notifications read from the promoted standby");
    exactly_once(&standby);
    // And the nodes take uploads again, on the new primary.
    load_people(&a.url, &la, &nhs_numbers(31)[30..]).await;
}
