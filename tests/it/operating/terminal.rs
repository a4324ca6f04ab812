//! The real binary at a terminal (issue 11): `cpis-relay serve` as a
//! subprocess at the default `info`, and `cpis-relay search` (text and
//! `--json`), `audit` and `export` as subprocesses, with names, an address and a user
//! name full of ESC/OSC sequences, C1 controls and newlines. The doors refuse
//! such text now, so it comes from a store an earlier release wrote. No control
//! character reaches their stdout or stderr raw (newlines end lines only),
//! and the relay's log at info carries no NHS number and none of the names.

use crate::helpers::*;
use cpis_relay::proto::{PlanType, UploadMode, plans_client::PlansClient};
use tokio::io::AsyncReadExt;

/// A title-setting OSC, a screen clear, a C1 CSI, DEL and a forged log line.
const EVIL: &str = "Zeb\x1b]0;pwned\x07\x1b[2J\u{9b}31m\x7f\nFORGED 2026-01-01T00:00:00Z ERROR cpis_relay: x\r";

/// Control characters other than the newlines that end lines.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars().filter(|ch| ch.is_control() && *ch != '\n').collect()
}

async fn cli(server: &Running, dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(args)
        .arg("--server")
        .arg(&server.url)
        .arg("--certs-dir")
        .arg(dir.join("certs"))
        .env("CPIS_LOG", "info")
        .env_remove("CPIS_IDENTITY")
        .output()
        .await
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).expect("UTF-8 output");
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// What an earlier release could store, before the doors refused control
/// characters: a plan whose names and address are `EVIL`, and an access by a
/// user whose name is `EVIL`. Such a store must still reach a terminal escaped.
async fn earlier_release_data(data_dir: &std::path::Path, child: &str) {
    use cpis_relay::{
        model::{AccessEvent, Accessor, Address, CareSetting, Plan, PlanType as Type},
        nhs::NhsNumber,
        store::{Change, Store, embedded::EmbeddedStore},
        stored::StoredPlan,
    };
    let store = EmbeddedStore::open(data_dir).unwrap();
    let person = NhsNumber::parse(child).unwrap();
    let now = chrono::Utc::now();
    let plan = Plan {
        nhs_number: person,
        la_ods_code: "706".into(),
        local_id: "L-evil".into(),
        given_name: EVIL.trim().into(),
        family_name: EVIL.trim().into(),
        date_of_birth: "2016-04-05".parse().unwrap(),
        address: Address { lines: vec![EVIL.trim().into(), EVIL.trim().into()], postcode: "Q\x1b[2J\n9".into() },
        plan_type: Type::ChildProtection,
        start_date: "2026-01-10".parse().unwrap(),
        end_date: None,
        expected_delivery_date: None,
        team_code: "TEAM-A".into(),
        loaded_at: now,
    };
    let authority = cpis_relay::synth::authority("706").unwrap();
    let plans = vec![StoredPlan::encode(&plan, "706".into()).unwrap()].into();
    store.apply(Change::UpsertPlans { authority, plans, at: now }).await.unwrap();
    let access = AccessEvent {
        id: cpis_relay::model::time_ordered_id(now - chrono::Duration::minutes(1)),
        accessed_at: now - chrono::Duration::minutes(1),
        nhs_number: person,
        organisation_ods_code: "RR8".into(),
        organisation_name: "LEEDS TEACHING HOSPITALS NHS TRUST".into(),
        care_setting: CareSetting::EmergencyDepartment,
        accessor: Accessor { user_id: "smartcard-evil".into(), name: EVIL.trim().into(), role_code: "R8000".into() },
        request_id: "earlier".into(),
        scheduled: false,
    };
    store.apply(Change::RecordAccess { access, drafts: vec![] }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_no_control_character_raw_and_logs_no_nhs_number_at_info() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_server_layout(&dir.path().join("certs"));
    let child = nhs(5151);
    earlier_release_data(&dir.path().join("data"), &child).await;
    let mut server = start(dir.path(), &[], "info").await;

    // At the doors such text is refused now, naming the field, and the refusal is written escaped.
    let mut plan = record(&nhs(5152), PlanType::ChildProtection);
    plan.given_name = EVIL.into();
    let la = cpis_relay::client::connect(&server.url, &pki.client_pem("la-706"), None).await.unwrap();
    let report = upload(&mut PlansClient::new(la), "706", UploadMode::Incremental, vec![plan]).await.unwrap();
    assert_eq!((report.loaded, report.rejections[0].reason.as_str()), (0, "INVALID_CHARACTER"), "{report:?}");
    let evil_search = ["search", &child, "--as", "ed-rr8", "--user-id", "smartcard-evil", "--user-name", EVIL];
    let (ok, _, refused) = cli(&server, dir.path(), &evil_search).await;
    assert!(!ok && refused.contains("accessor.name"), "{refused}");

    let search = ["search", &child, "--as", "ed-rr8", "--user-id", "smartcard-plain", "--user-name", "Dr Plain"];
    let (ok, first, stderr) = cli(&server, dir.path(), &search).await;
    assert!(ok, "{stderr}");
    let (ok, second, stderr) = cli(&server, dir.path(), &search).await;
    assert!(ok, "{stderr}");
    let json_search: Vec<&str> = search.iter().copied().chain(["--json"]).collect();
    let (ok, json, stderr) = cli(&server, dir.path(), &json_search).await;
    assert!(ok, "{stderr}");
    let (ok, audit, stderr) = cli(&server, dir.path(), &["audit", &child, "--as", "auditor"]).await;
    assert!(ok, "{stderr}");
    let (ok, export, stderr) = cli(&server, dir.path(), &["export", "--as", "la-706"]).await;
    assert!(ok, "{stderr}");
    let invalid = ["search", "12345", "--as", "ed-rr8", "--user-id", EVIL, "--user-name", EVIL];
    let (ok, _, invalid_stderr) = cli(&server, dir.path(), &invalid).await;
    assert!(!ok);

    for (what, text) in [
        ("search", &first),
        ("search again", &second),
        ("search --json", &json),
        ("audit", &audit),
        ("export", &export),
        ("invalid", &invalid_stderr),
        ("refused", &refused),
    ] {
        assert!(raw_controls(text).is_empty(), "{what} wrote {:?} raw: {text:?}", raw_controls(text));
    }
    assert!(first.starts_with("FLAGGED  Zeb\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{9b}31m\\u{7f}\\nFORGED"), "{first}");
    assert!(!first.lines().any(|line| line.starts_with("FORGED")), "no line is forged: {first}");
    assert!(second.contains("by Zeb\\u{1b}]0;pwned"), "the earlier access's user, escaped: {second}");
    // The JSON is the relay's text exactly, escaped only as JSON escapes.
    let value: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    // (The relay keeps values trimmed: the trailing carriage return goes.)
    assert_eq!(value["person"]["given_name"], EVIL.trim());
    let names: Vec<&serde_json::Value> =
        value["previous_accesses"].as_array().unwrap().iter().map(|access| &access["accessor"]["name"]).collect();
    assert!(names.contains(&&serde_json::json!(EVIL.trim())), "{names:?}");
    assert_eq!(export.lines().count(), 2, "the header and one row: {export}");
    assert!(export.contains("Zeb\\u{1b}]0;pwned"), "{export}");
    assert_eq!(audit.lines().count(), 4, "one JSON line per access: {audit}");
    let evil_names = audit
        .lines()
        .filter(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["accessor"]["name"] == EVIL.trim())
        .count();
    assert_eq!(evil_names, 1, "the earlier access, its name as stored: {audit}");

    let pid = server.child.id().unwrap().to_string();
    assert!(tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    assert_eq!(server.child.wait().await.unwrap().code(), Some(0));
    let mut logs = String::new();
    server.stderr.take().unwrap().read_to_string(&mut logs).await.unwrap();
    assert!(logs.contains(" INFO "), "the relay logged at info: {logs}");
    assert!(raw_controls(&logs).is_empty(), "the relay's log has {:?} raw: {logs:?}", raw_controls(&logs));
    assert!(!logs.lines().any(|line| line.starts_with("FORGED")), "{logs}");
    for personal in [child.as_str(), "Zeb", "pwned", "smartcard-evil"] {
        assert!(!logs.contains(personal), "{personal} in the relay's log: {logs}");
    }
}
