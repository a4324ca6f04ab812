//! Bad input gets a clear error naming the field, never INTERNAL, and never
//! changes what is stored; upload files with bad rows load the good rows
//! and report each bad one by line.

use crate::helpers::postgres;
use crate::helpers::*;
use cpis_relay::proto::{
    self, AccessLogRequest, DeleteRequest, PlanType, SearchRequest, UploadMode, UploadStatus,
    audit_client::AuditClient, plans_client::PlansClient, upload_message::Body,
};
use tonic::Code;

#[tokio::test]
async fn bad_search_requests_name_the_field() {
    let relay = TestRelay::start().await;
    let mut lookup = relay.lookup().await;
    let valid = search_request(&nhs(1), "user", "");
    let cases: Vec<(SearchRequest, &str)> = vec![
        (SearchRequest { nhs_number: "9434765918".into(), ..valid.clone() }, "nhs_number"),
        (SearchRequest { nhs_number: "94347659".into(), ..valid.clone() }, "nhs_number"),
        (SearchRequest { nhs_number: "943.476.5919".into(), ..valid.clone() }, "nhs_number"),
        (SearchRequest { nhs_number: String::new(), ..valid.clone() }, "nhs_number"),
        (SearchRequest { accessor: None, ..valid.clone() }, "accessor"),
        (
            SearchRequest {
                accessor: Some(proto::Accessor { user_id: " ".into(), name: "Dr A".into(), role_code: String::new() }),
                ..valid.clone()
            },
            "accessor.user_id",
        ),
        (
            SearchRequest {
                accessor: Some(proto::Accessor { user_id: "a".into(), name: String::new(), role_code: String::new() }),
                ..valid.clone()
            },
            "accessor.name",
        ),
        (SearchRequest { care_setting: 0, ..valid.clone() }, "care_setting"),
        (SearchRequest { care_setting: 99, ..valid.clone() }, "care_setting"),
        (SearchRequest { request_id: "x".repeat(500), ..valid.clone() }, "request_id"),
    ];
    for (request, field) in cases {
        let status = lookup.search(request).await.unwrap_err();
        assert_eq!(field_violation(&status).0, field, "{status:?}");
    }
    // The accepted forms of an NHS number.
    for form in ["943 476 5919", "943-476-5919", "9434765919"] {
        let response =
            lookup.search(SearchRequest { nhs_number: form.into(), ..valid.clone() }).await.unwrap().into_inner();
        assert!(!response.flagged);
    }
    let status = AuditClient::new(relay.channel("auditor").await)
        .access_log(AccessLogRequest { nhs_number: "123".into() })
        .await
        .unwrap_err();
    assert_eq!(field_violation(&status).0, "nhs_number");
    let status =
        relay.plans("la-706").await.delete(DeleteRequest { nhs_number: "abc".into(), r#type: 0 }).await.unwrap_err();
    assert_eq!(field_violation(&status).0, "nhs_number");
}

#[tokio::test]
async fn upload_rejects_bad_records_one_by_one_and_loads_the_rest() {
    let relay = TestRelay::start().await;
    let mut plans = relay.plans("la-706").await;
    let good = nhs(1);
    let mut records = vec![record(&good, PlanType::ChildProtection)];
    let mut bad = |change: &dyn Fn(&mut proto::PlanRecord)| {
        let mut record = record(&nhs(100 + records.len() as u64), PlanType::ChildProtection);
        change(&mut record);
        records.push(record);
    };
    bad(&|r| r.nhs_number = "9434765918".into());
    bad(&|r| r.given_name = String::new());
    bad(&|r| r.date_of_birth = "2016-13-01".into());
    bad(&|r| r.end_date = "2025-01-01".into());
    bad(&|r| r.r#type = PlanType::Unspecified as i32);
    bad(&|r| r.r#type = 42);
    bad(&|r| {
        r.r#type = PlanType::UnbornChildProtection as i32;
        r.expected_delivery_date = String::new();
    });
    bad(&|r| r.expected_delivery_date = "2026-09-01".into());
    bad(&|r| r.family_name = "x".repeat(300));
    bad(&|r| {
        r.start_date = "2020-01-01".into();
        r.end_date = "2021-01-01".into();
    });
    bad(&|r| r.nhs_number = good.clone());
    bad(&|r| r.date_of_birth = "2030-01-01".into());
    let report = upload(&mut plans, "706", UploadMode::Incremental, records).await.unwrap();
    assert_eq!(report.status, UploadStatus::Partial as i32);
    assert_eq!((report.loaded, report.rejected), (1, 12));
    let reasons: Vec<(u64, &str)> =
        report.rejections.iter().map(|rejection| (rejection.index, rejection.reason.as_str())).collect();
    assert_eq!(
        reasons,
        [
            (1, "INVALID_NHS_NUMBER"),
            (2, "MISSING_FIELD"),
            (3, "INVALID_DATE"),
            (4, "END_BEFORE_START"),
            (5, "MISSING_FIELD"),
            (6, "INVALID_PLAN_TYPE"),
            (7, "MISSING_FIELD"),
            (8, "UNEXPECTED_FIELD"),
            (9, "FIELD_TOO_LONG"),
            (10, "EXPIRED"),
            (11, "DUPLICATE_RECORD"),
            (12, "INVALID_DATE"),
        ]
    );
    for rejection in &report.rejections {
        assert!(!rejection.message.is_empty());
    }
    assert!(report.rejections[1].message.starts_with("given_name"), "{}", report.rejections[1].message);

    // An upload with nothing valid loads nothing; a FULL_REFRESH with nothing valid removes nothing.
    let none = upload(
        &mut plans,
        "706",
        UploadMode::FullRefresh,
        vec![{
            let mut r = record(&nhs(2), PlanType::LookedAfter);
            r.nhs_number = "1".into();
            r
        }],
    )
    .await
    .unwrap();
    assert_eq!(none.status, UploadStatus::NoneLoaded as i32);
    assert!(relay.lookup().await.search(search_request(&good, "u", "")).await.unwrap().into_inner().flagged);
    let empty = upload(&mut plans, "706", UploadMode::FullRefresh, vec![]).await.unwrap_err();
    assert_eq!(field_violation(&empty).0, "records");
    assert!(relay.lookup().await.search(search_request(&good, "u", "")).await.unwrap().into_inner().flagged);
}

#[tokio::test]
async fn malformed_upload_streams_are_invalid_argument() {
    let relay = TestRelay::start().await;
    let mut plans = relay.plans("la-706").await;
    let record_first = [proto::UploadMessage { body: Some(Body::Record(record(&nhs(1), PlanType::ChildProtection))) }];
    let status = plans.upload(futures::stream::iter(record_first)).await.unwrap_err();
    assert_eq!(field_violation(&status).0, "header");
    let header = |authority: Option<proto::LocalAuthority>, mode: UploadMode| proto::UploadMessage {
        body: Some(Body::Header(proto::UploadHeader {
            mode: mode as i32,
            file_id: "f".into(),
            local_authority: authority,
            ..Default::default()
        })),
    };
    let status = plans.upload(futures::stream::iter([header(None, UploadMode::Incremental)])).await.unwrap_err();
    assert_eq!(field_violation(&status).0, "header.local_authority");
    let mut no_phone = authority("706");
    no_phone.emergency_phone = String::new();
    let status =
        plans.upload(futures::stream::iter([header(Some(no_phone), UploadMode::Incremental)])).await.unwrap_err();
    assert_eq!(field_violation(&status).0, "header.local_authority.emergency_phone");
    let status = plans
        .upload(futures::stream::iter([header(Some(authority("706")), UploadMode::Unspecified)]))
        .await
        .unwrap_err();
    assert_eq!(field_violation(&status).0, "header.mode");
    let two_headers = [
        header(Some(authority("706")), UploadMode::Incremental),
        header(Some(authority("706")), UploadMode::Incremental),
    ];
    let status = plans.upload(futures::stream::iter(two_headers)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(!relay.lookup().await.search(search_request(&nhs(1), "u", "")).await.unwrap().into_inner().flagged);
}

/// The real `cpis-relay upload` binary against the in-process relay (awaited,
/// so the test's runtime keeps serving while it runs).
async fn upload_command(relay: &TestRelay, certs: &std::path::Path, file: &std::path::Path) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args([
            "upload",
            file.to_str().unwrap(),
            "--server",
            &relay.url(),
            "--certs-dir",
            certs.to_str().unwrap(),
            "--as",
            "la-706",
        ])
        .env("CPIS_LOG", "error")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn csv_and_json_lines_files_with_bad_rows_report_each_by_line() {
    let relay = TestRelay::start().await;
    let certs = relay.dir.path().join("certs");
    relay.pki.write_dev_layout(&certs);
    let (a, b, c, d) = (nhs(1), nhs(2), nhs(3), nhs(4));
    let csv = relay.dir.path().join("plans.csv");
    std::fs::write(
        &csv,
        format!(
            "nhs_number,local_id,given_name,family_name,date_of_birth,address_line_1,postcode,plan_type,start_date,end_date,expected_delivery_date,team_code,la_ods_code\n\
             {a},L1,Ann,One,2015-01-01,1 Road,ZZ1 1ZZ,CPPI,2026-01-01,,,T1,706\n\
             943 476 5918,L2,Bad,Number,2015-01-01,1 Road,ZZ1 1ZZ,CPPI,2026-01-01,,,T1,706\n\
             {b},L3,Ben,Two,2015-01-01,1 Road,ZZ1 1ZZ,XXXX,2026-01-01,,,T1,706\n\
             {c},L4,Cat,Three,2015-01-01,1 Road\n\
             {d},L5,Dan,Four,2015-01-01,1 Road,ZZ1 1ZZ,LACI,2026-01-01,,,T1,855\n"
        ),
    )
    .unwrap();
    let output = upload_command(&relay, &certs, &csv).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "not all loaded: {stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("PARTIAL: loaded 1, rejected 3"), "{stdout}");
    assert!(stdout.contains("line 3: INVALID_NHS_NUMBER"), "{stdout}");
    assert!(stdout.contains("line 4: UNREADABLE_ROW plan_type"), "{stdout}");
    assert!(stdout.contains("line 5: UNREADABLE_ROW"), "{stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("skipped 1 rows of other local authorities"));

    let jsonl = relay.dir.path().join("plans.jsonl");
    std::fs::write(
        &jsonl,
        format!(
            "{{\"nhs_number\":\"{b}\",\"local_id\":\"L3\",\"given_name\":\"Ben\",\"family_name\":\"Two\",\"date_of_birth\":\"2015-01-01\",\"type\":\"LOOKED_AFTER\",\"start_date\":\"2026-01-01\"}}\n\
             not json\n\
             {{\"nhs_number\":\"{c}\",\"local_id\":\"L4\",\"given_name\":\"Cat\",\"family_name\":\"Three\",\"date_of_birth\":\"2015-02-30\",\"plan_type\":\"CPPI\",\"start_date\":\"2026-01-01\"}}\n"
        ),
    )
    .unwrap();
    let output = upload_command(&relay, &certs, &jsonl).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("PARTIAL: loaded 1, rejected 2"), "{stdout}");
    assert!(stdout.contains("line 2: UNREADABLE_ROW not a JSON record"), "{stdout}");
    assert!(stdout.contains("line 3: INVALID_DATE date_of_birth"), "{stdout}");

    let mut lookup = relay.lookup().await;
    for (number, flagged) in [(&a, true), (&b, true), (&c, false), (&d, false)] {
        assert_eq!(
            lookup.search(search_request(number, "u", "")).await.unwrap().into_inner().flagged,
            flagged,
            "{number}"
        );
    }
    let exported = collect(
        PlansClient::new(relay.channel("la-706").await).export(proto::ExportRequest {}).await.unwrap().into_inner(),
    )
    .await;
    assert_eq!(exported.len(), 2);
}

/// The care setting belongs to the caller's kind of care: an emergency search
/// cannot be labelled general practice (it would look routine to the local
/// authority), nor a GP's silent read an emergency.
#[tokio::test]
async fn the_care_setting_must_match_the_certificates_kind_of_care() {
    use cpis_relay::proto::{CareSetting, lookup_client::LookupClient};
    let relay = TestRelay::start().await;
    let child = nhs(1);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut as_gp_practice = search_request(&child, "ed-user", "");
    as_gp_practice.care_setting = CareSetting::GeneralPractice as i32;
    let refused = relay.lookup().await.search(as_gp_practice).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(field_violation(&refused).0, "care_setting");
    let as_emergency = search_request(&child, "gp-user", "");
    let refused = LookupClient::new(relay.channel("gp-y02").await).search(as_emergency).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(field_violation(&refused).0, "care_setting");
}

/// Text that probes each way a value can be one no store keeps or no screen
/// should show (NUL and other controls, line separators, bidirectional
/// overrides, noncharacters), beside what must be kept as sent (combining
/// marks, four-byte code points), at lengths around the limits.
fn tricky_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let character = prop_oneof![
        6 => proptest::char::range('a', 'z'),
        1 => Just('\0'),
        1 => Just('\u{7}'),
        1 => Just('\n'),
        1 => Just('\u{85}'),
        1 => Just('\u{2028}'),
        1 => Just('\u{202E}'),
        1 => Just('\u{FFFF}'),
        1 => Just('\u{0301}'),
        1 => Just('\u{1F600}'),
        1 => Just('\u{FEFF}'),
        2 => any::<char>(),
    ];
    prop_oneof![
        8 => proptest::collection::vec(character, 0..24).prop_map(|chars| chars.into_iter().collect::<String>()),
        1 => (190..=210usize).prop_map(|count| "\u{1F600}".repeat(count)),
        1 => (190..=210usize).prop_map(|count| "e\u{0301}".repeat(count / 2)),
    ]
}

/// One case: a search whose four text fields are `texts`, and an upload of
/// one record (and its header) carrying them: each answered, or refused
/// naming one of its fields; never held, never another error.
async fn arbitrary_text_case(relay: &TestRelay, person: &str, texts: &[String; 8]) -> Result<(), String> {
    let mut request = search_request(person, &texts[0], &texts[3]);
    request.accessor =
        Some(proto::Accessor { user_id: texts[0].clone(), name: texts[1].clone(), role_code: texts[2].clone() });
    match relay.lookup().await.search(request).await {
        Ok(answer) if answer.get_ref().flagged => {}
        Ok(answer) => return Err(format!("not flagged: {:?}", answer.get_ref().flagged)),
        Err(status) => {
            let (field, _) = field_violation(&status);
            let fields = ["accessor.user_id", "accessor.name", "accessor.role_code", "request_id"];
            if !fields.contains(&field.as_str()) {
                return Err(format!("search refused naming {field}: {status:?}"));
            }
        }
    }
    let mut authority = authority("706");
    authority.name = texts[4].clone();
    let mut record = record(&nhs(50), PlanType::ChildProtection);
    record.given_name = texts[5].clone();
    record.family_name = texts[6].clone();
    record.local_id = texts[7].clone();
    record.team_code = texts[1].clone();
    record.address =
        Some(proto::Address { lines: vec![texts[2].clone(), texts[3].clone()], postcode: texts[0].clone() });
    let header = proto::UploadMessage {
        body: Some(Body::Header(proto::UploadHeader {
            mode: UploadMode::Incremental as i32,
            file_id: texts[7].clone(),
            local_authority: Some(authority),
            allow_large_removal: false,
        })),
    };
    let messages = vec![header, proto::UploadMessage { body: Some(Body::Record(record)) }];
    match relay.plans("la-706").await.upload(futures::stream::iter(messages)).await {
        Ok(report) => {
            let report = report.into_inner();
            let allowed = ["MISSING_FIELD", "FIELD_TOO_LONG", "INVALID_CHARACTER"];
            if let Some(rejection) = report.rejections.iter().find(|r| !allowed.contains(&r.reason.as_str())) {
                return Err(format!("record rejected as {}: {}", rejection.reason, rejection.message));
            }
            if report.loaded + report.rejected != 1 {
                return Err(format!("one record, {report:?}"));
            }
        }
        Err(status) => {
            let (field, _) = field_violation(&status);
            if !field.starts_with("header.") {
                return Err(format!("upload refused naming {field}: {status:?}"));
            }
        }
    }
    let held = relay.relay.hub().held();
    if held > 0 {
        return Err(format!("{held} searches held: a store refused what validation let through"));
    }
    Ok(())
}

/// Arbitrary text in every text field of a search and an upload, on one
/// store: each request answered or refused naming a field, none held, the
/// store healthy throughout.
fn arbitrary_text_on(runtime: &tokio::runtime::Runtime, relay: &TestRelay, cases: u32) {
    use proptest::test_runner::{Config, TestRunner};
    let person = nhs(49);
    runtime.block_on(relay.load("706", vec![record(&person, PlanType::ChildProtection)]));
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let texts = proptest::array::uniform8(tricky_text());
    runner
        .run(&texts, |texts| {
            runtime
                .block_on(arbitrary_text_case(relay, &person, &texts))
                .map_err(proptest::test_runner::TestCaseError::fail)
        })
        .unwrap();
    assert_eq!(*relay.relay.store_health().borrow(), cpis_relay::relay::StoreHealth::Ok, "ready throughout");
}

/// `cpis-relay store check` of a store, which must find it clean.
fn store_check(args: &[&str]) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["store", "check"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && text.contains("integrity ok"), "{output:?}");
}

#[test]
fn arbitrary_text_in_every_field_is_answered_or_refused_by_field_and_never_held_on_the_memory_and_embedded_stores() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let memory = runtime.block_on(TestRelay::start_with(StoreChoice::Memory, Default::default()));
    arbitrary_text_on(&runtime, &memory, 64);
    let embedded = runtime.block_on(TestRelay::start());
    arbitrary_text_on(&runtime, &embedded, 64);
    let (_, store, _, dir) = runtime.block_on(embedded.stop());
    drop(store);
    store_check(&["--data-dir", dir.path().to_str().unwrap()]);
}

/// PostgreSQL refuses NUL in text (SQLSTATE 22021): a value validation let
/// through once took a node out of service for good (held, retried for ever).
#[test]
fn arbitrary_text_in_every_field_is_answered_or_refused_by_field_and_never_held_on_postgres() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cluster = postgres::PgCluster::start();
    let url = cluster.create_database("cpis");
    let relay = runtime.block_on(async {
        cpis_relay::tls::install_crypto_provider();
        let options = cpis_relay::store::postgres::PostgresOptions {
            connect: cpis_relay::store::postgres::ConnectOptions {
                url: cpis_relay::store::postgres::StoreUrl::parse(&url).unwrap(),
                password_file: None,
                pool_size: 4,
            },
            write_timeout: std::time::Duration::from_secs(5),
        };
        let store = std::sync::Arc::new(cpis_relay::store::postgres::PostgresStore::open(&options).await.unwrap());
        let clock = std::sync::Arc::new(cpis_relay::clock::ManualClock::new(test_start()));
        let dir = tempfile::tempdir().unwrap();
        let settings =
            cpis_relay::relay::RelaySettings { spill_dir: Some(dir.path().to_owned()), ..Default::default() };
        TestRelay::serve(Pki::new(), store, clock, settings, dir).await
    });
    arbitrary_text_on(&runtime, &relay, 96);
    let nul = runtime.block_on(async {
        relay.lookup().await.search(search_request(&nhs(49), "a\u{0}b", "r-nul")).await.unwrap_err()
    });
    assert_eq!(field_violation(&nul).0, "accessor.user_id");
    assert_eq!(runtime.block_on(admin_get(relay.admin, "/readyz")).0, 200);
    let dir = relay.dir.path().to_str().unwrap().to_owned();
    store_check(&["--store", &url, "--data-dir", &dir]);
}
