//! Logs of the real binary: no personal data at info level, in text or
//! JSON; the access log (one line per RPC with its outcome and latency) at
//! debug, and at the default info only for failed or slow calls; SIGTERM
//! drains and exits 0 with a subscription open.

use crate::helpers::*;
use cpis_relay::{
    client,
    proto::{
        PlanType, SubscribeRequest, UploadMode, lookup_client::LookupClient, notifications_client::NotificationsClient,
        plans_client::PlansClient,
    },
};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

/// Runs a relay with `filter`, uploads and searches a person with memorable
/// details, makes one invalid search, stops it with SIGTERM and returns its stderr.
async fn logs_of_a_session(format: &str, filter: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_server_layout(&dir.path().join("certs"));
    let mut server = start(dir.path(), &["--log-format", format], filter).await;
    let child = nhs(4242);
    let mut plan = record(&child, PlanType::ChildProtection);
    plan.given_name = "Zebedee".into();
    plan.family_name = "Quixotic".into();
    plan.date_of_birth = "2013-07-19".into();
    plan.address =
        Some(cpis_relay::proto::Address { lines: vec!["7 Xylophone Mews".into()], postcode: "QQ9 9QQ".into() });
    let la = client::connect(&server.url, &pki.client_pem("la-706"), None).await.unwrap();
    upload(&mut PlansClient::new(la.clone()), "706", UploadMode::Incremental, vec![plan]).await.unwrap();
    let mut subscription =
        NotificationsClient::new(la).subscribe(SubscribeRequest::default()).await.unwrap().into_inner();
    let ed = client::connect(&server.url, &pki.client_pem("ed-rr8"), None).await.unwrap();
    let mut request = search_request(&child, "smartcard-77881", "");
    request.accessor.as_mut().unwrap().name = "Dr Wilhelmina Ostrogoth".into();
    assert!(LookupClient::new(ed.clone()).search(request).await.unwrap().into_inner().flagged);
    assert!(LookupClient::new(ed.clone()).search(search_request(&nhs(4243), "smartcard-77881", "")).await.is_ok());
    let invalid = LookupClient::new(ed).search(search_request("12345", "smartcard-77881", "")).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert_eq!(next(&mut subscription).await.nhs_number, child);

    let pid = server.child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    // The subscription held open across the shutdown ends cleanly.
    assert!(tokio::time::timeout(std::time::Duration::from_secs(30), subscription.next()).await.unwrap().is_none());
    let status = server.child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM drains and exits 0");
    let mut logs = String::new();
    server.stderr.take().unwrap().read_to_string(&mut logs).await.unwrap();
    for personal in [
        child.as_str(),
        nhs(4243).as_str(),
        "Zebedee",
        "Quixotic",
        "2013-07-19",
        "Xylophone",
        "QQ9 9QQ",
        "Wilhelmina",
        "smartcard-77881",
    ] {
        assert!(!logs.contains(personal), "{personal} in {format} logs:\n{logs}");
    }
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_info_only_failed_calls_are_logged_and_without_personal_data() {
    let logs = logs_of_a_session("text", "info").await;
    let access_lines: Vec<&str> = logs.lines().filter(|line| line.contains("rpc=\"")).collect();
    assert!(
        access_lines.iter().any(|line| line.contains("rpc=\"Lookup.Search\"")
            && line.contains("organisation=\"RR8\"")
            && line.contains("role=\"unscheduled-care\"")
            && line.contains("outcome=\"InvalidArgument\"")),
        "the failed search is logged at info:\n{logs}"
    );
    assert!(
        !access_lines.iter().any(|line| line.contains("outcome=\"Ok\"")),
        "calls that succeed quickly cost no log line at info:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_access_log_is_one_json_object_per_call() {
    let logs = logs_of_a_session("json", "info,cpis_relay::rpc=debug").await;
    let mut calls = Vec::new();
    for line in logs.lines().filter(|line| !line.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
        assert!(value.get("level").is_some() && value.get("timestamp").is_some(), "{line}");
        if value["message"] == "rpc" {
            for field in ["rpc", "organisation", "role", "outcome", "latency_ms"] {
                assert!(value.get(field).is_some(), "{field} in {line}");
            }
            calls.push((value["rpc"].as_str().unwrap().to_owned(), value["outcome"].as_str().unwrap().to_owned()));
        }
    }
    for expected in [("Plans.Upload", "Ok"), ("Notifications.Subscribe", "Ok"), ("Lookup.Search", "InvalidArgument")] {
        assert!(
            calls.iter().any(|(rpc, outcome)| (rpc.as_str(), outcome.as_str()) == expected),
            "{expected:?}: {logs}"
        );
    }
    let searches = calls.iter().filter(|(rpc, outcome)| rpc == "Lookup.Search" && outcome == "Ok").count();
    assert_eq!(searches, 2, "one line per successful search:\n{logs}");
}
