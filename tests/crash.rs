//! Crash safety of the real binary: concurrent flagged searches (each with a
//! distinct user) and uploads, SIGKILL at a random moment, restart, several
//! times over. Every answered search must have a notification after the
//! restarts, every notification id must be unique, and every upload that
//! reported success must still be loaded.

mod common;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use common::*;
use cpis_relay::{
    client,
    proto::{PlanType, SubscribeRequest, UploadMode, UploadStatus, lookup_client::LookupClient},
    tls::PemText,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_loses_an_answered_search_or_a_reported_upload() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_server_layout(&dir.path().join("certs"));
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));

    let numbers = nhs_numbers(400);
    let answered: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut loaded: Vec<String> = Vec::new();
    let mut next_person = 0;

    for round in 0..3 {
        let mut server = start(dir.path(), &[], "warn").await;
        // A first upload so that there is someone to find.
        let batch: Vec<String> = numbers[next_person..next_person + 20].to_vec();
        next_person += 20;
        let mut plans =
            cpis_relay::proto::plans_client::PlansClient::new(client::connect(&server.url, &la, None).await.unwrap());
        let report = upload(
            &mut plans,
            "706",
            UploadMode::Incremental,
            batch.iter().map(|n| record(n, PlanType::ChildProtection)).collect(),
        )
        .await
        .unwrap();
        assert_eq!(report.status, UploadStatus::AllLoaded as i32);
        loaded.extend(batch);

        let kill_after = rng.random_range(40..160usize);
        let answered_this_round = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (enough, mut enough_seen) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for task in 0..16 {
            let (url, ed, answered, counter, enough) = (
                server.url.clone(),
                ed.clone(),
                Arc::clone(&answered),
                Arc::clone(&answered_this_round),
                enough.clone(),
            );
            let people = loaded.clone();
            tasks.push(tokio::spawn(async move {
                let Ok(channel) = client::connect(&url, &ed, None).await else { return };
                let mut lookup = LookupClient::new(channel);
                for i in 0.. {
                    let user = format!("r{round}-t{task}-{i}");
                    let person = &people[(task * 7 + i * 13) % people.len()];
                    match lookup.search(search_request(person, &user, &user)).await {
                        Ok(response) => {
                            assert!(response.into_inner().flagged);
                            answered.lock().unwrap().insert(user);
                            if counter.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1 >= kill_after {
                                let _ = enough.send(true);
                            }
                        }
                        Err(_) => return, // the relay died under us
                    }
                }
            }));
        }
        // Uploads race the kill too; only those that reported success count.
        let uploader = {
            let (url, la) = (server.url.clone(), la.clone());
            let batches: Vec<Vec<String>> =
                numbers[next_person..next_person + 60].chunks(5).map(<[String]>::to_vec).collect();
            next_person += 60;
            tokio::spawn(async move { upload_until_error(&url, &la, batches).await })
        };
        let _ = enough_seen.wait_for(|enough| *enough).await;
        server.child.start_kill().unwrap();
        server.child.wait().await.unwrap();
        for task in tasks {
            task.await.unwrap();
        }
        loaded.extend(uploader.await.unwrap());
        println!(
            "round {round}: killed after {} answered searches",
            answered_this_round.load(std::sync::atomic::Ordering::Acquire)
        );
    }

    let mut server = start(dir.path(), &[], "warn").await;
    let mut lookup = LookupClient::new(client::connect(&server.url, &ed, None).await.unwrap());
    for person in &loaded {
        assert!(
            lookup.search(search_request(person, "final-check", "")).await.unwrap().into_inner().flagged,
            "upload of {person} was lost"
        );
    }
    let mut notifications = cpis_relay::proto::notifications_client::NotificationsClient::new(
        client::connect(&server.url, &la, None).await.unwrap(),
    );
    let mut stream = notifications.subscribe(SubscribeRequest { after_sequence: Some(0) }).await.unwrap().into_inner();
    let mut missing = answered.lock().unwrap().clone();
    let mut ids = HashSet::new();
    while !missing.is_empty() {
        let notification = next(&mut stream).await;
        assert!(ids.insert(notification.notification_id.clone()), "notification ids are unique");
        missing.remove(&notification.accessor.unwrap().user_id);
    }
    assert!(answered.lock().unwrap().len() >= 120, "three rounds of at least 40 answered searches");
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
}

/// Uploads batches one after another until the relay fails; returns the
/// people of the batches that reported ALL_LOADED.
async fn upload_until_error(url: &str, la: &PemText, batches: Vec<Vec<String>>) -> Vec<String> {
    let mut loaded = Vec::new();
    let Ok(channel) = client::connect(url, la, None).await else { return loaded };
    let mut plans = cpis_relay::proto::plans_client::PlansClient::new(channel);
    for batch in batches {
        let records = batch.iter().map(|n| record(n, PlanType::LookedAfter)).collect();
        match upload(&mut plans, "706", UploadMode::Incremental, records).await {
            Ok(report) if report.status == UploadStatus::AllLoaded as i32 => loaded.extend(batch),
            _ => break,
        }
    }
    loaded
}
