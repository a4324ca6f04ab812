//! The searches' answers against the published CP-IS examples: CareTeam and
//! AuditEvent searchsets and the CapabilityStatement, each validated against
//! the FHIR R4 JSON schema.

use super::*;

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
