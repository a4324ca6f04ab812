//! Bounded work per auditor's request on PostgreSQL (issue 27, item 5): a
//! subject access report and the `/audit` page's check of a person with
//! 2,000 accesses take a bounded number of statements (inclusion proofs read
//! their hashes together, positions in one query), and a report reads only
//! that person's notifications, however many other people's there are. The
//! node reaches the database through a proxy that counts the statements and
//! rows the server sends it (tests/it/helpers/cut_proxy.rs). Times are printed,
//! never asserted.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::helpers::cut_proxy::{CutProxy, Work};
use crate::helpers::postgres::{PgCluster, pg_options, pg_relay};
use crate::helpers::*;
use cpis_relay::{
    auth::{Identity, Role},
    clock::ManualClock,
    proto::{PlanType, SubjectAccessRequest},
    relay::RelaySettings,
    transparency::LogSigner,
};

/// Accesses of the person whose report is measured.
const ACCESSES: usize = 2_000;
/// Notifications of someone else, which the report must not read.
const OTHER_NOTIFICATIONS: usize = 30_000;
/// Reports (and `/audit` checks) timed.
const REPEATS: usize = 20;
/// Statements one report or check may take: a handful of reads, and the
/// node's own background polls meanwhile; per access or per hash would be thousands.
const STATEMENTS_AT_MOST: u64 = 60;

async fn node(pki: &Pki, clock: &Arc<ManualClock>, url: &str) -> TestRelay {
    let settings = RelaySettings {
        log_signer: Some(Arc::new(LogSigner::generate_ephemeral("test.example/log").unwrap())),
        checkpoint_interval: Duration::from_secs(3600),
        search_rate_per_second: 0.0,
        ..RelaySettings::default()
    };
    pg_relay(pki, clock, &pg_options(url, 8, Duration::from_secs(5)), settings).await
}

fn auditor() -> Identity {
    Identity { ods_code: "X26".into(), organisation_name: "NHS ENGLAND".into(), role: Role::Auditor }
}

/// `count` searches of `person` by distinct users, eight at a time.
async fn searches(relay: &TestRelay, person: &str, count: usize) {
    let tasks = (0..8).map(|task| async move {
        let mut lookup = relay.lookup().await;
        for n in (task..count).step_by(8) {
            let user = format!("u-{person}-{n}-{}", uuid::Uuid::new_v4());
            lookup.search(search_request(person, &user, &user)).await.unwrap();
        }
    });
    futures::future::join_all(tasks).await;
}

fn percentiles(mut took: Vec<Duration>) -> String {
    took.sort();
    let at = |share: f64| took[((took.len() as f64 * share).ceil() as usize).clamp(1, took.len()) - 1];
    format!("p50 {:?}, p99 {:?}, max {:?}", at(0.5), at(0.99), took[took.len() - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_and_audit_checks_of_a_person_with_2000_accesses_take_a_bounded_number_of_statements() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let proxy = CutProxy::start(format!("127.0.0.1:{}", cluster.port).parse().unwrap()).await;
    let (pki, clock) = (Pki::new(), Arc::new(ManualClock::new(test_start())));
    let relay = node(&pki, &clock, &proxy.url_for(&url)).await;
    let (person, other, quiet) = (nhs(4201), nhs(4202), nhs(4203));
    let records = [&person, &other, &quiet].map(|n| record(n, PlanType::ChildProtection)).to_vec();
    relay.load("706", records).await;
    let setup = Instant::now();
    // Spread over days, as such a history would be: within one day a
    // person's every access is kept in memory to recognise retries.
    for _ in 0..ACCESSES / 100 {
        searches(&relay, &person, 100).await;
        clock.advance(chrono::Duration::hours(25));
    }
    eprintln!("{ACCESSES} searches in {:?}", setup.elapsed());
    searches(&relay, &other, 1).await;
    searches(&relay, &quiet, 1).await;
    // Many notifications of someone else: copies of theirs, as if searched that often.
    cluster.psql(
        "cpis",
        &format!(
            "INSERT INTO cpis_notifications (la_ods_code, sequence, access_id, accessed_at, draft, access)
             SELECT n.la_ods_code, c.last_sequence + g, n.access_id, n.accessed_at, n.draft, n.access
             FROM cpis_notifications n JOIN cpis_cursors c USING (la_ods_code), generate_series(1, {OTHER_NOTIFICATIONS}) g
             WHERE n.access_id = (SELECT id FROM cpis_accesses WHERE nhs_number = {other});
             UPDATE cpis_cursors SET last_sequence = last_sequence + {OTHER_NOTIFICATIONS}"
        ),
    );
    relay.relay.log_keeper().unwrap().run(|keeper| keeper.checkpoint()).await.unwrap();
    eprintln!("set up in {:?}", setup.elapsed());

    let mut audit = relay.audit().await;
    let (mut took, mut most) = (Vec::new(), Work::default());
    for _ in 0..REPEATS {
        let before = proxy.work();
        let started = Instant::now();
        let report = audit.subject_access(SubjectAccessRequest { nhs_number: person.clone() }).await.unwrap();
        took.push(started.elapsed());
        let work = proxy.work() - before;
        most = Work { statements: most.statements.max(work.statements), rows: most.rows.max(work.rows), ..work };
        assert!(report.into_inner().accesses.len() > ACCESSES, "every search and the auditor's reads");
    }
    println!("subject access report, {ACCESSES} accesses: {}; at most {most:?}", percentiles(took));
    assert!(most.statements <= STATEMENTS_AT_MOST, "a report took {most:?}");

    let (mut took, mut most) = (Vec::new(), Work::default());
    for _ in 0..REPEATS {
        let before = proxy.work();
        let started = Instant::now();
        let accesses = relay.relay.access_log(&auditor(), &person).await.unwrap();
        let status = relay.relay.log_status(&auditor(), &accesses).await.unwrap().unwrap();
        took.push(started.elapsed());
        let work = proxy.work() - before;
        most = Work { statements: most.statements.max(work.statements), rows: most.rows.max(work.rows), ..work };
        assert!(status.all_verified() && status.verified == ACCESSES, "{status:?}");
    }
    println!("/audit log and its check, {ACCESSES} accesses: {}; at most {most:?}", percentiles(took));
    assert!(most.statements <= STATEMENTS_AT_MOST, "an /audit check took {most:?}");

    // Someone searched once: none of the other person's notifications is read.
    let before = proxy.work();
    let report = audit.subject_access(SubjectAccessRequest { nhs_number: quiet.clone() }).await.unwrap().into_inner();
    let work = proxy.work() - before;
    println!("subject access report, one access, {OTHER_NOTIFICATIONS} notifications of someone else: {work:?}");
    assert_eq!(report.notifications.len(), 1);
    assert!(work.rows < 500, "the report read {} rows", work.rows);
}
