//! No lock a search needs is held across a round trip to a node (issue 27,
//! item 3). Node A reaches PostgreSQL through a proxy that cuts it off right
//! after the server ran one chosen statement of A's, withholding the answer
//! (tests/it/helpers/cut_proxy.rs): in the middle of its log keeper's append, of
//! an auditor's read, of a retention pass, and of an authority's
//! acknowledgement (whose cursor row numbers that authority's notifications).
//! Node B, on the same database, then takes searches while A stays cut off:
//! each must commit within B's write timeout (none held for retry). Against a
//! statement sequence in an explicit transaction the `cpis_log` row (or the
//! cursor row) stays locked until the server drops A's session (30 s), and
//! B's searches are held. B's search latencies during the cut are printed.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::helpers::cut_proxy::CutProxy;
use crate::helpers::postgres::{PgCluster, pg_options, pg_relay};
use crate::helpers::*;
use cpis_relay::{
    clock::ManualClock,
    proto::{AccessLogRequest, PlanType},
    relay::RelaySettings,
    transparency::LogSigner,
};

/// B's write timeout: a search not committed within it is held for retry.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Searches B takes while A is cut off.
const SEARCHES_DURING_CUT: usize = 40;

async fn node(pki: &Pki, clock: &Arc<ManualClock>, url: &str, signer: &Arc<LogSigner>) -> TestRelay {
    let settings = RelaySettings {
        log_signer: Some(Arc::clone(signer)),
        // The test appends and runs retention itself.
        checkpoint_interval: Duration::from_secs(3600),
        retention_interval: Duration::from_secs(3600),
        ..RelaySettings::default()
    };
    pg_relay(pki, clock, &pg_options(url, 4, WRITE_TIMEOUT), settings).await
}

/// Two nodes on one database, A behind the cutting proxy, a flagged child
/// both know of, and a few searches through A already in A's tree.
struct Scene {
    cluster: PgCluster,
    proxy: CutProxy,
    clock: Arc<ManualClock>,
    a: TestRelay,
    b: TestRelay,
    child: String,
}

impl Scene {
    async fn new() -> Self {
        let cluster = PgCluster::start();
        let url = cluster.create_database("cpis");
        let proxy = CutProxy::start(format!("127.0.0.1:{}", cluster.port).parse().unwrap()).await;
        let signer = Arc::new(LogSigner::generate_ephemeral("test.example/log").unwrap());
        let (pki, clock) = (Pki::new(), Arc::new(ManualClock::new(test_start())));
        let a = node(&pki, &clock, &proxy.url_for(&url), &signer).await;
        let b = node(&pki, &clock, &url, &signer).await;
        let child = nhs(4101);
        a.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
        let version = *a.relay.plan_version().borrow();
        let mut seen = b.relay.plan_version();
        tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|held| *held >= version)).await.unwrap().unwrap();
        let scene = Self { cluster, proxy, clock, a, b, child };
        scene.search_on_a("before").await;
        scene.a.relay.log_keeper().unwrap().run(|keeper| keeper.checkpoint()).await.unwrap();
        scene
    }

    async fn search_on_a(&self, tag: &str) {
        for n in 0..3 {
            let user = format!("a-{tag}-{n}");
            self.a.lookup().await.search(search_request(&self.child, &user, &user)).await.unwrap();
        }
    }

    /// Cuts A off once the server has run its statement containing `sql`
    /// (started by `start`, which runs on while A is cut off), then takes
    /// searches on B. Returns B's search latencies, sorted.
    async fn searches_on_b_while_a_is_cut<F>(&self, sql: &str, start: F) -> Vec<Duration>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send,
    {
        self.proxy.arm(sql).await;
        let cut_off = tokio::spawn(start);
        self.proxy.cut().await;
        let mut lookup = self.b.lookup().await;
        let mut took = Vec::with_capacity(SEARCHES_DURING_CUT);
        for n in 0..SEARCHES_DURING_CUT {
            let user = format!("b-{n}");
            let started = Instant::now();
            let answer = lookup.search(search_request(&self.child, &user, &user)).await.unwrap().into_inner();
            took.push(started.elapsed());
            assert!(answer.flagged);
            assert_eq!(self.b.relay.hub().held(), 0, "search {n} on B was held: it did not commit while A is cut off");
        }
        assert!(self.proxy.is_cut(), "A stayed cut off throughout");
        let committed = self.cluster.psql("cpis", "SELECT count(*) FROM cpis_accesses WHERE user_id LIKE 'b-%'");
        assert_eq!(committed, SEARCHES_DURING_CUT.to_string(), "every search on B committed while A is cut off");
        self.proxy.heal();
        let _ = cut_off.await;
        took.sort();
        took
    }
}

fn report(what: &str, took: &[Duration]) {
    let at = |share: f64| took[((took.len() as f64 * share).ceil() as usize).clamp(1, took.len()) - 1];
    println!(
        "B's {} searches while A is cut off in the middle of {what}: p50 {:?}, p99 {:?}, max {:?} (write timeout {WRITE_TIMEOUT:?})",
        took.len(),
        at(0.5),
        at(0.99),
        took[took.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_on_b_commit_while_a_is_cut_off_in_the_middle_of_its_keepers_append() {
    let scene = Scene::new().await;
    scene.search_on_a("more").await;
    let keeper = scene.a.relay.log_keeper().unwrap().clone();
    let took = scene
        .searches_on_b_while_a_is_cut("SET tree_size", async move { keeper.run(|keeper| keeper.checkpoint()).await })
        .await;
    report("its keeper's append", &took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_on_b_commit_while_a_is_cut_off_in_the_middle_of_an_auditors_read() {
    let scene = Scene::new().await;
    let mut audit = scene.a.audit().await;
    let child = scene.child.clone();
    let took = scene
        .searches_on_b_while_a_is_cut("INSERT INTO cpis_audit_reads", async move {
            audit.access_log(AccessLogRequest { nhs_number: child }).await
        })
        .await;
    report("an auditor's read", &took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_on_b_commit_while_a_is_cut_off_in_the_middle_of_retention() {
    let scene = Scene::new().await;
    // A's first searches are past their keeping period and in the tree.
    scene.clock.advance(chrono::Duration::days(400));
    let relay = scene.a.relay.clone();
    let took = scene.searches_on_b_while_a_is_cut("SET retained_from", async move { relay.expire().await }).await;
    report("retention", &took);
    assert_eq!(scene.cluster.psql("cpis", "SELECT retained_from FROM cpis_log"), "3", "A's retention statement ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_on_b_commit_while_a_is_cut_off_in_the_middle_of_an_acknowledgement() {
    let scene = Scene::new().await;
    let mut notifications = scene.a.notifications("la-706").await;
    let took = scene
        .searches_on_b_while_a_is_cut("SET acked_through", async move {
            notifications.ack(cpis_relay::proto::AckRequest { sequence: 2 }).await
        })
        .await;
    report("an acknowledgement", &took);
}
