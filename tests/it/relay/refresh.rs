//! A FULL_REFRESH is one atomic step for searches running at the same time:
//! a person kept by the refresh never disappears, and once a searcher has
//! seen the new set it never sees the old one again; no read shows a mix
//! (the new person before the old one, or neither), and every searcher
//! observes both the whole old set and the whole new set.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use crate::helpers::*;
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
        let lookup = relay.lookup().await;
        let (old_only, kept, new_only) = (old_only.to_vec(), kept.to_vec(), new_only.to_vec());
        let (refreshed, ready) = (Arc::clone(&refreshed), Arc::clone(&ready));
        searchers.push(tokio::spawn(refresh_searcher(lookup, searcher, old_only, kept, new_only, refreshed, ready)));
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
