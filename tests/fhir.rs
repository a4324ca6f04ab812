//! The FHIR R4 door (NHS CP-IS API) over real HTTPS with client certificates:
//! the search shapes against the published examples, errors, tokens,
//! notifications shared with the gRPC door, scheduled care, and that the
//! door is off unless configured. Every resource answered is validated
//! against the published FHIR R4 JSON schema (scripts/fhir-schema.sh).

mod common;

use std::{path::PathBuf, time::Duration};

use bytes::Bytes;
use common::*;
use cpis_relay::{
    fhir::token,
    proto::{AccessLogRequest, PlanType, audit_client::AuditClient, lookup_client::LookupClient},
};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
const SPINE: &str = "https://fhir.nhs.uk/CodeSystem/England-SpineErrorOrWarningCode";

/// One answer of the door.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    trace_id: Option<String>,
    body: Value,
}

struct Door<'a> {
    relay: &'a TestRelay,
}

impl Door<'_> {
    fn base(&self) -> String {
        format!("https://localhost:{}/cpis/FHIR/R4", self.relay.fhir.as_ref().unwrap().address.port())
    }

    fn token(&self, user_id: &str) -> String {
        self.relay.fhir.as_ref().unwrap().token(user_id)
    }

    /// GET `path_and_query` (after the base) as `identity`, with `headers`.
    async fn get(&self, identity: &str, path_and_query: &str, headers: &[(&str, &str)]) -> Answer {
        self.request("GET", identity, path_and_query, headers).await
    }

    async fn request(&self, method: &str, identity: &str, path_and_query: &str, headers: &[(&str, &str)]) -> Answer {
        let client = https_client(&self.relay.pki.client_pem(identity));
        let mut request = hyper::Request::builder().method(method).uri(format!("{}{path_and_query}", self.base()));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(request.body(Full::new(Bytes::new())).unwrap()),
        )
        .await
        .expect("an answer within 10 s")
        .unwrap();
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).map(|value| value.to_str().unwrap().to_owned());
        let (content_type, trace_id) = (header("content-type").unwrap_or_default(), header("traceid"));
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", String::from_utf8_lossy(&bytes)));
        Answer { status, content_type, trace_id, body }
    }

    /// A search as `identity` with a valid token for `user_id`.
    async fn search(
        &self,
        identity: &str,
        resource: &str,
        nhs_number: &str,
        user_id: &str,
        extra: &[(&str, &str)],
    ) -> Answer {
        let token = format!("Bearer {}", self.token(user_id));
        let mut headers = vec![("Authorization", token.as_str())];
        headers.extend_from_slice(extra);
        self.get(identity, &format!("/{resource}?patient:identifier={NHS_SYSTEM}|{nhs_number}"), &headers).await
    }
}

/// Validates resources against the published FHIR R4 JSON schema (see scripts/fhir-schema.sh).
fn assert_valid_fhir(resources: &[&Value]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let schema = std::env::var_os("FHIR_SCHEMA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/fhir-schema/fhir.schema.json"));
    assert!(
        schema.exists(),
        "the FHIR R4 JSON schema is missing at {}: run `scripts/fhir-schema.sh` (npm and python3 with jsonschema), \
         or set FHIR_SCHEMA to a fhir.schema.json",
        schema.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = resources
        .iter()
        .enumerate()
        .map(|(index, resource)| {
            let path = dir.path().join(format!("{index}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(resource).unwrap()).unwrap();
            path
        })
        .collect();
    let output = std::process::Command::new("python3")
        .arg(root.join("tests/fhir_schema/validate.py"))
        .arg(&schema)
        .args(&files)
        .output()
        .expect("python3 to run tests/fhir_schema/validate.py (run scripts/fhir-schema.sh)");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        !report.contains("No module named 'jsonschema'"),
        "python3 has no jsonschema: run scripts/fhir-schema.sh (or pip install jsonschema)"
    );
    assert!(output.status.success(), "not valid FHIR R4:\n{report}");
}

fn entries<'a>(bundle: &'a Value, mode: &str) -> Vec<&'a Value> {
    bundle["entry"]
        .as_array()
        .map(|entries| entries.iter().filter(|entry| entry["search"]["mode"] == mode).collect())
        .unwrap_or_default()
}

fn assert_searchset(answer: &Answer, self_url: &str, total: u64) {
    assert_eq!(answer.status, 200, "{:#}", answer.body);
    assert_eq!(answer.content_type, "application/fhir+json");
    let bundle = &answer.body;
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], total);
    assert_eq!(bundle["link"][0]["relation"], "self");
    assert_eq!(bundle["link"][0]["url"], self_url);
    assert_eq!(entries(bundle, "match").len() as u64, total);
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let resource = &entry["resource"];
        let full_url = entry["fullUrl"].as_str().unwrap();
        assert!(full_url.starts_with("https://localhost:"), "absolute: {full_url}");
        assert!(
            full_url.ends_with(&format!(
                "/cpis/FHIR/R4/{}/{}",
                resource["resourceType"].as_str().unwrap(),
                resource["id"].as_str().unwrap()
            )),
            "{full_url}"
        );
    }
}

async fn flagged_child_and_mother(relay: &TestRelay) -> (String, String) {
    let (child, mother) = (nhs(1), nhs(2));
    relay
        .load("706", vec![record(&child, PlanType::ChildProtection), record(&mother, PlanType::UnbornChildProtection)])
        .await;
    let mut looked_after = record(&child, PlanType::LookedAfter);
    looked_after.end_date = "2026-03-01".into();
    relay.load("855", vec![looked_after]).await;
    (child, mother)
}

#[tokio::test]
async fn care_team_search_has_the_shape_of_the_cpis_examples() {
    let relay = TestRelay::start_fhir().await;
    let door = Door { relay: &relay };
    let (child, mother) = flagged_child_and_mother(&relay).await;
    let trace_id = "6f1c1b2a-3d4e-4f50-8a9b-0c1d2e3f4a5b";

    let answer = door.search("ed-rr8", "CareTeam", &child, "u1", &[("TraceID", trace_id)]).await;
    assert_searchset(&answer, &format!("{}/CareTeam?patient:identifier={NHS_SYSTEM}|{child}", door.base()), 2);
    assert_eq!(answer.trace_id.as_deref(), Some(trace_id), "TraceID echoed");
    let teams = entries(&answer.body, "match");
    let team = |code: &str| {
        teams
            .iter()
            .map(|entry| &entry["resource"])
            .find(|team| team["category"][0]["coding"][0]["code"] == code)
            .unwrap()
    };
    let protection = team("342191000000101");
    assert_eq!(protection["resourceType"], "CareTeam");
    assert_eq!(protection["category"][0]["coding"][0]["system"], "http://snomed.info/sct");
    assert_eq!(protection["name"], "LONDON BOROUGH OF ISLINGTON");
    assert_eq!(protection["managingOrganization"][0]["identifier"]["system"], ODS_SYSTEM);
    assert_eq!(protection["managingOrganization"][0]["identifier"]["value"], "706");
    assert_eq!(protection["subject"]["identifier"]["system"], NHS_SYSTEM);
    assert_eq!(protection["subject"]["identifier"]["value"], child.as_str());
    assert_eq!(protection["subject"]["display"], "Sam TESTCHILD");
    let islington = cpis_relay::synth::authority("706").unwrap();
    assert_eq!(protection["telecom"][0]["system"], "phone");
    assert_eq!(protection["telecom"][0]["use"], "work");
    assert_eq!(protection["telecom"][0]["value"], islington.office_hours_phone.as_str());
    assert_eq!(protection["telecom"][1]["use"], "mobile");
    assert_eq!(protection["telecom"][1]["value"], islington.emergency_phone.as_str());
    assert_eq!(protection["period"], serde_json::json!({ "start": "2026-01-10" }));
    let looked_after = team("764841000000100");
    assert_eq!(looked_after["managingOrganization"][0]["identifier"]["value"], "855");
    assert_eq!(looked_after["period"], serde_json::json!({ "start": "2026-01-10", "end": "2026-03-01" }));

    // The person's basic details, as the gRPC search gives them, as an included Patient.
    let patients = entries(&answer.body, "include");
    assert_eq!(patients.len(), 1);
    let patient = &patients[0]["resource"];
    assert_eq!(patient["resourceType"], "Patient");
    assert_eq!(protection["subject"]["reference"], format!("Patient/{}", patient["id"].as_str().unwrap()));
    assert_eq!(patient["identifier"][0]["value"], child.as_str());
    assert_eq!(patient["name"][0]["family"], "Testchild");
    assert_eq!(patient["name"][0]["given"][0], "Sam");
    assert_eq!(patient["birthDate"], "2016-04-05");
    assert_eq!(patient["address"][0]["line"], serde_json::json!(["1 Test Street", "Testtown"]));
    assert_eq!(patient["address"][0]["postalCode"], "ZZ1 1ZZ");

    // A UCPI plan carries its expected delivery date in an extension (and a note).
    let unborn = door.search("ed-rr8", "CareTeam", &mother, "u1", &[]).await;
    assert_searchset(&unborn, &format!("{}/CareTeam?patient:identifier={NHS_SYSTEM}|{mother}", door.base()), 1);
    let team = &entries(&unborn.body, "match")[0]["resource"];
    assert_eq!(team["category"][0]["coding"][0]["code"], "818901000000100");
    assert_eq!(team["extension"][0]["url"], cpis_relay::fhir::resources::EXPECTED_DELIVERY_EXTENSION);
    assert_eq!(team["extension"][0]["valueDate"], "2026-09-01");
    assert_eq!(team["note"][0]["text"], "Expected delivery date: 2026-09-01");
    assert_eq!(unborn.trace_id, None, "no TraceID sent, none echoed");

    assert_valid_fhir(&[&answer.body, &unborn.body]);
}

#[tokio::test]
async fn a_person_with_nothing_visible_is_an_empty_searchset() {
    let relay = TestRelay::start_fhir().await;
    let door = Door { relay: &relay };
    let nobody = nhs(7);
    for resource in ["CareTeam", "AuditEvent"] {
        let answer = door.search("ed-rr8", resource, &nobody, "u1", &[]).await;
        assert_searchset(&answer, &format!("{}/{resource}?patient:identifier={NHS_SYSTEM}|{nobody}", door.base()), 0);
        assert!(answer.body.get("entry").is_none(), "{:#}", answer.body);
        assert_valid_fhir(&[&answer.body]);
    }
}

#[tokio::test]
async fn audit_event_search_lists_the_previous_unscheduled_accesses_with_their_practitioner_roles() {
    let relay = TestRelay::start_fhir().await;
    let door = Door { relay: &relay };
    let (child, _) = flagged_child_and_mother(&relay).await;
    relay.lookup().await.search(search_request(&child, "grpc-user", "")).await.unwrap();
    relay.clock.advance(chrono::Duration::minutes(5));
    door.search("ed-rr8", "CareTeam", &child, "fhir-user", &[("TraceID", "lookup-1")]).await;
    relay.clock.advance(chrono::Duration::minutes(5));

    // The same TraceID as the CareTeam search: another resource, so another search (the
    // idempotency key is the TraceID with the user, person and resource), which sees the CareTeam one.
    let answer = door.search("ed-rr8", "AuditEvent", &child, "fhir-user", &[("TraceID", "lookup-1")]).await;
    assert_searchset(&answer, &format!("{}/AuditEvent?patient:identifier={NHS_SYSTEM}|{child}", door.base()), 2);
    let answer = door.search("ed-rr8", "AuditEvent", &child, "fhir-user", &[("TraceID", "lookup-2")]).await;
    assert_searchset(&answer, &format!("{}/AuditEvent?patient:identifier={NHS_SYSTEM}|{child}", door.base()), 2);
    let events: Vec<&Value> = entries(&answer.body, "match").into_iter().map(|entry| &entry["resource"]).collect();
    assert_eq!(events[0]["recorded"], "2026-06-01T09:05:00.000+00:00", "newest first");
    assert_eq!(events[1]["recorded"], "2026-06-01T09:00:00.000+00:00");
    let roles = entries(&answer.body, "include");
    assert_eq!(roles.len(), 2);
    for event in &events {
        assert_eq!(event["resourceType"], "AuditEvent");
        assert_eq!(event["type"]["code"], "access");
        assert_eq!(event["type"]["system"], "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle");
        let patient = &event["agent"][0];
        assert_eq!(patient["type"]["coding"][0]["code"], "PAT");
        assert_eq!(patient["who"]["identifier"]["value"], child.as_str());
        assert_eq!(patient["requestor"], false);
        let requesting = &event["agent"][1];
        assert_eq!(requesting["type"]["coding"][0]["code"], "ASSIGNED");
        assert_eq!(requesting["requestor"], true);
        let reference = requesting["who"]["reference"].as_str().unwrap();
        let role = roles
            .iter()
            .map(|entry| &entry["resource"])
            .find(|role| format!("PractitionerRole/{}", role["id"].as_str().unwrap()) == reference)
            .expect("the requesting agent's PractitionerRole is included");
        assert_eq!(role["organization"]["identifier"]["system"], ODS_SYSTEM);
        assert_eq!(role["organization"]["identifier"]["value"], "RR8");
        assert_eq!(role["organization"]["display"], "LEEDS TEACHING HOSPITALS NHS TRUST");
        assert_eq!(role["code"][0]["coding"][0]["code"], "R8000");
        assert_eq!(event["source"]["observer"]["reference"], reference);
    }
    let newest_role =
        roles.iter().find(|entry| entry["resource"]["practitioner"]["identifier"]["value"] == "fhir-user");
    assert_eq!(newest_role.unwrap()["resource"]["practitioner"]["display"], "Dr fhir-user");
    assert_valid_fhir(&[&answer.body]);
}

#[tokio::test]
async fn every_error_is_an_operation_outcome_with_its_code_and_status() {
    let relay = TestRelay::start_fhir().await;
    let door = Door { relay: &relay };
    let child = nhs(1);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let token = format!("Bearer {}", door.token("u1"));
    let auth = ("Authorization", token.as_str());
    let search = |query: &str| format!("/CareTeam?{query}");
    let valid = format!("patient:identifier={NHS_SYSTEM}|{child}");
    // (what, identity, path, headers, status, Spine code)
    type Case<'a> = (&'a str, &'a str, String, Vec<(&'a str, &'a str)>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "a bad NHS number",
            "ed-rr8",
            search(&format!("patient:identifier={NHS_SYSTEM}|9990000027")),
            vec![auth],
            400,
            Some("INVALID_SEARCH_DATA"),
        ),
        (
            "another identifier system",
            "ed-rr8",
            search(&format!("patient:identifier=https://example.org/id|{child}")),
            vec![auth],
            400,
            Some("INVALID_SEARCH_DATA"),
        ),
        (
            "no identifier system",
            "ed-rr8",
            search(&format!("patient:identifier={child}")),
            vec![auth],
            400,
            Some("INVALID_SEARCH_DATA"),
        ),
        ("no parameter", "ed-rr8", search(""), vec![auth], 400, Some("PRECONDITION_FAILED")),
        (
            "an unknown parameter",
            "ed-rr8",
            search(&format!("{valid}&_count=5")),
            vec![auth],
            400,
            Some("PRECONDITION_FAILED"),
        ),
        (
            "a bad IsUnscheduledAccessEvent",
            "ed-rr8",
            search(&valid),
            vec![auth, ("IsUnscheduledAccessEvent", "maybe")],
            400,
            Some("PRECONDITION_FAILED"),
        ),
        (
            "a malformed TraceID",
            "ed-rr8",
            search(&valid),
            vec![auth, ("TraceID", "has spaces in it")],
            400,
            Some("PRECONDITION_FAILED"),
        ),
        ("no token", "ed-rr8", search(&valid), vec![], 401, Some("ACCESS_DENIED")),
        (
            "not a bearer token",
            "ed-rr8",
            search(&valid),
            vec![("Authorization", "Basic dTpw")],
            401,
            Some("ACCESS_DENIED"),
        ),
        ("a local authority", "la-706", search(&valid), vec![auth], 403, Some("ACCESS_DENIED")),
        ("an auditor", "auditor", "/AuditEvent?".to_owned() + &valid, vec![auth], 403, Some("ACCESS_DENIED")),
        (
            "a scheduled access from an emergency department",
            "ed-rr8",
            search(&valid),
            vec![auth, ("IsUnscheduledAccessEvent", "false")],
            403,
            Some("ACCESS_DENIED"),
        ),
        ("an unknown path", "ed-rr8", "/Patient?".to_owned() + &valid, vec![auth], 404, None),
        ("a read by id", "ed-rr8", "/CareTeam/1".to_owned(), vec![auth], 404, None),
        ("a parameter on metadata", "ed-rr8", "/metadata?x=1".to_owned(), vec![], 400, Some("PRECONDITION_FAILED")),
    ];
    let mut outcomes = Vec::new();
    for (what, identity, path, headers, status, code) in cases {
        let mut headers = headers;
        headers.push(("TraceID", "trace-errors"));
        if what == "a malformed TraceID" {
            headers.pop();
        }
        let answer = door.get(identity, &path, &headers).await;
        assert_eq!(answer.status, status, "{what}: {:#}", answer.body);
        assert_eq!(answer.content_type, "application/fhir+json", "{what}");
        let issue = &answer.body["issue"][0];
        assert_eq!(answer.body["resourceType"], "OperationOutcome", "{what}");
        assert_eq!(issue["severity"], "error", "{what}");
        match code {
            Some(code) => {
                assert_eq!(issue["details"]["coding"][0]["system"], SPINE, "{what}");
                assert_eq!(issue["details"]["coding"][0]["code"], code, "{what}: {:#}", answer.body);
                let issue_code = if code == "ACCESS_DENIED" { "forbidden" } else { "invalid" };
                assert_eq!(issue["code"], issue_code, "{what}");
            }
            None => assert_eq!(issue["code"], "not-found", "{what}"),
        }
        if what != "a malformed TraceID" {
            assert_eq!(answer.trace_id.as_deref(), Some("trace-errors"), "{what}: TraceID echoed on errors too");
        }
        outcomes.push(answer.body);
    }
    let post = door.request("POST", "ed-rr8", &search(&valid), &[auth]).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.body["issue"][0]["code"], "not-supported");
    outcomes.push(post.body);
    let outcomes: Vec<&Value> = outcomes.iter().collect();
    assert_valid_fhir(&outcomes);
}

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
async fn bearer_tokens_are_verified_and_their_claims_required() {
    let relay = TestRelay::start_fhir().await;
    let door = Door { relay: &relay };
    let child = nhs(1);
    let fhir = relay.fhir.as_ref().unwrap();
    let (other_key, _) = token::generate_dev_key().unwrap();
    let mint = |key: &str, change: &dyn Fn(&mut token::DevToken)| {
        let mut claims = dev_token("u1");
        change(&mut claims);
        token::mint(key, &claims).unwrap()
    };
    // An expired token: signed by the right key with an `exp` in the past.
    let expired = {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "iss": token::DEFAULT_ISSUER, "aud": token::DEFAULT_AUDIENCE, "sub": "u1", "name": "Dr u1",
            "iat": now - 7200, "exp": now - 3600,
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = serde_json::from_str::<Value>(&fhir.jwks).unwrap()["keys"][0]["kid"].as_str().map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(fhir.signing_key.as_bytes()).unwrap()).unwrap()
    };
    let unsigned_claims = |claims: Value| {
        // Signed correctly, with claims chosen freely.
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let mut header = Header::new(Algorithm::ES256);
        header.kid = serde_json::from_str::<Value>(&fhir.jwks).unwrap()["keys"][0]["kid"].as_str().map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(fhir.signing_key.as_bytes()).unwrap()).unwrap()
    };
    let exp = jsonwebtoken::get_current_timestamp() + 300;
    let cases = [
        ("a bad signature", mint(&other_key, &|_| {}), "no configured key"),
        (
            "a tampered payload",
            {
                let good = fhir.token("u1");
                let parts: Vec<&str> = good.split('.').collect();
                let other = mint(&fhir.signing_key, &|claims| claims.user_id = "someone-else".into());
                format!("{}.{}.{}", parts[0], other.split('.').nth(1).unwrap(), parts[2])
            },
            "signature",
        ),
        ("an expired token", expired, "expired"),
        ("another audience", mint(&fhir.signing_key, &|claims| claims.audience = "another-service".into()), "audience"),
        ("another issuer", mint(&fhir.signing_key, &|claims| claims.issuer = "someone".into()), "issuer"),
        (
            "no user id",
            unsigned_claims(
                serde_json::json!({"iss": token::DEFAULT_ISSUER, "aud": token::DEFAULT_AUDIENCE, "exp": exp, "name": "Dr X"}),
            ),
            "sub",
        ),
        (
            "no name",
            unsigned_claims(
                serde_json::json!({"iss": token::DEFAULT_ISSUER, "aud": token::DEFAULT_AUDIENCE, "exp": exp, "sub": "u1"}),
            ),
            "name",
        ),
        (
            "no expiry",
            unsigned_claims(
                serde_json::json!({"iss": token::DEFAULT_ISSUER, "aud": token::DEFAULT_AUDIENCE, "sub": "u1", "name": "Dr X"}),
            ),
            "exp",
        ),
        ("not a JWT", "not-a-token".to_owned(), "not a JWT"),
        (
            "a token not valid yet",
            unsigned_claims(serde_json::json!({
                "iss": token::DEFAULT_ISSUER, "aud": token::DEFAULT_AUDIENCE, "exp": exp + 3600, "sub": "u1",
                "name": "Dr X", "nbf": exp + 600,
            })),
            "not valid yet",
        ),
        (
            "an unsigned token (alg none)",
            {
                use base64::Engine;
                let encode = |json: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string());
                let claims = serde_json::json!({
                    "iss": token::DEFAULT_ISSUER, "aud": token::DEFAULT_AUDIENCE, "exp": exp, "sub": "u1", "name": "Dr X",
                });
                format!("{}.{}.", encode(serde_json::json!({"alg": "none", "typ": "JWT"})), encode(claims))
            },
            "not a JWT",
        ),
        (
            "an HS256 token keyed with the public key (algorithm confusion)",
            {
                use jsonwebtoken::{Algorithm, EncodingKey, Header};
                let claims = serde_json::json!({
                    "iss": token::DEFAULT_ISSUER, "aud": token::DEFAULT_AUDIENCE, "exp": exp, "sub": "u1", "name": "Dr X",
                });
                jsonwebtoken::encode(
                    &Header::new(Algorithm::HS256),
                    &claims,
                    &EncodingKey::from_secret(fhir.jwks.as_bytes()),
                )
                .unwrap()
            },
            "no configured key",
        ),
    ];
    for (what, bearer, says) in cases {
        let header = format!("Bearer {bearer}");
        let answer = door
            .get("ed-rr8", &format!("/CareTeam?patient:identifier={NHS_SYSTEM}|{child}"), &[("Authorization", &header)])
            .await;
        assert_eq!(answer.status, 401, "{what}: {:#}", answer.body);
        assert_eq!(answer.body["issue"][0]["details"]["coding"][0]["code"], "ACCESS_DENIED", "{what}");
        let diagnostics = answer.body["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(diagnostics.contains(says), "{what}: {diagnostics}");
    }
    let good = door.search("ed-rr8", "CareTeam", &child, "u1", &[]).await;
    assert_eq!(good.status, 200, "a good token still works");
}

#[tokio::test]
async fn metadata_is_a_capability_statement_of_what_is_served() {
    let relay = TestRelay::start_fhir().await;
    let door = Door { relay: &relay };
    let answer = door.get("ed-rr8", "/metadata", &[("TraceID", "m-1")]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "application/fhir+json");
    assert_eq!(answer.trace_id.as_deref(), Some("m-1"));
    let statement = &answer.body;
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    assert_eq!(statement["rest"][0]["mode"], "server");
    let resources: Vec<(&str, &str)> = statement["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|resource| (resource["type"].as_str().unwrap(), resource["interaction"][0]["code"].as_str().unwrap()))
        .collect();
    assert_eq!(resources, [("CareTeam", "search-type"), ("AuditEvent", "search-type")]);
    assert_valid_fhir(&[statement]);
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

#[tokio::test]
async fn fhir_searches_count_against_the_relays_search_limit() {
    // No search permits at all: every search, through either door, is shed at once.
    let relay = TestRelay::start_fhir_tuned(|options| options.max_concurrent_searches = 0).await;
    let door = Door { relay: &relay };
    let answer = door.search("ed-rr8", "CareTeam", &nhs(1), "u1", &[]).await;
    assert_eq!(answer.status, 429, "{:#}", answer.body);
    assert_eq!(answer.body["issue"][0]["code"], "throttled");
    let status = relay.lookup().await.search(search_request(&nhs(1), "u1", "")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(door.get("ed-rr8", "/metadata", &[]).await.status, 200, "metadata is not a search");
    assert_valid_fhir(&[&answer.body]);
}
