//! Durability of the embedded store: restarts keep everything that was
//! acknowledged to a caller, a failing store never withholds a clinician's
//! answer, retention removes exactly what is past its period, and a long
//! backlog is delivered in full from the store.

use crate::helpers::*;
use chrono::Duration;
use cpis_relay::{
    proto::{AccessLogRequest, AckRequest, PlanType, SubscribeRequest, UploadMode},
    relay::RelaySettings,
    store::embedded::EmbeddedStore,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn a_restart_keeps_plans_access_history_and_ack_cursors() {
    let relay = TestRelay::start().await;
    let child = nhs(1);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut lookup = relay.lookup().await;
    lookup.search(search_request(&child, "user-a", "r1")).await.unwrap();
    relay.clock.advance(Duration::hours(1));
    lookup.search(search_request(&child, "user-a", "r2")).await.unwrap();
    lookup.search(search_request(&child, "user-b", "r3")).await.unwrap();
    let mut notifications = relay.notifications("la-706").await;
    let mut stream = notifications.subscribe(SubscribeRequest::default()).await.unwrap().into_inner();
    let first = next(&mut stream).await;
    let second = next(&mut stream).await;
    let third = next(&mut stream).await;
    notifications.ack(AckRequest { sequence: second.sequence }).await.unwrap();
    drop((stream, notifications, lookup));

    let (pki, store, clock, dir) = relay.stop().await;
    drop(store);
    // The offline check sees what was stored.
    let checked = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["store", "check", "--data-dir", dir.path().to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{report}{}", String::from_utf8_lossy(&checked.stderr));
    assert!(report.contains("integrity ok"), "{report}");
    for (table, count) in [("plans", 1), ("accesses", 3), ("notifications", 3), ("cursors", 1)] {
        let line = report.lines().find(|line| line.split_whitespace().next() == Some(table)).unwrap();
        assert_eq!(line.split_whitespace().nth(1), Some(count.to_string().as_str()), "{report}");
    }
    let reopened = std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let relay = TestRelay::serve(pki, reopened, clock, RelaySettings::default(), dir).await;

    // Plans, and the 24-hour rule over the history from before the restart.
    let response = relay.lookup().await.search(search_request(&child, "user-c", "r4")).await.unwrap().into_inner();
    assert!(response.flagged);
    let users: Vec<String> =
        response.previous_accesses.iter().map(|access| access.accessor.clone().unwrap().user_id).collect();
    assert_eq!(users, ["user-b", "user-a"], "user-a's repeat within 24 hours stays folded into the first");
    // A retry of a request from before the restart still notifies once: the
    // next notification after user-c's is the sentinel's, not user-a's again.
    let retried = relay.lookup().await.search(search_request(&child, "user-a", "r1")).await.unwrap().into_inner();
    assert!(retried.flagged);
    relay.lookup().await.search(search_request(&child, "sentinel", "r5")).await.unwrap();

    // Nothing acknowledged is redelivered; the rest is, with the same ids.
    let mut notifications = relay.notifications("la-706").await;
    let mut stream = notifications.subscribe(SubscribeRequest::default()).await.unwrap().into_inner();
    let redelivered = next(&mut stream).await;
    assert_eq!(redelivered.notification_id, third.notification_id);
    let after_restart = next(&mut stream).await;
    assert_eq!(after_restart.accessor.unwrap().user_id, "user-c");
    assert!(after_restart.sequence > third.sequence, "sequences keep increasing across restarts");
    let after_retry = next(&mut stream).await;
    assert_eq!(
        after_retry.accessor.unwrap().user_id,
        "sentinel",
        "the retry of r1 from before the restart notified again"
    );
    let mut replay = notifications.subscribe(SubscribeRequest { after_sequence: Some(0) }).await.unwrap().into_inner();
    assert_eq!(next(&mut replay).await.notification_id, first.notification_id);
}

#[tokio::test]
async fn a_failing_store_still_answers_clinicians_holds_notifications_and_reports_not_serving() {
    let relay = TestRelay::start().await;
    let child = nhs(1);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut stream = relay.subscribe("la-706").await;
    assert_eq!(admin_get(relay.admin, "/readyz").await.0, 200);

    relay.faults.fail_writes(true);
    let response =
        relay.lookup().await.search(search_request(&child, "during-failure", "")).await.unwrap().into_inner();
    assert!(response.flagged, "the clinician gets the answer while the store fails");
    wait_for_health(&relay, ServingStatus::NotServing).await;
    assert_eq!(admin_get(relay.admin, "/readyz").await.0, 503);
    assert_eq!(admin_get(relay.admin, "/healthz").await.0, 200, "the process is alive");
    let status = upload(
        &mut relay.plans("la-706").await,
        "706",
        UploadMode::Incremental,
        vec![record(&nhs(2), PlanType::LookedAfter)],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("nothing was changed"), "{}", status.message());
    // A FULL_REFRESH fails whole: the index staged it while the store failed, and undoes it.
    let refresh = vec![record(&nhs(3), PlanType::LookedAfter)];
    let status = upload(&mut relay.plans("la-706").await, "706", UploadMode::FullRefresh, refresh).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let mut lookup = relay.lookup().await;
    let again = lookup.search(search_request(&child, "u", "")).await.unwrap().into_inner();
    assert!(again.flagged, "the old set stays");
    let previous: Vec<String> =
        again.previous_accesses.iter().filter_map(|access| Some(access.accessor.as_ref()?.user_id.clone())).collect();
    assert_eq!(previous, ["during-failure"], "an access held for retry is still shown to the next clinician");
    assert!(!lookup.search(search_request(&nhs(3), "u", "")).await.unwrap().into_inner().flagged);
    let metrics = admin_get(relay.admin, "/metrics").await.1;
    assert!(metrics.contains("cpis_store_failures_total"), "a metric says the store failed");

    relay.faults.fail_writes(false);
    let held = next(&mut stream).await;
    assert_eq!(
        held.accessor.unwrap().user_id,
        "during-failure",
        "the held notification is delivered once the store recovers"
    );
    wait_for_health(&relay, ServingStatus::Serving).await;
    assert!(
        !relay.lookup().await.search(search_request(&nhs(2), "u", "")).await.unwrap().into_inner().flagged,
        "the failed upload left nothing"
    );
}

#[tokio::test]
async fn retention_removes_expired_plans_old_acked_notifications_and_old_history() {
    let relay = TestRelay::start().await; // 2026-06-01
    let current = nhs(1);
    let ending = nhs(2);
    let mut ended = record(&ending, PlanType::LookedAfter);
    ended.start_date = "2025-01-01".into();
    ended.end_date = "2026-05-01".into(); // visible through 2027-05-01
    relay.load("706", vec![record(&current, PlanType::ChildProtection), ended]).await;
    let mut lookup = relay.lookup().await;
    for user in ["a", "b", "c"] {
        lookup.search(search_request(&current, user, "")).await.unwrap();
    }
    let mut notifications = relay.notifications("la-706").await;
    let mut stream = notifications.subscribe(SubscribeRequest::default()).await.unwrap().into_inner();
    let (one, two, _three) = (next(&mut stream).await, next(&mut stream).await, next(&mut stream).await);
    notifications.ack(AckRequest { sequence: two.sequence }).await.unwrap();
    drop(stream);

    // 29 days on: nothing is old enough.
    relay.clock.advance(Duration::days(29));
    let counts = relay.relay.expire().await.unwrap();
    assert_eq!((counts.plans, counts.notifications, counts.accesses), (0, 0, 0));

    // 31 days on: the two acknowledged notifications go; the unacknowledged one stays.
    relay.clock.advance(Duration::days(2));
    let counts = relay.relay.expire().await.unwrap();
    assert_eq!((counts.plans, counts.notifications, counts.accesses), (0, 2, 0));
    let mut replay = notifications.subscribe(SubscribeRequest { after_sequence: Some(0) }).await.unwrap().into_inner();
    let oldest_left = next(&mut replay).await;
    assert!(oldest_left.sequence > one.sequence && oldest_left.sequence > two.sequence);

    // Past 2027-05-01 the ended plan goes; past 12 months the history goes.
    relay.clock.set("2027-06-02T09:00:00Z".parse().unwrap());
    let counts = relay.relay.expire().await.unwrap();
    assert_eq!((counts.plans, counts.accesses), (1, 3));
    let snapshot = relay.store.load().await.unwrap();
    assert_eq!(snapshot.plans.len(), 1, "only the current plan is stored");
    assert!(relay.store.accesses_of(cpis_relay::nhs::NhsNumber::parse(&current).unwrap()).await.unwrap().is_empty());
    let log = collect(
        relay.audit().await.access_log(AccessLogRequest { nhs_number: current.clone() }).await.unwrap().into_inner(),
    )
    .await;
    assert!(log.is_empty(), "history older than 12 months is gone");
    assert!(lookup.search(search_request(&current, "d", "")).await.unwrap().into_inner().flagged);
    let exported =
        collect(relay.plans("la-706").await.export(cpis_relay::proto::ExportRequest {}).await.unwrap().into_inner())
            .await;
    assert_eq!(exported.len(), 1);
}

#[tokio::test]
async fn a_long_backlog_is_delivered_in_full_from_the_store() {
    let relay = TestRelay::start().await;
    let people = nhs_numbers(40);
    let records = people.iter().map(|n| record(n, PlanType::ChildProtection)).collect();
    upload(&mut relay.plans("la-706").await, "706", UploadMode::Incremental, records).await.unwrap();
    let mut lookup = relay.lookup().await;
    // Far more than one page (256) while the authority is offline.
    for round in 0..15 {
        for person in &people {
            lookup.search(search_request(person, &format!("user-{round}"), "")).await.unwrap();
        }
    }
    let mut stream = relay.subscribe("la-706").await;
    let mut ids = std::collections::HashSet::new();
    let mut last = 0;
    for _ in 0..600 {
        let notification = next(&mut stream).await;
        assert!(notification.sequence > last, "in order");
        last = notification.sequence;
        assert!(ids.insert(notification.notification_id), "no duplicates");
    }
    assert_eq!(ids.len(), 600);
}
