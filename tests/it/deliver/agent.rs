//! `cpis-relay deliver` against the real relay (in-process, real mutual TLS)
//! and real HTTP(S) receivers on 127.0.0.1:0. The receivers verify every
//! signature with the `standardwebhooks` crate (Standard Webhooks' own Rust
//! library, on hmac-sha256), not with the agent's code. Every wait is on an
//! event: a received request, an acknowledged position, a process exit.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::helpers::agent::*;
use crate::helpers::webhook_receiver::{Receiver, Reply, WAIT, https_receiver_tls, secret};
use crate::helpers::*;
use cpis_relay::{
    deliver::{files, payload::NotificationBody},
    proto::PlanType,
};
use tokio::{net::TcpListener, sync::Notify};

#[tokio::test]
async fn every_notification_arrives_in_order_with_a_valid_signature() {
    let delivery = Delivery::start(4, 12).await;
    let (relay, expected) = (&delivery.relay, &delivery.expected);
    let mut receiver = delivery.receiver().await;

    let agent = RunningAgent::start(relay, delivery.webhook_settings(receiver.url("http", "127.0.0.1")));
    let mut arrived = Vec::new();
    for _ in 0..12 {
        arrived.push(receiver.next().await);
    }
    agent.acked_through(expected[11].0).await;

    let seen: Vec<(u64, String)> = arrived.iter().map(|a| (a.body.sequence, a.body.notification_id.clone())).collect();
    assert_eq!(&seen, expected, "every notification, once, in order");
    for arrival in &arrived {
        assert!(arrival.signature_valid, "signature of {}", arrival.webhook_id);
        assert_eq!(arrival.webhook_id, arrival.body.notification_id);
        assert!(arrival.acked_at_arrival < arrival.body.sequence, "acknowledged before delivery");
        assert_eq!(arrival.body.organisation_ods_code, "RR8");
        assert_eq!(arrival.body.plan_type, "CHILD_PROTECTION");
    }
    assert_eq!(relay_acked(relay), expected[11].0);
    assert_eq!(metric("cpis_deliver_delivered_total{sink=\"webhook\"}"), 12.0);
    assert_eq!(metric("cpis_deliver_dead_lettered_total{sink=\"webhook\"}"), 0.0);
    assert_eq!(metric("cpis_deliver_backlog"), 0.0);
    assert!(agent.status.health().is_ok());
    agent.stop().await;
}

#[tokio::test]
async fn a_500_is_retried_and_acknowledged_only_after_the_200() {
    let delivery = Delivery::start(1, 1).await;
    let (relay, expected) = (&delivery.relay, &delivery.expected);
    let mut receiver = delivery.receiver().await;
    receiver.script([Reply::Status { status: 500, retry_after: None, body: "try later" }]);

    let agent = RunningAgent::start(relay, delivery.webhook_settings(receiver.url("http", "localhost")));
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
    assert_eq!(relay_acked(relay), expected[0].0);
    assert_eq!(metric("cpis_deliver_retries_total{sink=\"webhook\"}"), 1.0);
    assert_eq!(metric("cpis_deliver_delivered_total{sink=\"webhook\"}"), 1.0);
    assert!(receiver.arrivals.try_recv().is_err(), "one delivered copy");
    agent.stop().await;
}

#[tokio::test]
async fn a_429_retry_after_is_honoured() {
    let delivery = Delivery::start(1, 1).await;
    let relay = &delivery.relay;
    let mut receiver = delivery.receiver().await;
    receiver.script([Reply::Status { status: 429, retry_after: Some("1"), body: "" }]);

    let agent = RunningAgent::start(relay, delivery.webhook_settings(receiver.url("http", "127.0.0.1")));
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
    let delivery = Delivery::start(3, 3).await;
    let (relay, dir, expected) = (&delivery.relay, &delivery.dir, &delivery.expected);
    let mut receiver = delivery.receiver().await;
    receiver.script([Reply::Status { status: 400, retry_after: None, body: "{\"error\":\"unknown team\"}" }]);

    let agent = RunningAgent::start(relay, delivery.webhook_settings(receiver.url("http", "127.0.0.1")));
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
        "--log-state-dir",
        &dir.path().join("log-check").display().to_string(),
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
    // Info-level logs of both runs: no NHS number and no searching clinician's name.
    let log = [first.log.await.unwrap(), second.log.await.unwrap()].concat();
    assert!(log.contains("subscribed; delivering"), "{log}");
    for person in (0..5).chain(100..105).map(nhs) {
        assert!(!log.contains(&person), "an NHS number in the log:\n{log}");
    }
    assert!(!log.contains("Dr user-"), "a user's name in the log:\n{log}");
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

#[tokio::test]
async fn webhook_tls_is_verified_against_the_configured_ca() {
    let delivery = Delivery::start(1, 1).await;
    let (relay, dir, expected) = (&delivery.relay, &delivery.dir, &delivery.expected);
    let webhook_ca = cpis_relay::certs::Authority::generate("LA webhook CA").unwrap();
    let mut receiver = Receiver::start(relay, &delivery.secret, Some(https_receiver_tls(&webhook_ca))).await;
    let (right_ca, wrong_ca) = (dir.path().join("webhook-ca.pem"), dir.path().join("other-ca.pem"));
    std::fs::write(&right_ca, webhook_ca.cert_pem()).unwrap();
    std::fs::write(&wrong_ca, cpis_relay::certs::Authority::generate("another CA").unwrap().cert_pem()).unwrap();
    let url = receiver.url("https", "localhost");
    let https_settings = |ca: &Path| {
        let mut settings = delivery.webhook_settings(url.clone());
        settings.webhook_ca = Some(ca.to_owned());
        settings
    };

    // A receiver whose certificate the configured CA did not issue is never sent the notification.
    let untrusting = RunningAgent::start(relay, https_settings(&wrong_ca));
    for _ in 0..2 {
        tokio::time::timeout(WAIT, receiver.handshake_failures.recv()).await.expect("a refused handshake").unwrap();
    }
    untrusting.stop().await;
    assert!(receiver.arrivals.try_recv().is_err(), "nothing sent over an unverified connection");
    assert_eq!(relay_acked(relay), 0);
    assert!(metric("cpis_deliver_retries_total{sink=\"webhook\"}") >= 1.0);

    let trusting = RunningAgent::start(relay, https_settings(&right_ca));
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

#[tokio::test]
async fn with_max_attempts_a_failing_notification_is_parked_and_delivery_goes_on() {
    let delivery = Delivery::start(2, 2).await;
    let (relay, dir, expected) = (&delivery.relay, &delivery.dir, &delivery.expected);
    let mut receiver = delivery.receiver().await;
    let unavailable = || Reply::Status { status: 503, retry_after: None, body: "down" };
    receiver.script([unavailable(), unavailable()]);
    let mut settings = delivery.webhook_settings(receiver.url("http", "127.0.0.1"));
    settings.max_attempts = Some(2);

    let agent = RunningAgent::start(relay, settings);
    let attempts = [receiver.next().await, receiver.next().await, receiver.next().await];
    agent.acked_through(expected[1].0).await;
    assert_eq!(
        attempts.map(|a| (a.body.sequence, a.answered)),
        [(expected[0].0, 503), (expected[0].0, 503), (expected[1].0, 200)]
    );
    let letter = dir.path().join("dead-letter").join(format!("{:020}-{}.json", expected[0].0, expected[0].1));
    let letter: serde_json::Value = serde_json::from_slice(&std::fs::read(letter).unwrap()).unwrap();
    assert_eq!(letter["attempts"], 2);
    assert!(letter["reason"].as_str().unwrap().starts_with("gave up after 2 attempts"), "{letter}");
    agent.stop().await;
}

#[tokio::test]
async fn a_server_that_fails_is_left_for_the_next() {
    let delivery = Delivery::start(1, 1).await;
    let relay = &delivery.relay;
    // A "relay" that accepts connections and closes them at once.
    let broken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broken_url = format!("https://localhost:{}", broken.local_addr().unwrap().port());
    let (refused, mut refusals) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((connection, _)) = broken.accept().await {
            drop(connection);
            let _ = refused.send(());
        }
    });
    let mut receiver = delivery.receiver().await;
    let mut settings = delivery.webhook_settings(receiver.url("http", "127.0.0.1"));
    settings.server = vec![broken_url, relay.url()];

    let agent = RunningAgent::start(relay, settings);
    tokio::time::timeout(WAIT, refusals.recv()).await.expect("the first server is tried").unwrap();
    let arrival = receiver.next().await;
    agent.acked_through(arrival.body.sequence).await;
    assert!(metric("cpis_deliver_reconnects_total") >= 1.0);
    agent.stop().await;
}
