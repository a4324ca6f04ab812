//! Held notifications and readiness (issue 11): while the store fails, a
//! flagged search's notifications are spilled to the data directory and
//! survive SIGTERM, SIGKILL and restart, are delivered exactly once when the
//! store recovers, are retried through the shutdown grace period and are
//! bounded; any failed store write makes the relay not ready until a write
//! succeeds and nothing is held.
//!
//! The subprocess tests make the real binary's store fail with the debug-only
//! switch `CPIS_TEST_FAIL_STORE_WRITES=1` (read once at start).

use std::{path::Path, time::Duration};

use crate::helpers::*;
use cpis_relay::{
    client,
    proto::{
        AckRequest, PlanType, SubscribeRequest, UploadMode, UploadStatus, lookup_client::LookupClient,
        notifications_client::NotificationsClient, plans_client::PlansClient,
    },
    relay::{RelaySettings, StoreHealth, spill::SPILL_FILE},
    store::embedded::EmbeddedStore,
    tls::PemText,
};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const FAIL_WRITES: &str = "CPIS_TEST_FAIL_STORE_WRITES";

/// `cpis-relay serve` on `dir` with a short grace period and extra environment.
async fn start_env(dir: &Path, env: &[(&str, &str)]) -> Running {
    start_with_env(dir, &["--grace-period-secs", "1"], "warn", env).await
}

async fn sigterm(server: &mut Running) {
    let pid = server.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = tokio::time::timeout(Duration::from_secs(30), server.child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit:?}");
}

async fn sigkill(server: &mut Running) {
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
}

/// Waits until the subprocess's gRPC health reports `want`.
async fn wait_for_serving(url: &str, pem: &PemText, want: ServingStatus) {
    let mut health = HealthClient::new(client::connect(url, pem, None).await.unwrap());
    let mut updates = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    while next(&mut updates).await.status != want as i32 {}
}

async fn search(url: &str, pem: &PemText, child: &str, user: &str) {
    let mut lookup = LookupClient::new(client::connect(url, pem, None).await.unwrap());
    let response = lookup.search(search_request(child, user, &format!("request-{user}"))).await.unwrap().into_inner();
    assert!(response.flagged, "the clinician is answered whatever the store does");
}

/// The users of the next `count` notifications after `after`, in order.
async fn notified_users(url: &str, pem: &PemText, after: u64, count: usize) -> Vec<String> {
    let mut notifications = NotificationsClient::new(client::connect(url, pem, None).await.unwrap());
    let mut stream =
        notifications.subscribe(SubscribeRequest { after_sequence: Some(after) }).await.unwrap().into_inner();
    let mut users = Vec::new();
    for _ in 0..count {
        users.push(next(&mut stream).await.accessor.unwrap().user_id);
    }
    users
}

/// A flagged child in a fresh data directory, loaded by a relay that is then stopped.
async fn loaded_directory() -> (tempfile::TempDir, Pki, String) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_server_layout(&dir.path().join("certs"));
    let child = nhs(7);
    let mut server = start_env(dir.path(), &[]).await;
    let la = client::connect(&server.url, &pki.client_pem("la-706"), None).await.unwrap();
    let report = upload(
        &mut PlansClient::new(la),
        "706",
        UploadMode::Incremental,
        vec![record(&child, PlanType::ChildProtection)],
    )
    .await
    .unwrap();
    assert_eq!(report.status, UploadStatus::AllLoaded as i32);
    sigterm(&mut server).await;
    (dir, pki, child)
}

#[tokio::test]
async fn held_notifications_survive_sigterm_while_the_store_fails_and_are_delivered_once() {
    let (dir, pki, child) = loaded_directory().await;
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));

    let mut failing = start_env(dir.path(), &[(FAIL_WRITES, "1")]).await;
    search(&failing.url, &ed, &child, "before-sigterm-1").await;
    search(&failing.url, &ed, &child, "before-sigterm-2").await;
    wait_for_serving(&failing.url, &ed, ServingStatus::NotServing).await;
    assert_eq!(admin_get(failing.admin, "/readyz").await.0, 503);
    // The grace period (1 s) is spent retrying; the store still fails, so they stay spilled.
    sigterm(&mut failing).await;
    assert!(std::fs::metadata(dir.path().join("data").join(SPILL_FILE)).unwrap().len() > 0);

    let mut recovered = start_env(dir.path(), &[]).await;
    assert_eq!(notified_users(&recovered.url, &la, 0, 2).await, ["before-sigterm-1", "before-sigterm-2"]);
    wait_for_serving(&recovered.url, &ed, ServingStatus::Serving).await;
    sigkill(&mut recovered).await;

    // Another restart notifies nothing again: the next notification is a new search's.
    let again = start_env(dir.path(), &[]).await;
    search(&again.url, &ed, &child, "after-restart").await;
    assert_eq!(notified_users(&again.url, &la, 0, 3).await, ["before-sigterm-1", "before-sigterm-2", "after-restart"]);
}

#[tokio::test]
async fn held_notifications_survive_sigkill_and_restarts_while_the_store_fails() {
    let (dir, pki, child) = loaded_directory().await;
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));

    let mut failing = start_env(dir.path(), &[(FAIL_WRITES, "1")]).await;
    search(&failing.url, &ed, &child, "before-kill-1").await;
    sigkill(&mut failing).await;
    // Still failing after the restart: the reloaded search is held again, and a new one joins it.
    let mut still_failing = start_env(dir.path(), &[(FAIL_WRITES, "1")]).await;
    wait_for_serving(&still_failing.url, &ed, ServingStatus::NotServing).await;
    search(&still_failing.url, &ed, &child, "before-kill-2").await;
    sigkill(&mut still_failing).await;

    let mut recovered = start_env(dir.path(), &[]).await;
    assert_eq!(notified_users(&recovered.url, &la, 0, 2).await, ["before-kill-1", "before-kill-2"]);
    wait_for_serving(&recovered.url, &ed, ServingStatus::Serving).await;
    sigkill(&mut recovered).await;

    let again = start_env(dir.path(), &[]).await;
    search(&again.url, &ed, &child, "after-restart").await;
    assert_eq!(notified_users(&again.url, &la, 0, 3).await, ["before-kill-1", "before-kill-2", "after-restart"]);
}

fn spilling(dir: &Path) -> RelaySettings {
    RelaySettings { spill_dir: Some(dir.to_owned()), ..RelaySettings::default() }
}

#[tokio::test]
async fn a_restart_skips_spilled_searches_already_stored_so_none_is_notified_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let clock = std::sync::Arc::new(cpis_relay::clock::ManualClock::new(test_start()));
    let relay = TestRelay::serve(Pki::new(), store, clock, spilling(dir.path()), dir).await;
    let child = nhs(3);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    relay.faults.fail_writes(true);
    relay.lookup().await.search(search_request(&child, "held-once", "r1")).await.unwrap();
    assert_eq!(relay.relay.hub().held(), 1);
    // What a crash after the store took it, but before the spill was emptied, leaves behind.
    let spill = relay.dir.path().join(SPILL_FILE);
    let spilled = std::fs::read(&spill).unwrap();
    assert!(!spilled.is_empty(), "the held search is in the spill before the search answers");
    relay.faults.fail_writes(false);
    let mut stream = relay.subscribe("la-706").await;
    assert_eq!(next(&mut stream).await.accessor.unwrap().user_id, "held-once");
    drop(stream);
    let (pki, store, clock, dir) = relay.stop().await;
    drop(store);
    std::fs::write(&spill, &spilled).unwrap();

    let reopened = std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let settings = spilling(dir.path());
    let relay = TestRelay::serve(pki, reopened, clock, settings, dir).await;
    assert_eq!(relay.relay.hub().held(), 0, "the stored search is not held again");
    assert_eq!(*relay.relay.store_health().borrow(), StoreHealth::Ok);
    relay.lookup().await.search(search_request(&child, "next", "r2")).await.unwrap();
    let mut stream = relay
        .notifications("la-706")
        .await
        .subscribe(SubscribeRequest { after_sequence: Some(0) })
        .await
        .unwrap()
        .into_inner();
    let users = [next(&mut stream).await, next(&mut stream).await].map(|n| n.accessor.unwrap().user_id);
    assert_eq!(users, ["held-once", "next"]);
}

#[tokio::test]
async fn shutdown_retries_held_notifications_through_the_grace_period() {
    // The background retry waits an hour: only shutdown can store the held search in time.
    let settings = RelaySettings {
        held_retry_backoff: (Duration::from_secs(3600), Duration::from_secs(3600)),
        ..RelaySettings::default()
    };
    let mut relay = TestRelay::start_with(StoreChoice::Embedded, settings).await;
    relay.relay.spawn_log_keeper().expect("the embedded store keeps an access log");
    let child = nhs(5);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    relay.faults.fail_writes(true);
    relay.lookup().await.search(search_request(&child, "held-at-shutdown", "")).await.unwrap();
    assert_eq!(relay.relay.hub().held(), 1);
    relay.faults.fail_writes(false);
    relay.shutdown().await;
    assert_eq!(relay.relay.hub().held(), 0, "stored during the grace period");
    let stored = relay.store.notifications_after("706", 0, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].access.accessor.user_id, "held-at-shutdown");
    // The last checkpoint is signed after the grace period's last commit, so it covers it
    // (before, it was signed as draining began, and this access was left outside it).
    let last = relay.relay.log_keeper().unwrap().latest().expect("a last checkpoint");
    assert_eq!(last.checkpoint.size, 1, "the access stored during the grace period is in the last checkpoint");
}

#[tokio::test]
async fn beyond_the_bound_searches_answer_but_their_notifications_are_refused_loudly() {
    let settings = RelaySettings { max_held_notifications: 2, ..RelaySettings::default() };
    let relay = TestRelay::start_with(StoreChoice::Embedded, settings).await;
    let child = nhs(6);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    relay.faults.fail_writes(true);
    let mut lookup = relay.lookup().await;
    for user in ["held-1", "held-2", "refused-3"] {
        assert!(lookup.search(search_request(&child, user, "")).await.unwrap().into_inner().flagged);
    }
    assert_eq!(relay.relay.hub().held(), 2, "the bound holds");
    let metrics = admin_get(relay.admin, "/metrics").await.1;
    assert!(metrics.contains("cpis_notifications_refused_total 1"), "{metrics}");
    relay.faults.fail_writes(false);
    let mut stream = relay.subscribe("la-706").await;
    assert_eq!(next(&mut stream).await.accessor.unwrap().user_id, "held-1");
    assert_eq!(next(&mut stream).await.accessor.unwrap().user_id, "held-2");
    lookup.search(search_request(&child, "after", "")).await.unwrap();
    assert_eq!(next(&mut stream).await.accessor.unwrap().user_id, "after");
}

#[tokio::test]
async fn a_failed_upload_makes_the_relay_not_ready_until_a_write_succeeds() {
    let relay = TestRelay::start().await;
    wait_for_health(&relay, ServingStatus::Serving).await;
    relay.faults.fail_writes(true);
    let failed = upload(
        &mut relay.plans("la-706").await,
        "706",
        UploadMode::Incremental,
        vec![record(&nhs(1), PlanType::ChildProtection)],
    )
    .await;
    assert!(failed.is_err());
    wait_for_health(&relay, ServingStatus::NotServing).await;
    assert_eq!(admin_get(relay.admin, "/readyz").await.0, 503);

    relay.faults.fail_writes(false);
    relay.load("706", vec![record(&nhs(1), PlanType::ChildProtection)]).await;
    wait_for_health(&relay, ServingStatus::Serving).await;
    assert_eq!(admin_get(relay.admin, "/readyz").await.0, 200);
}

#[tokio::test]
async fn a_failed_ack_makes_the_relay_not_ready_until_a_write_succeeds() {
    let relay = TestRelay::start().await;
    let child = nhs(2);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    relay.lookup().await.search(search_request(&child, "u", "")).await.unwrap();
    let mut notifications = relay.notifications("la-706").await;
    let mut stream = notifications.subscribe(SubscribeRequest::default()).await.unwrap().into_inner();
    let sequence = next(&mut stream).await.sequence;
    wait_for_health(&relay, ServingStatus::Serving).await;

    relay.faults.fail_writes(true);
    assert!(notifications.ack(AckRequest { sequence }).await.is_err());
    wait_for_health(&relay, ServingStatus::NotServing).await;
    assert_eq!(admin_get(relay.admin, "/readyz").await.0, 503);

    relay.faults.fail_writes(false);
    notifications.ack(AckRequest { sequence }).await.unwrap();
    wait_for_health(&relay, ServingStatus::Serving).await;
    assert_eq!(admin_get(relay.admin, "/readyz").await.0, 200);
}

#[tokio::test]
async fn a_successful_write_does_not_make_the_relay_ready_while_notifications_are_held() {
    let settings = RelaySettings {
        held_retry_backoff: (Duration::from_secs(3600), Duration::from_secs(3600)),
        ..RelaySettings::default()
    };
    let relay = TestRelay::start_with(StoreChoice::Embedded, settings).await;
    let child = nhs(4);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    relay.faults.fail_writes(true);
    relay.lookup().await.search(search_request(&child, "held", "")).await.unwrap();
    wait_for_health(&relay, ServingStatus::NotServing).await;
    relay.faults.fail_writes(false);
    relay.load("706", vec![record(&nhs(8), PlanType::LookedAfter)]).await;
    assert_eq!(*relay.relay.store_health().borrow(), StoreHealth::Failing, "a notification is still held");
    assert_eq!(admin_get(relay.admin, "/readyz").await.0, 503);
}

#[test]
fn max_held_notifications_is_a_flag_an_environment_variable_and_a_file_key_and_zero_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    let print = |contents: &str, env: &[(&str, &str)], flags: &[&str]| {
        std::fs::write(&file, contents).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"));
        command
            .args(["serve", "--print-config", "--config"])
            .arg(&file)
            .args(flags)
            .env_remove("CPIS_MAX_HELD_NOTIFICATIONS");
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().unwrap()
    };
    let value = |output: std::process::Output| {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let printed: toml::Table = toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
        printed["max_held_notifications"].as_integer().unwrap()
    };
    assert_eq!(value(print("", &[], &[])), 100_000, "the default");
    assert_eq!(value(print("max_held_notifications = 7\n", &[], &[])), 7);
    assert_eq!(value(print("max_held_notifications = 7\n", &[("CPIS_MAX_HELD_NOTIFICATIONS", "8")], &[])), 8);
    assert_eq!(value(print("", &[("CPIS_MAX_HELD_NOTIFICATIONS", "8")], &["--max-held-notifications", "9"])), 9);
    let refused = print("max_held_notifications = 0\n", &[], &[]);
    assert_eq!(refused.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("max_held_notifications"));
}

/// One relay per data directory: a second relay on a directory another
/// holds (the spill's lock) is refused with a clear error, so two relays can
/// never rewrite each other's spill of held notifications. (A PostgreSQL
/// node's data directory holds only the spill; the embedded store's own
/// files are locked by fjall too.)
#[tokio::test]
async fn a_second_relay_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let settings = || RelaySettings { spill_dir: Some(dir.path().to_owned()), ..RelaySettings::default() };
    let open = || async {
        let store: std::sync::Arc<dyn cpis_relay::store::Store> =
            std::sync::Arc::new(cpis_relay::store::memory::MemoryStore::new());
        let clock = std::sync::Arc::new(cpis_relay::clock::ManualClock::new(test_start()));
        cpis_relay::relay::Relay::open(store, clock, settings()).await
    };
    let first = open().await.unwrap();
    let refused = open().await.err().expect("the second relay is refused").to_string();
    assert!(
        refused.contains("one relay per data directory") && refused.contains("held-notifications.lock"),
        "{refused}"
    );
    drop(first);
}

/// Settings that retry held searches quickly, spilling to `dir` when given.
fn quick_retries(dir: Option<&Path>) -> RelaySettings {
    RelaySettings {
        spill_dir: dir.map(Path::to_owned),
        held_retry_backoff: (Duration::from_millis(10), Duration::from_millis(100)),
        ..RelaySettings::default()
    }
}

/// Users of the notifications of la-706 stored in `relay`'s store, in sequence order.
async fn stored_users(store: &std::sync::Arc<dyn cpis_relay::store::Store>) -> Vec<String> {
    let stored = store.notifications_after("706", 0, 1000).await.unwrap();
    stored.into_iter().map(|notification| notification.access.accessor.user_id).collect()
}

/// The store refuses one search's record every time it is tried (as
/// PostgreSQL refuses a value it cannot keep), while it takes the others.
/// Before the quarantine that search stayed at the front of the held queue
/// for ever: the node never became ready again and every retry behind it failed.
async fn a_refused_search_is_quarantined(relay: &TestRelay) {
    let child = nhs(11);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    relay.faults.refuse_searches_by(Some("poison"));
    let mut lookup = relay.lookup().await;
    let answer = lookup.search(search_request(&child, "poison", "p1")).await.unwrap().into_inner();
    assert!(answer.flagged, "the clinician is answered whatever the store does");
    assert_eq!(*relay.relay.store_health().borrow(), StoreHealth::Failing, "held: not ready");
    for user in ["good-1", "good-2", "good-3"] {
        assert!(lookup.search(search_request(&child, user, user)).await.unwrap().into_inner().flagged);
    }
    // A guard against a hang, not a timed assertion: without the quarantine it never comes.
    tokio::time::timeout(Duration::from_secs(60), wait_for_health(relay, ServingStatus::Serving))
        .await
        .expect("ready again once the refused search is set aside");
    assert_eq!(admin_get(relay.admin, "/readyz").await.0, 200, "ready again once the search is set aside");
    assert_eq!((relay.relay.hub().held(), relay.relay.quarantined()), (0, 1));
    assert_eq!(relay_metric(relay.admin, "cpis_notifications_quarantined").await, Some(1.0));
    let mut users = stored_users(&relay.store).await;
    users.sort();
    assert_eq!(users, ["good-1", "good-2", "good-3"], "the others stored once each, the refused one set aside");
}

#[tokio::test]
async fn a_search_the_memory_store_always_refuses_is_quarantined_and_the_node_is_ready_again() {
    let relay = TestRelay::start_with(StoreChoice::Memory, quick_retries(None)).await;
    a_refused_search_is_quarantined(&relay).await;
}

#[tokio::test]
async fn a_quarantined_search_survives_a_restart_and_is_listed_exported_and_replayed_by_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let clock = std::sync::Arc::new(cpis_relay::clock::ManualClock::new(test_start()));
    let relay = TestRelay::serve(Pki::new(), store, clock, quick_retries(Some(dir.path())), dir).await;
    a_refused_search_is_quarantined(&relay).await;

    // A restart: still quarantined (not held again from the spill), and the node ready.
    let (pki, store, clock, dir) = relay.stop().await;
    drop(store);
    let reopened = std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let relay = TestRelay::serve(pki, reopened, clock, quick_retries(Some(dir.path())), dir).await;
    assert_eq!((relay.relay.hub().held(), relay.relay.quarantined()), (0, 1));
    assert_eq!(relay_metric(relay.admin, "cpis_notifications_quarantined").await, Some(1.0));
    assert_eq!(*relay.relay.store_health().borrow(), StoreHealth::Ok);

    let cli = |args: &[&str], data_dir: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
            .args(["quarantine"])
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .output()
            .unwrap()
    };
    let listed = cli(&["list"], relay.dir.path());
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert!(text.contains("1 searches quarantined") && text.contains("notifies 706"), "{text}");
    assert!(!text.contains(&nhs(11)) && !text.contains("poison"), "no personal data in the list: {text}");
    let export = relay.dir.path().join("quarantined.jsonl");
    let exported = cli(&["export", "--out", export.to_str().unwrap()], relay.dir.path());
    assert!(exported.status.success(), "{exported:?}");
    let lines = std::fs::read_to_string(&export).unwrap();
    let entry: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(entry["search"]["access"]["accessor"]["user_id"], "poison", "the export is whole: {entry}");
    assert_eq!(entry["search"]["drafts"][0]["la_ods_code"], "706");

    // Replay needs the data directory: refused while the relay runs.
    let refused = cli(&["replay"], relay.dir.path());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop the relay first"), "{refused:?}");
    let (_pki, store, _clock, dir) = relay.stop().await;
    drop(store);
    let replayed = cli(&["replay"], dir.path());
    assert!(replayed.status.success(), "{replayed:?}");
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("1 quarantined searches stored"), "{replayed:?}");
    let reopened: std::sync::Arc<dyn cpis_relay::store::Store> =
        std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let users = stored_users(&reopened).await;
    assert_eq!(users.iter().filter(|user| *user == "poison").count(), 1, "replayed and notified once: {users:?}");
    drop(reopened);
    let listed = cli(&["list"], dir.path());
    assert!(String::from_utf8_lossy(&listed.stdout).contains("0 searches quarantined"), "{listed:?}");
}

/// Once a write failed the node knows its store is failing: a new search
/// is held at once, never waiting on the store. Before, each new search
/// waited for its own write first (on PostgreSQL, the whole write timeout).
#[tokio::test]
async fn once_a_write_failed_a_new_search_is_held_without_waiting_for_the_store() {
    let settings = RelaySettings {
        held_retry_backoff: (Duration::from_secs(3600), Duration::from_secs(3600)),
        ..RelaySettings::default()
    };
    let relay = TestRelay::start_with(StoreChoice::Embedded, settings).await;
    let child = nhs(12);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    relay.faults.fail_writes(true);
    let mut lookup = relay.lookup().await;
    lookup.search(search_request(&child, "first", "r1")).await.unwrap();
    assert_eq!(relay.relay.hub().held(), 1);
    // Writes now wait for ever: a search that tried the store would never answer.
    relay.faults.fail_writes(false);
    relay.faults.stall_writes(true);
    let answer = tokio::time::timeout(Duration::from_secs(30), lookup.search(search_request(&child, "second", "r2")))
        .await
        .expect("answered without waiting on the stalled store")
        .unwrap();
    assert!(answer.into_inner().flagged);
    assert_eq!(relay.relay.hub().held(), 2);
    assert_eq!(*relay.faults.stalled_changes().borrow(), 0, "nothing reached the store");
    relay.faults.stall_writes(false);
}

/// The first write that succeeds ends "failing": a new search is written
/// directly although earlier ones are still held (their retries drain beside
/// it). Held for as long as any search was, a queue under steady load
/// emptied only when a round of retries outran the arrivals (18-58 s after
/// the heal in the cut-off test).
#[tokio::test]
async fn once_a_write_succeeds_new_searches_are_written_while_the_held_ones_wait_for_their_retry() {
    let settings = RelaySettings {
        held_retry_backoff: (Duration::from_secs(3600), Duration::from_secs(3600)),
        ..RelaySettings::default()
    };
    let relay = TestRelay::start_with(StoreChoice::Embedded, settings).await;
    let (child, other) = (nhs(13), nhs(14));
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    relay.faults.fail_writes(true);
    let mut lookup = relay.lookup().await;
    lookup.search(search_request(&child, "first", "r1")).await.unwrap();
    assert_eq!(relay.relay.hub().held(), 1);
    relay.faults.fail_writes(false);
    // A write that succeeds (an authority's upload): the store takes writes again.
    relay.load("706", vec![record(&other, PlanType::LookedAfter)]).await;
    lookup.search(search_request(&child, "second", "r2")).await.unwrap();
    assert_eq!(relay.relay.hub().held(), 1, "the second search was written, not held");
    let stored = relay.store.accesses_of(child.parse().unwrap()).await.unwrap();
    assert_eq!(stored.len(), 1, "only the second search is stored yet: {stored:?}");
    assert_eq!(stored[0].accessor.user_id, "second");
}

/// A client that goes away while its search is being stored leaves the
/// commit running on its own: as a task of the relay's, which shutdown waits
/// for, so the notification is not cut off by the process exiting. Before,
/// it ran on an untracked task that shutdown never saw.
#[tokio::test]
async fn a_search_whose_client_went_away_finishes_its_commit_as_a_task_shutdown_waits_for() {
    let relay = TestRelay::start().await;
    let child = nhs(13);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let tasks_before = relay.relay.background_tasks();
    relay.faults.stall_writes(true);
    let mut stalled = relay.faults.stalled_changes();
    let mut lookup = relay.lookup().await;
    let search = tokio::spawn(async move { lookup.search(search_request(&child, "gone", "gone-1")).await });
    stalled.wait_for(|waiting| *waiting == 1).await.unwrap();
    // The client goes away mid-commit.
    search.abort();
    let _ = search.await;
    // The commit goes on as one more of the relay's tasks (a guard against a hang: before, it never was one).
    let tasks = relay.relay.clone();
    let counted = async move {
        while tasks.background_tasks() != tasks_before + 1 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), counted).await.expect("the commit is a task of the relay's");
    relay.faults.stall_writes(false);
    let tasks = relay.relay.clone();
    let finished = async move {
        while tasks.background_tasks() != tasks_before {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), finished).await.expect("the commit ends once the store takes it");
    let stored = relay.store.notifications_after("706", 0, 10).await.unwrap();
    assert_eq!(stored.len(), 1, "the search whose client went away is notified");
}
