//! The keeper and `audit verify` over the memory store: positions in commit
//! order (searches and auditors' reads), retention of a prefix under a
//! signed note, proofs that verify, and a removed record found.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::*;
use crate::{
    clock::{Clock, ManualClock},
    model::{AccessEvent, Accessor, AuditRead, CareSetting},
    nhs::NhsNumber,
    store::{Change, EXPIRY_CHUNK, Expiry, Store, log::LogEntry, memory::MemoryStore},
    transparency::{LogSigner, hash::leaf_hash, proof::verify_inclusion},
};

fn start() -> DateTime<Utc> {
    "2026-06-01T09:00:00Z".parse().unwrap()
}

fn person() -> NhsNumber {
    NhsNumber::parse("9990000018").unwrap()
}

fn search(n: u64) -> AccessEvent {
    AccessEvent {
        id: u128::from(n) + 1,
        accessed_at: start() + Duration::minutes(n as i64),
        nhs_number: person(),
        organisation_ods_code: "RR8".into(),
        organisation_name: "Leeds ED".into(),
        care_setting: CareSetting::EmergencyDepartment,
        accessor: Accessor { user_id: format!("u{n}"), name: "Dr".into(), role_code: String::new() },
        request_id: format!("r{n}"),
        scheduled: false,
    }
}

#[tokio::test]
async fn the_memory_store_logs_searches_and_reads_retains_a_prefix_and_verifies() {
    let store = MemoryStore::new();
    let signer = Arc::new(LogSigner::generate_ephemeral("test/log").unwrap());
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(start()));
    let log = store.access_log().unwrap();
    let keeper = LogKeeper::open(Arc::clone(&log), Arc::clone(&signer), clock).unwrap();
    for n in 0..10 {
        store.apply(Change::RecordAccess { access: search(n), drafts: vec![] }).await.unwrap();
        if n == 4 {
            let read = AuditRead {
                id: 1000,
                read_at: start() + Duration::minutes(4),
                nhs_number: person(),
                organisation_ods_code: "X26".into(),
                organisation_name: "Audit".into(),
                accessor: Accessor { user_id: String::new(), name: String::new(), role_code: String::new() },
                request_id: "a1".into(),
            };
            store.apply(Change::RecordAudit(read)).await.unwrap();
            keeper.checkpoint().unwrap();
        }
    }
    assert_eq!(log.position_of(1000).unwrap(), Some(5), "the read between the fifth and sixth search");
    assert!(matches!(log.entry_at(5).unwrap(), Some(LogEntry::Audit(_))));
    let inclusion = keeper.inclusion(1000).unwrap().unwrap();
    let leaf = leaf_hash(&inclusion.entry.leaf_fields().encode().unwrap());
    let checkpoint = &inclusion.checkpoint.checkpoint;
    verify_inclusion(5, checkpoint.size, &leaf, &inclusion.proof, &checkpoint.root).unwrap();

    let below = keeper.catch_up().unwrap();
    let expiry = Expiry {
        now: start() + Duration::minutes(10),
        today: start().date_naive(),
        acked_notifications_before: start(),
        accesses_before: start() + Duration::minutes(3),
        log_positions_below: below,
        limit: EXPIRY_CHUNK,
    };
    store.apply(Change::Expire(expiry)).await.unwrap();
    assert_eq!(log.bounds().unwrap().retained_from, 3);
    assert_eq!(store.accesses_of(person()).await.unwrap().len(), 7, "searches 3 to 9");
    keeper.record_retention(expiry.accesses_before).unwrap();
    let report = verify_log(log.as_ref(), signer.verifier()).unwrap();
    assert!(report.is_clean(), "{:?}", report.findings);
    assert_eq!((report.retained_from, report.next_position, report.retention_notes), (3, 11, 1));
    for chunk in [1, 2, 3, 7] {
        // Chunks read by several threads fold in order whatever their size.
        assert_eq!(
            verify::verify_in_chunks(log.as_ref(), signer.verifier(), None, chunk).unwrap(),
            report,
            "chunk {chunk}"
        );
    }
}

/// Every checkpoint is stored as it is signed (it was
/// stored at most hourly, leaving up to an hour of accesses under no stored
/// note); old ones are thinned to the last of each hour, never the newest,
/// and a tree grown past every stored checkpoint is a finding.
#[tokio::test]
async fn every_checkpoint_is_stored_as_signed_and_old_ones_thinned_to_one_an_hour() {
    let store = MemoryStore::new();
    let signer = Arc::new(LogSigner::generate_ephemeral("test/log").unwrap());
    let clock = Arc::new(ManualClock::new(start()));
    let log = store.access_log().unwrap();
    let keeper = LogKeeper::open(Arc::clone(&log), Arc::clone(&signer), clock.clone()).unwrap();
    let stored = || log.notes().unwrap().len();
    // 30 checkpoints 5 minutes apart: 2.5 hours (hours 09, 10 and 11).
    for n in 0..30 {
        store.apply(Change::RecordAccess { access: search(n), drafts: vec![] }).await.unwrap();
        assert_eq!(keeper.checkpoint().unwrap().checkpoint.size, n + 1);
        assert_eq!(stored(), n as usize + 1, "each stored as it is signed");
        assert_eq!(keeper.checkpoint().unwrap().checkpoint.size, n + 1, "the log did not grow: not signed again");
        assert_eq!(stored(), n as usize + 1);
        clock.advance(Duration::minutes(5));
    }
    assert_eq!(keeper.thin_notes().unwrap(), 0, "all younger than a day");
    clock.advance(Duration::hours(24));
    assert_eq!(keeper.thin_notes().unwrap(), 27, "the last of each of the three hours kept");
    let sizes: Vec<u64> = log
        .notes()
        .unwrap()
        .iter()
        .map(|note| crate::transparency::Checkpoint::verify(&note.text, signer.verifier()).unwrap().size)
        .collect();
    assert_eq!(sizes, vec![12, 24, 30], "09:55, 10:55 and the newest, 11:25");
    let report = verify_log(log.as_ref(), signer.verifier()).unwrap();
    assert!(report.is_clean(), "{:?}", report.findings);

    // The newest notes deleted: the tree's tail is under no stored checkpoint.
    store.apply(Change::RecordAccess { access: search(40), drafts: vec![] }).await.unwrap();
    keeper.checkpoint().unwrap();
    let newest = log.notes().unwrap().last().unwrap().sequence;
    log.remove_notes(&[newest]).unwrap();
    let report = verify_log(log.as_ref(), signer.verifier()).unwrap();
    assert_eq!(report.findings, vec![LogFinding::Unsigned { from: 30, to: 31 }]);
    // Every note deleted: nothing in the tree is signed.
    let all: Vec<u64> = log.notes().unwrap().iter().map(|note| note.sequence).collect();
    log.remove_notes(&all).unwrap();
    let report = verify_log(log.as_ref(), signer.verifier()).unwrap();
    assert_eq!(report.findings, vec![LogFinding::Unsigned { from: 0, to: 31 }]);
    assert!(!report.is_clean());
}

/// The key file must be the owner's only, and the verifier key beside it is
/// always the signing key's own: a stale copy of another key is rewritten.
#[test]
fn a_shared_key_file_is_refused_and_a_stale_verifier_key_is_rewritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(super::DEFAULT_KEY_FILE);
    let (signer, created) = super::load_or_create_signer("test.example/log", &path).unwrap();
    assert!(created);
    let public = dir.path().join(super::VERIFIER_KEY_FILE);
    assert_eq!(std::fs::read_to_string(&public).unwrap().trim(), signer.verifier().to_string());

    let other = crate::transparency::LogSigner::generate_ephemeral("test.example/log").unwrap();
    std::fs::write(&public, format!("{}\n", other.verifier())).unwrap();
    let (again, created) = super::load_or_create_signer("test.example/log", &path).unwrap();
    assert!(!created);
    assert_eq!(std::fs::read_to_string(&public).unwrap().trim(), again.verifier().to_string(), "rewritten");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = super::load_or_create_signer("test.example/log", &path).unwrap_err();
    assert!(refused.to_string().contains("chmod 600"), "{refused}");
}
