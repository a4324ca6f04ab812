//! A broken embedded store (issue 18): once a journal append or sync fails,
//! fjall refuses every later commit, so the relay must stop (exit status 74)
//! for its supervisor to restart it and replay the journal, never answer a
//! search as kept when its notification is kept nowhere that survives that
//! restart, and come back with every answered search's notification.
//!
//! The I/O error is real: the data directory is a small tmpfs, filled up
//! while flagged searches run, so the kernel answers the journal's write
//! with ENOSPC. Mounting needs root (CI runs as root); elsewhere the test
//! skips with a message.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::helpers::tmpfs::Tmpfs;
use crate::helpers::*;
use cpis_relay::{
    client,
    proto::{
        PlanType, SubscribeRequest, UploadMode, UploadStatus, lookup_client::LookupClient,
        notifications_client::NotificationsClient, plans_client::PlansClient,
    },
};
use tokio::io::AsyncReadExt;

/// `cpis-relay serve`'s status when its store broke (sysexits' EX_IOERR).
const STORE_BROKEN: i32 = 74;
/// Searches each driver makes at most: far more than a full disk lets through.
const MAX_SEARCHES: usize = 20_000;

#[derive(Default)]
struct Outcomes {
    /// Users (one per search) whose search was answered.
    answered: HashSet<String>,
    /// Users whose search was refused with UNAVAILABLE or left unanswered (to be
    /// retried), with the person each searched.
    refused: HashMap<String, String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_relay_with_status_74_and_the_restart_has_every_answered_search() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("data"), 16) else { return };
    let pki = Pki::new();
    pki.write_server_layout(&dir.path().join("certs"));
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));
    let people = nhs_numbers(20);

    let mut server = start(dir.path(), &["--grace-period-secs", "1"], "warn").await;
    let mut stderr = server.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.unwrap();
        text
    });
    let mut plans = PlansClient::new(client::connect(&server.url, &la, None).await.unwrap());
    let records = people.iter().map(|person| record(person, PlanType::ChildProtection)).collect();
    let report = upload(&mut plans, "706", UploadMode::Incremental, records).await.unwrap();
    assert_eq!(report.status, UploadStatus::AllLoaded as i32);

    let outcomes: Arc<Mutex<Outcomes>> = Arc::default();
    let mut lookup = LookupClient::new(client::connect(&server.url, &ed, None).await.unwrap());
    for (i, person) in people.iter().enumerate() {
        let user = format!("before-{i}");
        assert!(lookup.search(search_request(person, &user, &user)).await.unwrap().into_inner().flagged);
        outcomes.lock().unwrap().answered.insert(user);
    }

    let filled = disk.fill("filler");
    println!("filled the data directory's filesystem with {filled} bytes");
    // Concurrent searches (batched into shared commits) until each gets an error:
    // the journal's next write needs a page the filesystem does not have.
    let mut drivers = Vec::new();
    for driver in 0..4 {
        let (url, ed, outcomes, people) = (server.url.clone(), ed.clone(), Arc::clone(&outcomes), people.clone());
        drivers.push(tokio::spawn(async move {
            let mut lookup = LookupClient::new(client::connect(&url, &ed, None).await.unwrap());
            for i in 0..MAX_SEARCHES {
                let user = format!("full-{driver}-{i}");
                let person = &people[i % people.len()];
                match lookup.search(search_request(person, &user, &user)).await {
                    Ok(answer) => {
                        assert!(answer.into_inner().flagged);
                        outcomes.lock().unwrap().answered.insert(user);
                    }
                    Err(status) => {
                        // UNAVAILABLE, or no answer at all: the relay exited while this
                        // search was on its way (the connection closed under it, or its
                        // GOAWAY said the stream was not processed). Such a status comes
                        // from the client's transport, never from the relay.
                        let closed = std::error::Error::source(&status)
                            .is_some_and(|source| source.is::<tonic::transport::Error>());
                        assert!(status.code() == tonic::Code::Unavailable || closed, "{status:?}");
                        outcomes.lock().unwrap().refused.insert(user, person.clone());
                        return;
                    }
                }
            }
            panic!("{MAX_SEARCHES} searches on a full disk and the store never failed");
        }));
    }
    for driver in drivers {
        driver.await.unwrap();
    }
    // A guard against a hang, not a timed assertion: the relay stops within its 1 s grace period.
    let exit = tokio::time::timeout(Duration::from_secs(60), server.child.wait())
        .await
        .expect("the relay stops once its store is broken")
        .unwrap();
    let log = log.await.unwrap();
    assert_eq!(exit.code(), Some(STORE_BROKEN), "{exit:?}\n{log}");
    assert!(log.contains("the store's journal could not be written or synced"), "{log}");
    assert!(log.contains("free space or replace the disk"), "{log}");
    {
        let outcomes = outcomes.lock().unwrap();
        println!("answered {}, refused {} (UNAVAILABLE)", outcomes.answered.len(), outcomes.refused.len());
        assert!(!outcomes.refused.is_empty());
    }

    // The operator frees space; the supervisor starts the relay again.
    std::fs::remove_file(dir.path().join("data/filler")).unwrap();
    disk.resize(64);
    let mut server = start(dir.path(), &[], "warn").await;
    let mut notifications = NotificationsClient::new(client::connect(&server.url, &la, None).await.unwrap());
    let mut stream = notifications.subscribe(SubscribeRequest { after_sequence: Some(0) }).await.unwrap().into_inner();
    // The refused searches are retried by their clients as clients retry: the same
    // person, user and request id. One the relay committed before it stopped (left
    // unanswered) is recognised as that request's retry and not notified again.
    let mut lookup = LookupClient::new(client::connect(&server.url, &ed, None).await.unwrap());
    let retried: Vec<(String, String)> =
        outcomes.lock().unwrap().refused.iter().map(|(user, person)| (user.clone(), person.clone())).collect();
    for (user, person) in &retried {
        assert!(lookup.search(search_request(person, user, user)).await.unwrap().into_inner().flagged);
    }
    // A last search: committed after every retry, so any second notification of
    // a search comes before its own.
    assert!(lookup.search(search_request(&people[0], "marker", "marker")).await.unwrap().into_inner().flagged);
    let counts = notifications_until(&mut stream, "marker").await;
    let mut expected: HashSet<String> = outcomes.lock().unwrap().answered.clone();
    expected.extend(retried.iter().map(|(user, _)| user.clone()));
    for user in &expected {
        assert_eq!(counts.get(user), Some(&1), "user {user}: every answered or retried search notified exactly once");
    }
    let unexpected: Vec<_> = counts.keys().filter(|user| !expected.contains(*user) && *user != "marker").collect();
    assert!(unexpected.is_empty(), "notifications of searches never answered nor retried: {unexpected:?}");
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
}

/// Reads notifications until `last_user`'s arrives, counting them per user;
/// fails once none comes for 10 s. Notification ids must be unique.
async fn notifications_until(
    stream: &mut tonic::Streaming<cpis_relay::proto::AccessNotification>,
    last_user: &str,
) -> HashMap<String, usize> {
    let (mut counts, mut ids) = (HashMap::<String, usize>::new(), HashSet::new());
    loop {
        let Ok(notification) = tokio::time::timeout(Duration::from_secs(10), stream.message()).await else {
            panic!("no notification for 10 s before {last_user}'s; seen so far: {counts:?}");
        };
        let notification = notification.unwrap().expect("the stream to continue");
        assert!(ids.insert(notification.notification_id.clone()), "notification ids are unique");
        let user = notification.accessor.unwrap().user_id;
        *counts.entry(user.clone()).or_default() += 1;
        if user == last_user {
            return counts;
        }
    }
}
