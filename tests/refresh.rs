//! A FULL_REFRESH is one atomic step for searches running at the same time:
//! a person kept by the refresh never disappears, and once a searcher has
//! seen the new set it never sees the old one again; no read shows a mix
//! (the new person before the old one, or neither), and every searcher
//! observes both the whole old set and the whole new set.

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use common::*;
use cpis_relay::proto::{PlanType, UploadMode, UploadStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_refresh_is_seen_atomically_by_concurrent_searches() {
    let relay = TestRelay::start().await;
    let numbers = nhs_numbers(6_000);
    // Old set: people 0..4000. New set: 2000..6000. 2000..4000 are kept.
    let (old_only, kept, new_only) = (&numbers[..2_000], &numbers[2_000..4_000], &numbers[4_000..]);
    let set = |people: &[String]| people.iter().map(|n| record(n, PlanType::ChildProtection)).collect::<Vec<_>>();
    let mut plans = relay.plans("la-706").await;
    let first = upload(&mut plans, "706", UploadMode::FullRefresh, set(&numbers[..4_000])).await.unwrap();
    assert_eq!(first.loaded, 4_000);

    let refreshed = Arc::new(AtomicBool::new(false));
    // Every searcher sees the old set at least once before the refresh starts.
    let ready = Arc::new(tokio::sync::Barrier::new(5));
    let mut searchers = Vec::new();
    for searcher in 0..4u64 {
        let mut lookup = relay.lookup().await;
        let (old_only, kept, new_only) = (old_only.to_vec(), kept.to_vec(), new_only.to_vec());
        let (refreshed, ready) = (Arc::clone(&refreshed), Arc::clone(&ready));
        searchers.push(tokio::spawn(async move {
            let (mut seen_old_state, mut seen_new_state, mut seen_new) = (0u32, 0u32, false);
            let mut searches_after = 0;
            let mut step = searcher as usize;
            let mut waited = false;
            while searches_after < 20 {
                if refreshed.load(Ordering::Acquire) {
                    searches_after += 1;
                }
                step = (step * 31 + 7) % 2_000;
                let user = format!("searcher-{searcher}");
                let flagged = |response: Result<tonic::Response<cpis_relay::proto::SearchResponse>, tonic::Status>| {
                    response.unwrap().into_inner().flagged
                };
                assert!(
                    flagged(lookup.search(search_request(&kept[step], &user, "")).await),
                    "a kept person vanished mid-refresh"
                );
                // Sequential reads new, old, new. An atomic swap between any two
                // gives (no, yes, no), (no, no, yes), (no, yes, yes) or (yes, no, yes);
                // a refresh that adds before it removes can show the new person
                // and then the old one, and one that removes before it adds can
                // show neither.
                let new_first = flagged(lookup.search(search_request(&new_only[step], &user, "")).await);
                let old_visible = flagged(lookup.search(search_request(&old_only[step], &user, "")).await);
                let new_then = flagged(lookup.search(search_request(&new_only[step], &user, "")).await);
                assert!(!(new_first && old_visible), "searcher {searcher} saw the new set and then the old one");
                assert!(old_visible || new_then, "searcher {searcher} saw neither set");
                assert!(!new_first || new_then, "searcher {searcher}: the new person vanished");
                if seen_new {
                    assert!(!old_visible && new_first, "searcher {searcher} saw the old set after the new one");
                }
                match (new_first, old_visible, new_then) {
                    (false, true, false) => seen_old_state += 1,
                    (true, false, true) => seen_new_state += 1,
                    _ => {}
                }
                if new_then {
                    seen_new = true;
                }
                if !waited {
                    assert!(seen_old_state > 0, "searcher {searcher}: the old set before the refresh");
                    ready.wait().await;
                    waited = true;
                }
            }
            (seen_old_state, seen_new_state)
        }));
    }
    ready.wait().await;
    let report = upload(&mut plans, "706", UploadMode::FullRefresh, set(&numbers[2_000..])).await.unwrap();
    refreshed.store(true, Ordering::Release);
    assert_eq!(report.status, UploadStatus::AllLoaded as i32);
    assert_eq!((report.loaded, report.removed), (4_000, 2_000));
    for searcher in searchers {
        let (old_states, new_states) = searcher.await.unwrap();
        assert!(
            old_states > 0 && new_states > 0,
            "each searcher saw both whole sets: {old_states} old, {new_states} new"
        );
    }
    let mut lookup = relay.lookup().await;
    assert!(!lookup.search(search_request(&old_only[0], "after", "")).await.unwrap().into_inner().flagged);
    assert!(lookup.search(search_request(&new_only[0], "after", "")).await.unwrap().into_inner().flagged);
}
