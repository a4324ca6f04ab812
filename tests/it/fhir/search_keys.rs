//! What a FHIR search is recorded and keyed by, over real HTTPS with client
//! certificates: its care setting (the bearer token's claim, else the
//! organisation's configured setting, else the search is refused and
//! notifies nobody; it used to be recorded as an emergency department's,
//! whatever the caller was), and its idempotency key (the TraceID with the
//! user, person and resource: a reused TraceID suppresses no other search's
//! notification, and is counted).

use std::time::Duration;

use crate::helpers::*;
use bytes::Bytes;
use cpis_relay::{
    auth::token,
    model::CareSetting,
    proto::{self, PlanType},
    tls::PemText,
};
use http_body_util::{BodyExt, Full};

/// An ambulance service: unscheduled care, with no care setting configured in the test door.
fn ambulance(pki: &Pki) -> PemText {
    let pair = pki.authority.issue_client("RX9", "CPIS TEST AMBULANCE SERVICE", Some("unscheduled-care")).unwrap();
    PemText { ca: pki.authority.cert_pem(), cert: pair.cert_pem, key: pair.key_pem }
}

/// A CareTeam search as `pem` with a token for `user_id` claiming `care_setting`; the HTTP status.
async fn search(
    relay: &TestRelay,
    pem: &PemText,
    nhs_number: &str,
    user_id: &str,
    care_setting: Option<CareSetting>,
) -> (u16, String) {
    search_as(relay, pem, "CareTeam", nhs_number, user_id, care_setting, None).await
}

/// A search of `resource`, with a TraceID when given; the HTTP status and body.
async fn search_as(
    relay: &TestRelay,
    pem: &PemText,
    resource: &str,
    nhs_number: &str,
    user_id: &str,
    care_setting: Option<CareSetting>,
    trace_id: Option<&str>,
) -> (u16, String) {
    let fhir = relay.fhir.as_ref().unwrap();
    let claims = token::DevToken { care_setting, ..dev_token(user_id) };
    let bearer = format!("Bearer {}", token::mint(&fhir.signing_key, &claims).unwrap());
    let client = https_client(pem);
    let mut request = hyper::Request::get(fhir.search_url(resource, nhs_number)).header("Authorization", bearer);
    if let Some(trace_id) = trace_id {
        request = request.header("TraceID", trace_id);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request)).await.unwrap().unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_care_setting_comes_from_the_token_or_the_organisation_and_an_unknown_one_is_refused() {
    let relay = TestRelay::start_fhir().await;
    let child = nhs(1);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut notifications = relay.subscribe("la-706").await;
    let crew = ambulance(&relay.pki);

    // No claim and nothing configured for RX9: refused, recorded nowhere, notifying nobody.
    let (status, body) = search(&relay, &crew, &child, "paramedic-1", None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("care setting") && body.contains("RX9"), "{body}");

    // The token says where its user works.
    let (status, body) = search(&relay, &crew, &child, "paramedic-2", Some(CareSetting::AmbulanceService)).await;
    assert_eq!(status, 200, "{body}");
    let notified = next(&mut notifications).await;
    assert_eq!(notified.accessor.unwrap().user_id, "paramedic-2", "the refused search notified nobody");
    assert_eq!(notified.care_setting, proto::CareSetting::AmbulanceService as i32);

    // RR8 is configured as an emergency department; a token's claim is more precise and wins.
    let ed = relay.pki.client_pem("ed-rr8");
    relay.clock.advance(chrono::Duration::minutes(1));
    assert_eq!(search(&relay, &ed, &child, "clinician-1", None).await.0, 200);
    assert_eq!(next(&mut notifications).await.care_setting, proto::CareSetting::EmergencyDepartment as i32);
    relay.clock.advance(chrono::Duration::minutes(1));
    assert_eq!(search(&relay, &ed, &child, "midwife-1", Some(CareSetting::MaternityUnit)).await.0, 200);
    assert_eq!(next(&mut notifications).await.care_setting, proto::CareSetting::MaternityUnit as i32);

    // A claimed setting that does not fit the search (a scheduled one for an unscheduled search) is refused.
    let (status, body) = search(&relay, &crew, &child, "paramedic-3", Some(CareSetting::GeneralPractice)).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_reused_trace_id_suppresses_only_a_retry_of_the_same_search_and_is_counted() {
    let relay = TestRelay::start_fhir().await;
    let (child, sibling) = (nhs(1), nhs(2));
    relay
        .load("706", vec![record(&child, PlanType::ChildProtection), record(&sibling, PlanType::ChildProtection)])
        .await;
    let mut notifications = relay.subscribe("la-706").await;
    let ed = relay.pki.client_pem("ed-rr8");
    let reused = |metrics: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("cpis_fhir_trace_id_reused_total ")?.trim().parse().ok())
            .expect("the reuse counter is exposed")
    };
    let before = reused(&cpis_relay::telemetry::metrics().render());
    let searches = [
        ("CareTeam", &child, "u1"),
        ("CareTeam", &child, "u1"), // a retry: notifies nobody again
        ("CareTeam", &child, "u2"),
        ("CareTeam", &sibling, "u1"),
        ("AuditEvent", &child, "u1"),
    ];
    for (resource, person, user) in searches {
        let (status, body) = search_as(&relay, &ed, resource, person, user, None, Some("same-trace-id")).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut notified = Vec::new();
    for _ in 0..4 {
        let notification = next(&mut notifications).await;
        notified.push((notification.nhs_number, notification.accessor.unwrap().user_id));
    }
    assert_eq!(
        notified,
        [
            (child.clone(), "u1".to_owned()),
            (child.clone(), "u2".to_owned()),
            (sibling.clone(), "u1".to_owned()),
            (child.clone(), "u1".to_owned()),
        ],
        "every search but the retry notifies"
    );
    assert_eq!(reused(&cpis_relay::telemetry::metrics().render()) - before, 3.0, "three other searches reused it");
}
