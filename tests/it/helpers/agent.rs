//! The agent side of the `deliver` tests: notifications made on the real
//! relay, agents run in-process (with fast retries) or as `cpis-relay
//! deliver` subprocesses, and the relay's acknowledged position.

// Each test binary that includes this uses only part of it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use cpis_relay::{
    deliver::{config::DeliverSettings, metrics::Status},
    proto::{PlanType, SubscribeRequest},
};
use tokio::{io::AsyncBufReadExt, sync::oneshot, task::JoinHandle};

use super::{
    webhook_receiver::{Receiver, WAIT, secret},
    *,
};

/// What most delivery tests start from: a relay on which la-706 has been
/// notified `searches` times (of `people` people in turn), a directory for
/// the agent with a webhook secret in it, and those notifications as the
/// relay holds them.
pub struct Delivery {
    pub relay: TestRelay,
    pub dir: tempfile::TempDir,
    pub secret: String,
    pub secret_file: PathBuf,
    /// (sequence, notification id) of each notification, oldest first.
    pub expected: Vec<(u64, String)>,
}

impl Delivery {
    pub async fn start(people: u64, searches: usize) -> Self {
        let relay = TestRelay::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (secret, secret_file) = secret(dir.path());
        notify(&relay, 0, people, searches).await;
        let expected = relay_notifications(&relay, searches).await;
        Self { relay, dir, secret, secret_file, expected }
    }

    /// A plain-HTTP webhook receiver that verifies this secret.
    pub async fn receiver(&self) -> Receiver {
        Receiver::start(&self.relay, &self.secret, None).await
    }

    /// Agent settings (fast retries) delivering to the webhook at `url` with this secret.
    pub fn webhook_settings(&self, url: String) -> DeliverSettings {
        webhook(settings(&self.relay, self.dir.path()), url, &self.secret_file)
    }
}

/// Uploads `people` for la-706 and searches each `searches` times in turn
/// as the emergency department; every search notifies la-706.
pub async fn notify(relay: &TestRelay, first_person: u64, people: u64, searches: usize) {
    let numbers: Vec<String> = (first_person..first_person + people).map(nhs).collect();
    relay.load("706", numbers.iter().map(|n| record(n, PlanType::ChildProtection)).collect()).await;
    let mut lookup = relay.lookup().await;
    for i in 0..searches {
        let user = format!("user-{first_person}-{i}");
        let response = lookup.search(search_request(&numbers[i % numbers.len()], &user, &user)).await.unwrap();
        assert!(response.into_inner().flagged);
    }
}

/// la-706's notifications as the relay holds them, read without acknowledging.
pub async fn relay_notifications(relay: &TestRelay, count: usize) -> Vec<(u64, String)> {
    let mut notifications = relay.notifications("la-706").await;
    let mut stream = notifications.subscribe(SubscribeRequest { after_sequence: Some(0) }).await.unwrap().into_inner();
    let mut all = Vec::new();
    for _ in 0..count {
        let notification = next(&mut stream).await;
        all.push((notification.sequence, notification.notification_id));
    }
    all
}

pub fn relay_acked(relay: &TestRelay) -> u64 {
    relay.relay.hub().positions().iter().find(|p| p.la_ods_code == "706").map_or(0, |p| p.acked_through)
}

/// Settings with fast retries, for an agent of la-706 on `relay`.
pub fn settings(relay: &TestRelay, dir: &Path) -> DeliverSettings {
    DeliverSettings {
        server: vec![relay.url()],
        dead_letter_dir: Some(dir.join("dead-letter")),
        log_state_dir: Some(dir.join("log-check")),
        log_check_interval_secs: Some(1),
        retry_initial_ms: Some(20),
        retry_max_secs: Some(1),
        reconnect_initial_ms: Some(20),
        reconnect_max_secs: Some(1),
        ..DeliverSettings::default()
    }
}

pub fn webhook(mut settings: DeliverSettings, url: String, secret_file: &Path) -> DeliverSettings {
    settings.webhook = Some(url);
    settings.secret_file = Some(secret_file.to_owned());
    settings
}

/// An in-process agent.
pub struct RunningAgent {
    pub status: Status,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

impl RunningAgent {
    pub fn start(relay: &TestRelay, settings: DeliverSettings) -> Self {
        let agent = settings.resolve().unwrap().agent(relay.pki.client_pem("la-706")).unwrap();
        let status = agent.status();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(agent.run(async {
            let _ = stopped.await;
        }));
        Self { status, stop, handle }
    }

    pub async fn acked_through(&self, sequence: u64) {
        let mut acked = self.status.acked_sequence();
        tokio::time::timeout(WAIT, acked.wait_for(|acked| *acked >= sequence)).await.expect("acked in time").unwrap();
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.handle).await.expect("the agent stops").unwrap();
    }
}

pub fn metric(name_and_labels: &str) -> f64 {
    let text = cpis_relay::telemetry::metrics().render();
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name_and_labels} in\n{text}"))
}

/// A `cpis-relay deliver` subprocess logging at info; its admin address
/// read from stdout, its log collected from stderr until it exits.
pub struct DeliverProcess {
    pub child: tokio::process::Child,
    pub admin: SocketAddr,
    pub log: JoinHandle<String>,
}

pub async fn spawn_deliver(args: &[String]) -> DeliverProcess {
    use tokio::io::AsyncReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .arg("deliver")
        .args(args)
        .env("CPIS_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log).await;
        log
    });
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().expect("the started line");
    let admin = line.split_whitespace().find_map(|word| word.strip_prefix("admin=")).unwrap().parse().unwrap();
    DeliverProcess { child, admin, log }
}
