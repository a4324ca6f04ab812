//! Who may do what: the full role matrix (unscheduled and scheduled care,
//! local authorities, auditors), local authority isolation, and refusal of
//! clients without a certificate from the relay's CA.

use crate::helpers::*;
use cpis_relay::{
    certs::Authority,
    proto::{
        AccessLogRequest, AckRequest, ConsistencyProofRequest, DeleteRequest, ExportRequest, LatestCheckpointRequest,
        NotificationProofsRequest, PlanType, SubscribeRequest, UploadMode, audit_client::AuditClient,
        lookup_client::LookupClient, notifications_client::NotificationsClient, plans_client::PlansClient,
    },
    tls::PemText,
};
use tonic::{Code, Status};

/// Calls one RPC as `identity` with a valid request; the error if any.
async fn call(relay: &TestRelay, identity: &str, rpc: &str, child: &str) -> Result<(), Status> {
    let channel = relay.channel(identity).await;
    // Health and auditor callers name an authority too: the role check refuses them first.
    let ods_code = if identity == "la-855" { "855" } else { "706" };
    match rpc {
        "Lookup.Search" => {
            let mut request = search_request(child, "u", "");
            if identity == "gp-y02" {
                request.care_setting = cpis_relay::proto::CareSetting::GeneralPractice as i32;
            }
            LookupClient::new(channel).search(request).await.map(drop)
        }
        "Plans.Upload" => upload(
            &mut PlansClient::new(channel),
            ods_code,
            UploadMode::Incremental,
            vec![record(child, PlanType::LookedAfter)],
        )
        .await
        .map(drop),
        "Plans.Delete" => PlansClient::new(channel)
            .delete(DeleteRequest { nhs_number: nhs(999), r#type: PlanType::ChildProtection as i32 })
            .await
            .map(drop),
        "Plans.Export" => PlansClient::new(channel).export(ExportRequest {}).await.map(drop),
        "Notifications.Subscribe" => {
            NotificationsClient::new(channel).subscribe(SubscribeRequest { after_sequence: None }).await.map(drop)
        }
        "Notifications.Ack" => NotificationsClient::new(channel).ack(AckRequest { sequence: 0 }).await.map(drop),
        "Audit.AccessLog" => {
            AuditClient::new(channel).access_log(AccessLogRequest { nhs_number: child.to_owned() }).await.map(drop)
        }
        "Audit.LatestCheckpoint" => {
            AuditClient::new(channel).latest_checkpoint(LatestCheckpointRequest {}).await.map(drop)
        }
        "Audit.ConsistencyProof" => AuditClient::new(channel)
            .consistency_proof(ConsistencyProofRequest { old_size: 0, new_size: 0 })
            .await
            .map(drop),
        "Audit.NotificationProofs" => AuditClient::new(channel)
            .notification_proofs(NotificationProofsRequest { sequences: vec![1], tree_size: 0 })
            .await
            .map(drop),
        other => panic!("unknown rpc {other}"),
    }
}

#[tokio::test]
async fn every_role_against_every_rpc() {
    let relay = TestRelay::start().await;
    let child = nhs(1);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let matrix: [(&str, [&str; 7]); 10] = [
        ("Lookup.Search", ["ed-rr8", "gp-y02", "", "", "", "", ""]),
        ("Plans.Upload", ["la-706", "la-855", "", "", "", "", ""]),
        ("Plans.Delete", ["la-706", "la-855", "", "", "", "", ""]),
        ("Plans.Export", ["la-706", "la-855", "", "", "", "", ""]),
        ("Notifications.Subscribe", ["la-706", "la-855", "", "", "", "", ""]),
        ("Notifications.Ack", ["la-706", "la-855", "", "", "", "", ""]),
        ("Audit.AccessLog", ["auditor", "", "", "", "", "", ""]),
        // Checkpoints and consistency proofs hold no personal data: authorities check the log too.
        ("Audit.LatestCheckpoint", ["auditor", "la-706", "la-855", "", "", "", ""]),
        ("Audit.ConsistencyProof", ["auditor", "la-706", "la-855", "", "", "", ""]),
        ("Audit.NotificationProofs", ["la-706", "la-855", "", "", "", "", ""]),
    ];
    for (rpc, allowed) in matrix {
        for identity in ["ed-rr8", "gp-y02", "la-706", "la-855", "auditor"] {
            let result = call(&relay, identity, rpc, &child).await;
            if allowed.contains(&identity) {
                assert!(result.is_ok(), "{identity} must be allowed {rpc}: {result:?}");
            } else {
                let status = result.expect_err(&format!("{identity} must be refused {rpc}"));
                assert_eq!(status.code(), Code::PermissionDenied, "{identity} {rpc}: {status:?}");
            }
        }
    }
}

#[tokio::test]
async fn an_authority_never_sees_another_authoritys_plans_or_notifications() {
    let relay = TestRelay::start().await;
    let islington_child = nhs(1);
    let leicestershire_child = nhs(2);
    let mut plans_706 = relay.plans("la-706").await;
    let mut plans_855 = relay.plans("la-855").await;
    upload(&mut plans_706, "706", UploadMode::Incremental, vec![record(&islington_child, PlanType::ChildProtection)])
        .await
        .unwrap();
    upload(&mut plans_855, "855", UploadMode::Incremental, vec![record(&leicestershire_child, PlanType::LookedAfter)])
        .await
        .unwrap();

    let exported = collect(plans_706.export(ExportRequest {}).await.unwrap().into_inner()).await;
    let exported: Vec<&str> = exported.iter().map(|record| record.nhs_number.as_str()).collect();
    assert_eq!(exported, [islington_child.as_str()]);

    // 706 cannot upload as 855, delete 855's plan, or refresh it away.
    let denied =
        upload(&mut plans_706, "855", UploadMode::Incremental, vec![record(&nhs(3), PlanType::LookedAfter)]).await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
    let deleted = plans_706
        .delete(DeleteRequest { nhs_number: leicestershire_child.clone(), r#type: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 0);
    upload(&mut plans_706, "706", UploadMode::FullRefresh, vec![record(&islington_child, PlanType::ChildProtection)])
        .await
        .unwrap();
    let mut lookup = relay.lookup().await;
    assert!(lookup.search(search_request(&leicestershire_child, "u1", "")).await.unwrap().into_inner().flagged);

    // 706's subscription carries only 706's notifications.
    let mut stream = relay.subscribe("la-706").await;
    lookup.search(search_request(&leicestershire_child, "u2", "")).await.unwrap();
    lookup.search(search_request(&islington_child, "u3", "")).await.unwrap();
    let first = next(&mut stream).await;
    assert_eq!(first.nhs_number, islington_child, "855's notifications never reach 706");
    let mut replay = relay
        .notifications("la-706")
        .await
        .subscribe(SubscribeRequest { after_sequence: Some(0) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut replay).await.notification_id, first.notification_id);

    // 855 acking its own sequence moves only its own cursor.
    let mut notifications_855 = relay.notifications("la-855").await;
    let mut stream_855 = notifications_855.subscribe(SubscribeRequest::default()).await.unwrap().into_inner();
    let theirs = next(&mut stream_855).await;
    assert_eq!(theirs.nhs_number, leicestershire_child);
    notifications_855.ack(AckRequest { sequence: theirs.sequence + 1 }).await.unwrap();
    let mut again_706 = relay.subscribe("la-706").await;
    assert_eq!(next(&mut again_706).await.notification_id, first.notification_id, "706's cursor did not move");
}

fn no_client_certificate(relay: &TestRelay) -> tonic::transport::Endpoint {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(relay.pki.authority.cert_pem()))
        .domain_name("localhost");
    tonic::transport::Endpoint::from_shared(relay.url()).unwrap().tls_config(tls).unwrap()
}

/// A refused handshake shows as a failed connect or a failed first call.
async fn search_over(endpoint: Result<tonic::transport::Channel, impl std::fmt::Debug>) -> Result<(), String> {
    let channel = endpoint.map_err(|error| format!("connect: {error:?}"))?;
    LookupClient::new(channel).search(search_request(&nhs(1), "u", "")).await.map(drop).map_err(|status| {
        assert!(
            matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Internal),
            "a transport failure, not a service answer: {status:?}"
        );
        format!("{status:?}")
    })
}

#[tokio::test]
async fn clients_without_a_certificate_or_from_another_ca_fail_the_handshake() {
    let relay = TestRelay::start().await;
    cpis_relay::tls::install_crypto_provider();
    let no_certificate = search_over(no_client_certificate(&relay).connect().await).await;
    assert!(no_certificate.is_err(), "no client certificate must be refused");

    let stranger = Authority::generate("another CA").unwrap();
    let pair = stranger.issue_client("RR8", "LEEDS TEACHING HOSPITALS NHS TRUST", Some("unscheduled-care")).unwrap();
    // Trusts the relay's CA, but presents a certificate the relay's CA never issued.
    let pem = PemText { ca: relay.pki.authority.cert_pem(), cert: pair.cert_pem, key: pair.key_pem };
    let other_ca = search_over(relay.channel_with(&pem).await).await;
    assert!(other_ca.is_err(), "a certificate from another CA must be refused");

    // The relay is unharmed and still serves a proper client.
    assert!(relay.lookup().await.search(search_request(&nhs(1), "u", "")).await.is_ok());
}

#[tokio::test]
async fn a_certificate_without_a_known_role_is_unauthenticated() {
    let relay = TestRelay::start().await;
    for role in [None, Some("nurse")] {
        let pair = relay.pki.authority.issue_client("RR8", "LEEDS TEACHING HOSPITALS NHS TRUST", role).unwrap();
        let pem = PemText { ca: relay.pki.authority.cert_pem(), cert: pair.cert_pem, key: pair.key_pem };
        let status = LookupClient::new(relay.channel_with(&pem).await.unwrap())
            .search(search_request(&nhs(1), "u", ""))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{role:?}: {status:?}");
        assert!(status.message().contains("OU"), "{}", status.message());
    }
}

#[tokio::test]
async fn health_and_reflection_answer_any_authenticated_caller() {
    let relay = TestRelay::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(relay.channel("la-855").await);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest { service: "cpis.v1.Lookup".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // Both reflection versions list every service (many tools speak only v1alpha).
    macro_rules! listed_services {
        ($version:ident) => {{
            use tonic_reflection::pb::$version::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            };
            let mut reflection = ServerReflectionClient::new(relay.channel("ed-rr8").await);
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut answers =
                reflection.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
            let Some(MessageResponse::ListServicesResponse(list)) = next(&mut answers).await.message_response else {
                panic!("a service list");
            };
            list.service.into_iter().map(|service| service.name).collect::<Vec<String>>()
        }};
    }
    for names in [listed_services!(v1), listed_services!(v1alpha)] {
        for name in
            ["cpis.v1.Lookup", "cpis.v1.Plans", "cpis.v1.Notifications", "cpis.v1.Audit", "grpc.health.v1.Health"]
        {
            assert!(names.iter().any(|listed| listed == name), "{name} in {names:?}");
        }
    }
}
