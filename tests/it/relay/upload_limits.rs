//! Issue 11, uploads: a broken FULL_REFRESH cannot deflag children, and one
//! upload (or one attacker) is bounded in what it can make the relay hold,
//! how many run at once and how long one may take. Over real mutual TLS.

use std::time::Duration;

use crate::helpers;
use cpis_relay::proto::{
    self, ExportRequest, PlanType, UploadHeader, UploadMessage, UploadMode, plans_client::PlansClient,
    upload_message::Body,
};
use futures::StreamExt;
use helpers::{TestRelay, authority, nhs_numbers, record};
use tonic::{Code, Status, transport::Channel};

fn header(mode: UploadMode, allow_large_removal: bool) -> UploadMessage {
    UploadMessage {
        body: Some(Body::Header(UploadHeader {
            mode: mode as i32,
            file_id: "limits".into(),
            local_authority: Some(authority("706")),
            allow_large_removal,
        })),
    }
}

async fn refresh(
    plans: &mut PlansClient<Channel>,
    records: Vec<proto::PlanRecord>,
    allow_large_removal: bool,
) -> Result<proto::UploadReport, Status> {
    let messages = std::iter::once(header(UploadMode::FullRefresh, allow_large_removal))
        .chain(records.into_iter().map(|record| UploadMessage { body: Some(Body::Record(record)) }));
    plans.upload(futures::stream::iter(messages)).await.map(|response| response.into_inner())
}

async fn exported(plans: &mut PlansClient<Channel>) -> usize {
    helpers::collect(plans.export(ExportRequest {}).await.unwrap().into_inner()).await.len()
}

fn records(numbers: &[String]) -> Vec<proto::PlanRecord> {
    numbers.iter().map(|number| record(number, PlanType::ChildProtection)).collect()
}

/// The probe of issue 11: 999 of 1,000 records with invalid dates of birth removed 999 plans.
#[tokio::test]
async fn broken_full_refresh_cannot_deflag_children() {
    let relay = TestRelay::start().await;
    let mut plans = relay.plans("la-706").await;
    let numbers = nhs_numbers(200);

    // A first refresh is never refused for removal, even with many rejected records.
    let mut first = records(&numbers);
    for record in first.iter_mut().skip(100).take(50) {
        record.date_of_birth = "not a date".into();
    }
    let report = refresh(&mut plans, first, false).await.unwrap();
    assert_eq!((report.loaded, report.rejected, report.current_plans), (150, 50, 0));
    let full = refresh(&mut plans, records(&numbers), false).await.unwrap();
    assert_eq!((full.loaded, full.removed, full.current_plans, full.received), (200, 0, 150, 200));

    // A broken file: most dates of birth invalid. Refused, naming the counts, nothing changed.
    let mut broken = records(&numbers);
    for record in broken.iter_mut().skip(1) {
        record.date_of_birth = "31/02/2016".into();
    }
    let status = refresh(&mut plans, broken.clone(), false).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    for counts in ["holds 200 current plans", "would remove 199", "199 of 200 records were rejected"] {
        assert!(status.message().contains(counts), "{counts:?} in {}", status.message());
    }
    assert_eq!(exported(&mut plans).await, 200);

    // A file missing 21 of 200 children (10.5 %, over the 10 % default) is refused too.
    let status = refresh(&mut plans, records(&numbers[21..]), false).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("would remove 21"), "{}", status.message());
    assert_eq!(exported(&mut plans).await, 200);

    // Many rejected records, none removed: over the rejected share, refused.
    let mut new_people = records(&numbers);
    new_people.extend(records(&nhs_numbers(260)[200..]).into_iter().map(|mut record| {
        record.start_date = "soon".into();
        record
    }));
    let status = refresh(&mut plans, new_people, false).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("60 of 260 records were rejected"), "{}", status.message());

    // Within both limits: loaded, and the numbers reported.
    let report = refresh(&mut plans, records(&numbers[20..]), false).await.unwrap();
    assert_eq!((report.loaded, report.removed, report.current_plans, report.received), (180, 20, 200, 180));

    // Said to be intended: the large removal goes ahead and is reported.
    let report = refresh(&mut plans, broken, true).await.unwrap();
    assert_eq!((report.loaded, report.rejected, report.removed, report.current_plans), (1, 199, 180, 180));
    assert_eq!(exported(&mut plans).await, 1);
}

/// Every field has a limit (probed: 200 KB NHS numbers took the relay to 2 GiB),
/// and what is echoed back is cut short.
#[tokio::test]
async fn oversized_fields_are_rejected_and_echoes_truncated() {
    let relay = TestRelay::start().await;
    let mut plans = relay.plans("la-706").await;
    let numbers = nhs_numbers(10);
    let long = |n: usize| "x".repeat(n);
    let mut oversized: Vec<(&str, proto::PlanRecord)> = Vec::new();
    let mut push = |field: &'static str, index: usize, change: &dyn Fn(&mut proto::PlanRecord)| {
        let mut record = record(&numbers[index], PlanType::ChildProtection);
        change(&mut record);
        oversized.push((field, record));
    };
    push("nhs_number", 0, &|record| record.nhs_number = format!("{}{}", record.nhs_number, " ".repeat(23)) + "9");
    push("given_name", 1, &|record| record.given_name = long(101));
    push("family_name", 2, &|record| record.family_name = long(101));
    push("local_id", 3, &|record| record.local_id = long(65));
    push("team_code", 4, &|record| record.team_code = long(65));
    push("address.lines", 5, &|record| record.address.as_mut().unwrap().lines = vec![long(101)]);
    push("address.lines", 6, &|record| record.address.as_mut().unwrap().lines = vec!["a".into(); 7]);
    push("address.postcode", 7, &|record| record.address.as_mut().unwrap().postcode = long(17));
    let fields: Vec<&str> = oversized.iter().map(|(field, _)| *field).collect();
    let mut at_limit = record(&numbers[9], PlanType::ChildProtection);
    at_limit.given_name = "é".repeat(100);
    at_limit.family_name = long(100);
    at_limit.local_id = long(64);
    at_limit.address = Some(proto::Address { lines: vec![long(100); 6], postcode: long(16) });
    let mut sent: Vec<proto::PlanRecord> = oversized.into_iter().map(|(_, record)| record).collect();
    sent.push(at_limit);
    let report = helpers::upload(&mut plans, "706", UploadMode::Incremental, sent).await.unwrap();
    assert_eq!((report.loaded, report.rejected), (1, 8));
    for (rejection, field) in report.rejections.iter().zip(fields) {
        assert_eq!(rejection.reason, "FIELD_TOO_LONG", "{field}");
        assert!(rejection.message.starts_with(field), "{field}: {}", rejection.message);
    }

    // A 100,000-character NHS number is rejected, and echoed cut to 32 characters.
    let mut huge = record(&numbers[8], PlanType::ChildProtection);
    huge.nhs_number = "9".repeat(100_000);
    let report = helpers::upload(&mut plans, "706", UploadMode::Incremental, vec![huge]).await.unwrap();
    assert_eq!(report.rejections[0].reason, "FIELD_TOO_LONG");
    assert_eq!(report.rejections[0].nhs_number, "9".repeat(32));

    // The header's file id too.
    let mut long_file_id = header(UploadMode::Incremental, false);
    if let Some(Body::Header(header)) = &mut long_file_id.body {
        header.file_id = long(129);
    }
    let status = plans.upload(futures::stream::iter([long_file_id])).await.unwrap_err();
    assert_eq!(helpers::field_violation(&status).0, "header.file_id");
}

/// Rejections echoed back are capped: the first 1,000 in detail, then counts per reason.
#[tokio::test]
async fn rejections_echoed_back_are_capped_with_counts_per_reason() {
    let relay = TestRelay::start().await;
    let mut plans = relay.plans("la-706").await;
    let mut sent: Vec<proto::PlanRecord> = (0..1_500)
        .map(|n| {
            let mut record = record(&helpers::nhs(0), PlanType::ChildProtection);
            record.nhs_number = format!("X{n}");
            record
        })
        .collect();
    sent.extend(records(&nhs_numbers(300)[..300]).into_iter().map(|mut record| {
        record.given_name.clear();
        record
    }));
    let report = helpers::upload(&mut plans, "706", UploadMode::Incremental, sent).await.unwrap();
    assert_eq!(report.rejected, 1_800);
    assert_eq!(report.received, 1_800);
    assert_eq!(report.rejections.len(), 1_000);
    let counts: Vec<(&str, u64)> =
        report.rejection_counts.iter().map(|count| (count.reason.as_str(), count.count)).collect();
    assert_eq!(counts, [("INVALID_NHS_NUMBER", 1_500), ("MISSING_FIELD", 300)]);
}

/// A message over the size limit is RESOURCE_EXHAUSTED (was OUT_OF_RANGE), in
/// an upload stream and in a unary call alike.
#[tokio::test]
async fn message_over_the_size_limit_is_resource_exhausted() {
    let relay = TestRelay::start().await;
    let mut plans = relay.plans("la-706").await;
    let mut big = record(&helpers::nhs(1), PlanType::ChildProtection);
    big.given_name = "x".repeat(300 * 1024);
    let status = helpers::upload(&mut plans, "706", UploadMode::Incremental, vec![big]).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let request = proto::DeleteRequest { nhs_number: "9".repeat(300 * 1024), r#type: 0 };
    let status = plans.delete(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

/// A record that cannot be decoded (an NHS number that is not UTF-8) is the
/// client's mistake: INVALID_ARGUMENT, not UNAVAILABLE.
#[tokio::test]
async fn undecodable_record_in_an_upload_stream_is_invalid_argument() {
    /// `UploadMessage` as bytes on the wire: field 1 the header, field 2 a raw record.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawUploadMessage {
        #[prost(message, optional, tag = "1")]
        header: Option<UploadHeader>,
        #[prost(bytes = "vec", optional, tag = "2")]
        record: Option<Vec<u8>>,
    }
    let relay = TestRelay::start().await;
    let channel = relay.channel("la-706").await;
    let Some(Body::Header(wire_header)) = header(UploadMode::Incremental, false).body else { unreachable!() };
    // PlanRecord field 1 (nhs_number), length 2, bytes that are not UTF-8.
    let not_utf8 = vec![0x0a, 0x02, 0xff, 0xfe];
    let messages = [
        RawUploadMessage { header: Some(wire_header), record: None },
        RawUploadMessage { header: None, record: Some(not_utf8) },
    ];
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<RawUploadMessage, proto::UploadReport>::default();
    let path = http::uri::PathAndQuery::from_static("/cpis.v1.Plans/Upload");
    let status =
        grpc.client_streaming(tonic::Request::new(futures::stream::iter(messages)), path, codec).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(helpers::field_violation(&status).0, "records");
}

/// Uploads beyond the concurrent limit are refused at once, and one finishing frees its place.
#[tokio::test]
async fn uploads_beyond_the_concurrent_limit_are_resource_exhausted() {
    let relay = TestRelay::start_tuned(|options| options.max_concurrent_uploads = 1).await;
    let (open_upload, held) = tokio::sync::mpsc::channel::<UploadMessage>(4);
    open_upload.send(header(UploadMode::Incremental, false)).await.unwrap();
    let mut holder = relay.plans("la-706").await;
    let held_upload =
        tokio::spawn(async move { holder.upload(tokio_stream::wrappers::ReceiverStream::new(held)).await });
    let mut plans = relay.plans("la-706").await;
    // Until the held upload has reached the relay, a second one may still get in.
    let refused = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match helpers::upload(&mut plans, "706", UploadMode::Incremental, records(&nhs_numbers(1))).await {
                Err(status) => break status,
                Ok(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .expect("a second upload refused while the first is open");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("concurrent uploads"), "{}", refused.message());

    drop(open_upload);
    held_upload.await.unwrap().unwrap();
    let report = helpers::upload(&mut plans, "706", UploadMode::Incremental, records(&nhs_numbers(2))).await.unwrap();
    assert_eq!(report.loaded, 2);
}

/// A steady upload on a slow link outlives the unary deadline (probed: cut off
/// at 30.0 s with CANCELLED, nothing loaded); it has a deadline of its own.
#[tokio::test]
async fn slow_upload_outlives_the_unary_deadline_within_its_own() {
    let relay = TestRelay::start_tuned(|options| {
        options.request_timeout = Duration::from_millis(500);
        options.upload_timeout = Duration::from_secs(60);
    })
    .await;
    let mut plans = relay.plans("la-706").await;
    let numbers = nhs_numbers(4);
    // A slow link: a record every 300 ms, 1.2 s in all.
    let slow = futures::stream::iter(
        std::iter::once(header(UploadMode::Incremental, false))
            .chain(records(&numbers).into_iter().map(|record| UploadMessage { body: Some(Body::Record(record)) })),
    )
    .then(|message| async move {
        if matches!(message.body, Some(Body::Record(_))) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        message
    });
    let report = plans.upload(slow).await.unwrap().into_inner();
    assert_eq!(report.loaded, 4);

    // The upload's own deadline still ends one that never finishes.
    let relay = TestRelay::start_tuned(|options| options.upload_timeout = Duration::from_secs(1)).await;
    let mut plans = relay.plans("la-706").await;
    let endless = futures::stream::iter([header(UploadMode::Incremental, false)])
        .chain(futures::stream::pending::<UploadMessage>());
    let status = tokio::time::timeout(Duration::from_secs(20), plans.upload(endless))
        .await
        .expect("the relay ends the upload")
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

async fn upload_command(relay: &TestRelay, file: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let certs = relay.dir.path().join("certs");
    relay.pki.write_dev_layout(&certs);
    tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["upload", file.to_str().unwrap(), "--server", &relay.url(), "--certs-dir", certs.to_str().unwrap()])
        .args(["--as", "la-706", "--mode", "full-refresh"])
        .args(extra)
        .env("CPIS_LOG", "error")
        .output()
        .await
        .unwrap()
}

/// `cpis-relay upload --allow-large-removal` says the removal is intended, and the CLI prints the numbers.
#[tokio::test]
async fn upload_command_refuses_a_large_removal_unless_allowed() {
    let relay = TestRelay::start().await;
    let numbers = nhs_numbers(20);
    relay.load("706", records(&numbers)).await;
    let file = relay.dir.path().join("half.csv");
    let mut csv = "nhs_number,local_id,given_name,family_name,date_of_birth,plan_type,start_date\n".to_owned();
    for number in &numbers[..10] {
        csv.push_str(&format!("{number},L,Ann,One,2015-01-01,CPPI,2026-01-01\n"));
    }
    std::fs::write(&file, csv).unwrap();

    let refused = upload_command(&relay, &file, &[]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_ne!(refused.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("holds 20 current plans") && stderr.contains("would remove 10"), "{stderr}");

    let allowed = upload_command(&relay, &file, &["--allow-large-removal"]).await;
    let stdout = String::from_utf8_lossy(&allowed.stdout);
    assert_eq!(allowed.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&allowed.stderr));
    assert!(stdout.starts_with("ALL_LOADED: loaded 10, rejected 0, removed 10"), "{stdout}");
    assert!(stdout.contains("held 20 plans before this refresh"), "{stdout}");
}

/// The new settings are flags, `CPIS_*` variables and TOML keys; a bad value exits 64 naming its key.
#[test]
fn upload_settings_are_configurable_and_bad_values_exit_64() {
    let serve = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"));
        command.arg("serve").args(args).arg("--print-config").env("CPIS_LOG", "error");
        command.envs(env.iter().copied());
        command.output().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "max_refresh_removal_percent = 25\nupload_timeout_secs = 900\n").unwrap();
    let output = serve(
        &["--config", file.to_str().unwrap(), "--max-concurrent-uploads", "2"],
        &[("CPIS_MAX_REFRESH_REJECTED_PERCENT", "5"), ("CPIS_MAX_UPLOAD_RECORDS", "50000")],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: toml::Table = toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
    for (key, value) in [
        ("max_refresh_removal_percent", 25),
        ("upload_timeout_secs", 900),
        ("max_concurrent_uploads", 2),
        ("max_refresh_rejected_percent", 5),
        ("max_upload_records", 50_000),
    ] {
        assert_eq!(printed[key].as_integer(), Some(value), "{key}");
    }
    for (flag, value, key) in [
        ("--max-refresh-removal-percent", "101", "max_refresh_removal_percent"),
        ("--max-refresh-rejected-percent", "200", "max_refresh_rejected_percent"),
        ("--max-concurrent-uploads", "0", "max_concurrent_uploads"),
        ("--upload-timeout-secs", "0", "upload_timeout_secs"),
        ("--max-upload-records", "0", "max_upload_records"),
    ] {
        let output = serve(&[flag, value], &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{flag} {value}: {stderr}");
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
}

/// The relay's peak resident memory (VmHWM, KiB) after the worst uploads the
/// limits allow, in a `serve` subprocess: `CPIS_WORST_UPLOAD_RECORDS` (default
/// 20,000) records of one message each near the 256 KiB message limit, all
/// rejected, then as many valid records with every field at its limit as one
/// FULL_REFRESH. Run by hand (`cargo nextest run --run-ignored only worst_upload`);
/// prints the figures for PERFORMANCE.md.
#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn worst_upload_peak_rss() {
    let count: usize =
        std::env::var("CPIS_WORST_UPLOAD_RECORDS").ok().and_then(|value| value.parse().ok()).unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let pki = helpers::Pki::new();
    pki.write_server_layout(&dir.path().join("certs"));
    let server = helpers::start(dir.path(), &[], "error").await;
    let pid = server.child.id().unwrap();
    let vm_hwm_kib = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap().to_owned();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    let started_kib = vm_hwm_kib();
    let channel = cpis_relay::client::connect(&server.url, &pki.client_pem("la-706"), None).await.unwrap();
    let mut plans = PlansClient::new(channel).max_encoding_message_size(1 << 20);

    // Each just under the 256 KiB message limit: an NHS number of 250,000 characters.
    let huge = (0..count).map(|_| {
        let mut record = record(&helpers::nhs(0), PlanType::ChildProtection);
        record.nhs_number = "9".repeat(250_000);
        UploadMessage { body: Some(Body::Record(record)) }
    });
    let rejected = std::iter::once(header(UploadMode::Incremental, false)).chain(huge);
    let report = plans.upload(futures::stream::iter(rejected)).await.unwrap().into_inner();
    assert_eq!((report.rejected, report.rejections.len()), (count as u64, 1_000));
    let after_rejected_kib = vm_hwm_kib();

    let max_size = |number: String| {
        let mut record = record(&number, PlanType::ChildProtection);
        record.given_name = "é".repeat(100);
        record.family_name = "é".repeat(100);
        record.local_id = "é".repeat(64);
        record.team_code = "é".repeat(64);
        record.address = Some(proto::Address { lines: vec!["é".repeat(100); 6], postcode: "é".repeat(16) });
        UploadMessage { body: Some(Body::Record(record)) }
    };
    let numbers = (999_000_000u64..).filter_map(cpis_relay::nhs::NhsNumber::complete).map(|n| n.to_string());
    let valid = std::iter::once(header(UploadMode::FullRefresh, true)).chain(numbers.take(count).map(max_size));
    let report = plans.upload(futures::stream::iter(valid)).await.unwrap().into_inner();
    assert_eq!(report.loaded, count as u64);
    let after_valid_kib = vm_hwm_kib();

    println!(
        "worst upload, {count} records: VmHWM at start {started_kib} KiB, after 250 KB rejected records {after_rejected_kib} KiB, after as many max-size valid records {after_valid_kib} KiB"
    );
}
