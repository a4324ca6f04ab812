//! The searcher of the FULL_REFRESH atomicity tests (one relay, and two
//! nodes on PostgreSQL): what no sequence of searches may show.

use std::sync::Arc;

use cpis_relay::proto::lookup_client::LookupClient;
use tonic::transport::Channel;

use super::search_request;

/// One searcher of a FULL_REFRESH atomicity test: searches a kept person,
/// then a new-only, an old-only and the new-only person again, over and
/// over, asserting that no sequence of reads shows a mix of the two sets;
/// waits on `ready` once it has seen the old set, and stops 20 rounds after
/// `refreshed` (set once the searched relay shows the refresh). Returns how
/// many rounds saw the whole old set and the whole new set.
pub async fn refresh_searcher(
    mut lookup: LookupClient<Channel>,
    searcher: u64,
    old_only: Vec<String>,
    kept: Vec<String>,
    new_only: Vec<String>,
    refreshed: Arc<std::sync::atomic::AtomicBool>,
    ready: Arc<tokio::sync::Barrier>,
) -> (u32, u32) {
    use std::sync::atomic::Ordering;
    let (mut seen_old_state, mut seen_new_state, mut seen_new) = (0u32, 0u32, false);
    let mut searches_after = 0;
    let mut step = searcher as usize;
    let mut waited = false;
    while searches_after < 20 {
        if refreshed.load(Ordering::Acquire) {
            searches_after += 1;
        }
        step = (step * 31 + 7) % kept.len();
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
}
