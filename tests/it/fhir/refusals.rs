//! Refusals: every error as an OperationOutcome with its status and Spine
//! code, bearer tokens verified and their claims required, and the search
//! limit shared with the gRPC door.

use super::*;

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
