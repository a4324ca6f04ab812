//! The relay end to end over mutual TLS: upload, search, notification, ack,
//! resubscribe; the search rules (previous accesses, visibility windows,
//! request id retries, one notification per owning authority).

use crate::helpers;
use chrono::Duration;
use cpis_relay::proto::{self, AccessLogRequest, AckRequest, PlanType, SubscribeRequest, UploadMode};
use helpers::*;

#[tokio::test]
async fn upload_search_notify_ack_and_resubscribe() {
    let relay = TestRelay::start().await;
    let child = nhs(1);
    let mut plans = relay.plans("la-706").await;
    let report = upload(&mut plans, "706", UploadMode::Incremental, vec![record(&child, PlanType::ChildProtection)])
        .await
        .unwrap();
    assert_eq!(report.status, proto::UploadStatus::AllLoaded as i32);
    assert_eq!((report.loaded, report.rejected), (1, 0));

    let mut notifications = relay.notifications("la-706").await;
    let mut stream = notifications.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();

    let response = relay.lookup().await.search(search_request(&child, "user-a", "r1")).await.unwrap().into_inner();
    assert!(response.flagged);
    let person = response.person.unwrap();
    assert_eq!((person.given_name.as_str(), person.family_name.as_str()), ("Sam", "Testchild"));
    assert_eq!(person.date_of_birth, "2016-04-05");
    assert_eq!(person.address.unwrap().postcode, "ZZ1 1ZZ");
    assert_eq!(response.plans.len(), 1);
    let plan = &response.plans[0];
    assert_eq!(plan.r#type, PlanType::ChildProtection as i32);
    assert_eq!(plan.start_date, "2026-01-10");
    let la = plan.local_authority.clone().unwrap();
    assert_eq!(
        (la.ods_code.as_str(), la.office_hours_phone.as_str(), la.emergency_phone.as_str()),
        ("706", "020 7946 0101", "020 7946 0199")
    );
    assert!(response.previous_accesses.is_empty());

    let first = next(&mut stream).await;
    assert_eq!(first.nhs_number, child);
    assert_eq!(first.organisation_ods_code, "RR8");
    assert_eq!(first.organisation_name, "LEEDS TEACHING HOSPITALS NHS TRUST");
    assert_eq!(first.care_setting, proto::CareSetting::EmergencyDepartment as i32);
    assert_eq!(first.accessor.as_ref().unwrap().user_id, "user-a");
    assert_eq!(first.local_id, format!("L-{child}-1"));
    assert_eq!(first.team_code, "TEAM-A");
    assert_eq!(first.plan_type, PlanType::ChildProtection as i32);

    relay.lookup().await.search(search_request(&child, "user-b", "r2")).await.unwrap();
    let second = next(&mut stream).await;
    assert!(second.sequence > first.sequence);
    assert_ne!(second.notification_id, first.notification_id);

    // Ack the first only: a plain resubscribe starts after it.
    let acked = notifications.ack(AckRequest { sequence: first.sequence }).await.unwrap().into_inner();
    assert_eq!(acked.acked_through, first.sequence);
    drop(stream);
    let mut resumed = notifications.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();
    let redelivered = next(&mut resumed).await;
    assert_eq!(redelivered.notification_id, second.notification_id, "the unacked one is redelivered with the same id");

    // From an explicit cursor, acked notifications still retained come again.
    let mut replay = notifications.subscribe(SubscribeRequest { after_sequence: Some(0) }).await.unwrap().into_inner();
    assert_eq!(next(&mut replay).await.notification_id, first.notification_id);

    // Acking beyond what was sent is the caller's mistake.
    let beyond = notifications.ack(AckRequest { sequence: second.sequence + 10 }).await.unwrap_err();
    assert_eq!(field_violation(&beyond).0, "sequence");
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_notifies_once() {
    let relay = TestRelay::start().await;
    let child = nhs(2);
    let sibling = nhs(4);
    relay.load("706", vec![record(&child, PlanType::LookedAfter), record(&sibling, PlanType::LookedAfter)]).await;
    let mut notifications = relay.notifications("la-706").await;
    let mut stream = notifications.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();
    let mut lookup = relay.lookup().await;
    for _ in 0..3 {
        let response = lookup.search(search_request(&child, "user-a", "same-id")).await.unwrap().into_inner();
        assert!(response.flagged);
        assert!(response.previous_accesses.is_empty(), "a retry does not list itself as a previous access");
    }
    lookup.search(search_request(&child, "user-b", "other-id")).await.unwrap();
    // Copies of one request sent while the first is still in flight, as a
    // client retrying before the first answer arrives: the first copy's commit
    // is held (stalled before it reaches the store). No copy may be answered
    // before that commit is durable: if the process died meanwhile, a
    // clinician would hold a flagged answer with no notification anywhere.
    relay.faults.stall_writes(true);
    let mut stalled = relay.faults.stalled_changes();
    let search_copy = || {
        let mut lookup = lookup.clone();
        let request = search_request(&child, "user-c", "racing-id");
        tokio::spawn(async move { lookup.search(request).await.map(|response| response.into_inner().flagged) })
    };
    let first_copy = search_copy();
    tokio::time::timeout(std::time::Duration::from_secs(30), stalled.wait_for(|held| *held >= 1))
        .await
        .expect("the first copy's commit is held")
        .unwrap();
    let racing: Vec<_> = (0..7).map(|_| search_copy()).collect();
    let mut waiting = relay.relay.retries_waiting();
    tokio::time::timeout(std::time::Duration::from_secs(30), waiting.wait_for(|copies| *copies == 7))
        .await
        .expect("every other copy waits for the first copy's commit")
        .unwrap();
    assert!(racing.iter().all(|copy| !copy.is_finished()), "no copy is answered before the first is durable");
    assert!(!first_copy.is_finished());
    assert_eq!(*stalled.borrow(), 1, "only the first copy's commit is waiting: the others made none");
    relay.faults.stall_writes(false);
    assert!(matches!(first_copy.await.unwrap(), Ok(true)));
    for copy in racing {
        assert!(matches!(copy.await.unwrap(), Ok(true)), "every copy is answered once the first is durable");
    }
    // The same id for another person is another search, not a retry.
    lookup.search(search_request(&sibling, "user-a", "same-id")).await.unwrap();
    // So is the same id from another user of the organisation, or from another care setting.
    lookup.search(search_request(&child, "user-e", "same-id")).await.unwrap();
    let mut from_maternity = search_request(&child, "user-a", "same-id");
    from_maternity.care_setting = cpis_relay::proto::CareSetting::MaternityUnit as i32;
    lookup.search(from_maternity).await.unwrap();

    let users: Vec<(String, String)> = {
        let mut users = Vec::new();
        for _ in 0..6 {
            let notification = next(&mut stream).await;
            users.push((notification.accessor.unwrap().user_id, notification.nhs_number));
        }
        users
    };
    let expected = [
        ("user-a", &child),
        ("user-b", &child),
        ("user-c", &child),
        ("user-a", &sibling),
        ("user-e", &child),
        ("user-a", &child),
    ];
    assert_eq!(
        users,
        expected.map(|(user, person)| (user.to_owned(), person.clone())),
        "one notification per distinct search: none for the retries or the racing copies"
    );
    lookup.search(search_request(&child, "user-d", "last-id")).await.unwrap();
    assert_eq!(next(&mut stream).await.accessor.unwrap().user_id, "user-d", "nothing else was notified in between");
}

#[tokio::test]
async fn a_person_on_plans_of_two_authorities_notifies_each_once() {
    let relay = TestRelay::start().await;
    let child = nhs(3);
    relay.load("706", vec![record(&child, PlanType::ChildProtection), record(&child, PlanType::LookedAfter)]).await;
    relay.load("855", vec![record(&child, PlanType::LookedAfter)]).await;
    let mut stream_706 = relay.subscribe("la-706").await;
    let mut stream_855 = relay.subscribe("la-855").await;

    let response = relay.lookup().await.search(search_request(&child, "user-a", "r1")).await.unwrap().into_inner();
    assert_eq!(response.plans.len(), 3);
    let owners: Vec<String> =
        response.plans.iter().map(|plan| plan.local_authority.clone().unwrap().ods_code).collect();
    assert_eq!(owners, ["706", "706", "855"], "CPPI first, then LACI by authority");

    relay.lookup().await.search(search_request(&child, "user-b", "r2")).await.unwrap();
    let a = next(&mut stream_706).await;
    let b = next(&mut stream_706).await;
    assert_eq!(
        (a.accessor.unwrap().user_id, b.accessor.unwrap().user_id),
        ("user-a".into(), "user-b".into()),
        "one per search, not per plan"
    );
    assert_eq!(a.plan_type, PlanType::ChildProtection as i32);
    assert_eq!(next(&mut stream_855).await.accessor.unwrap().user_id, "user-a");
    assert_eq!(next(&mut stream_855).await.accessor.unwrap().user_id, "user-b");
}

#[tokio::test]
async fn unflagged_searches_store_nothing_and_notify_no_one() {
    let relay = TestRelay::start().await;
    let flagged = nhs(4);
    let unflagged = nhs(5);
    relay.load("706", vec![record(&flagged, PlanType::ChildProtection)]).await;
    let mut stream = relay.subscribe("la-706").await;
    let mut lookup = relay.lookup().await;
    let response = lookup.search(search_request(&unflagged, "user-a", "")).await.unwrap().into_inner();
    assert!(!response.flagged);
    assert!(response.person.is_none() && response.plans.is_empty() && response.previous_accesses.is_empty());
    let log = collect(
        relay.audit().await.access_log(AccessLogRequest { nhs_number: unflagged.clone() }).await.unwrap().into_inner(),
    )
    .await;
    assert!(log.is_empty(), "no access is recorded for an unflagged person");

    lookup.search(search_request(&flagged, "user-b", "")).await.unwrap();
    assert_eq!(next(&mut stream).await.nhs_number, flagged, "the first notification is the flagged search's");
}

#[tokio::test]
async fn previous_accesses_list_25_newest_and_a_user_once_per_24_hours() {
    let relay = TestRelay::start().await;
    let child = nhs(6);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut lookup = relay.lookup().await;

    lookup.search(search_request(&child, "repeat", "")).await.unwrap();
    relay.clock.advance(Duration::hours(2));
    lookup.search(search_request(&child, "repeat", "")).await.unwrap();
    relay.clock.advance(Duration::hours(23));
    lookup.search(search_request(&child, "repeat", "")).await.unwrap();
    let response = lookup.search(search_request(&child, "observer", "")).await.unwrap().into_inner();
    let users: Vec<String> =
        response.previous_accesses.iter().map(|access| access.accessor.clone().unwrap().user_id).collect();
    assert_eq!(users, ["repeat", "repeat"], "the search at +2h is within 24h of the first and is not listed");
    let times: Vec<i64> = response.previous_accesses.iter().map(|access| access.accessed_at.unwrap().seconds).collect();
    assert!(times[0] > times[1], "newest first");

    for user in 0..30 {
        relay.clock.advance(Duration::minutes(1));
        lookup.search(search_request(&child, &format!("user-{user:02}"), "")).await.unwrap();
    }
    let response = lookup.search(search_request(&child, "last", "")).await.unwrap().into_inner();
    assert_eq!(response.previous_accesses.len(), 25);
    assert_eq!(response.previous_accesses[0].accessor.clone().unwrap().user_id, "user-29");
    assert_eq!(response.previous_accesses[24].accessor.clone().unwrap().user_id, "user-05");

    // The auditor sees every retained access, all 35 searches, oldest first.
    let log = collect(
        relay.audit().await.access_log(AccessLogRequest { nhs_number: child.clone() }).await.unwrap().into_inner(),
    )
    .await;
    assert_eq!(log.len(), 35);
    assert_eq!(log[0].accessor.clone().unwrap().user_id, "repeat");
}

#[tokio::test]
async fn plans_are_visible_for_365_days_after_their_end_and_unborn_plans_28_days_after_delivery() {
    let relay = TestRelay::start().await; // clock: 2026-06-01
    let ended = nhs(7);
    let unborn = nhs(8);
    let mut ended_record = record(&ended, PlanType::ChildProtection);
    ended_record.start_date = "2025-01-01".into();
    ended_record.end_date = "2025-06-01".into(); // visible through 2026-06-01
    let mut unborn_record = record(&unborn, PlanType::UnbornChildProtection);
    unborn_record.expected_delivery_date = "2026-06-10".into(); // visible through 2026-07-08
    relay.load("706", vec![ended_record, unborn_record]).await;
    let mut lookup = relay.lookup().await;
    let flagged = |response: proto::SearchResponse| response.flagged;

    assert!(flagged(lookup.search(search_request(&ended, "u", "")).await.unwrap().into_inner()));
    relay.clock.advance(Duration::days(1));
    assert!(
        !flagged(lookup.search(search_request(&ended, "u", "")).await.unwrap().into_inner()),
        "day 366 after the end"
    );

    relay.clock.set("2026-07-08T23:00:00Z".parse().unwrap());
    let response = lookup.search(search_request(&unborn, "u", "")).await.unwrap().into_inner();
    assert!(response.flagged);
    assert_eq!(response.plans[0].expected_delivery_date, "2026-06-10");
    relay.clock.set("2026-07-09T00:00:00Z".parse().unwrap());
    assert!(
        !flagged(lookup.search(search_request(&unborn, "u", "")).await.unwrap().into_inner()),
        "29 days after delivery"
    );
}

#[tokio::test]
async fn export_delete_and_incremental_replace() {
    let relay = TestRelay::start().await;
    let a = nhs(9);
    let b = nhs(10);
    let mut plans = relay.plans("la-706").await;
    upload(
        &mut plans,
        "706",
        UploadMode::Incremental,
        vec![record(&a, PlanType::ChildProtection), record(&b, PlanType::LookedAfter)],
    )
    .await
    .unwrap();
    let mut changed = record(&a, PlanType::ChildProtection);
    changed.family_name = "Renamed".into();
    upload(&mut plans, "706", UploadMode::Incremental, vec![changed]).await.unwrap();
    let exported = collect(plans.export(proto::ExportRequest {}).await.unwrap().into_inner()).await;
    assert_eq!(exported.len(), 2, "an incremental upload replaces by person and plan type");
    assert_eq!(exported.iter().find(|record| record.nhs_number == a).unwrap().family_name, "Renamed");

    let deleted = plans
        .delete(proto::DeleteRequest { nhs_number: b.clone(), r#type: PlanType::LookedAfter as i32 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    assert!(!relay.lookup().await.search(search_request(&b, "u", "")).await.unwrap().into_inner().flagged);
    let again = plans.delete(proto::DeleteRequest { nhs_number: b.clone(), r#type: 0 }).await.unwrap().into_inner();
    assert_eq!(again.deleted, 0);
}

/// A client that gives up on a search (cancel, deadline) while its
/// notification is still being committed, then retries: the claim on the
/// request lives until that commit has finished, so the retry is recognised
/// and the local authority is notified once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_search_and_its_retry_notify_once() {
    use futures::StreamExt;
    let relay = TestRelay::start().await;
    let child = nhs(5);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let la = cpis_relay::bench::ed_identity();
    let identity_706 = cpis_relay::auth::Identity {
        ods_code: "706".into(),
        organisation_name: "ISLINGTON".into(),
        role: cpis_relay::auth::Role::SocialCare,
    };
    let mut notifications = Box::pin(relay.relay.subscribe(&identity_706, None).unwrap());
    let query = |user: &str, request_id: &str| {
        cpis_relay::wire::search_query(search_request(&child, user, request_id)).unwrap()
    };
    let request = query("user-a", "cancel-id");

    let faults = relay.faults.clone();
    faults.stall_writes(true);
    let mut held = faults.stalled_changes();
    let mut first = Box::pin(relay.relay.search(&la, request.clone()));
    tokio::select! {
        _ = &mut first => panic!("a search cannot finish while its commit is held"),
        held = held.wait_for(|changes| *changes >= 1) => { held.unwrap(); }
    }
    drop(first); // the client went away with the notification still queued
    let retry = tokio::spawn({
        let (relay, la, request) = (relay.relay.clone(), la.clone(), request.clone());
        async move { relay.search(&la, request).await.map(|outcome| outcome.flagged()) }
    });
    faults.stall_writes(false);
    assert!(retry.await.unwrap().unwrap(), "the retry is answered");
    let first_notification = notifications.next().await.unwrap().unwrap();
    assert_eq!(first_notification.access.accessor.user_id, "user-a");
    relay.relay.search(&la, query("user-marker", "marker-id")).await.unwrap();
    let following = notifications.next().await.unwrap().unwrap();
    assert_eq!(following.access.accessor.user_id, "user-marker", "the retry notified nobody a second time");
}

/// A copy of a request waits for the first copy's commit; when that commit
/// failed and left nothing behind (its notification could not even be held),
/// the copy is searched in its place: the local authority is notified once,
/// by the copy, rather than not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_copy_takes_over_when_the_first_copy_left_nothing() {
    use futures::StreamExt;
    let settings = cpis_relay::relay::RelaySettings { max_held_notifications: 0, ..Default::default() };
    let relay = TestRelay::start_with(helpers::StoreChoice::Embedded, settings).await;
    let child = nhs(6);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let ed = cpis_relay::bench::ed_identity();
    let identity_706 = cpis_relay::auth::Identity {
        ods_code: "706".into(),
        organisation_name: "ISLINGTON".into(),
        role: cpis_relay::auth::Role::SocialCare,
    };
    let mut notifications = Box::pin(relay.relay.subscribe(&identity_706, None).unwrap());
    let query = |user: &str, request_id: &str| {
        cpis_relay::wire::search_query(search_request(&child, user, request_id)).unwrap()
    };
    let search = |request: cpis_relay::relay::SearchQuery| {
        let (relay, ed) = (relay.relay.clone(), ed.clone());
        tokio::spawn(async move { relay.search(&ed, request).await.map(|outcome| outcome.flagged()) })
    };

    relay.faults.stall_writes(true);
    let mut stalled = relay.faults.stalled_changes();
    let first = search(query("user-a", "take-over-id"));
    stalled.wait_for(|changes| *changes == 1).await.unwrap();
    let copy = search(query("user-a", "take-over-id"));
    relay.relay.retries_waiting().wait_for(|copies| *copies == 1).await.unwrap();
    // The first copy's write fails, and holding it is refused (no room): it leaves nothing.
    relay.faults.fail_next_writes(1);
    relay.faults.stall_writes(false);
    assert!(first.await.unwrap().unwrap(), "the clinician is answered all the same");
    assert!(copy.await.unwrap().unwrap());
    let notified = tokio::time::timeout(std::time::Duration::from_secs(30), notifications.next())
        .await
        .expect("the local authority is notified by the copy")
        .unwrap()
        .unwrap();
    assert_eq!(notified.access.accessor.user_id, "user-a", "the copy notified in the first copy's place");
    relay.relay.search(&ed, query("user-marker", "marker-id")).await.unwrap();
    let following = notifications.next().await.unwrap().unwrap();
    assert_eq!(following.access.accessor.user_id, "user-marker", "and only once");
}
