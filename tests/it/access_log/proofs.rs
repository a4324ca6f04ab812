//! The access log over real mutual TLS (issue 20): an auditor's read is an
//! access of the log (kind audit) that notifies no one and is never listed
//! to a clinician, and is refused when it cannot be stored; checkpoints,
//! inclusion and consistency proofs fetched from the relay verify with an
//! independent implementation (tests/transparency/verify_proof.py: Python's
//! `cryptography` and a few lines of RFC 6962), and a forged proof does not.

use crate::helpers;
use cpis_relay::proto::{
    AccessLogRequest, AccessRecord, CareSetting, ConsistencyProofRequest, InclusionProofRequest,
    LatestCheckpointRequest, PlanType, lookup_client::LookupClient,
};
use helpers::*;
use serde_json::{Value, json};
use tonic::Code;

/// Runs the Python verifier on `request`; (verified, what it printed).
fn python_verifies(request: &Value) -> (bool, String) {
    use std::io::Write;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transparency/verify_proof.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup.sh installs it with cryptography)");
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "python3 has no `cryptography`: run scripts/setup.sh (or apt-get install python3-cryptography): {stderr}"
    );
    (output.status.success(), format!("{}{stderr}", String::from_utf8_lossy(&output.stdout)))
}

/// The access fields the Python verifier re-encodes the leaf from.
fn access_fields(record: &AccessRecord, nhs_number: &str, request_id: &str) -> Value {
    let at = record.accessed_at.as_ref().unwrap();
    let accessor = record.accessor.clone().unwrap_or_default();
    json!({
        "kind": if record.scheduled { 1 } else { 0 },
        "access_id": record.access_id,
        "accessed_at_micros": at.seconds * 1_000_000 + i64::from(at.nanos / 1000),
        "nhs_number": nhs_number,
        "organisation_ods_code": record.organisation_ods_code,
        "organisation_name": record.organisation_name,
        "care_setting": CareSetting::try_from(record.care_setting).unwrap().as_str_name(),
        "user_id": accessor.user_id,
        "name": accessor.name,
        "role_code": accessor.role_code,
        "request_id": request_id,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_from_a_real_relay_verify_with_an_independent_implementation() {
    let relay = TestRelay::start().await;
    let child = nhs(2001);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut audit = relay.audit().await;
    relay.lookup().await.search(search_request(&child, "u-first", "req-1")).await.unwrap();
    let first = audit.latest_checkpoint(LatestCheckpointRequest {}).await.unwrap().into_inner();
    assert_eq!(first.tree_size, 1);
    let mut gp = LookupClient::new(relay.channel("gp-y02").await);
    let mut scheduled = search_request(&child, "u-gp", "req-2");
    scheduled.care_setting = CareSetting::GeneralPractice as i32;
    gp.search(scheduled).await.unwrap();
    relay.lookup().await.search(search_request(&child, "u-third", "req-3")).await.unwrap();

    let trail =
        collect(audit.access_log(AccessLogRequest { nhs_number: child.clone() }).await.unwrap().into_inner()).await;
    assert_eq!(trail.len(), 3, "the auditor's own read is not in the trail it reads");
    let latest = audit.latest_checkpoint(LatestCheckpointRequest {}).await.unwrap().into_inner();
    assert_eq!(latest.tree_size, 4, "three searches and the auditor's read");

    // The manual clock stands still: the trail's order among equal times is by id, so match by user.
    for record in &trail {
        let request_id = match record.accessor.as_ref().unwrap().user_id.as_str() {
            "u-first" => "req-1",
            "u-gp" => "req-2",
            _ => "req-3",
        };
        let proof = audit
            .inclusion_proof(InclusionProofRequest { access_id: record.access_id.clone() })
            .await
            .unwrap()
            .into_inner();
        let checkpoint = proof.checkpoint.clone().unwrap();
        let request = json!({
            "verifier_key": checkpoint.verifier_key,
            "checkpoint": checkpoint.note,
            "inclusion": {
                "leaf_index": proof.leaf_index,
                "leaf": hex(&proof.leaf),
                "audit_path": proof.audit_path.iter().map(|hash| hex(hash)).collect::<Vec<_>>(),
                "access": access_fields(record, &child, request_id),
            },
        });
        let (verified, said) = python_verifies(&request);
        assert!(verified, "{request_id}: {said}");

        // A forged path, a changed access, or another key: each is refused.
        let mut forged = request.clone();
        forged["inclusion"]["leaf_index"] = json!((proof.leaf_index + 1) % checkpoint.tree_size);
        if checkpoint.tree_size > 1 {
            assert!(!python_verifies(&forged).0, "{request_id}: a moved leaf verified");
        }
        let mut changed = request.clone();
        changed["inclusion"]["access"]["organisation_name"] = json!("Elsewhere");
        let (verified, said) = python_verifies(&changed);
        assert!(!verified && said.contains("not the encoding"), "{said}");
    }

    // Consistency from the first checkpoint (whose root the auditor kept) to the latest.
    let consistency = audit
        .consistency_proof(ConsistencyProofRequest { old_size: first.tree_size, new_size: latest.tree_size })
        .await
        .unwrap()
        .into_inner();
    let request = json!({
        "verifier_key": latest.verifier_key,
        "checkpoint": latest.note,
        "consistency": {
            "old_size": first.tree_size,
            "old_root": hex(&first.root_hash),
            "hashes": consistency.hashes.iter().map(|hash| hex(hash)).collect::<Vec<_>>(),
        },
    });
    let (verified, said) = python_verifies(&request);
    assert!(verified, "{said}");
    let mut forged = request.clone();
    forged["consistency"]["old_root"] = json!(hex(&[7u8; 32]));
    assert!(!python_verifies(&forged).0, "a wrong old root verified");
    let mut resigned = request.clone();
    resigned["checkpoint"] = json!(latest.note.replacen(&format!("\n{}\n", latest.tree_size), "\n3\n", 1));
    let (verified, said) = python_verifies(&resigned);
    assert!(!verified && said.contains("signature"), "an edited checkpoint verified: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditors_read_is_logged_silent_and_never_a_previous_access() {
    let relay = TestRelay::start().await;
    let child = nhs(2002);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut lookup = relay.lookup().await;
    lookup.search(search_request(&child, "u1", "")).await.unwrap();
    let last_sequence = |relay: &TestRelay| {
        relay.relay.hub().positions().iter().find(|la| la.la_ods_code == "706").map(|la| la.last_sequence)
    };
    let backlog = last_sequence(&relay);
    assert_eq!(backlog, Some(1));
    let mut audit = relay.audit().await;
    collect(audit.access_log(AccessLogRequest { nhs_number: child.clone() }).await.unwrap().into_inner()).await;

    let keeper = relay.relay.log_keeper().expect("the embedded store keeps a log");
    let reads = keeper.log().audit_reads_of(child.parse().unwrap()).unwrap();
    assert_eq!(reads.len(), 1, "the read is stored");
    let (position, read) = &reads[0];
    assert_eq!((*position, read.organisation_ods_code.as_str()), (1, "X26"), "after the search, as the auditor");
    assert_eq!(last_sequence(&relay), backlog, "no one was notified");

    let answer = lookup.search(search_request(&child, "u2", "")).await.unwrap().into_inner();
    assert_eq!(answer.previous_accesses.len(), 1, "only the clinician's search is listed");
    assert_eq!(answer.previous_accesses[0].organisation_ods_code, "RR8");

    // Refused, with nothing returned, when the read cannot be stored.
    relay.faults.fail_writes(true);
    let refused = audit.access_log(AccessLogRequest { nhs_number: child.clone() }).await.map(drop).unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    relay.faults.fail_writes(false);
    assert_eq!(keeper.log().audit_reads_of(child.parse().unwrap()).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_are_for_auditors_only_and_bad_arguments_name_their_field() {
    let relay = TestRelay::start().await;
    let mut as_ed = cpis_relay::proto::audit_client::AuditClient::new(relay.channel("ed-rr8").await);
    let denied = as_ed.latest_checkpoint(LatestCheckpointRequest {}).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = as_ed.inclusion_proof(InclusionProofRequest { access_id: "x".into() }).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let mut audit = relay.audit().await;
    let bad = audit.inclusion_proof(InclusionProofRequest { access_id: "not-a-uuid".into() }).await.unwrap_err();
    assert_eq!(field_violation(&bad).0, "access_id");
    let unknown = uuid::Uuid::from_u128(7).to_string();
    let bad = audit.inclusion_proof(InclusionProofRequest { access_id: unknown }).await.unwrap_err();
    assert_eq!(field_violation(&bad).0, "access_id");
    let bad = audit.consistency_proof(ConsistencyProofRequest { old_size: 5, new_size: 2 }).await.unwrap_err();
    assert_eq!(field_violation(&bad).0, "old_size");
    let bad = audit.consistency_proof(ConsistencyProofRequest { old_size: 0, new_size: 99 }).await.unwrap_err();
    assert_eq!(field_violation(&bad).0, "new_size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_access_report_round_trips_and_its_proofs_verify_independently() {
    let relay = TestRelay::start().await;
    let child = nhs(2003);
    let mut plan = record(&child, PlanType::ChildProtection);
    plan.given_name = "Sam <b>& Co</b>".into();
    let loaded = relay.load("706", vec![plan.clone()]).await;
    assert_eq!(loaded.loaded, 1, "{loaded:?}");
    // The same plan again is no change; a new address is one; a second plan, loaded then deleted.
    let minute_later = || relay.clock.advance(chrono::Duration::minutes(1));
    minute_later();
    relay.load("706", vec![plan.clone()]).await;
    plan.address = Some(cpis_relay::proto::Address { lines: vec!["2 New Road".into()], postcode: "LS2 2BB".into() });
    let looked_after = record(&child, PlanType::LookedAfter);
    minute_later();
    let loaded = relay.load("706", vec![plan, looked_after]).await;
    assert_eq!(loaded.loaded, 2, "{loaded:?}");
    minute_later();
    let deleted = relay
        .plans("la-706")
        .await
        .delete(cpis_relay::proto::DeleteRequest { nhs_number: child.clone(), r#type: PlanType::LookedAfter as i32 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    relay.lookup().await.search(search_request(&child, "u-ed", "req-ed")).await.unwrap();
    let mut gp = LookupClient::new(relay.channel("gp-y02").await);
    let mut scheduled = search_request(&child, "u-gp", "req-gp");
    scheduled.care_setting = CareSetting::GeneralPractice as i32;
    gp.search(scheduled).await.unwrap();
    relay.notifications("la-706").await.ack(cpis_relay::proto::AckRequest { sequence: 1 }).await.unwrap();

    let certs = relay.dir.path().join("client-certs");
    relay.pki.write_dev_layout(&certs);
    let out = relay.dir.path().join("sar");
    let child_arg = child.clone();
    let (url, certs_arg, out_arg) = (relay.url(), certs.clone(), out.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
            .args(["sar", &child_arg, "--server", &url])
            .arg("--certs-dir")
            .arg(&certs_arg)
            .arg("--out")
            .arg(&out_arg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{said}");
    assert!(said.contains("4 plan changes, 3 accesses (every proof verified"), "{said}");

    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o700);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("subject-access.json")).unwrap()).unwrap();
    assert_eq!(std::fs::metadata(out.join("subject-access.json")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(report["nhs_number"], json!(child));
    let plans = report["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0]["record"]["given_name"], json!("Sam <b>& Co</b>"));
    assert_eq!(plans[0]["local_authority"]["ods_code"], json!("706"));
    let history = report["plan_history"].as_array().unwrap();
    let changes: Vec<(&str, &str)> = history
        .iter()
        .map(|change| (change["plan_type"].as_str().unwrap(), change["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        changes,
        [
            ("CPPI", "loaded"),
            ("CPPI", "changed (a new version)"),
            ("LACI", "loaded"),
            ("LACI", "deleted by the local authority")
        ],
        "oldest first; loading the same plan again is not a change"
    );
    assert_eq!(history[0]["record"]["postcode"], json!("ZZ1 1ZZ"), "the first version loaded");
    assert_eq!(plans[0]["record"]["postcode"], json!("LS2 2BB"), "the plan held now");
    assert_eq!(history[1]["record"]["address_line_1"], json!("2 New Road"), "the version loaded");
    assert_eq!(history[3]["record"], Value::Null, "a removal names the plan only");
    let accesses = report["accesses"].as_array().unwrap();
    let kinds: Vec<&str> = accesses.iter().map(|access| access["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["unscheduled care search", "scheduled care search", "auditor's read"], "in log order");
    assert_eq!(accesses[2]["organisation_ods_code"], json!("X26"), "the request itself is in the report");
    let notifications = report["notifications"].as_array().unwrap();
    assert_eq!(notifications.len(), 1, "the scheduled search notified no one");
    assert_eq!((&notifications[0]["la_ods_code"], &notifications[0]["acknowledged"]), (&json!("706"), &json!(true)));

    // Every access's proof, checked by the independent verifier from the JSON alone.
    let checkpoint = &report["checkpoint"];
    for access in accesses {
        let audit = access["kind"] == json!("auditor's read");
        let fields = json!({
            "kind": if audit { 2 } else if access["scheduled"] == json!(true) { 1 } else { 0 },
            "access_id": access["access_id"],
            "accessed_at_micros": access["accessed_at_micros"],
            "nhs_number": child,
            "organisation_ods_code": access["organisation_ods_code"],
            "organisation_name": access["organisation_name"],
            "care_setting": if audit { json!("") } else { access["care_setting"].clone() },
            "user_id": access["accessor"]["user_id"],
            "name": access["accessor"]["name"],
            "role_code": access["accessor"]["role_code"],
            "request_id": access["request_id"],
        });
        let request = json!({
            "verifier_key": checkpoint["verifier_key"],
            "checkpoint": checkpoint["note"],
            "inclusion": {
                "leaf_index": access["leaf_index"],
                "leaf": access["leaf"],
                "audit_path": access["audit_path"],
                "access": fields,
            },
        });
        let (verified, said) = python_verifies(&request);
        assert!(verified, "{}: {said}", access["kind"]);
    }

    let html = std::fs::read_to_string(out.join("subject-access.html")).unwrap();
    assert!(html.contains("Sam &lt;b&gt;&amp; Co&lt;/b&gt;"), "escaped: {html}");
    assert!(!html.contains("<b>"), "a value became markup");
    assert!(
        !html.contains("<script") && !html.contains(" src=") && !html.contains("href="),
        "no scripts or external assets"
    );
    assert!(html.contains("auditor&#39;s read") || html.contains("auditor's read"));
    assert!(html.contains("History of the plans") && html.contains("2 New Road"), "the history is in the page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_makes_a_private_key_and_signs_a_last_checkpoint_at_shutdown() {
    cpis_relay::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_server_layout(&dir.path().join("certs"));
    // One checkpoint at start (the empty log), then none until shutdown.
    let mut server = helpers::start(dir.path(), &["--checkpoint-interval-secs", "3600"], "warn").await;
    let child = nhs(2004);
    let (la, ed) = (pki.client_pem("la-706"), pki.client_pem("ed-rr8"));
    let channel = |pem| cpis_relay::client::connect(&server.url, pem, None);
    let mut plans = cpis_relay::proto::plans_client::PlansClient::new(channel(&la).await.unwrap());
    upload(
        &mut plans,
        "706",
        cpis_relay::proto::UploadMode::Incremental,
        vec![record(&child, PlanType::ChildProtection)],
    )
    .await
    .unwrap();
    let mut lookup = LookupClient::new(channel(&ed).await.unwrap());
    assert!(lookup.search(search_request(&child, "u1", "")).await.unwrap().into_inner().flagged);
    let pid = server.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = tokio::time::timeout(std::time::Duration::from_secs(30), server.child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit:?}");

    use std::os::unix::fs::PermissionsExt;
    let data = dir.path().join("data");
    let key = std::fs::metadata(data.join("access-log.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600, "the signing key is private");
    let public = std::fs::read_to_string(data.join("access-log.pub")).unwrap();
    assert!(public.starts_with("cpis-relay/access-log+"), "{public}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .arg("--verifier-key")
        .arg(public.trim())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        text.contains("(1 records), tree of 1; 2 of 2 signed checkpoints recomputed"),
        "the last one at shutdown: {text}"
    );
}

/// What a local authority is given to check its own notifications (the
/// latest checkpoint and `Audit.NotificationProofs`, with its certificate)
/// verifies with the independent implementation, the access re-encoded from
/// the notification's own fields and the search's request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authoritys_notification_proofs_verify_with_an_independent_implementation() {
    use cpis_relay::proto::{NotificationProofsRequest, audit_client::AuditClient};
    let relay = TestRelay::start().await;
    let child = nhs(2002);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    for n in 0..3 {
        relay.lookup().await.search(search_request(&child, &format!("u{n}"), &format!("req-{n}"))).await.unwrap();
    }
    let mut stream = relay.subscribe("la-706").await;
    let mut notifications = Vec::new();
    for _ in 0..3 {
        notifications.push(next(&mut stream).await);
    }
    let mut audit = AuditClient::new(relay.channel("la-706").await);
    let checkpoint = audit.latest_checkpoint(LatestCheckpointRequest {}).await.unwrap().into_inner();
    let sequences = notifications.iter().map(|notification| notification.sequence).collect();
    let proofs = audit
        .notification_proofs(NotificationProofsRequest { sequences, tree_size: checkpoint.tree_size })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(proofs.tree_size, checkpoint.tree_size);
    for (notification, proof) in notifications.iter().zip(&proofs.proofs) {
        assert_eq!(proof.access_id, notification.access_id);
        let record = AccessRecord {
            accessed_at: notification.accessed_at,
            organisation_ods_code: notification.organisation_ods_code.clone(),
            organisation_name: notification.organisation_name.clone(),
            care_setting: notification.care_setting,
            accessor: notification.accessor.clone(),
            scheduled: false,
            access_id: notification.access_id.clone(),
        };
        let user = &notification.accessor.as_ref().unwrap().user_id;
        let request_id = format!("req-{}", user.trim_start_matches('u'));
        let request = json!({
            "verifier_key": checkpoint.verifier_key,
            "checkpoint": checkpoint.note,
            "inclusion": {
                "leaf_index": proof.leaf_index,
                "leaf": hex(&proof.leaf),
                "audit_path": proof.audit_path.iter().map(|hash| hex(hash)).collect::<Vec<_>>(),
                "access": access_fields(&record, &notification.nhs_number, &request_id),
            },
        });
        let (verified, said) = python_verifies(&request);
        assert!(verified, "sequence {}: {said}", notification.sequence);
    }
}
