//! Searches under load against relay nodes on PostgreSQL, and the checks
//! that follow a failure: every answered search notified exactly once, in
//! sequence, and exactly one access and one notification per request in SQL.
//! Shared by tests/it/faults/postgres_crash.rs and tests/it/faults/network.rs.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use cpis_relay::{
    client,
    proto::{PlanType, SubscribeRequest, UploadMode, UploadStatus, lookup_client::LookupClient},
    tls::PemText,
};
use tokio::sync::watch;

use super::postgres::PgCluster;
use super::*;

/// A relay node as a subprocess on the database at `url` (polling it every
/// 200 ms, no search rate limit), with its own data directory (the spill)
/// and the deployment's one log key.
pub async fn pg_node(pki: &Pki, url: &str) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    pki.write_server_layout(&dir.path().join("certs"));
    let extra = ["--store", url, "--feed-poll-ms", "200", "--search-rate-per-second", "0"];
    let mut running = start(dir.path(), &[&extra[..], &["--log-key", deployment_log_key()]].concat(), "warn").await;
    // Drained, or a relay logging many failed writes would block on a full pipe.
    let mut stderr = running.stderr.take().unwrap();
    tokio::spawn(async move { tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await });
    (running, dir)
}

/// Answered searches, by user (each search has its own user and request id).
pub type Answered = Arc<Mutex<HashSet<String>>>;

/// Loads `people` for la-706 through the node at `url`.
pub async fn load_people(url: &str, server_name: Option<&str>, la: &PemText, people: &[String]) {
    let mut plans =
        cpis_relay::proto::plans_client::PlansClient::new(client::connect(url, la, server_name).await.unwrap());
    let records = people.iter().map(|n| record(n, PlanType::ChildProtection)).collect();
    let report = upload(&mut plans, "706", UploadMode::Incremental, records).await.unwrap();
    assert_eq!(report.status, UploadStatus::AllLoaded as i32);
}

/// Searchers against `url` until `stop`; each answered search is recorded
/// and counted. A failed search fails the test, unless the node `may_die`
/// (then its searchers stop at the first failure).
pub fn searchers(
    may_die: bool,
    url: &str,
    server_name: Option<&str>,
    ed: &PemText,
    people: &[String],
    tag: &str,
    load: &Load,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Load { answered, count, stop } = load;
    (0..6)
        .map(|task| {
            let (url, ed, people, tag) = (url.to_owned(), ed.clone(), people.to_vec(), tag.to_owned());
            let server_name = server_name.map(str::to_owned);
            let (answered, count, stop) = (Arc::clone(answered), Arc::clone(count), stop.clone());
            tokio::spawn(async move {
                let Ok(channel) = client::connect(&url, &ed, server_name.as_deref()).await else { return };
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
pub type Count = Arc<watch::Sender<usize>>;

/// What the searchers of a test share: what they answered, how many, and when to stop.
pub struct Load {
    pub answered: Answered,
    pub count: Count,
    pub stop: watch::Receiver<bool>,
}

impl Load {
    /// A load and the switch that stops its searchers.
    pub fn new() -> (Self, watch::Sender<bool>) {
        let (stop, stopped) = watch::channel(false);
        (Self { answered: Arc::default(), count: Arc::new(watch::Sender::new(0)), stop: stopped }, stop)
    }
}

/// (Never pass `*count.borrow()` here directly: the borrow would live across the wait.)
pub async fn wait_for_count(count: &Count, at_least: usize) -> usize {
    let mut answered = count.subscribe();
    let reached = tokio::time::timeout(Duration::from_secs(60), answered.wait_for(|answered| *answered >= at_least));
    *reached.await.unwrap_or_else(|_| panic!("fewer than {at_least} searches answered within 60 s")).unwrap()
}

/// Reads la-706's notifications from the start through `url` until every
/// answered search's has come; returns how many were read.
pub async fn every_answered_search_notified(
    url: &str,
    server_name: Option<&str>,
    la: &PemText,
    answered: &Answered,
) -> usize {
    let mut notifications = cpis_relay::proto::notifications_client::NotificationsClient::new(
        client::connect(url, la, server_name).await.unwrap(),
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
pub fn exactly_once(cluster: &PgCluster) {
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
