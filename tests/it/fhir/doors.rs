//! The door beside gRPC: its searches notify and are listed as gRPC
//! searches are, scheduled reads are silent and audited, and `serve` opens
//! the door only when configured.

use super::*;

#[tokio::test]
async fn a_fhir_search_notifies_like_a_grpc_search_and_is_listed_in_grpc_previous_accesses() {
    let relay = TestRelay::start_fhir().await;
    let door = Door { relay: &relay };
    let child = nhs(1);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut notifications = relay.subscribe("la-706").await;

    let answer = door.search("ed-rr8", "CareTeam", &child, "fhir-user", &[("TraceID", "t-1")]).await;
    assert_eq!(answer.status, 200);
    let notified = next(&mut notifications).await;
    assert_eq!(notified.nhs_number, child);
    assert_eq!(notified.organisation_ods_code, "RR8");
    assert_eq!(notified.organisation_name, "LEEDS TEACHING HOSPITALS NHS TRUST");
    let accessor = notified.accessor.unwrap();
    assert_eq!(
        (accessor.user_id.as_str(), accessor.name.as_str(), accessor.role_code.as_str()),
        ("fhir-user", "Dr fhir-user", "R8000")
    );
    assert_eq!(notified.care_setting, cpis_relay::proto::CareSetting::EmergencyDepartment as i32);

    // The same search with the same TraceID again (a retry): no second notification.
    door.search("ed-rr8", "CareTeam", &child, "fhir-user", &[("TraceID", "t-1")]).await;
    let response = relay.lookup().await.search(search_request(&child, "grpc-user", "")).await.unwrap().into_inner();
    let next_one = next(&mut notifications).await;
    assert_eq!(next_one.accessor.unwrap().user_id, "grpc-user", "the gRPC search's, not a duplicate");
    assert_eq!(next_one.sequence, notified.sequence + 1);

    let listed: Vec<&str> =
        response.previous_accesses.iter().map(|access| access.accessor.as_ref().unwrap().user_id.as_str()).collect();
    assert_eq!(listed, ["fhir-user"]);
}

#[tokio::test]
async fn scheduled_reads_notify_nobody_and_the_auditor_sees_them_marked_scheduled() {
    let relay = TestRelay::start_fhir().await;
    let door = Door { relay: &relay };
    let child = nhs(1);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut notifications = relay.subscribe("la-706").await;

    // A GP practice over FHIR, saying so; over FHIR without the header; and over gRPC.
    let scheduled =
        door.search("gp-y02", "CareTeam", &child, "gp-user", &[("IsUnscheduledAccessEvent", "false")]).await;
    assert_eq!(scheduled.status, 200, "{:#}", scheduled.body);
    assert_eq!(scheduled.body["total"], 1, "scheduled care sees the flag");
    relay.clock.advance(chrono::Duration::minutes(1));
    let unsaid = door.search("gp-y02", "CareTeam", &child, "gp-user-2", &[]).await;
    assert_eq!(unsaid.status, 200);
    relay.clock.advance(chrono::Duration::minutes(1));
    let mut gp_grpc = search_request(&child, "gp-user-3", "");
    gp_grpc.care_setting = cpis_relay::proto::CareSetting::GeneralPractice as i32;
    let gp_answer = LookupClient::new(relay.channel("gp-y02").await).search(gp_grpc).await.unwrap().into_inner();
    assert!(gp_answer.flagged);
    relay.clock.advance(chrono::Duration::minutes(1));

    // An emergency department's search: the first notification 706 receives is its.
    let ed_answer = relay.lookup().await.search(search_request(&child, "ed-user", "")).await.unwrap().into_inner();
    let first = next(&mut notifications).await;
    assert_eq!(first.accessor.unwrap().user_id, "ed-user", "scheduled reads notify nobody");
    assert!(ed_answer.previous_accesses.is_empty(), "scheduled reads are not previous accesses");
    relay.clock.advance(chrono::Duration::minutes(1));
    let audit_events = door.search("ed-rr8", "AuditEvent", &child, "ed-user-2", &[]).await;
    assert_eq!(audit_events.body["total"], 1, "only the emergency department's access: {:#}", audit_events.body);

    let log = collect(
        AuditClient::new(relay.channel("auditor").await)
            .access_log(AccessLogRequest { nhs_number: child.clone() })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let seen: Vec<(String, bool, String)> = log
        .iter()
        .map(|access| {
            (access.accessor.as_ref().unwrap().user_id.clone(), access.scheduled, access.organisation_ods_code.clone())
        })
        .collect();
    assert_eq!(
        seen[..4],
        [
            ("gp-user".to_owned(), true, "Y02999".to_owned()),
            ("gp-user-2".to_owned(), true, "Y02999".to_owned()),
            ("gp-user-3".to_owned(), true, "Y02999".to_owned()),
            ("ed-user".to_owned(), false, "RR8".to_owned()),
        ]
    );
    assert_eq!(log[0].care_setting, cpis_relay::proto::CareSetting::GeneralPractice as i32);
}

#[tokio::test]
async fn the_fhir_door_is_off_unless_configured_and_serve_opens_it_with_a_jwks_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_server_layout(&dir.path().join("certs"));
    let mut plain = start(dir.path(), &["--store", "memory"], "warn").await;
    assert!(!plain.listening.contains("fhir="), "{}", plain.listening);
    plain.child.kill().await.unwrap();

    // TestRelay without the door binds no FHIR listener either.
    assert!(TestRelay::start().await.fhir.is_none());

    let (signing_key, jwks) = token::generate_dev_key().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks).unwrap();
    let mut with_door = start(
        dir.path(),
        &[
            "--store",
            "memory",
            "--fhir-listen",
            "127.0.0.1:0",
            "--fhir-jwks",
            jwks_path.to_str().unwrap(),
            "--fhir-audience",
            "cpis-test",
            "--fhir-issuer",
            "https://idp.test",
            "--fhir-care-settings",
            "RR8=EMERGENCY_DEPARTMENT,Y02999=GENERAL_PRACTICE",
        ],
        "info",
    )
    .await;
    let address: std::net::SocketAddr = with_door
        .listening
        .split_whitespace()
        .find_map(|word| word.strip_prefix("fhir="))
        .expect("a fhir= address")
        .parse()
        .unwrap();
    let https = https_client(&pki.client_pem("ed-rr8"));
    let mut claims = dev_token("u1");
    claims.audience = "cpis-test".into();
    claims.issuer = "https://idp.test".into();
    let bearer = format!("Bearer {}", token::mint(&signing_key, &claims).unwrap());
    let request = hyper::Request::get(format!(
        "https://localhost:{}/cpis/FHIR/R4/CareTeam?patient:identifier={NHS_SYSTEM}|{}",
        address.port(),
        nhs(3)
    ))
    .header("Authorization", bearer)
    .body(Full::new(Bytes::new()))
    .unwrap();
    let response = https.request(request).await.unwrap();
    assert_eq!(response.status(), 200);

    // A refused request is logged at info on a span carrying its TraceID, and no NHS number.
    let request = hyper::Request::get(format!(
        "https://localhost:{}/cpis/FHIR/R4/CareTeam?patient:identifier={NHS_SYSTEM}|{}",
        address.port(),
        nhs(3)
    ))
    .header("TraceID", "trace-in-the-log-1")
    .body(Full::new(Bytes::new()))
    .unwrap();
    assert_eq!(https.request(request).await.unwrap().status(), 401);
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(with_door.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("fhir request") {
                return line;
            }
        }
        panic!("the relay's stderr ended without the request's line");
    })
    .await
    .expect("the request's log line within 10 s");
    assert!(line.contains("trace-in-the-log-1") && line.contains("401"), "{line}");
    assert!(!line.contains(&nhs(3)), "no NHS number at info: {line}");
    with_door.child.kill().await.unwrap();
}

/// A TraceID of the longest accepted length: with the resource in front it
/// was longer than a request id may be, and the emergency search was refused.
/// Now the key is the TraceID's hash, so the search answers, notifies, and a
/// retry with the same TraceID is still recognised (no second notification).
#[tokio::test]
async fn the_longest_accepted_trace_id_works_and_its_retry_notifies_once() {
    let relay = TestRelay::start_fhir().await;
    let door = Door { relay: &relay };
    let child = nhs(1);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut notifications = relay.subscribe("la-706").await;
    let (long, other) = ("t".repeat(200), format!("{}u", "t".repeat(199)));
    for trace_id in [&long, &long, &other] {
        let answer = door.search("ed-rr8", "CareTeam", &child, "fhir-user", &[("TraceID", trace_id)]).await;
        assert_eq!(answer.status, 200, "{:#}", answer.body);
        assert_eq!(answer.trace_id.as_deref(), Some(trace_id.as_str()), "the TraceID is kept and echoed");
    }
    let first = next(&mut notifications).await;
    let second = next(&mut notifications).await;
    relay.lookup().await.search(search_request(&child, "grpc-user", "")).await.unwrap();
    let third = next(&mut notifications).await;
    let users = [first, second, third].map(|notification| notification.accessor.unwrap().user_id);
    assert_eq!(users, ["fhir-user", "fhir-user", "grpc-user"], "the two TraceIDs once each: the retry not again");
}
