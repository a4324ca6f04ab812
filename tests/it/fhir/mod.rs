//! The FHIR R4 door (NHS CP-IS API) over real HTTPS with client certificates:
//! the search shapes against the published examples, errors, tokens,
//! notifications shared with the gRPC door, scheduled care, and that the
//! door is off unless configured. Every resource answered is validated
//! against the published FHIR R4 JSON schema (scripts/fhir-schema.sh).

mod doors;
mod refusals;
mod search_keys;
mod searches;

use std::{path::PathBuf, time::Duration};

use crate::helpers::*;
use bytes::Bytes;
use cpis_relay::{
    auth::token,
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
