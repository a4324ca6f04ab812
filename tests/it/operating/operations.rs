//! Operating the relay: load shedding, graceful shutdown, the metrics
//! exposition and configuration precedence.

use std::time::Duration;

use crate::helpers::*;
use cpis_relay::proto::{PlanType, UploadMode};
use futures::StreamExt;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_search_limit_calls_are_shed_with_resource_exhausted_not_queued() {
    let relay = TestRelay::start_tuned(|options| options.max_concurrent_searches = 4).await;
    let child = nhs(1);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    // Flagged searches wait for their notification's commit; a stalled disk holds them in flight.
    relay.faults.stall_writes(true);
    let mut held = Vec::new();
    for user in 0..4 {
        let mut lookup = relay.lookup().await;
        let request = search_request(&child, &format!("held-{user}"), "");
        held.push(tokio::spawn(async move { lookup.search(request).await }));
    }
    // Unflagged probes never touch the store: admitted ones answer at once,
    // and once the four held searches fill the limit a probe is shed.
    let mut lookup = relay.lookup().await;
    let shed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match lookup.search(search_request(&nhs(2), "probe", "")).await {
                Ok(_) => continue,
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("a probe is shed once the limit is full");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");

    relay.faults.stall_writes(false);
    for search in held {
        assert!(search.await.unwrap().unwrap().into_inner().flagged);
    }
    assert!(lookup.search(search_request(&nhs(2), "after", "")).await.is_ok());
    let metrics = admin_get(relay.admin, "/metrics").await.1;
    assert!(metrics.contains("cpis_rpc_total{rpc=\"Lookup.Search\",code=\"ResourceExhausted\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flips_readiness_ends_subscriptions_and_lets_in_flight_searches_finish() {
    let mut relay = TestRelay::start().await;
    let child = nhs(1);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut subscription = relay.subscribe("la-706").await;
    let mut lookup = relay.lookup().await;

    let faults = relay.faults.clone();
    let mut stalled = faults.stalled_changes();
    faults.stall_writes(true);
    let in_flight = {
        let mut lookup = lookup.clone();
        let request = search_request(&child, "in-flight", "");
        tokio::spawn(async move { lookup.search(request).await })
    };
    stalled.wait_for(|changes| *changes > 0).await.unwrap();

    relay.begin_shutdown();
    // The open subscription ends cleanly so the authority can reconnect elsewhere.
    let ended = tokio::time::timeout(Duration::from_secs(10), subscription.next()).await;
    let readiness = admin_get(relay.admin, "/readyz").await.0;
    let refused = lookup.search(search_request(&child, "too-late", "")).await;
    // Release the stalled writer before asserting, so a failure cannot hang the test.
    faults.stall_writes(false);
    let ended = ended.expect("the stream ends");
    assert!(ended.is_none(), "a clean end of stream: {ended:?}");
    assert_eq!(readiness, 503);
    assert_eq!(refused.unwrap_err().code(), Code::Unavailable);

    let answered = in_flight.await.unwrap().expect("the in-flight search finishes");
    assert!(answered.into_inner().flagged);
    relay.wait_stopped().await;
}

#[tokio::test]
async fn every_contract_metric_is_exposed_from_start_up() {
    // A store that already knows authority 706: its plans were loaded before a restart.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_server_layout(&dir.path().join("certs"));
    let mut first = start(dir.path(), &[], "warn").await;
    let la = cpis_relay::client::connect(&first.url, &pki.client_pem("la-706"), None).await.unwrap();
    let mut plans = cpis_relay::proto::plans_client::PlansClient::new(la);
    upload(&mut plans, "706", UploadMode::Incremental, vec![record(&nhs(1), PlanType::ChildProtection)]).await.unwrap();
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    // A fresh process: nothing has happened in it yet.
    let mut restarted = start(dir.path(), &[], "warn").await;
    let (status, metrics) = admin_get(restarted.admin, "/metrics").await;
    restarted.child.start_kill().unwrap();
    restarted.child.wait().await.unwrap();
    assert_eq!(status, 200);
    let mut expected: Vec<String> = ["flagged", "unflagged", "invalid", "denied", "error"]
        .iter()
        .map(|outcome| format!("cpis_searches_total{{outcome=\"{outcome}\"}} 0"))
        .collect();
    expected.extend(
        ["all_loaded", "partial", "none_loaded"].map(|status| format!("cpis_uploads_total{{status=\"{status}\"}} 0")),
    );
    expected.extend(
        cpis_relay::telemetry::AUTH_DENIED_REASONS
            .map(|reason| format!("cpis_auth_denied_total{{reason=\"{reason}\"}} 0")),
    );
    expected.extend(
        [
            "cpis_search_duration_seconds_count 0",
            "cpis_notifications_emitted_total 0",
            "cpis_notifications_delivered_total 0",
            "cpis_notification_backlog{la=\"706\"} 0",
            "cpis_notification_oldest_unacked_seconds{la=\"706\"} 0",
            "cpis_subscribers{la=\"706\"} 0",
            "cpis_plans{type=\"CPPI\"} 1",
            "cpis_store_sync_duration_seconds_count",
        ]
        .map(str::to_owned),
    );
    for name in &expected {
        assert!(metrics.lines().any(|line| line.starts_with(name.as_str())), "{name} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn metrics_exposition_has_the_contract_names_and_no_personal_data() {
    let relay = TestRelay::start().await;
    let child = nhs(1);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut stream = relay.subscribe("la-706").await;
    relay.lookup().await.search(search_request(&child, "metrics-user", "")).await.unwrap();
    relay.lookup().await.search(search_request(&nhs(2), "metrics-user", "")).await.unwrap();
    next(&mut stream).await;
    let (status, metrics) = admin_get(relay.admin, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "cpis_searches_total{outcome=\"flagged\"}",
        "cpis_searches_total{outcome=\"unflagged\"}",
        "cpis_search_duration_seconds_bucket{le=\"0.0001\"}",
        "cpis_notifications_emitted_total",
        "cpis_notifications_delivered_total",
        "cpis_notification_backlog{la=\"706\"}",
        "cpis_subscribers{la=\"706\"}",
        "cpis_plans{type=\"CPPI\"}",
        "cpis_uploads_total{status=\"all_loaded\"}",
        "cpis_store_sync_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    for personal in [child.as_str(), nhs(2).as_str(), "Testchild", "2016-04-05", "ZZ1 1ZZ", "metrics-user"] {
        assert!(!metrics.contains(personal), "{personal} appears in /metrics");
    }
    if let Ok(promtool) = which_promtool() {
        let file = relay.dir.path().join("metrics.txt");
        std::fs::write(&file, &metrics).unwrap();
        let output = std::process::Command::new(promtool)
            .arg("check")
            .arg("metrics")
            .stdin(std::fs::File::open(&file).unwrap())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    } else if running_in_ci() {
        panic!("promtool is required in CI (CI=true) to check the exposition format: scripts/setup.sh installs it");
    } else {
        eprintln!(
            "promtool not installed: exposition format not checked by promtool here (scripts/setup.sh installs it)"
        );
    }
}

/// Whether this is CI (`CI=true`, as .ci/run and most CI services set it), where no check may be skipped.
fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| matches!(value.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

fn which_promtool() -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("promtool")).find(|path| path.is_file()))
        .ok_or(())
}

fn serve_command(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"));
    command.arg("serve").args(args).env("CPIS_LOG", "error");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

#[test]
fn configuration_file_then_environment_then_flags_and_bad_values_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:7000\"\nmax_message_bytes = 10000\ngrace_period_secs = 9\n").unwrap();
    let config = file.to_str().unwrap();
    let output = serve_command(
        &["--config", config, "--grace-period-secs", "5", "--print-config"],
        &[("CPIS_LISTEN", "127.0.0.1:7001")],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: toml::Table = toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
    assert_eq!(printed["listen"].as_str(), Some("127.0.0.1:7001"), "environment beats the file");
    assert_eq!(printed["max_message_bytes"].as_integer(), Some(10000), "the file beats the default");
    assert_eq!(printed["grace_period_secs"].as_integer(), Some(5), "a flag beats the file");
    assert_eq!(printed["access_retention_days"].as_integer(), Some(365), "defaults fill the rest");

    /// (file contents, environment, extra flag, the key the error must name)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 5] = [
        ("max_message_bytes = 10\n", &[], "", "max_message_bytes"),
        ("store_cache_mb = 0\n", &[], "", "store_cache_mb"),
        ("listen_adress = \"127.0.0.1:1\"\n", &[], "", "listen_adress"),
        ("", &[("CPIS_LISTEN", "not-an-address")], "", "--listen"),
        ("", &[], "--cert", "cert"),
    ];
    for (contents, env, extra_flag, named) in cases {
        std::fs::write(&file, contents).unwrap();
        let mut args = vec!["--config", config, "--print-config"];
        if !extra_flag.is_empty() {
            args.extend([extra_flag, "server.pem"]);
        }
        let output = serve_command(&args, env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{contents:?} {env:?}: {stderr}");
        assert!(stderr.contains(named), "{named} not named in: {stderr}");
    }
}

#[tokio::test]
async fn top_fits_an_80_by_24_terminal_and_shows_each_authority() {
    let relay = TestRelay::start().await;
    let child = nhs(1);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    relay.lookup().await.search(search_request(&child, "top-user", "")).await.unwrap();
    relay.relay.refresh_notification_gauges().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["top", "--once", "--interval", "0.2", "--admin", &relay.admin.to_string()])
        .output()
        .await
        .unwrap();
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines.len() <= 24, "{} lines:\n{screen}", lines.len());
    assert!(lines.iter().all(|line| line.chars().count() <= 80), "{screen}");
    assert!(screen.contains("searches/s"), "{screen}");
    let la_line = lines.iter().find(|line| line.starts_with("706")).expect("a line for 706");
    let backlog: f64 = la_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(backlog, 1.0, "{la_line}");
}

/// Runs `cpis-relay bench ARGS` with its own development certificates; its JSON report.
async fn bench_json(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .arg("bench")
        .args(args)
        .args(["--certs-dir", certs.to_str().unwrap()])
        .env("CPIS_LOG", "error")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn bench_with_baseline_reports_the_relay_and_the_echo_in_one_run() {
    let report = bench_json(&[
        "--baseline",
        "--json",
        "--duration",
        "0.6",
        "--warmup",
        "0.1",
        "--people",
        "300",
        "--connections",
        "1",
        "--in-flight",
        "2",
    ])
    .await;
    for target in ["relay", "echo"] {
        assert!(report[target]["requests"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report[target]["errors"].as_u64(), Some(0), "{report}");
        assert!(report[target]["p99_us"].as_u64().unwrap() >= report[target]["p50_us"].as_u64().unwrap());
    }
    assert!(report["ratio"]["requests_per_second"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["average_commit_batch"].as_f64().unwrap() >= 1.0, "{report}");
}

#[tokio::test]
async fn bench_delivery_sees_every_answered_search_notified() {
    let report = bench_json(&["--scenario", "delivery", "--rate", "200", "--duration", "0.5", "--people", "300"]).await;
    assert_eq!(report["all_delivered"], true, "{report}");
    assert_eq!(report["answered"], 100, "{report}");
    assert_eq!(report["delivered"], report["answered"], "{report}");
}

#[tokio::test]
async fn bench_refresh_times_full_refresh_uploads_that_load_every_record() {
    let report = bench_json(&["--scenario", "refresh", "--records", "2000"]).await;
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{report}");
    for run in runs {
        assert_eq!(run["records"], 2000, "{report}");
        assert!(run["records_per_second"].as_f64().unwrap() > 0.0, "{report}");
    }
}

/// `serve` with no TLS options on a non-loopback address (gRPC, admin or
/// FHIR door) refuses the development certificates, exit 64, creating none,
/// unless `--dev-certs` (or `CPIS_DEV_CERTS`, or `dev_certs` in the file) says so.
#[tokio::test]
async fn serve_refuses_development_certificates_on_a_non_loopback_address_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let data = dir.path().join("data");
    let (certs_arg, data_arg) = (certs.to_str().unwrap(), data.to_str().unwrap());
    let base = ["--certs-dir", certs_arg, "--data-dir", data_arg, "--store", "embedded"];
    for exposed in [
        ["--listen", "0.0.0.0:0", "--admin-listen", "127.0.0.1:0"],
        ["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"],
        ["--listen", "[::]:0", "--admin-listen", "127.0.0.1:0"],
    ]
    .iter()
    .map(|args| args.to_vec())
    .chain([vec!["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--fhir-listen", "0.0.0.0:0"]])
    {
        for denial in [&[][..], &["--dev-certs", "false"][..]] {
            let args: Vec<&str> =
                base.iter().copied().chain(exposed.iter().copied()).chain(denial.iter().copied()).collect();
            let output = serve_command(&args, &[]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
            assert!(stderr.contains("--ca/--cert/--key") && stderr.contains("--dev-certs"), "{stderr}");
            assert!(!certs.exists(), "{args:?}: development certificates were created");
        }
    }

    // Each layer can allow them; --print-config shows the effective value.
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "dev_certs = true\n").unwrap();
    let print = |args: &[&str], env: &[(&str, &str)]| {
        let output = serve_command(&[args, &["--print-config"][..]].concat(), env);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let printed: toml::Table = toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
        printed["dev_certs"].as_bool().unwrap()
    };
    assert!(!print(&[], &[]), "off by default");
    assert!(print(&["--dev-certs"], &[]));
    assert!(print(&[], &[("CPIS_DEV_CERTS", "1")]));
    assert!(print(&["--config", file.to_str().unwrap()], &[]));
    assert!(!print(&["--config", file.to_str().unwrap(), "--dev-certs", "false"], &[]), "a flag beats the file");

    // Allowed, serve creates and uses them on 0.0.0.0.
    use tokio::io::AsyncBufReadExt;
    let args: Vec<&str> =
        base.iter().copied().chain(["--listen", "0.0.0.0:0", "--admin-listen", "127.0.0.1:0"]).collect();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .arg("serve")
        .args(&args)
        .env("CPIS_LOG", "error")
        .env("CPIS_DEV_CERTS", "true")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.unwrap().unwrap();
    assert!(line.as_deref().is_some_and(|line| line.contains("grpc=0.0.0.0:")), "{line:?}");
    assert!(certs.join("server.pem").exists());
    child.kill().await.unwrap();
}

/// Settings safe only on a development machine are refused at start (exit
/// 64, naming the setting) outside one: the memory store with a listener off
/// loopback (`CPIS_STORE=memory` too), a FHIR door without its own token keys
/// and issuer beside production certificates, and plaintext to a remote PostgreSQL.
#[test]
fn serve_refuses_development_only_settings_in_production_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let certs = dir.path().join("certs");
    pki.write_server_layout(&certs);
    let file = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let (ca, cert, key) = (file("ca.pem"), file("server.pem"), file("server.key"));
    let production = ["--ca", &ca, "--cert", &cert, "--key", &key, "--admin-listen", "127.0.0.1:0"];
    let refused = |args: &[&str], env: &[(&str, &str)], setting: &str| {
        let output = serve_command(&[&production[..], args].concat(), env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(&format!("configuration {setting}:")), "{args:?}: {stderr}");
    };
    refused(&["--listen", "0.0.0.0:0", "--store", "memory"], &[], "store");
    refused(&["--listen", "0.0.0.0:0"], &[("CPIS_STORE", "memory")], "store");
    refused(&["--listen", "127.0.0.1:0", "--fhir-listen", "127.0.0.1:0"], &[], "fhir_jwks");
    refused(
        &["--listen", "127.0.0.1:0", "--fhir-listen", "127.0.0.1:0", "--fhir-jwks", "jwks.json"],
        &[],
        "fhir_issuer",
    );
    refused(&["--listen", "127.0.0.1:0", "--store", "postgres://relay@db.example/cpis?sslmode=disable"], &[], "store");
    refused(
        &["--listen", "127.0.0.1:0", "--fhir-care-settings", "RR8=EMERGENCY_DEPARTMENT,RX9=AMBULANCE"],
        &[],
        "fhir_care_settings",
    );
}

/// `search` has no default accessor: the user's id and name are required.
#[test]
fn search_requires_the_user_id_and_name() {
    for args in [&["--user-name", "Dr A Example"][..], &["--user-id", "u123"][..], &[][..]] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
            .args(["search", "9991234578", "--server", "https://127.0.0.1:1"])
            .args(args)
            .env_remove("CPIS_USER_ID")
            .env_remove("CPIS_USER_NAME")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains("required") && (stderr.contains("--user-id") || stderr.contains("--user-name")),
            "{stderr}"
        );
    }
}
