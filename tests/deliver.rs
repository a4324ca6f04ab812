//! `cpis-relay deliver` against the real relay (in-process, real mutual TLS)
//! and real HTTP(S) receivers on 127.0.0.1:0. The receivers verify every
//! signature with the `standardwebhooks` crate (Standard Webhooks' own Rust
//! library, on hmac-sha256), not with the agent's code. Every wait is on an
//! event: a received request, an acknowledged position, a process exit.

mod common;

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine;
use common::*;
use cpis_relay::{
    deliver::{config::DeliverSettings, files, metrics::Status, payload::NotificationBody},
    proto::{PlanType, SubscribeRequest},
};
use tokio::{
    io::AsyncBufReadExt,
    net::TcpListener,
    sync::{Notify, mpsc, oneshot},
    task::JoinHandle,
};

const WAIT: Duration = Duration::from_secs(30);

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Arrival {
    webhook_id: String,
    signature_valid: bool,
    body: NotificationBody,
    /// The relay's acknowledged position for la-706 when the request arrived.
    acked_at_arrival: u64,
    at: Instant,
    answered: u16,
}

/// What the receiver answers to the next request.
enum Reply {
    Status {
        status: u16,
        retry_after: Option<&'static str>,
        body: &'static str,
    },
    /// Answers 200 only once released: the request stays in flight.
    Hold(Arc<Notify>),
}

struct ReceiverState {
    secret: String,
    script: Mutex<VecDeque<Reply>>,
    arrivals: mpsc::UnboundedSender<Arrival>,
    acked: Box<dyn Fn() -> u64 + Send + Sync>,
}

struct Receiver {
    address: SocketAddr,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    /// Failed TLS handshakes (HTTPS receivers only).
    handshake_failures: mpsc::UnboundedReceiver<()>,
    state: Arc<ReceiverState>,
}

impl Receiver {
    /// A receiver on 127.0.0.1:0, HTTPS when `tls` is given.
    async fn start(relay: &TestRelay, secret: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let (sender, arrivals) = mpsc::unbounded_channel();
        let positions = relay.relay.clone();
        let state = Arc::new(ReceiverState {
            secret: secret.to_owned(),
            script: Mutex::default(),
            arrivals: sender,
            acked: Box::new(move || {
                positions.hub().positions().iter().find(|p| p.la_ods_code == "706").map_or(0, |p| p.acked_through)
            }),
        });
        let router = Router::new().route("/hook", post(hook)).with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (failed, handshake_failures) = mpsc::unbounded_channel();
        match tls {
            None => {
                tokio::spawn(async move { axum::serve(listener, router).await });
            }
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                tokio::spawn(async move {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else { return };
                        let (acceptor, router, failed) = (acceptor.clone(), router.clone(), failed.clone());
                        tokio::spawn(async move {
                            match acceptor.accept(tcp).await {
                                Err(_) => {
                                    let _ = failed.send(());
                                }
                                Ok(stream) => {
                                    let service = hyper_util::service::TowerToHyperService::new(router);
                                    let _ = hyper::server::conn::http1::Builder::new()
                                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                        .await;
                                }
                            }
                        });
                    }
                });
            }
        }
        Self { address, arrivals, handshake_failures, state }
    }

    fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    async fn next(&mut self) -> Arrival {
        tokio::time::timeout(WAIT, self.arrivals.recv()).await.expect("a webhook request in time").unwrap()
    }

    fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}/hook", self.address.port())
    }
}

async fn hook(State(state): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> Response {
    let signature_valid = standardwebhooks::Webhook::new(&state.secret).unwrap().verify(&body, &headers).is_ok();
    let webhook_id = headers.get("webhook-id").and_then(|id| id.to_str().ok()).unwrap_or_default().to_owned();
    let parsed: NotificationBody = serde_json::from_slice(&body).expect("the documented JSON shape");
    let reply = state.script.lock().unwrap().pop_front();
    let answered = match &reply {
        Some(Reply::Status { status, .. }) => *status,
        _ => 200,
    };
    let acked_at_arrival = (state.acked)();
    let arrival = Arrival { webhook_id, signature_valid, body: parsed, acked_at_arrival, at: Instant::now(), answered };
    let _ = state.arrivals.send(arrival);
    match reply {
        None => StatusCode::OK.into_response(),
        Some(Reply::Hold(release)) => {
            release.notified().await;
            StatusCode::OK.into_response()
        }
        Some(Reply::Status { status, retry_after, body }) => {
            let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
            if let Some(after) = retry_after {
                response.headers_mut().insert("retry-after", after.parse().unwrap());
            }
            response
        }
    }
}

/// A fresh Standard Webhooks secret, written to `dir/webhook.secret`.
fn secret(dir: &Path) -> (String, std::path::PathBuf) {
    let key: [u8; 32] = rand::random();
    let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key));
    let path = dir.join("webhook.secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    (secret, path)
}

/// Uploads `people` for la-706 and searches each `searches` times in turn
/// as the emergency department; every search notifies la-706.
async fn notify(relay: &TestRelay, first_person: u64, people: u64, searches: usize) {
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
async fn relay_notifications(relay: &TestRelay, count: usize) -> Vec<(u64, String)> {
    let mut notifications = relay.notifications("la-706").await;
    let mut stream = notifications.subscribe(SubscribeRequest { after_sequence: Some(0) }).await.unwrap().into_inner();
    let mut all = Vec::new();
    for _ in 0..count {
        let notification = next(&mut stream).await;
        all.push((notification.sequence, notification.notification_id));
    }
    all
}

fn relay_acked(relay: &TestRelay) -> u64 {
    relay.relay.hub().positions().iter().find(|p| p.la_ods_code == "706").map_or(0, |p| p.acked_through)
}

/// Settings with fast retries, for an agent of la-706 on `relay`.
fn settings(relay: &TestRelay, dir: &Path) -> DeliverSettings {
    DeliverSettings {
        server: vec![relay.url()],
        dead_letter_dir: Some(dir.join("dead-letter")),
        retry_initial_ms: Some(20),
        retry_max_secs: Some(1),
        reconnect_initial_ms: Some(20),
        reconnect_max_secs: Some(1),
        ..DeliverSettings::default()
    }
}

fn webhook(mut settings: DeliverSettings, url: String, secret_file: &Path) -> DeliverSettings {
    settings.webhook = Some(url);
    settings.secret_file = Some(secret_file.to_owned());
    settings
}

/// An in-process agent.
struct RunningAgent {
    status: Status,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

impl RunningAgent {
    fn start(relay: &TestRelay, settings: DeliverSettings) -> Self {
        let agent = settings.resolve().unwrap().agent(relay.pki.client_pem("la-706")).unwrap();
        let status = agent.status();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(agent.run(async {
            let _ = stopped.await;
        }));
        Self { status, stop, handle }
    }

    async fn acked_through(&self, sequence: u64) {
        let mut acked = self.status.acked_sequence();
        tokio::time::timeout(WAIT, acked.wait_for(|acked| *acked >= sequence)).await.expect("acked in time").unwrap();
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.handle).await.expect("the agent stops").unwrap();
    }
}

fn metric(name_and_labels: &str) -> f64 {
    let text = cpis_relay::telemetry::metrics().render();
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name_and_labels} in\n{text}"))
}

#[tokio::test]
async fn every_notification_arrives_in_order_with_a_valid_signature() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (secret, secret_file) = secret(dir.path());
    notify(&relay, 0, 4, 12).await;
    let expected = relay_notifications(&relay, 12).await;
    let mut receiver = Receiver::start(&relay, &secret, None).await;

    let agent = RunningAgent::start(
        &relay,
        webhook(settings(&relay, dir.path()), receiver.url("http", "127.0.0.1"), &secret_file),
    );
    let mut arrived = Vec::new();
    for _ in 0..12 {
        arrived.push(receiver.next().await);
    }
    agent.acked_through(expected[11].0).await;

    let seen: Vec<(u64, String)> = arrived.iter().map(|a| (a.body.sequence, a.body.notification_id.clone())).collect();
    assert_eq!(seen, expected, "every notification, once, in order");
    for arrival in &arrived {
        assert!(arrival.signature_valid, "signature of {}", arrival.webhook_id);
        assert_eq!(arrival.webhook_id, arrival.body.notification_id);
        assert!(arrival.acked_at_arrival < arrival.body.sequence, "acknowledged before delivery");
        assert_eq!(arrival.body.organisation_ods_code, "RR8");
        assert_eq!(arrival.body.plan_type, "CHILD_PROTECTION");
    }
    assert_eq!(relay_acked(&relay), expected[11].0);
    assert_eq!(metric("cpis_deliver_delivered_total{sink=\"webhook\"}"), 12.0);
    assert_eq!(metric("cpis_deliver_dead_lettered_total{sink=\"webhook\"}"), 0.0);
    assert_eq!(metric("cpis_deliver_backlog"), 0.0);
    assert!(agent.status.health().is_ok());
    agent.stop().await;
}

#[tokio::test]
async fn a_500_is_retried_and_acknowledged_only_after_the_200() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (secret, secret_file) = secret(dir.path());
    notify(&relay, 0, 1, 1).await;
    let expected = relay_notifications(&relay, 1).await;
    let mut receiver = Receiver::start(&relay, &secret, None).await;
    receiver.script([Reply::Status { status: 500, retry_after: None, body: "try later" }]);

    let agent = RunningAgent::start(
        &relay,
        webhook(settings(&relay, dir.path()), receiver.url("http", "localhost"), &secret_file),
    );
    let failed = receiver.next().await;
    let delivered = receiver.next().await;
    agent.acked_through(expected[0].0).await;

    assert_eq!((failed.answered, delivered.answered), (500, 200));
    for arrival in [&failed, &delivered] {
        assert_eq!((arrival.body.sequence, &arrival.body.notification_id), (expected[0].0, &expected[0].1));
        assert_eq!(arrival.webhook_id, expected[0].1, "a retry keeps the webhook-id");
        assert!(arrival.signature_valid);
        assert_eq!(arrival.acked_at_arrival, 0, "no acknowledgement before the receiver took it");
    }
    assert_eq!(relay_acked(&relay), expected[0].0);
    assert_eq!(metric("cpis_deliver_retries_total{sink=\"webhook\"}"), 1.0);
    assert_eq!(metric("cpis_deliver_delivered_total{sink=\"webhook\"}"), 1.0);
    assert!(receiver.arrivals.try_recv().is_err(), "one delivered copy");
    agent.stop().await;
}

#[tokio::test]
async fn a_429_retry_after_is_honoured() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (secret, secret_file) = secret(dir.path());
    notify(&relay, 0, 1, 1).await;
    let mut receiver = Receiver::start(&relay, &secret, None).await;
    receiver.script([Reply::Status { status: 429, retry_after: Some("1"), body: "" }]);

    let agent = RunningAgent::start(
        &relay,
        webhook(settings(&relay, dir.path()), receiver.url("http", "127.0.0.1"), &secret_file),
    );
    let throttled = receiver.next().await;
    let delivered = receiver.next().await;
    assert_eq!((throttled.answered, delivered.answered), (429, 200));
    let gap = delivered.at - throttled.at;
    // Retries here start at 20 ms: only Retry-After explains a wait of a second.
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    agent.acked_through(delivered.body.sequence).await;
    agent.stop().await;
}

#[tokio::test]
async fn a_400_is_dead_lettered_and_delivery_continues() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (secret, secret_file) = secret(dir.path());
    notify(&relay, 0, 3, 3).await;
    let expected = relay_notifications(&relay, 3).await;
    let mut receiver = Receiver::start(&relay, &secret, None).await;
    receiver.script([Reply::Status { status: 400, retry_after: None, body: "{\"error\":\"unknown team\"}" }]);

    let agent = RunningAgent::start(
        &relay,
        webhook(settings(&relay, dir.path()), receiver.url("http", "127.0.0.1"), &secret_file),
    );
    let refused = receiver.next().await;
    let (second, third) = (receiver.next().await, receiver.next().await);
    agent.acked_through(expected[2].0).await;

    assert_eq!(refused.answered, 400);
    assert_eq!(refused.body.sequence, expected[0].0);
    assert_eq!([second.body.sequence, third.body.sequence], [expected[1].0, expected[2].0]);
    let dead: Vec<_> = std::fs::read_dir(dir.path().join("dead-letter"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| !files::is_temporary(&path.file_name().unwrap().to_string_lossy()))
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].file_name().unwrap().to_string_lossy().contains(&expected[0].1));
    let letter: serde_json::Value = serde_json::from_slice(&std::fs::read(&dead[0]).unwrap()).unwrap();
    assert_eq!(letter["status"], 400);
    assert_eq!(letter["sink"], "webhook");
    assert_eq!(letter["response_excerpt"], "{\"error\":\"unknown team\"}");
    assert_eq!(letter["notification"]["notification_id"], expected[0].1);
    assert_eq!(letter["notification"]["sequence"], expected[0].0);
    assert_eq!(metric("cpis_deliver_dead_lettered_total{sink=\"webhook\"}"), 1.0);
    assert_eq!(metric("cpis_deliver_delivered_total{sink=\"webhook\"}"), 2.0);
    agent.stop().await;
}

/// A `cpis-relay deliver` subprocess; its admin address read from stdout.
struct DeliverProcess {
    child: tokio::process::Child,
    admin: SocketAddr,
}

async fn spawn_deliver(args: &[String]) -> DeliverProcess {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .arg("deliver")
        .args(args)
        .env("CPIS_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().expect("the started line");
    let admin = line.split_whitespace().find_map(|word| word.strip_prefix("admin=")).unwrap().parse().unwrap();
    DeliverProcess { child, admin }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_then_restart_loses_nothing() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    relay.pki.write_dev_layout(&certs);
    let (secret, secret_file) = secret(dir.path());
    notify(&relay, 0, 5, 20).await;
    let mut receiver = Receiver::start(&relay, &secret, None).await;
    // The 8th request is held open: the agent is killed while it is in flight.
    let release = Arc::new(Notify::new());
    let mut script: Vec<Reply> = (0..7).map(|_| Reply::Status { status: 200, retry_after: None, body: "" }).collect();
    script.push(Reply::Hold(Arc::clone(&release)));
    receiver.script(script);
    let args: Vec<String> = [
        "--server",
        &relay.url(),
        "--as",
        "la-706",
        "--certs-dir",
        &certs.display().to_string(),
        "--webhook",
        &receiver.url("http", "localhost"),
        "--secret-file",
        &secret_file.display().to_string(),
        "--dead-letter-dir",
        &dir.path().join("dead-letter").display().to_string(),
        "--admin-listen",
        "127.0.0.1:0",
        "--retry-initial-ms",
        "20",
        "--retry-max-secs",
        "1",
        "--reconnect-initial-ms",
        "20",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();

    let mut first = spawn_deliver(&args).await;
    let mut arrivals = Vec::new();
    for _ in 0..8 {
        arrivals.push(receiver.next().await);
    }
    first.child.start_kill().unwrap(); // SIGKILL
    first.child.wait().await.unwrap();
    release.notify_one();
    let acked_at_kill = relay_acked(&relay);
    assert!(acked_at_kill < arrivals[7].body.sequence, "the held notification was not acknowledged");

    notify(&relay, 100, 5, 10).await;
    let expected = relay_notifications(&relay, 30).await;
    let mut second = spawn_deliver(&args).await;
    let mut missing: HashSet<String> = expected.iter().map(|(_, id)| id.clone()).collect();
    for arrival in &arrivals {
        missing.remove(&arrival.body.notification_id);
    }
    while !missing.is_empty() {
        let arrival = receiver.next().await;
        missing.remove(&arrival.body.notification_id);
        arrivals.push(arrival);
    }

    let expected_ids: BTreeMap<u64, String> = expected.iter().cloned().collect();
    let mut copies = BTreeMap::<u64, usize>::new();
    for arrival in &arrivals {
        assert!(arrival.signature_valid);
        assert_eq!(arrival.webhook_id, arrival.body.notification_id, "a copy keeps its webhook-id");
        assert_eq!(expected_ids.get(&arrival.body.sequence), Some(&arrival.webhook_id));
        *copies.entry(arrival.body.sequence).or_default() += 1;
    }
    assert_eq!(copies.len(), 30, "every notification delivered");
    // Each run delivers in order; the restart goes back at most to the first unacknowledged one.
    let descents: Vec<_> = arrivals.windows(2).filter(|pair| pair[1].body.sequence < pair[0].body.sequence).collect();
    assert!(descents.len() <= 1, "in order within each run");
    for (sequence, count) in &copies {
        if *count > 1 {
            assert!(*sequence > acked_at_kill, "only unacknowledged notifications come again");
        }
    }
    println!("redelivered after the restart: {:?}", copies.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>());

    let (health, metrics) = (admin_get(second.admin, "/healthz").await, admin_get(second.admin, "/metrics").await);
    assert_eq!(health, (200, "ok\n".to_owned()));
    for name in [
        "cpis_deliver_delivered_total{sink=\"webhook\"}",
        "cpis_deliver_backlog",
        "cpis_deliver_oldest_undelivered_seconds",
    ] {
        assert!(metrics.1.contains(name), "{name} in {}", metrics.1);
    }

    // SIGTERM: a clean stop with status 0.
    let pid = second.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = tokio::time::timeout(WAIT, second.child.wait()).await.expect("stops on SIGTERM").unwrap();
    assert!(exit.success(), "{exit:?}");
    // The delivery in flight at SIGTERM finished and was acknowledged before the exit.
    assert_eq!(relay_acked(&relay), expected[29].0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_never_exposes_a_partial_file() {
    const COUNT: usize = 120;
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    // A picker polling the directory through the burst: it skips names starting
    // with '.', and every other file it opens must parse whole.
    let picker = {
        let outbox = outbox.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + WAIT * 2;
            let (mut json, mut xml, mut scans) = (BTreeMap::<String, u64>::new(), HashSet::<String>::new(), 0u64);
            while json.len() < COUNT && Instant::now() < deadline {
                scans += 1;
                for entry in std::fs::read_dir(&outbox).unwrap() {
                    let name = entry.unwrap().file_name().into_string().unwrap();
                    if files::is_temporary(&name) || json.contains_key(&name) || xml.contains(&name) {
                        continue;
                    }
                    let content = std::fs::read(outbox.join(&name)).expect("a visible file stays");
                    if name.ends_with(".json") {
                        let body: NotificationBody = serde_json::from_slice(&content)
                            .unwrap_or_else(|error| panic!("{name} is partial: {error}"));
                        json.insert(name, body.sequence);
                    } else {
                        let text = String::from_utf8(content).unwrap();
                        assert!(
                            text.starts_with("<?xml") && text.ends_with("</AccessNotification>\n"),
                            "{name}: {text}"
                        );
                        xml.insert(name);
                    }
                }
                std::thread::yield_now();
            }
            (json, xml, scans)
        })
    };
    let mut settings = settings(&relay, dir.path());
    settings.outbox = Some(outbox.clone());
    settings.outbox_xml = Some(true);
    let agent = RunningAgent::start(&relay, settings);
    // The burst: concurrent searches, so notifications arrive faster than one at a time.
    let numbers: Vec<String> = (0..10).map(nhs).collect();
    relay.load("706", numbers.iter().map(|n| record(n, PlanType::LookedAfter)).collect()).await;
    let mut searches = Vec::new();
    for task in 0..6 {
        let (mut lookup, numbers) = (relay.lookup().await, numbers.clone());
        searches.push(tokio::spawn(async move {
            for i in (task..COUNT).step_by(6) {
                let user = format!("burst-{i}");
                lookup.search(search_request(&numbers[i % numbers.len()], &user, &user)).await.unwrap();
            }
        }));
    }
    for search in searches {
        search.await.unwrap();
    }
    let (json, xml, scans) = picker.await.unwrap();
    assert_eq!(json.len(), COUNT, "every notification reached the outbox");
    println!("the picker scanned the outbox {scans} times");
    // Names sort in sequence order.
    let sequences: Vec<u64> = json.values().copied().collect();
    assert!(sequences.windows(2).all(|pair| pair[0] < pair[1]), "{sequences:?}");
    let expected = relay_notifications(&relay, COUNT).await;
    assert_eq!(sequences, expected.iter().map(|(sequence, _)| *sequence).collect::<Vec<_>>());
    agent.acked_through(expected[COUNT - 1].0).await;
    let xml_now = std::fs::read_dir(&outbox)
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().file_name().to_string_lossy().ends_with(".xml"))
        .count();
    assert_eq!(xml_now, COUNT, "an XML rendering of each ({} seen while polling)", xml.len());
    assert_eq!(relay_acked(&relay), expected[COUNT - 1].0);
    agent.stop().await;
}

fn https_receiver_tls(authority: &cpis_relay::certs::Authority) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let pair = authority.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    let chain = CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(cpis_relay::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

#[tokio::test]
async fn webhook_tls_is_verified_against_the_configured_ca() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (secret, secret_file) = secret(dir.path());
    notify(&relay, 0, 1, 1).await;
    let expected = relay_notifications(&relay, 1).await;
    let webhook_ca = cpis_relay::certs::Authority::generate("LA webhook CA").unwrap();
    let mut receiver = Receiver::start(&relay, &secret, Some(https_receiver_tls(&webhook_ca))).await;
    let (right_ca, wrong_ca) = (dir.path().join("webhook-ca.pem"), dir.path().join("other-ca.pem"));
    std::fs::write(&right_ca, webhook_ca.cert_pem()).unwrap();
    std::fs::write(&wrong_ca, cpis_relay::certs::Authority::generate("another CA").unwrap().cert_pem()).unwrap();
    let url = receiver.url("https", "localhost");
    let https_settings = |ca: &Path| {
        let mut settings = webhook(settings(&relay, dir.path()), url.clone(), &secret_file);
        settings.webhook_ca = Some(ca.to_owned());
        settings
    };

    // A receiver whose certificate the configured CA did not issue is never sent the notification.
    let untrusting = RunningAgent::start(&relay, https_settings(&wrong_ca));
    for _ in 0..2 {
        tokio::time::timeout(WAIT, receiver.handshake_failures.recv()).await.expect("a refused handshake").unwrap();
    }
    untrusting.stop().await;
    assert!(receiver.arrivals.try_recv().is_err(), "nothing sent over an unverified connection");
    assert_eq!(relay_acked(&relay), 0);
    assert!(metric("cpis_deliver_retries_total{sink=\"webhook\"}") >= 1.0);

    let trusting = RunningAgent::start(&relay, https_settings(&right_ca));
    let arrival = receiver.next().await;
    assert!(arrival.signature_valid);
    assert_eq!(arrival.webhook_id, expected[0].1);
    trusting.acked_through(expected[0].0).await;
    trusting.stop().await;
}

#[test]
fn bad_configuration_exits_64_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
            .arg("deliver")
            .args(args)
            .env("CPIS_DELIVER_CERTS_DIR", dir.path())
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, stderr) = run(&["--webhook", "http://la.example.org/hook", "--secret-file", "s"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("webhook") && stderr.contains("https"), "{stderr}");
    let (code, stderr) = run(&["--as", "la-706"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("no sink"), "{stderr}");
    let secret = dir.path().join("short.secret");
    std::fs::write(&secret, "whsec_c2hvcnQ=").unwrap();
    Pki::new().write_dev_layout(dir.path());
    let (code, stderr) =
        run(&["--webhook", "https://la.example.org/hook", "--secret-file", &secret.display().to_string()]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("secret_file"), "{stderr}");
    let config = dir.path().join("deliver.toml");
    std::fs::write(&config, "outbox = \"o\"\nwebhook_timeout_secs = \"soon\"\n").unwrap();
    let (code, stderr) = run(&["--config", &config.display().to_string()]);
    assert_eq!(code, Some(64), "{stderr}");
}
