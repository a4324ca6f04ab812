//! Issue 11, resource bounds per organisation, over real mutual TLS: a
//! local authority's open subscriptions are capped, and an organisation over
//! its search rate is refused with RESOURCE_EXHAUSTED and RetryInfo while
//! others still search.

use crate::helpers::*;
use cpis_relay::{
    proto::{SubscribeRequest, lookup_client::LookupClient},
    relay::RelaySettings,
    tls::PemText,
};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn subscriptions_beyond_the_cap_of_a_local_authority_are_resource_exhausted() {
    let settings = RelaySettings { max_subscriptions_per_la: 2, ..RelaySettings::default() };
    let relay = TestRelay::start_with(StoreChoice::Memory, settings).await;
    let mut la_706 = relay.notifications("la-706").await;
    let first = la_706.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();
    let second = la_706.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();

    let status = la_706.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_subscriptions_per_la"), "{}", status.message());
    // Another authority has its own count.
    let mut la_855 = relay.notifications("la-855").await;
    let _other = la_855.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();

    // Closing one makes room again (the relay sees the stream end when the client resets it).
    drop(first);
    let subscribers = |relay: &TestRelay| {
        relay.relay.hub().positions().iter().find(|p| p.la_ods_code == "706").map_or(0, |p| p.subscribers)
    };
    while subscribers(&relay) != 1 {
        tokio::task::yield_now().await;
    }
    let _third = la_706.subscribe(SubscribeRequest { after_sequence: None }).await.unwrap().into_inner();
    drop(second);
}

#[tokio::test]
async fn an_organisation_over_its_search_rate_gets_resource_exhausted_with_retry_info() {
    // Two searches, then one token every 1,000 s: the third is refused however slow the machine.
    let settings = RelaySettings { search_rate_per_second: 0.001, search_burst: 2, ..RelaySettings::default() };
    let relay = TestRelay::start_with(StoreChoice::Memory, settings).await;
    let mut leeds = relay.lookup().await;
    for n in 0..2 {
        leeds.search(search_request(&nhs(1), "u", &format!("r{n}"))).await.unwrap();
    }
    let status = leeds.search(search_request(&nhs(1), "u", "r2")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status.get_details_retry_info().expect("a RetryInfo detail");
    let delay = retry.retry_delay.expect("a retry delay");
    assert!(delay.as_secs() > 900 && delay.as_secs() <= 1000, "{delay:?}");

    // Another emergency department is not held back by Leeds.
    let pair = relay.pki.authority.issue_client("RXH", "BRIGHTON AND SUSSEX", Some("unscheduled-care")).unwrap();
    let pem = PemText { ca: relay.pki.authority.cert_pem(), cert: pair.cert_pem, key: pair.key_pem };
    let mut brighton = LookupClient::new(relay.channel_with(&pem).await.unwrap());
    brighton.search(search_request(&nhs(1), "u", "b0")).await.unwrap();

    let metrics = admin_get(relay.admin, "/metrics").await.1;
    let limited = metrics
        .lines()
        .find_map(|line| line.strip_prefix("cpis_rate_limited_total{organisation=\"RR8\"} "))
        .unwrap_or_else(|| panic!("cpis_rate_limited_total for RR8 in {metrics}"));
    assert!(limited.trim().parse::<f64>().unwrap() >= 1.0, "{limited}");
}

/// Both doors draw on one organisation's tokens: after its gRPC search, the
/// FHIR door answers 429 with Retry-After.
#[tokio::test]
async fn the_fhir_door_counts_against_the_same_rate_limit_and_says_when_to_retry() {
    use http_body_util::{BodyExt, Full};

    let settings = RelaySettings { search_rate_per_second: 0.001, search_burst: 1, ..RelaySettings::default() };
    let relay = TestRelay::start_fhir_with(settings).await;
    relay.lookup().await.search(search_request(&nhs(1), "u", "grpc")).await.unwrap();

    let client = https_client(&relay.pki.client_pem("ed-rr8"));
    let fhir = relay.fhir.as_ref().unwrap();
    let request = hyper::Request::get(fhir.search_url("CareTeam", &nhs(1)))
        .header("Authorization", format!("Bearer {}", fhir.token("u")))
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((900..=1000).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["issue"][0]["code"], "throttled", "{body:#}");
}

/// The new settings are flags, `CPIS_*` variables and TOML keys; a bad value exits 64 naming its key.
#[test]
fn network_settings_are_configurable_and_bad_values_exit_64() {
    let serve = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"));
        command.arg("serve").args(args).env("CPIS_LOG", "error");
        command.envs(env.iter().copied());
        command.output().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "max_connections = 1000\nsearch_burst = 20\ncrl = [\"/etc/a.crl\"]\n").unwrap();
    let output = serve(
        &["--print-config", "--config", file.to_str().unwrap(), "--max-handshakes", "100", "--crl", "/etc/b.crl"],
        &[
            ("CPIS_SEARCH_RATE_PER_SECOND", "2.5"),
            ("CPIS_MAX_SUBSCRIPTIONS_PER_LA", "4"),
            ("CPIS_CONNECTION_IDLE_TIMEOUT_SECS", "60"),
            ("CPIS_TLS_RELOAD_INTERVAL_SECS", "30"),
        ],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: toml::Table = toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
    for (key, value) in [
        ("max_connections", 1000),
        ("max_handshakes", 100),
        ("search_burst", 20),
        ("max_subscriptions_per_la", 4),
        ("connection_idle_timeout_secs", 60),
        ("tls_reload_interval_secs", 30),
    ] {
        assert_eq!(printed[key].as_integer(), Some(value), "{key}");
    }
    assert_eq!(printed["search_rate_per_second"].as_float(), Some(2.5));
    // A flag replaces the file's list.
    assert_eq!(printed["crl"].as_array().unwrap().len(), 1);
    assert_eq!(printed["crl"][0].as_str(), Some("/etc/b.crl"));
    for (flag, value, key) in [
        ("--max-connections", "0", "max_connections"),
        ("--max-handshakes", "5000", "max_handshakes"),
        ("--connection-idle-timeout-secs", "0", "connection_idle_timeout_secs"),
        ("--max-subscriptions-per-la", "0", "max_subscriptions_per_la"),
        ("--search-rate-per-second", "-1", "search_rate_per_second"),
        ("--search-rate-per-second", "NaN", "search_rate_per_second"),
        ("--search-burst", "0", "search_burst"),
        ("--tls-reload-interval-secs", "0", "tls_reload_interval_secs"),
    ] {
        let output = serve(&["--print-config", &format!("{flag}={value}")], &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{flag} {value}: {stderr}");
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }

    // A CRL that cannot be read, or is not a CRL, stops serve before it listens.
    let pki = Pki::new();
    let certs = dir.path().join("certs");
    pki.write_server_layout(&certs);
    let not_a_crl = dir.path().join("not.crl");
    std::fs::write(&not_a_crl, "hello").unwrap();
    for crl in [dir.path().join("missing.crl"), not_a_crl] {
        let path = |name: &str| certs.join(name).to_str().unwrap().to_owned();
        let output = serve(
            &[
                "--store",
                "memory",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--ca",
                &path("ca.pem"),
                "--cert",
                &path("server.pem"),
                "--key",
                &path("server.key"),
                "--crl",
                crl.to_str().unwrap(),
            ],
            &[],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{}: {stderr}", crl.display());
        assert!(stderr.contains(crl.file_name().unwrap().to_str().unwrap()), "{stderr}");
    }
}
