//! Failures of a deployment on PostgreSQL, with the real binary: relay
//! nodes are `cpis-relay serve` subprocesses on a private cluster (see
//! tests/it/helpers/postgres.rs). A relay node is SIGKILLed, the database is
//! restarted, the synchronous standby goes away and comes back, the primary
//! is killed and its synchronous standby promoted, each while searches run. Afterwards every answered search has exactly one
//! access and one notification (checked in SQL), and a subscriber receives
//! every answered search's notification.

use std::sync::Arc;

use crate::helpers::pg_load::*;
use crate::helpers::postgres::PgCluster;
use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_node_while_both_take_searches_loses_no_notification_and_duplicates_none() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let pki = Pki::new();
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));
    let people = nhs_numbers(30);
    let (mut a, _a_dir) = pg_node(&pki, &url).await;
    load_people(&a.url, None, &la, &people).await;
    let (b, _b_dir) = pg_node(&pki, &url).await;

    let (load, stop) = Load::new();
    let (answered, count) = (Arc::clone(&load.answered), Arc::clone(&load.count));
    let mut tasks = searchers(true, &a.url, None, &ed, &people, "a", &load);
    tasks.extend(searchers(false, &b.url, None, &ed, &people, "b", &load));
    wait_for_count(&count, 150).await;
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    let at_kill = *count.borrow();
    // Node B carries on alone.
    wait_for_count(&count, at_kill + 100).await;
    stop.send_replace(true);
    for task in tasks {
        task.await.unwrap();
    }
    let read = every_answered_search_notified(&b.url, None, &la, &answered).await;
    println!(
        "node A killed after {at_kill} answered searches; {} answered, {read} notifications read",
        *count.borrow()
    );
    exactly_once(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_postgres_under_load_holds_then_writes_every_notification_once() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let pki = Pki::new();
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));
    let people = nhs_numbers(30);
    let (a, _a_dir) = pg_node(&pki, &url).await;
    load_people(&a.url, None, &la, &people).await;

    let (load, stop) = Load::new();
    let (answered, count) = (Arc::clone(&load.answered), Arc::clone(&load.count));
    let tasks = searchers(false, &a.url, None, &ed, &people, "a", &load);
    wait_for_count(&count, 100).await;
    cluster.pg_ctl_stop("immediate");
    let at_stop = *count.borrow();
    // Searches are still answered while the database is down: their notifications are held.
    wait_for_count(&count, at_stop + 100).await;
    let (status, _) = admin_get(a.admin, "/readyz").await;
    assert_eq!(status, 503, "not ready while notifications are held");
    cluster.pg_ctl_start();
    let at_start = *count.borrow();
    wait_for_count(&count, at_start + 100).await;
    stop.send_replace(true);
    for task in tasks {
        task.await.unwrap();
    }
    let read = every_answered_search_notified(&a.url, None, &la, &answered).await;
    println!("database down after {at_stop} answered searches; {read} notifications read");
    exactly_once(&cluster);
}

/// A primary whose commits wait for its synchronous standby, and the URL of both.
fn synchronous_pair() -> (PgCluster, PgCluster, String) {
    let primary = PgCluster::start();
    primary.create_database("cpis");
    let standby = primary.standby("standby1");
    primary.append_conf("synchronous_standby_names = 'standby1'\n");
    primary.psql("postgres", "SELECT pg_reload_conf()");
    // Commits now wait for the standby.
    primary.psql("cpis", "CREATE TABLE sync_probe (x int); DROP TABLE sync_probe");
    assert_eq!(primary.psql("postgres", "SELECT sync_state FROM pg_stat_replication"), "sync");
    let url = format!(
        "postgres://cpis@127.0.0.1:{},127.0.0.1:{}/cpis?target_session_attrs=read-write&connect_timeout=2&sslmode=disable",
        primary.port, standby.port
    );
    (primary, standby, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_synchronous_standby_away_holds_notifications_and_writes_each_once_when_it_returns() {
    let (primary, standby, url) = synchronous_pair();
    let pki = Pki::new();
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));
    let people = nhs_numbers(30);
    let (a, _a_dir) = pg_node(&pki, &url).await;
    load_people(&a.url, None, &la, &people).await;
    let (b, _b_dir) = pg_node(&pki, &url).await;

    let (load, stop) = Load::new();
    let (answered, count) = (Arc::clone(&load.answered), Arc::clone(&load.count));
    let mut tasks = searchers(false, &a.url, None, &ed, &people, "a", &load);
    tasks.extend(searchers(false, &b.url, None, &ed, &people, "b", &load));
    wait_for_count(&count, 150).await;
    standby.pg_ctl_stop("immediate");
    let at_stop = *count.borrow();
    // Nothing commits without the standby: searches are still answered (after the
    // write timeout, from the index), their notifications held, the nodes not ready.
    wait_for_count(&count, at_stop + 20).await;
    for node in [&a, &b] {
        assert_eq!(admin_get(node.admin, "/readyz").await.0, 503, "not ready while nothing commits");
    }
    standby.pg_ctl_start();
    let at_start = *count.borrow();
    wait_for_count(&count, at_start + 150).await;
    stop.send_replace(true);
    for task in tasks {
        task.await.unwrap();
    }
    let read = every_answered_search_notified(&b.url, None, &la, &answered).await;
    println!("standby away after {at_stop} answered searches, back after {at_start}; {read} notifications read");
    exactly_once(&primary);
    // The standby, back, replays every access the primary holds.
    let on_primary = primary.psql("cpis", "SELECT count(*) FROM cpis_accesses");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while standby.psql("cpis", "SELECT count(*) FROM cpis_accesses") != on_primary {
        assert!(std::time::Instant::now() < deadline, "the standby did not replay the primary's {on_primary} accesses");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_synchronous_standby_loses_nothing_acknowledged() {
    let (primary, standby, url) = synchronous_pair();
    let pki = Pki::new();
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));
    let people = nhs_numbers(30);
    let (a, _a_dir) = pg_node(&pki, &url).await;
    load_people(&a.url, None, &la, &people).await;
    // Started after the upload, so its index holds it from the start.
    let (b, _b_dir) = pg_node(&pki, &url).await;

    let (load, stop) = Load::new();
    let (answered, count) = (Arc::clone(&load.answered), Arc::clone(&load.count));
    let mut tasks = searchers(false, &a.url, None, &ed, &people, "a", &load);
    tasks.extend(searchers(false, &b.url, None, &ed, &people, "b", &load));
    wait_for_count(&count, 150).await;
    primary.pg_ctl_stop("immediate");
    let at_kill = *count.borrow();
    standby.promote();
    wait_for_count(&count, at_kill + 150).await;
    stop.send_replace(true);
    for task in tasks {
        task.await.unwrap();
    }
    let read = every_answered_search_notified(&b.url, None, &la, &answered).await;
    println!("primary killed after {at_kill} answered searches; {read} notifications read from the promoted standby");
    exactly_once(&standby);
    // And the nodes take uploads again, on the new primary.
    load_people(&a.url, None, &la, &nhs_numbers(31)[30..]).await;
}
