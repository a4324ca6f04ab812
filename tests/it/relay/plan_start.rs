//! A plan starts on its start date (the domain rule): a plan uploaded
//! before its start date (agreed at a conference, starting next week) is
//! kept but neither shown to health nor notified until that day. Real
//! server over mutual TLS, the relay's manual clock.

use crate::helpers::*;
use cpis_relay::proto::PlanType;

#[tokio::test]
async fn a_plan_is_neither_shown_nor_notified_before_its_start_date() {
    let relay = TestRelay::start().await;
    let child = nhs(1);
    let mut starting = record(&child, PlanType::ChildProtection);
    starting.start_date = "2026-06-10".into(); // the clock starts on 2026-06-01
    assert_eq!(relay.load("706", vec![starting]).await.loaded, 1, "a future start date is accepted");
    let mut notifications = relay.subscribe("la-706").await;

    let before = relay.lookup().await.search(search_request(&child, "too-early", "")).await.unwrap().into_inner();
    assert!(!before.flagged && before.plans.is_empty(), "not shown before it starts");

    relay.clock.advance(chrono::Duration::days(9)); // 2026-06-10 09:00: its first day
    let on_the_day = relay.lookup().await.search(search_request(&child, "on-the-day", "")).await.unwrap().into_inner();
    assert!(on_the_day.flagged);
    assert_eq!(on_the_day.plans[0].start_date, "2026-06-10");
    let first = next(&mut notifications).await;
    assert_eq!(first.accessor.unwrap().user_id, "on-the-day", "the search before the start notified nobody");
}
