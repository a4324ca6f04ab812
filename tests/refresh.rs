//! A FULL_REFRESH is one atomic step for searches running at the same time:
//! a person kept by the refresh never disappears, and once a searcher has
//! seen the new set it never sees the old one again.

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
    let mut searchers = Vec::new();
    for searcher in 0..4u64 {
        let mut lookup = relay.lookup().await;
        let (old_only, kept, new_only) = (old_only.to_vec(), kept.to_vec(), new_only.to_vec());
        let refreshed = Arc::clone(&refreshed);
        searchers.push(tokio::spawn(async move {
            let mut seen_new = false;
            let mut searches_after = 0;
            let mut step = searcher as usize;
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
                let old_visible = flagged(lookup.search(search_request(&old_only[step], &user, "")).await);
                let new_visible = flagged(lookup.search(search_request(&new_only[step], &user, "")).await);
                // Sequential reads: the old person read before the new one.
                if seen_new {
                    assert!(!old_visible, "searcher {searcher} saw the old set after the new one");
                }
                if new_visible || !old_visible {
                    seen_new = true;
                }
                assert!(old_visible || seen_new, "neither set visible");
            }
            seen_new
        }));
    }
    let report = upload(&mut plans, "706", UploadMode::FullRefresh, set(&numbers[2_000..])).await.unwrap();
    refreshed.store(true, Ordering::Release);
    assert_eq!(report.status, UploadStatus::AllLoaded as i32);
    assert_eq!((report.loaded, report.removed), (4_000, 2_000));
    for searcher in searchers {
        assert!(searcher.await.unwrap(), "every searcher ends on the new set");
    }
    let mut lookup = relay.lookup().await;
    assert!(!lookup.search(search_request(&old_only[0], "after", "")).await.unwrap().into_inner().flagged);
    assert!(lookup.search(search_request(&new_only[0], "after", "")).await.unwrap().into_inner().flagged);
}
