//! Oversight of reads (issue 11), over real mutual TLS: an auditor's own
//! `AccessLog` call is logged (who read whose trail, when, which accesses)
//! without the NHS number and counted in `cpis_audit_reads_total`; a user
//! who searches more distinct people within a clock hour than
//! `unusual_access_distinct_people_per_hour` raises
//! `cpis_unusual_access_total{organisation}` and one warning per hour,
//! without personal data. The setting is a flag, a `CPIS_` variable and a
//! TOML key; a bad value exits 64.

use std::sync::{Arc, Mutex, OnceLock};

use crate::helpers::*;
use cpis_relay::{
    proto::{AccessLogRequest, PlanType, lookup_client::LookupClient},
    relay::RelaySettings,
};

/// Every log line of this test binary (the relay runs in-process), as the text format writes them.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .fmt_fields(cpis_relay::telemetry::EscapedFields)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        captured
    })
}

fn log_lines(containing: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned();
    text.lines().filter(|line| line.contains(containing)).map(str::to_owned).collect()
}

/// A counter's value in the relay's /metrics, `None` while absent.
async fn counter(relay: &TestRelay, series: &str) -> Option<f64> {
    let (status, body) = admin_get(relay.admin, "/metrics").await;
    assert_eq!(status, 200);
    body.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditors_read_is_logged_and_counted_without_the_nhs_number() {
    logs();
    let relay = TestRelay::start().await;
    let child = nhs(7101);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut lookup = relay.lookup().await;
    lookup.search(search_request(&child, "smartcard-audit-1", "")).await.unwrap();
    lookup.search(search_request(&child, "smartcard-audit-2", "")).await.unwrap();
    let series = "cpis_audit_reads_total{organisation=\"X26\"}";
    let before = counter(&relay, series).await.unwrap_or(0.0);

    let trail = collect(
        relay.audit().await.access_log(AccessLogRequest { nhs_number: child.clone() }).await.unwrap().into_inner(),
    )
    .await;
    assert_eq!(trail.len(), 2);
    assert_eq!(counter(&relay, series).await, Some(before + 1.0), "the read is counted");

    let stored = relay.store.accesses_of(child.parse().unwrap()).await.unwrap();
    let ids: Vec<String> = stored.iter().map(|access| uuid::Uuid::from_u128(access.id).to_string()).collect();
    let lines: Vec<String> = log_lines("audit trail read").into_iter().filter(|line| line.contains(&ids[0])).collect();
    assert_eq!(lines.len(), 1, "one line for the read, naming the accesses it showed: {lines:?}");
    let line = &lines[0];
    assert!(line.contains(" INFO ") && line.contains("auditor=X26") && line.contains("role=auditor"), "{line}");
    assert!(line.contains("accesses=2") && line.contains(&ids[1]), "{line}");
    assert!(line.contains("person=") && line.contains("at=2026-06-01T09:00:00"), "{line}");
    // The same person read again has the same pseudonym; nowhere is the number itself.
    relay.audit().await.access_log(AccessLogRequest { nhs_number: child.clone() }).await.unwrap();
    let person = |line: &str| line.split_whitespace().find(|word| word.starts_with("person=")).unwrap().to_owned();
    let again = log_lines("audit trail read");
    assert_eq!(again.iter().filter(|line| person(line) == person(&lines[0])).count(), 2, "{again:?}");
    let everything = log_lines("");
    assert!(!everything.iter().any(|line| line.contains(&child)), "the NHS number is logged: {everything:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_searching_more_people_than_the_threshold_raises_the_signal_once_an_hour() {
    logs();
    let settings = RelaySettings { unusual_access_distinct_people_per_hour: 3, ..RelaySettings::default() };
    let relay = TestRelay::start_with(StoreChoice::Embedded, settings).await;
    let people: Vec<String> = (0..8).map(|n| nhs(7200 + n)).collect();
    // One person flagged: flagged and unflagged searches both count.
    relay.load("706", vec![record(&people[0], PlanType::ChildProtection)]).await;
    let lookup = LookupClient::new(relay.channel("ed-rr8").await);
    let series = "cpis_unusual_access_total{organisation=\"RR8\"}";
    let warnings = || log_lines("unusual access: a user searched");
    let before_warnings = warnings().len();
    let search = |user: &'static str, person: &String| {
        let mut lookup = lookup.clone();
        let request = search_request(person, user, "");
        async move { lookup.search(request).await.unwrap() }
    };
    search("smartcard-unusual-1", &people[0]).await;
    let start = counter(&relay, series).await.expect("registered at zero from the organisation's first search");
    // Three distinct people, each searched twice: at the threshold, not over it.
    for person in people[..3].iter().chain(&people[..3]) {
        search("smartcard-unusual-1", person).await;
    }
    // Another user of the organisation searching the same people is someone else.
    for person in &people[3..6] {
        search("smartcard-unusual-2", person).await;
    }
    assert_eq!(counter(&relay, series).await, Some(start), "nobody has passed the threshold");
    search("smartcard-unusual-1", &people[3]).await;
    assert_eq!(counter(&relay, series).await, Some(start + 1.0), "the fourth person raises it");
    for person in &people[4..8] {
        search("smartcard-unusual-1", person).await;
    }
    assert_eq!(counter(&relay, series).await, Some(start + 1.0), "once per user per hour");
    assert_eq!(warnings().len(), before_warnings + 1, "{:?}", warnings());

    // The next hour starts afresh.
    relay.clock.advance(chrono::Duration::hours(1));
    for person in &people[..4] {
        search("smartcard-unusual-1", person).await;
    }
    assert_eq!(counter(&relay, series).await, Some(start + 2.0));
    let raised = warnings();
    assert_eq!(raised.len(), before_warnings + 2, "{raised:?}");
    for line in &raised[before_warnings..] {
        assert!(line.contains(" WARN ") && line.contains("organisation=RR8") && line.contains("threshold=3"), "{line}");
        assert!(line.contains("user="), "{line}");
        for personal in people.iter().map(String::as_str).chain(["smartcard-unusual-1", "Dr smartcard"]) {
            assert!(!line.contains(personal), "{personal} in {line}");
        }
    }
}

/// The setting is a flag, a `CPIS_` variable and a TOML key; 0 or text exits 64 naming it.
#[test]
fn unusual_access_threshold_is_configurable_and_bad_values_exit_64() {
    let serve = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"));
        command.arg("serve").args(args).arg("--print-config").env("CPIS_LOG", "error");
        command.env_remove("CPIS_UNUSUAL_ACCESS_DISTINCT_PEOPLE_PER_HOUR").envs(env.iter().copied());
        command.output().unwrap()
    };
    let key = "unusual_access_distinct_people_per_hour";
    let printed = |output: std::process::Output| {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let table: toml::Table = toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
        table[key].as_integer()
    };
    assert_eq!(printed(serve(&[], &[])), Some(100), "the default");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, format!("{key} = 40\n")).unwrap();
    let config = ["--config", file.to_str().unwrap()];
    assert_eq!(printed(serve(&config, &[])), Some(40), "TOML");
    let env = [("CPIS_UNUSUAL_ACCESS_DISTINCT_PEOPLE_PER_HOUR", "50")];
    assert_eq!(printed(serve(&config, &env)), Some(50), "the environment over TOML");
    let flag = ["--config", file.to_str().unwrap(), "--unusual-access-distinct-people-per-hour", "60"];
    assert_eq!(printed(serve(&flag, &env)), Some(60), "the flag over both");
    for (args, env) in [
        (vec!["--unusual-access-distinct-people-per-hour", "0"], vec![]),
        (vec!["--unusual-access-distinct-people-per-hour", "many"], vec![]),
        (vec![], vec![("CPIS_UNUSUAL_ACCESS_DISTINCT_PEOPLE_PER_HOUR", "-1")]),
    ] {
        let output = serve(&args, &env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(key) || stderr.contains("unusual-access-distinct-people-per-hour"), "{stderr}");
    }
    std::fs::write(&file, format!("{key} = 0\n")).unwrap();
    let output = serve(&config, &[]);
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains(key));
}
