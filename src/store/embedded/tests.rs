use super::*;
use crate::{
    model::{AccessEvent, Accessor, CareSetting, NotificationDraft, PlanType},
    store::{ExpiryCounts, check},
};

/// When the tests' plan changes are made.
const T0: chrono::DateTime<chrono::Utc> = chrono::DateTime::UNIX_EPOCH;

fn plan(n: u64, plan_type: PlanType, end: Option<&str>) -> StoredPlan {
    let nhs_number = NhsNumber::complete(999_000_000 + n).or_else(|| NhsNumber::complete(999_100_000 + n)).unwrap();
    let plan = crate::model::Plan {
        local_id: format!("L{n}"),
        end_date: end.map(|end| end.parse().unwrap()),
        ..crate::model::test_plan(nhs_number, plan_type)
    };
    StoredPlan::encode(&plan, "706".into()).unwrap()
}

fn access(nhs_number: NhsNumber, minute: i64, user: &str, request_id: &str) -> AccessEvent {
    AccessEvent {
        id: minute as u128 + 1,
        accessed_at: chrono::DateTime::UNIX_EPOCH + chrono::Duration::minutes(minute),
        nhs_number,
        organisation_ods_code: "RR8".into(),
        organisation_name: "Leeds".into(),
        care_setting: CareSetting::EmergencyDepartment,
        accessor: Accessor { user_id: user.into(), name: "Dr".into(), role_code: String::new() },
        request_id: request_id.into(),
        scheduled: false,
    }
}

fn draft(la: &str) -> NotificationDraft {
    NotificationDraft {
        la_ods_code: la.into(),
        notification_id: format!("n-{la}"),
        local_id: "L".into(),
        plan_type: PlanType::ChildProtection,
        team_code: "T".into(),
        traceparent: None,
    }
}

/// Three searches of `person` at minutes 0, 1 and 2 (ids 1, 2, 3), each notifying 706.
async fn record_three(store: &EmbeddedStore, person: NhsNumber) {
    for minute in 0..3 {
        let change = Change::RecordAccess { access: access(person, minute, "u", "r"), drafts: vec![draft("706")] };
        store.apply(change).await.unwrap();
    }
}

fn count(report: &check::CheckReport, table: &str) -> u64 {
    report.tables.iter().find(|(name, _)| *name == table).unwrap().1
}

#[tokio::test]
async fn replace_keeps_exactly_the_new_set_and_a_consistent_expiry_keyspace() {
    let dir = tempfile::tempdir().unwrap();
    let authority = crate::synth::authority("706").unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let first = vec![
            plan(1, PlanType::ChildProtection, Some("2026-01-01")),
            plan(2, PlanType::LookedAfter, None),
            plan(3, PlanType::ChildProtection, Some("2026-02-01")),
        ];
        store.apply(Change::UpsertPlans { authority: authority.clone(), plans: first.into(), at: T0 }).await.unwrap();
        let second = vec![plan(2, PlanType::LookedAfter, Some("2026-03-01")), plan(4, PlanType::ChildProtection, None)];
        let change = Change::ReplacePlans { authority: authority.clone(), plans: second.clone().into(), at: T0 };
        store.apply(change).await.unwrap();
        let mut loaded = store.load().await.unwrap().plans;
        loaded.sort_by_key(|plan| plan.nhs_number());
        assert_eq!(loaded, second);
    }
    let report = check::check(dir.path()).unwrap();
    assert!(report.integrity_ok, "{:?}", report.problems);
    assert_eq!((count(&report, "plans"), count(&report, "plan_expiry")), (2, 1), "one of the two remaining plans ends");
}

#[tokio::test]
async fn sequences_survive_a_reopen_and_retention_removes_what_expired_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let person = plan(1, PlanType::ChildProtection, None).nhs_number();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        record_three(&store, person).await;
        store.apply(Change::Ack { la_ods_code: "706".into(), through: 2 }).await.unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let change = Change::RecordAccess { access: access(person, 10, "u", "s"), drafts: vec![draft("706")] };
    let Applied::Notified(notified) = store.apply(change).await.unwrap() else { panic!("notified") };
    assert_eq!(notified[0].sequence, 4, "numbering goes on after a reopen");
    let expiry = crate::store::Expiry {
        now: T0,
        today: "2026-01-01".parse().unwrap(),
        acked_notifications_before: chrono::DateTime::UNIX_EPOCH + chrono::Duration::minutes(5),
        accesses_before: chrono::DateTime::UNIX_EPOCH + chrono::Duration::minutes(2),
        log_positions_below: u64::MAX,
        limit: crate::store::EXPIRY_CHUNK,
    };
    let Applied::Expired(counts) = store.apply(Change::Expire(expiry)).await.unwrap() else { panic!("expired") };
    assert_eq!(counts, ExpiryCounts { plans: 0, plan_changes: 0, notifications: 2, accesses: 2 });
    assert_eq!(store.notifications_after("706", 0, 10).await.unwrap().len(), 2, "3 unacked, 4 new");
    drop(store);
    let report = check::check(dir.path()).unwrap();
    assert!(report.integrity_ok, "{:?}", report.problems);
    assert_eq!(count(&report, "accesses"), 2);

    // Every notification acknowledged and removed: the next one still numbers on.
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.apply(Change::Ack { la_ods_code: "706".into(), through: 4 }).await.unwrap();
    let later = crate::store::Expiry {
        acked_notifications_before: chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(1),
        ..expiry
    };
    store.apply(Change::Expire(later)).await.unwrap();
    assert!(store.notifications_after("706", 0, 10).await.unwrap().is_empty());
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let change = Change::RecordAccess { access: access(person, 20, "u", "t"), drafts: vec![draft("706")] };
    let Applied::Notified(notified) = store.apply(change).await.unwrap() else { panic!("notified") };
    assert_eq!(notified[0].sequence, 5, "a sequence is never reused, even with no notification left");
}

#[test]
fn changes_committed_in_one_batch_see_each_other() {
    use super::lane::Committer;
    let dir = tempfile::tempdir().unwrap();
    let authority = crate::synth::authority("706").unwrap();
    let doomed = plan(1, PlanType::ChildProtection, Some("2026-01-01"));
    let kept = plan(2, PlanType::LookedAfter, None);
    {
        let mut committer =
            plan_changes::PlanCommitter { spaces: Spaces::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap() };
        let upsert = Change::UpsertPlans { authority, plans: vec![doomed.clone(), kept].into(), at: T0 };
        let delete =
            Change::DeletePlans { la_ods_code: "706".into(), nhs_number: doomed.nhs_number(), plan_type: None, at: T0 };
        // What the lane does when both were queued together: one batch, in order.
        let applied = committer.commit(vec![upsert, delete]).unwrap();
        assert_eq!(applied, vec![Applied::Committed, Applied::Committed]);
    }
    let report = check::check(dir.path()).unwrap();
    assert!(report.integrity_ok, "{:?}", report.problems);
    assert_eq!((count(&report, "plans"), count(&report, "plan_expiry")), (1, 0), "the delete saw the upsert before it");
}

#[tokio::test]
async fn scheduled_reads_never_crowd_the_listed_accesses_out_of_a_search() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let person = plan(1, PlanType::ChildProtection, None).nhs_number();
    let emergency = access(person, 0, "ed-user", "ed");
    store.apply(Change::RecordAccess { access: emergency.clone(), drafts: vec![] }).await.unwrap();
    for minute in 1..=130 {
        let routine = AccessEvent { scheduled: true, ..access(person, minute, "gp-user", &format!("gp{minute}")) };
        store.apply(Change::RecordAccess { access: routine, drafts: vec![] }).await.unwrap();
    }
    let recent = store.load().await.unwrap().recent;
    let listed = recent.with(person, |held| crate::accesses::listed_accesses(held, None));
    let listed: Vec<u128> = listed.iter().map(|access| access.id()).collect();
    assert_eq!(listed, vec![emergency.id], "130 later GP reads do not push the emergency access out");
    let audited = store.accesses_of(person).await.unwrap();
    assert_eq!(audited.len(), 131, "the auditor sees every read");
    assert!(audited.windows(2).all(|pair| pair[0].accessed_at <= pair[1].accessed_at), "in time order");
    drop(store);
    let report = check::check(dir.path()).unwrap();
    assert!(report.integrity_ok, "{:?}", report.problems);
}

#[tokio::test]
async fn a_change_failing_in_the_middle_of_a_batch_leaves_nothing_of_the_batch() {
    use super::lane::Committer;
    let dir = tempfile::tempdir().unwrap();
    let authority = crate::synth::authority("706").unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (kept, damaged) = (plan(1, PlanType::ChildProtection, None), plan(2, PlanType::ChildProtection, None));
    let upsert =
        |plans: Vec<StoredPlan>| Change::UpsertPlans { authority: authority.clone(), plans: plans.into(), at: T0 };
    store.apply(upsert(vec![kept.clone(), damaged.clone()])).await.unwrap();
    // A record the engine returns damaged (shorter than its header), as a bad block would.
    let key = keys::plan("706", damaged.nhs_number(), PlanType::ChildProtection);
    store.spaces.plans.insert(key, [1u8, 2]).unwrap();

    // The real committer, one batch: a good change, one that fails reading the damaged record, another good one.
    let mut committer = plan_changes::PlanCommitter { spaces: store.spaces.clone() };
    let batch = vec![
        upsert(vec![plan(3, PlanType::LookedAfter, None)]),
        Change::DeletePlans { la_ods_code: "706".into(), nhs_number: damaged.nhs_number(), plan_type: None, at: T0 },
        upsert(vec![plan(4, PlanType::LookedAfter, None)]),
    ];
    let failed = committer.commit(batch);
    assert!(matches!(failed, Err(StoreError::Corrupt(_))), "{failed:?}");
    let stored = |n: u64| {
        let key = keys::plan("706", plan(n, PlanType::LookedAfter, None).nhs_number(), PlanType::LookedAfter);
        store.spaces.plans.get(key).unwrap().is_some()
    };
    assert!(!stored(3) && !stored(4), "nothing of the failed batch, before or after the failing change");
    assert!(store.spaces.plans.get(keys::plan("706", kept.nhs_number(), PlanType::ChildProtection)).unwrap().is_some());

    // The lane carries on: the next batch commits.
    store.apply(upsert(vec![plan(3, PlanType::LookedAfter, None)])).await.unwrap();
    assert!(stored(3));
}

fn audit_read(nhs_number: NhsNumber, minute: i64) -> crate::model::AuditRead {
    crate::model::AuditRead {
        id: 9_000 + minute as u128,
        read_at: chrono::DateTime::UNIX_EPOCH + chrono::Duration::minutes(minute),
        nhs_number,
        organisation_ods_code: "X26".into(),
        organisation_name: "Audit".into(),
        accessor: Accessor { user_id: "a".into(), name: "A".into(), role_code: String::new() },
        request_id: format!("a{minute}"),
    }
}

#[tokio::test]
async fn check_finds_an_access_missing_from_the_log_and_a_gap_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let person = plan(1, PlanType::ChildProtection, None).nhs_number();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        record_three(&store, person).await;
        store.apply(Change::RecordAudit(audit_read(person, 4))).await.unwrap();
    }
    let report = check::check(dir.path()).unwrap();
    assert!(report.integrity_ok, "{:?}", report.problems);
    let counts = ["accesses", "audit_reads", "log"].map(|table| count(&report, table));
    assert_eq!(counts, [3, 1, 4]);

    let spaces = Spaces::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
    // The second access (id 2) loses its position; then position 1 goes from the log.
    spaces.log_ids.remove(2u128.to_be_bytes()).unwrap();
    spaces.activity_db.persist(fjall::PersistMode::SyncAll).unwrap();
    drop(spaces);
    let report = check::check(dir.path()).unwrap();
    assert!(!report.integrity_ok);
    assert!(report.problems.contains(&"accesses: a record has no log position".to_owned()), "{:?}", report.problems);
    assert!(report.problems.contains(&"log_ids: 3 entries for 4 log positions".to_owned()), "{:?}", report.problems);

    let spaces = Spaces::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
    spaces.log.remove(keys::log_position(1)).unwrap();
    spaces.activity_db.persist(fjall::PersistMode::SyncAll).unwrap();
    drop(spaces);
    let report = check::check(dir.path()).unwrap();
    assert!(
        report.problems.contains(&"log: position 1 is missing (the next is 2)".to_owned()),
        "{:?}",
        report.problems
    );
}

/// What a release before the access log wrote for accesses at these minutes:
/// the record and its time index, no log.
fn write_accesses_of_a_release_before_the_log(dir: &std::path::Path, person: NhsNumber, minutes: &[i64]) {
    let spaces = Spaces::open(dir, DEFAULT_CACHE_BYTES).unwrap();
    for minute in minutes {
        let access = access(person, *minute, "u", &format!("r{minute}"));
        let at = access.accessed_at.timestamp_micros();
        let key = keys::access(person, false, at, access.id);
        spaces.accesses.insert(key, postcard::to_allocvec(&access).unwrap()).unwrap();
        spaces.access_times.insert(keys::access_time(at, access.id), key).unwrap();
    }
    spaces.activity_db.persist(fjall::PersistMode::SyncAll).unwrap();
}

#[tokio::test]
async fn accesses_of_a_release_before_the_log_get_positions_in_time_order_and_their_old_index_goes() {
    let dir = tempfile::tempdir().unwrap();
    let person = plan(1, PlanType::ChildProtection, None).nhs_number();
    write_accesses_of_a_release_before_the_log(dir.path(), person, &[7, 3, 5]);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let log = store.access_log().unwrap();
    let ids: Vec<u128> = (0..3).map(|position| log.entry_at(position).unwrap().unwrap().id()).collect();
    assert_eq!(ids, [4, 6, 8], "minutes 3, 5 and 7: positions in time order");
    assert!(store.spaces.access_times.is_empty().unwrap(), "the old index is emptied once it was read");
    let change = Change::RecordAccess { access: access(person, 9, "u", "r9"), drafts: vec![] };
    store.apply(change).await.unwrap();
    assert_eq!(log.position_of(10).unwrap(), Some(3), "new accesses follow");
    drop((log, store));
    let report = check::check(dir.path()).unwrap();
    assert!(report.integrity_ok, "{:?}", report.problems);
    assert_eq!(count(&report, "log"), 4);
}

/// The migration stopped after its first batch (a crash part-way): the next
/// start resumes after what it logged. Before, it saw a log that was not
/// empty, marked the migration done, and the rest of the accesses never got
/// positions (never verified, never expired).
#[test]
fn a_position_migration_stopped_after_its_first_batch_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let person = plan(1, PlanType::ChildProtection, None).nhs_number();
    write_accesses_of_a_release_before_the_log(dir.path(), person, &[7, 3, 5, 9, 1]);
    {
        let spaces = Spaces::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        log::assign_positions_in(&spaces, 2, 1).unwrap();
        assert_eq!(log::bounds(&spaces).unwrap().next_position, 2, "the first batch is committed");
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let log = store.access_log().unwrap();
    let ids: Vec<u128> = (0..5).map(|position| log.entry_at(position).unwrap().unwrap().id()).collect();
    assert_eq!(ids, [2, 4, 6, 8, 10], "every access, once, in time order");
    assert_eq!(log.entry_at(5).unwrap(), None);
    drop((log, store));
    let report = check::check(dir.path()).unwrap();
    assert!(report.integrity_ok, "{:?}", report.problems);
    assert_eq!(count(&report, "log"), 5);
}

/// Notes stored at the same moment (the keeper's checkpoint and a retention
/// note) each take a number of their own: before, both read the same last
/// number and one overwrote the other.
#[test]
fn notes_stored_at_once_each_take_their_own_number() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let log = store.access_log().unwrap();
    std::thread::scope(|scope| {
        for writer in 0..8 {
            let log = &log;
            scope.spawn(move || {
                for n in 0..25 {
                    log.add_note(crate::store::log::NoteKind::Checkpoint, &format!("note {writer}-{n}\n")).unwrap();
                }
            });
        }
    });
    assert_eq!(log.notes().unwrap().len(), 200, "none overwritten");
}

/// A record kept beside the log (its position gone) is a finding of `audit
/// verify`: before, verify walked the log's positions only and never saw it,
/// while auditors were shown it as "not logged yet".
#[tokio::test]
async fn verify_names_a_record_kept_outside_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let person = plan(1, PlanType::ChildProtection, None).nhs_number();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    record_three(&store, person).await;
    let verifier = crate::transparency::LogSigner::generate_ephemeral("test.example/log").unwrap().verifier().clone();
    let log = store.access_log().unwrap();
    let clean = crate::access_log::verify_log(log.as_ref(), &verifier).unwrap();
    assert!(clean.findings.iter().all(|finding| !matches!(finding, crate::access_log::LogFinding::Outside(_))));
    store.spaces.log_ids.remove(2u128.to_be_bytes()).unwrap();
    let report = crate::access_log::verify_log(log.as_ref(), &verifier).unwrap();
    assert!(
        report
            .findings
            .contains(&crate::access_log::LogFinding::Outside(crate::store::log::OutsideRecord::NoPosition { id: 2 })),
        "{:?}",
        report.findings
    );
    assert!(!report.is_clean());
}

#[tokio::test]
async fn notifications_a_release_before_the_person_index_wrote_are_indexed_once_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let person = plan(1, PlanType::ChildProtection, None).nhs_number();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        record_three(&store, person).await;
    }
    {
        // As such a release left it: the notifications, no index, no mark.
        let spaces = Spaces::open(dir.path(), DEFAULT_CACHE_BYTES).unwrap();
        let keys: Vec<_> = spaces.notifications_by_person.iter().map(|entry| entry.key().unwrap()).collect();
        assert_eq!(keys.len(), 3);
        for key in keys {
            spaces.notifications_by_person.remove(key).unwrap();
        }
        spaces.log_meta.remove(by_person::NOTIFICATIONS_BY_PERSON).unwrap();
        spaces.activity_db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let sequences: Vec<u64> = store.notifications_of(person).await.unwrap().iter().map(|n| n.sequence).collect();
    assert_eq!(sequences, [1, 2, 3]);
    assert!(store.spaces.log_meta.contains_key(by_person::NOTIFICATIONS_BY_PERSON).unwrap(), "indexed once");
}
