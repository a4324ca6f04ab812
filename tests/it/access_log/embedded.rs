//! The tamper-evident access log on the embedded store (issue 20): accesses
//! get gapless positions that survive a restart, the keeper signs
//! checkpoints, and `audit verify` finds a deleted, altered or reordered
//! record at its position after tampering with the fjall keyspaces by hand,
//! and a prefix removed without a signed retention note.

use std::{path::Path, sync::Arc};

use chrono::{DateTime, Duration, Utc};
use cpis_relay::{
    access_log::{LogFinding, LogKeeper, load_or_create_signer, verify_log},
    auth::{Identity, Role},
    clock::{Clock, ManualClock},
    model::{AccessEvent, Accessor, CareSetting},
    nhs::NhsNumber,
    relay::{Relay, RelaySettings},
    store::{Change, EXPIRY_CHUNK, Expiry, Store, embedded::EmbeddedStore},
    transparency::{LogSigner, audit::Finding},
};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

fn start() -> DateTime<Utc> {
    "2026-06-01T09:00:00Z".parse().unwrap()
}

fn person(n: u64) -> NhsNumber {
    (999_000_000u64..).filter_map(NhsNumber::complete).nth(n as usize).unwrap()
}

fn access(n: u64, minute: i64) -> AccessEvent {
    AccessEvent {
        id: 0x1000 + n as u128,
        accessed_at: start() + Duration::minutes(minute),
        nhs_number: person(n % 3),
        organisation_ods_code: "RR8".into(),
        organisation_name: "Leeds ED".into(),
        care_setting: CareSetting::EmergencyDepartment,
        accessor: Accessor { user_id: format!("u{n}"), name: "Dr Test".into(), role_code: "R8000".into() },
        request_id: format!("r{n}"),
        scheduled: n % 4 == 3,
    }
}

fn signer(dir: &Path) -> Arc<LogSigner> {
    Arc::new(load_or_create_signer("test.example/log", &dir.join("access-log.key")).unwrap().0)
}

/// Records `count` accesses (ids `first..first + count`), one checkpoint per `every`.
async fn record(store: &EmbeddedStore, keeper: &LogKeeper, first: u64, count: u64, every: u64) {
    for n in first..first + count {
        store.apply(Change::RecordAccess { access: access(n, n as i64), drafts: vec![] }).await.unwrap();
        if (n + 1) % every == 0 {
            keeper.checkpoint().unwrap();
        }
    }
    keeper.checkpoint().unwrap();
}

fn keeper(store: &EmbeddedStore, signer: &Arc<LogSigner>) -> LogKeeper {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(start()));
    LogKeeper::open(store.access_log().unwrap(), Arc::clone(signer), clock).unwrap()
}

fn verify(dir: &Path, signer: &LogSigner) -> cpis_relay::access_log::LogReport {
    let store = EmbeddedStore::open(dir).unwrap();
    verify_log(store.access_log().unwrap().as_ref(), signer.verifier()).unwrap()
}

/// The activity database opened directly, as someone with the files would.
struct Raw {
    database: Database,
}

impl Raw {
    fn open(dir: &Path) -> Self {
        Self { database: Database::builder(dir.join("activity")).open().unwrap() }
    }

    fn keyspace(&self, name: &str) -> Keyspace {
        self.database.keyspace(name, KeyspaceCreateOptions::default).unwrap()
    }

    /// The access key the log names at `position`.
    fn record_key(&self, position: u64) -> Vec<u8> {
        self.keyspace("log").get(position.to_be_bytes()).unwrap().unwrap()[1..].to_vec()
    }

    fn persist(&self) {
        self.database.persist(PersistMode::SyncAll).unwrap();
    }
}

/// A store of 40 accesses with checkpoints every 7, its key, and its directory.
async fn logged_store() -> (tempfile::TempDir, Arc<LogSigner>) {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer(dir.path());
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let keeper = keeper(&store, &signer);
    record(&store, &keeper, 0, 40, 7).await;
    (dir, signer)
}

fn leaf_positions(report: &cpis_relay::access_log::LogReport) -> Vec<u64> {
    report
        .findings
        .iter()
        .filter_map(|finding| match finding {
            LogFinding::Tree(Finding::LeafDiffers { position } | Finding::RecordMissing { position }) => {
                Some(*position)
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn positions_are_gapless_across_a_restart_and_the_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer(dir.path());
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let keeper = keeper(&store, &signer);
        record(&store, &keeper, 0, 10, 4).await;
    }
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let log = store.access_log().unwrap();
        assert_eq!(log.bounds().unwrap().next_position, 10);
        let keeper = keeper(&store, &signer);
        assert_eq!(keeper.latest().unwrap().checkpoint.size, 10, "the last checkpoint is found again");
        record(&store, &keeper, 10, 5, 100).await;
        for position in 0..15 {
            let entry = log.entry_at(position).unwrap().unwrap();
            assert_eq!(
                entry.id(),
                0x1000 + u128::from(position),
                "position {position} holds the access committed then"
            );
            assert_eq!(log.position_of(entry.id()).unwrap(), Some(position));
        }
    }
    let report = verify(dir.path(), &signer);
    assert!(report.is_clean(), "{:?}", report.findings);
    assert_eq!((report.next_position, report.tree_size), (15, 15));
    assert_eq!(report.checkpoints, 4, "sizes 4, 8, 10 and 15");
    assert_eq!(report.checkpoints_matched, 4);
}

#[tokio::test]
async fn a_deleted_access_is_found_at_its_position() {
    let (dir, signer) = logged_store().await;
    {
        let raw = Raw::open(dir.path());
        raw.keyspace("accesses").remove(raw.record_key(17)).unwrap();
        raw.persist();
    }
    let report = verify(dir.path(), &signer);
    assert!(!report.is_clean());
    assert_eq!(leaf_positions(&report), vec![17], "{:?}", report.findings);
    assert!(report.findings.contains(&LogFinding::Tree(Finding::CheckpointMismatch { size: 21 })));
}

#[tokio::test]
async fn a_deleted_log_entry_is_found_at_its_position() {
    let (dir, signer) = logged_store().await;
    {
        let raw = Raw::open(dir.path());
        raw.keyspace("log").remove(23u64.to_be_bytes()).unwrap();
        raw.persist();
    }
    let report = verify(dir.path(), &signer);
    assert_eq!(leaf_positions(&report), vec![23], "{:?}", report.findings);
}

/// Changes the organisation name of the access at `position`, as someone with the files could.
fn alter_organisation(dir: &Path, position: u64) {
    let raw = Raw::open(dir);
    let accesses = raw.keyspace("accesses");
    let key = raw.record_key(position);
    let mut event: AccessEvent = postcard::from_bytes(&accesses.get(&key).unwrap().unwrap()).unwrap();
    event.organisation_name = "Somewhere else".into();
    accesses.insert(&key, postcard::to_allocvec(&event).unwrap()).unwrap();
    raw.persist();
}

#[tokio::test]
async fn an_altered_field_is_found_at_its_position() {
    let (dir, signer) = logged_store().await;
    alter_organisation(dir.path(), 5);
    let report = verify(dir.path(), &signer);
    assert_eq!(leaf_positions(&report), vec![5], "{:?}", report.findings);
    assert!(report.findings.contains(&LogFinding::Tree(Finding::CheckpointMismatch { size: 7 })));
}

#[tokio::test]
async fn the_auditors_view_marks_an_altered_access_not_verified_and_the_rest_verified() {
    let (dir, signer) = logged_store().await;
    let auditor = Identity { ods_code: "X26".into(), organisation_name: "NHS ENGLAND".into(), role: Role::Auditor };
    let open = async |dir: &Path| {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).unwrap());
        let clock = Arc::new(ManualClock::new(start() + Duration::hours(1)));
        let settings = RelaySettings { log_signer: Some(Arc::clone(&signer)), ..RelaySettings::default() };
        Relay::open(store, clock, settings).await.unwrap()
    };
    // Person 2 was accessed by 2, 5, 8, ... 38: thirteen accesses.
    let person = person(2).to_string();
    {
        let relay = open(dir.path()).await;
        let accesses = relay.access_log(&auditor, &person).await.unwrap();
        let status = relay.log_status(&auditor, &accesses).await.unwrap().expect("the store keeps a log");
        assert_eq!((status.verified, status.not_logged, status.differing.len()), (13, 0, 0));
        assert!(status.all_verified());
        assert!(status.checkpoint.size >= 40, "{:?}", status.checkpoint);
    }
    alter_organisation(dir.path(), 5);
    let relay = open(dir.path()).await;
    let accesses = relay.access_log(&auditor, &person).await.unwrap();
    assert!(accesses.iter().any(|access| access.organisation_name == "Somewhere else"));
    let status = relay.log_status(&auditor, &accesses).await.unwrap().unwrap();
    assert_eq!((status.verified, &status.differing[..]), (12, &[5][..]));
    assert!(!status.all_verified());
}

#[tokio::test]
async fn two_swapped_records_are_found_at_both_positions() {
    let (dir, signer) = logged_store().await;
    {
        let raw = Raw::open(dir.path());
        let log = raw.keyspace("log");
        let (a, b) = (log.get(30u64.to_be_bytes()).unwrap().unwrap(), log.get(33u64.to_be_bytes()).unwrap().unwrap());
        log.insert(30u64.to_be_bytes(), b).unwrap();
        log.insert(33u64.to_be_bytes(), a).unwrap();
        raw.persist();
    }
    let report = verify(dir.path(), &signer);
    assert_eq!(leaf_positions(&report), vec![30, 33], "{:?}", report.findings);
}

/// Offline tampering: record 2 altered and the tree emptied, to be rebuilt
/// from the altered records (the signed notes are kept).
fn alter_record_2_and_empty_the_tree(dir: &Path) {
    let raw = Raw::open(dir);
    let accesses = raw.keyspace("accesses");
    let key = raw.record_key(2);
    let mut event: AccessEvent = postcard::from_bytes(&accesses.get(&key).unwrap().unwrap()).unwrap();
    event.accessor.user_id = "someone-else".into();
    accesses.insert(&key, postcard::to_allocvec(&event).unwrap()).unwrap();
    let tree = raw.keyspace("log_tree");
    for entry in tree.iter() {
        tree.remove(entry.key().unwrap()).unwrap();
    }
    raw.keyspace("log_meta").insert("tree_size", 0u64.to_be_bytes()).unwrap();
    raw.persist();
}

#[tokio::test]
async fn a_rewritten_tree_does_not_hide_an_altered_record() {
    let (dir, signer) = logged_store().await;
    // Alter record 2 and rebuild the tree from the altered records: the tree
    // now agrees with the records, but not with the signed roots.
    alter_record_2_and_empty_the_tree(dir.path());
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        // A keeper with the right key rebuilds the tree; it cannot re-sign old checkpoints' roots.
        keeper(&store, &signer).catch_up().unwrap();
    }
    let report = verify(dir.path(), &signer);
    assert!(!report.is_clean());
    for size in [7, 14, 21, 28, 35, 40] {
        assert!(
            report.findings.contains(&LogFinding::Tree(Finding::TreeMismatch { size })),
            "{size}: {:?}",
            report.findings
        );
        assert!(report.findings.contains(&LogFinding::Tree(Finding::CheckpointMismatch { size })));
    }
    // Record and tree rewritten together: no leaf differs, but the checkpoints bracket where.
    assert!(report.findings.contains(&LogFinding::FirstDifference { from: 0, to: 7 }), "{:?}", report.findings);
}

#[tokio::test]
async fn retention_removes_a_signed_prefix_and_the_rest_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer(dir.path());
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let keeper = keeper(&store, &signer);
        record(&store, &keeper, 0, 30, 5).await;
        let tree_size = keeper.catch_up().unwrap();
        // Accesses before minute 12 go: positions 0 to 11.
        let expiry = Expiry {
            now: start() + Duration::days(1),
            today: start().date_naive(),
            acked_notifications_before: start(),
            accesses_before: start() + Duration::minutes(12),
            log_positions_below: tree_size,
            limit: EXPIRY_CHUNK,
        };
        store.apply(Change::Expire(expiry)).await.unwrap();
        assert_eq!(store.access_log().unwrap().bounds().unwrap().retained_from, 12);
        keeper.record_retention(expiry.accesses_before).unwrap();
        record(&store, &keeper, 30, 3, 100).await;
    }
    let report = verify(dir.path(), &signer);
    assert!(report.is_clean(), "{:?}", report.findings);
    assert_eq!((report.retained_from, report.next_position, report.retention_notes), (12, 33, 1));

    // Removing the oldest retained record and moving the boundary past it, unsigned:
    {
        let raw = Raw::open(dir.path());
        raw.keyspace("accesses").remove(raw.record_key(12)).unwrap();
        raw.keyspace("log").remove(12u64.to_be_bytes()).unwrap();
        raw.keyspace("log_meta").insert("retained_from", 13u64.to_be_bytes()).unwrap();
        raw.persist();
    }
    let report = verify(dir.path(), &signer);
    assert!(
        report.findings.contains(&LogFinding::PrefixMissing { signed_boundary: 12, retained_from: 13 }),
        "{:?}",
        report.findings
    );
}

#[tokio::test]
async fn retention_never_removes_what_the_tree_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    for n in 0..5 {
        store.apply(Change::RecordAccess { access: access(n, n as i64), drafts: vec![] }).await.unwrap();
    }
    let expiry = Expiry {
        now: start() + Duration::days(1),
        today: start().date_naive(),
        acked_notifications_before: start(),
        accesses_before: start() + Duration::days(1),
        log_positions_below: 2,
        limit: EXPIRY_CHUNK,
    };
    store.apply(Change::Expire(expiry)).await.unwrap();
    let bounds = store.access_log().unwrap().bounds().unwrap();
    assert_eq!((bounds.retained_from, bounds.next_position), (2, 5), "only the two leaves in the tree went");
}

#[tokio::test]
async fn audit_verify_exits_non_zero_on_tampering() {
    let (dir, _signer) = logged_store().await;
    // The key the auditor was given, kept apart from the store (verify never reads one from there).
    let given = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(dir.path().join(cpis_relay::access_log::VERIFIER_KEY_FILE), given.path()).unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
            .args(["audit", "verify", "--data-dir"])
            .arg(dir.path())
            .arg("--verifier-key")
            .arg(given.path())
            .output()
            .unwrap()
    };
    let without_key = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.path())
        .env_remove("CPIS_LOG_VERIFIER_KEY")
        .output()
        .unwrap();
    assert!(!without_key.status.success(), "a key from the checked directory vouches for nothing");
    assert!(String::from_utf8_lossy(&without_key.stderr).contains("--verifier-key"), "{without_key:?}");
    let clean = run();
    let text = String::from_utf8_lossy(&clean.stdout).to_string();
    assert!(clean.status.success(), "{text}{}", String::from_utf8_lossy(&clean.stderr));
    assert!(text.contains("verified: no record deleted, altered or reordered"), "{text}");
    {
        let raw = Raw::open(dir.path());
        raw.keyspace("accesses").remove(raw.record_key(9)).unwrap();
        raw.persist();
    }
    let tampered = run();
    let text = String::from_utf8_lossy(&tampered.stdout).to_string();
    assert_eq!(tampered.status.code(), Some(1), "{text}");
    assert!(text.contains("FINDING position 9: the record is missing"), "{text}");
}

/// The access log settings are flags, `CPIS_` variables and TOML keys; bad values exit 64 naming them.
#[test]
fn access_log_settings_are_configurable_and_bad_values_exit_64() {
    let serve = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"));
        command.arg("serve").args(args).arg("--print-config").env("CPIS_LOG", "error");
        for variable in ["CPIS_LOG_KEY", "CPIS_LOG_NAME", "CPIS_CHECKPOINT_INTERVAL_SECS", "CPIS_DATA_DIR"] {
            command.env_remove(variable);
        }
        command.envs(env.iter().copied()).output().unwrap()
    };
    let printed = |output: std::process::Output| {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        toml::from_str::<toml::Table>(&String::from_utf8_lossy(&output.stdout)).unwrap()
    };
    let defaults = printed(serve(&["--data-dir", "/srv/cpis"], &[]));
    assert_eq!(defaults["log_key"].as_str(), Some("/srv/cpis/access-log.key"), "beside the data");
    assert_eq!(defaults["log_name"].as_str(), Some("cpis-relay/access-log"));
    assert_eq!(defaults["checkpoint_interval_secs"].as_integer(), Some(5));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        "log_key = \"/etc/cpis/log.key\"\nlog_name = \"relay.example/log\"\ncheckpoint_interval_secs = 30\n",
    )
    .unwrap();
    let config = ["--config", file.to_str().unwrap()];
    let from_file = printed(serve(&config, &[]));
    assert_eq!(from_file["log_key"].as_str(), Some("/etc/cpis/log.key"), "TOML");
    assert_eq!(from_file["log_name"].as_str(), Some("relay.example/log"));
    assert_eq!(from_file["checkpoint_interval_secs"].as_integer(), Some(30));
    let env = [("CPIS_CHECKPOINT_INTERVAL_SECS", "40"), ("CPIS_LOG_NAME", "env.example/log")];
    let from_env = printed(serve(&config, &env));
    assert_eq!(from_env["checkpoint_interval_secs"].as_integer(), Some(40), "the environment over TOML");
    assert_eq!(from_env["log_name"].as_str(), Some("env.example/log"));
    let flag = printed(serve(&[&config[..], &["--checkpoint-interval-secs", "50"]].concat(), &env));
    assert_eq!(flag["checkpoint_interval_secs"].as_integer(), Some(50), "the flag over both");
    for (args, key) in [
        (vec!["--checkpoint-interval-secs", "0"], "checkpoint_interval_secs"),
        (vec!["--log-name", "two words"], "log_name"),
        (vec!["--log-name", "a+b"], "log_name"),
    ] {
        let output = serve(&args, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(key), "{stderr}");
    }
}

/// A relay started on a log rewritten offline (a record altered, the tree
/// rebuilt from it, the signed notes kept) refuses to sign a checkpoint of
/// that history and is not ready. Before, its keeper signed whatever it found.
#[tokio::test]
async fn a_relay_on_a_rewritten_log_refuses_to_sign_it_and_is_not_ready() {
    let (dir, signer) = logged_store().await;
    alter_record_2_and_empty_the_tree(dir.path());
    let store: Arc<dyn cpis_relay::store::Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(start()));
    let settings = cpis_relay::relay::RelaySettings { log_signer: Some(Arc::clone(&signer)), ..Default::default() };
    let relay = cpis_relay::relay::Relay::open(store, clock, settings).await.unwrap();
    let auditor = cpis_relay::auth::Identity {
        ods_code: "X26".into(),
        organisation_name: "AUDIT".into(),
        role: cpis_relay::auth::Role::Auditor,
    };
    let refused = relay.latest_checkpoint(&auditor).await.unwrap_err();
    assert!(refused.to_string().contains("refusing to sign"), "{refused}");
    let mut health = relay.store_health();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        health.wait_for(|health| *health == cpis_relay::relay::StoreHealth::Failing),
    )
    .await
    .expect("not ready once the keeper refuses")
    .unwrap();
    assert!(relay.latest_checkpoint(&auditor).await.is_err(), "and it goes on refusing");
}
