//! Power loss, not process death (issue 18): SIGKILL leaves the page cache,
//! so the crash tests cannot tell a synced write from one that is merely
//! written. Here the data directory is a filesystem that forgets, at a "power
//! cut", every write and every directory entry that was not synced (see
//! `support/powercut.rs`). Each answered search's notification must still be
//! there after the cut: in the embedded store (its journal append and
//! `fdatasync`), or, while the store fails, in the spill file (its append's
//! `fdatasync`, and the directory sync that makes a new spill file's entry
//! durable).

use std::{collections::HashSet, path::Path, time::Duration};

use crate::helpers::powercut::PowerCutFs;
use crate::helpers::*;
use cpis_relay::{
    client,
    proto::{
        AckRequest, PlanType, SubscribeRequest, UploadMode, UploadStatus, lookup_client::LookupClient,
        notifications_client::NotificationsClient, plans_client::PlansClient,
    },
    relay::spill::SPILL_FILE,
    tls::PemText,
};

const FAIL_WRITES: &str = "CPIS_TEST_FAIL_STORE_WRITES";

struct Setup {
    dir: tempfile::TempDir,
    disk: PowerCutFs,
    ed: PemText,
    la: PemText,
    people: Vec<String>,
}

/// A power-cut filesystem as the data directory, and a relay that loaded
/// some people and was killed; `None` where FUSE cannot be mounted.
async fn setup() -> Option<Setup> {
    let dir = tempfile::tempdir().unwrap();
    let disk = PowerCutFs::mount(&dir.path().join("data"))?;
    let pki = Pki::new();
    pki.write_server_layout(&dir.path().join("certs"));
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));
    let people = nhs_numbers(10);
    let mut server = start(dir.path(), &[], "warn").await;
    let mut plans = PlansClient::new(client::connect(&server.url, &la, None).await.unwrap());
    let records = people.iter().map(|person| record(person, PlanType::ChildProtection)).collect();
    let report = upload(&mut plans, "706", UploadMode::Incremental, records).await.unwrap();
    assert_eq!(report.status, UploadStatus::AllLoaded as i32);
    kill(&mut server).await;
    Some(Setup { dir, disk, ed, la, people })
}

async fn kill(server: &mut Running) {
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
}

/// Searches each person with a user of its own; returns the users.
async fn search_all(url: &str, ed: &PemText, people: &[String], prefix: &str) -> HashSet<String> {
    let mut lookup = LookupClient::new(client::connect(url, ed, None).await.unwrap());
    let mut users = HashSet::new();
    for (i, person) in people.iter().enumerate() {
        let user = format!("{prefix}-{i}");
        assert!(lookup.search(search_request(person, &user, &user)).await.unwrap().into_inner().flagged);
        users.insert(user);
    }
    users
}

/// Reads the authority's notifications until each of `users` has one;
/// fails naming those missing once none comes for 10 s.
async fn assert_notified(url: &str, la: &PemText, mut users: HashSet<String>) {
    let mut notifications = NotificationsClient::new(client::connect(url, la, None).await.unwrap());
    let mut stream = notifications.subscribe(SubscribeRequest { after_sequence: Some(0) }).await.unwrap().into_inner();
    let mut ids = HashSet::new();
    while !users.is_empty() {
        let Ok(notification) = tokio::time::timeout(Duration::from_secs(10), stream.message()).await else {
            panic!("answered searches without a notification after the power cut: {users:?}");
        };
        let notification = notification.unwrap().expect("the stream to continue");
        assert!(ids.insert(notification.notification_id.clone()), "notification ids are unique");
        users.remove(&notification.accessor.unwrap().user_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_search_survives_a_power_cut_in_the_embedded_store() {
    let Some(Setup { dir, mut disk, ed, la, people }) = setup().await else { return };
    disk.cut();
    let mut server = start(dir.path(), &[], "warn").await;
    let answered = search_all(&server.url, &ed, &people, "stored").await;
    let mut notifications = NotificationsClient::new(client::connect(&server.url, &la, None).await.unwrap());
    notifications.ack(AckRequest { sequence: 4 }).await.unwrap();
    kill(&mut server).await;
    disk.cut();

    let mut server = start(dir.path(), &[], "warn").await;
    // The upload survived the first cut (each search found its person flagged); the searches the second.
    assert_notified(&server.url, &la, answered).await;
    // And the acknowledgement: a subscription resumes after it.
    let mut notifications = NotificationsClient::new(client::connect(&server.url, &la, None).await.unwrap());
    let mut resumed = notifications.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();
    assert_eq!(next(&mut resumed).await.sequence, 5);
    kill(&mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_held_search_survives_a_power_cut_in_the_spill_file() {
    let Some(Setup { dir, mut disk, ed, la, people }) = setup().await else { return };
    // The next start creates the spill file anew: its directory entry must be synced too.
    remove_spill(&dir.path().join("data"));
    disk.cut();
    let mut failing = start_with_env(dir.path(), &[], "error", &[(FAIL_WRITES, "1")]).await;
    assert!(dir.path().join("data").join(SPILL_FILE).exists());
    let held = search_all(&failing.url, &ed, &people, "held").await;
    kill(&mut failing).await;
    disk.cut();

    let mut recovered = start(dir.path(), &[], "warn").await;
    assert_notified(&recovered.url, &la, held).await;
    kill(&mut recovered).await;
}

fn remove_spill(data: &Path) {
    std::fs::remove_file(data.join(SPILL_FILE)).unwrap();
    std::fs::File::open(data).unwrap().sync_all().unwrap();
}
