//! A relay node whose wall clock is five minutes ahead (the real binary run
//! under libfaketime, `apt-get install faketime`; its monotonic clock, which
//! timers and deadlines use, left alone) beside a node with a good clock, on
//! one PostgreSQL, both taking searches. The skewed node keeps answering and
//! every answered search is notified exactly once, in sequence; it stamps
//! its accesses with its own clock (five minutes ahead, as documented) and
//! says so: `cpis_clock_offset_seconds` reads about 300 there and about 0 on
//! the other node, which the alert CpisClockOffset watches.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::helpers::pg_load::*;
use crate::helpers::postgres::PgCluster;
use crate::helpers::*;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const AHEAD_SECONDS: f64 = 300.0;

async fn node(pki: &Pki, url: &str, env: &[(&str, &str)]) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    pki.write_server_layout(&dir.path().join("certs"));
    let extra =
        ["--store", url, "--feed-poll-ms", "200", "--search-rate-per-second", "0", "--log-key", deployment_log_key()];
    let mut running = start_with_env(dir.path(), &extra, "warn", env).await;
    let mut stderr = running.stderr.take().unwrap();
    tokio::spawn(async move { tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await });
    (running, dir)
}

/// Polls the node's gauge until it is within `tolerance` of `expected`.
async fn offset_reaches(node: &Running, expected: f64, tolerance: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let offset = relay_metric(node.admin, "cpis_clock_offset_seconds").await;
        if let Some(offset) = offset
            && (offset - expected).abs() <= tolerance
        {
            return offset;
        }
        assert!(
            Instant::now() < deadline,
            "cpis_clock_offset_seconds {offset:?}, not within {tolerance} of {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_five_minutes_ahead_answers_notifies_once_and_says_how_far_off_it_is() {
    if !Path::new(LIBFAKETIME).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{LIBFAKETIME} is required in CI: scripts/setup.sh installs faketime"
        );
        eprintln!("SKIPPED: {LIBFAKETIME} is not installed (apt-get install faketime, or scripts/setup.sh)");
        return;
    }
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let pki = Pki::new();
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));
    let people = nhs_numbers(20);
    let (good, _good_dir) = node(&pki, &url, &[]).await;
    load_people(&good.url, None, &la, &people).await;
    let skew = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME", "+300s"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("FAKETIME_NO_CACHE", "1"),
    ];
    let (ahead, _ahead_dir) = node(&pki, &url, &skew).await;

    let (load, stop) = Load::new();
    let (answered, count) = (Arc::clone(&load.answered), Arc::clone(&load.count));
    let mut tasks = searchers(true, &good.url, None, &ed, &people, "good", &load);
    tasks.extend(searchers(false, &ahead.url, None, &ed, &people, "ahead", &load));
    wait_for_count(&count, 200).await;
    stop.send_replace(true);
    for task in tasks {
        task.await.unwrap();
    }
    assert!(answered.lock().unwrap().iter().any(|user| user.starts_with("ahead")), "the skewed node answered");

    let read = every_answered_search_notified(&good.url, None, &la, &answered).await;
    exactly_once(&cluster);
    // Its accesses carry its clock: stored five minutes ahead of the database's.
    let ahead_by = cluster.psql(
        "cpis",
        "SELECT round(extract(epoch FROM max(accessed_at) - now())) FROM cpis_accesses WHERE user_id LIKE 'ahead%'",
    );
    let ahead_by: f64 = ahead_by.parse().unwrap();
    assert!((200.0..=AHEAD_SECONDS).contains(&ahead_by), "the skewed node's newest access is {ahead_by} s ahead");

    let skewed = offset_reaches(&ahead, AHEAD_SECONDS, 5.0).await;
    let right = offset_reaches(&good, 0.0, 1.0).await;
    println!(
        "{read} notifications, each once; clock offset {skewed:.2} s on the skewed node, {right:.3} s on the other"
    );
}
