//! One behavioural contract, three stores: every test here runs against the
//! embedded (fjall) store, the memory store and a real PostgreSQL (a private
//! cluster per test, see tests/it/helpers/postgres.rs), through the `Store`
//! trait only. Sequences per authority in commit order (continued after a
//! reopen), paging of notifications, cumulative acknowledgements, a
//! person's bounded history and its requests, the audit trail, one person's
//! notifications (a subject access report), full refresh
//! (exactly the new set, never half of it) and retention.
//!
//! Where the stores differ on purpose the test says so: the memory store has
//! no restart (its "reopen" is the same store), and PostgreSQL recognises a
//! request made within 24 hours at the store (other nodes make them too), so
//! every access here carries its own request id.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use crate::helpers::postgres;
use chrono::{DateTime, Utc};
use cpis_relay::{
    model::{AccessEvent, Accessor, CareSetting, LocalAuthority, NotificationDraft, Plan, PlanType, RequestKey},
    nhs::NhsNumber,
    plan_history::PlanEventKind,
    store::{
        Cursor, EXPIRY_CHUNK, Expiry, Store,
        embedded::EmbeddedStore,
        memory::MemoryStore,
        postgres::{ConnectOptions, PostgresOptions, PostgresStore, StoreUrl},
        writes::Recorded,
    },
    stored::StoredPlan,
};

/// A store under test, and how to open it again.
struct Subject {
    store: Option<Arc<dyn Store>>,
    kind: Kind,
}

enum Kind {
    Embedded(tempfile::TempDir),
    Memory,
    /// The cluster lives (and is stopped when dropped) with the store.
    Postgres {
        _cluster: postgres::PgCluster,
        url: String,
    },
}

impl Subject {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        Self { store: Some(store), kind: Kind::Embedded(dir) }
    }

    async fn memory() -> Self {
        Self { store: Some(Arc::new(MemoryStore::new())), kind: Kind::Memory }
    }

    async fn postgres() -> Self {
        let cluster = postgres::PgCluster::start();
        let url = cluster.create_database("cpis");
        let store = open_postgres(&url).await;
        Self { store: Some(store), kind: Kind::Postgres { _cluster: cluster, url } }
    }

    fn store(&self) -> &dyn Store {
        self.store.as_deref().expect("open")
    }

    /// Closes the store and opens it again, as a restart does (the memory store has no restart).
    async fn reopen(&mut self) {
        let store = match &self.kind {
            Kind::Memory => return,
            Kind::Embedded(dir) => {
                // The lanes commit what is queued and stop when the last handle goes.
                drop(self.store.take());
                Arc::new(EmbeddedStore::open(dir.path()).unwrap()) as Arc<dyn Store>
            }
            Kind::Postgres { url, .. } => {
                drop(self.store.take());
                open_postgres(url).await
            }
        };
        self.store = Some(store);
    }

    /// Records a search of `person` at `minute`, notifying `authorities`; returns the sequences.
    async fn search(&self, person: NhsNumber, minute: i64, user: &str, authorities: &[&str]) -> Vec<(String, u64)> {
        let id = next_id();
        let access = access(id, person, minute, user);
        let drafts = authorities.iter().map(|la| draft(la, id)).collect();
        match self.store().record_access(access, drafts).await.unwrap() {
            Recorded::Notified(notified) => {
                notified.into_iter().map(|n| (n.draft.la_ods_code.clone(), n.sequence)).collect()
            }
            Recorded::Repeated => panic!("a new request was taken for a repeat"),
        }
    }

    async fn cursor(&self, la: &str) -> Cursor {
        let cursors = self.store().load().await.unwrap().cursors;
        cursors.into_iter().find(|cursor| cursor.la_ods_code == la).unwrap_or_default()
    }

    async fn plans(&self) -> BTreeSet<(String, NhsNumber, PlanType)> {
        let plans = self.store().load().await.unwrap().plans;
        plans.iter().map(|plan| (plan.la_ods_code().to_owned(), plan.nhs_number(), plan.plan_type())).collect()
    }

    async fn upsert(&self, la: &str, plans: Vec<StoredPlan>) {
        self.upsert_at(la, plans, base()).await;
    }

    async fn upsert_at(&self, la: &str, plans: Vec<StoredPlan>, at: DateTime<Utc>) {
        self.store().upsert_plans(authority(la), plans.into(), at).await.unwrap();
    }

    /// A person's plan history as (minute, authority, type, what, first address line of the version loaded).
    async fn history(&self, person: NhsNumber) -> Vec<(i64, String, PlanType, PlanEventKind, Option<String>)> {
        let events = self.store().plan_history_of(person).await.unwrap();
        events
            .into_iter()
            .map(|event| {
                let line = event.plan().unwrap().map(|plan| plan.address.lines.first().cloned().unwrap_or_default());
                assert_eq!(event.nhs_number, person);
                ((event.at - base()).num_minutes(), event.la_ods_code, event.plan_type, event.kind, line)
            })
            .collect()
    }
}

async fn open_postgres(url: &str) -> Arc<dyn Store> {
    cpis_relay::tls::install_crypto_provider();
    let options = PostgresOptions {
        connect: ConnectOptions { url: StoreUrl::parse(url).unwrap(), password_file: None, pool_size: 4 },
        write_timeout: Duration::from_secs(10),
    };
    Arc::new(PostgresStore::open(&options).await.unwrap())
}

fn next_id() -> u128 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    u128::from(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn base() -> DateTime<Utc> {
    "2026-06-01T09:00:00Z".parse().unwrap()
}

fn at(minute: i64) -> DateTime<Utc> {
    base() + chrono::Duration::minutes(minute)
}

fn person(n: u64) -> NhsNumber {
    NhsNumber::complete(999_000_000 + n).or_else(|| NhsNumber::complete(999_100_000 + n)).unwrap()
}

fn authority(la: &str) -> LocalAuthority {
    cpis_relay::synth::authority(la).unwrap_or_else(|| LocalAuthority {
        ods_code: la.into(),
        name: format!("Authority {la}"),
        office_hours_phone: "0100 000 0000".into(),
        emergency_phone: "0100 000 0001".into(),
    })
}

fn plan(la: &str, n: u64, plan_type: PlanType, end: Option<&str>) -> StoredPlan {
    let plan = Plan {
        nhs_number: person(n),
        la_ods_code: la.into(),
        local_id: format!("L{n}"),
        given_name: "Test".into(),
        family_name: "Child".into(),
        date_of_birth: "2015-01-01".parse().unwrap(),
        address: Default::default(),
        plan_type,
        start_date: "2019-01-01".parse().unwrap(),
        end_date: end.map(|end| end.parse().unwrap()),
        expected_delivery_date: None,
        team_code: "T".into(),
        loaded_at: base(),
    };
    StoredPlan::encode(&plan, la.into()).unwrap()
}

fn access(id: u128, person: NhsNumber, minute: i64, user: &str) -> AccessEvent {
    AccessEvent {
        id,
        accessed_at: at(minute),
        nhs_number: person,
        organisation_ods_code: "RR8".into(),
        organisation_name: "Leeds Teaching Hospitals".into(),
        care_setting: CareSetting::EmergencyDepartment,
        accessor: Accessor { user_id: user.into(), name: format!("Dr {user}"), role_code: "R8000".into() },
        request_id: format!("request-{id}"),
        scheduled: false,
    }
}

fn draft(la: &str, id: u128) -> NotificationDraft {
    NotificationDraft {
        la_ods_code: la.into(),
        notification_id: format!("n-{la}-{id}"),
        local_id: "L".into(),
        plan_type: PlanType::ChildProtection,
        team_code: "T".into(),
        traceparent: None,
    }
}

/// Instantiates each behavioural test once per store.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(super::Subject::embedded().await).await;
            })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(super::Subject::memory().await).await;
            })*
        }
        mod postgres_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(super::Subject::postgres().await).await;
            })*
        }
    };
}

conformance!(
    sequences_are_per_authority_in_commit_order_and_go_on_after_a_reopen,
    notifications_page_in_sequence_order,
    acknowledgements_are_cumulative_and_never_beyond_the_last_sequence,
    a_persons_recent_accesses_load_in_time_order_and_the_trail_keeps_every_access,
    a_request_is_found_only_by_its_whole_key,
    a_full_refresh_makes_the_set_exactly_the_new_one_and_never_half_of_it,
    retention_removes_only_what_is_past_its_keeping_period,
    a_plans_history_holds_each_change_once_and_retention_removes_the_old,
    a_persons_notifications_are_read_alone_by_authority_and_sequence,
    a_traced_searchs_notifications_keep_its_traceparent_and_untraced_ones_have_none,
    notes_keep_their_order_and_numbers_and_thinned_ones_go,
);

/// Issue 28 item 3: checkpoints are stored as signed and old ones thinned
/// (`remove_notes`), on every store: numbers increase in storing order, go on
/// after a reopen, and removing some keeps the rest in order.
async fn notes_keep_their_order_and_numbers_and_thinned_ones_go(mut subject: Subject) {
    use cpis_relay::store::log::{AccessLog, NoteKind};
    // The log's methods block on storage: run them off the runtime's threads.
    async fn on_log<T: Send + 'static>(
        log: Arc<dyn AccessLog>,
        work: impl FnOnce(&dyn AccessLog) -> T + Send + 'static,
    ) -> T {
        tokio::task::spawn_blocking(move || work(log.as_ref())).await.unwrap()
    }
    let texts = |notes: &[(u64, String)]| notes.iter().map(|(_, text)| text.clone()).collect::<Vec<_>>();
    let read = |log: &dyn AccessLog| {
        log.notes().unwrap().into_iter().map(|note| (note.sequence, note.text)).collect::<Vec<_>>()
    };
    let log = subject.store().access_log().unwrap();
    let stored = on_log(log.clone(), move |log| {
        for n in 0..5 {
            log.add_note(NoteKind::Checkpoint, &format!("note {n}\n")).unwrap();
        }
        read(log)
    })
    .await;
    assert_eq!(texts(&stored), ["note 0\n", "note 1\n", "note 2\n", "note 3\n", "note 4\n"]);
    assert!(stored.windows(2).all(|pair| pair[0].0 < pair[1].0), "numbered in storing order: {stored:?}");
    let gone = [stored[1].0, stored[3].0, u64::MAX / 2];
    let removed = on_log(log.clone(), move |log| log.remove_notes(&gone).unwrap()).await;
    assert_eq!(removed, 2, "only the notes there");
    drop(log);
    subject.reopen().await;
    let log = subject.store().access_log().unwrap();
    let kept = on_log(log, move |log| {
        log.add_note(NoteKind::Retention, "note 5\n").unwrap();
        read(log)
    })
    .await;
    assert_eq!(texts(&kept), ["note 0\n", "note 2\n", "note 4\n", "note 5\n"]);
    assert!(kept[3].0 > stored[4].0, "numbering goes on after a reopen");
}

async fn sequences_are_per_authority_in_commit_order_and_go_on_after_a_reopen(mut subject: Subject) {
    subject.upsert("706", vec![plan("706", 1, PlanType::ChildProtection, None)]).await;
    subject.upsert("707", vec![plan("707", 1, PlanType::LookedAfter, None)]).await;
    let child = person(1);
    for round in 1..=3 {
        let mut notified = subject.search(child, round, "u", &["706", "707"]).await;
        notified.sort();
        assert_eq!(notified, [("706".to_owned(), round as u64), ("707".to_owned(), round as u64)]);
    }
    assert_eq!(subject.search(child, 4, "u", &["706"]).await, [("706".to_owned(), 4)]);
    subject.store().ack("706".into(), 2).await.unwrap();

    subject.reopen().await;
    let cursor = subject.cursor("706").await;
    assert_eq!((cursor.last_sequence, cursor.acked_through), (4, 2));
    assert_eq!(subject.cursor("707").await.last_sequence, 3);
    assert_eq!(subject.search(child, 5, "u", &["706"]).await, [("706".to_owned(), 5)], "numbering goes on");
    assert_eq!(subject.search(child, 6, "u", &["707"]).await, [("707".to_owned(), 4)], "per authority");
}

async fn notifications_page_in_sequence_order(subject: Subject) {
    subject.upsert("706", vec![plan("706", 1, PlanType::ChildProtection, None)]).await;
    for minute in 0..7 {
        subject.search(person(1), minute, &format!("user-{minute}"), &["706"]).await;
    }
    let store = subject.store();
    let page = |after, limit| async move {
        let page = store.notifications_after("706", after, limit).await.unwrap();
        page.iter().map(|n| (n.sequence, n.access.accessor.user_id.clone())).collect::<Vec<_>>()
    };
    let users = |range: std::ops::RangeInclusive<u64>| -> Vec<(u64, String)> {
        range.map(|sequence| (sequence, format!("user-{}", sequence - 1))).collect()
    };
    assert_eq!(page(0, 3).await, users(1..=3));
    assert_eq!(page(3, 3).await, users(4..=6));
    assert_eq!(page(6, 3).await, users(7..=7));
    assert!(page(7, 3).await.is_empty());
    assert!(page(u64::MAX, 3).await.is_empty());
    assert!(store.notifications_after("707", 0, 3).await.unwrap().is_empty(), "another authority's are not listed");
}

async fn acknowledgements_are_cumulative_and_never_beyond_the_last_sequence(mut subject: Subject) {
    subject.upsert("706", vec![plan("706", 1, PlanType::ChildProtection, None)]).await;
    for minute in 0..3 {
        subject.search(person(1), minute, "u", &["706"]).await;
    }
    let ack = |through| subject.store().ack("706".into(), through);
    ack(2).await.unwrap();
    ack(1).await.unwrap();
    assert_eq!(subject.cursor("706").await.acked_through, 2, "an older acknowledgement moves nothing back");
    ack(99).await.unwrap();
    assert_eq!(subject.cursor("706").await.acked_through, 3, "never beyond the last sequence");
    subject.reopen().await;
    assert_eq!(subject.cursor("706").await.acked_through, 3);
    // Acknowledged notifications stay readable until retention removes them.
    assert_eq!(subject.store().notifications_after("706", 0, 10).await.unwrap().len(), 3);
}

async fn a_persons_recent_accesses_load_in_time_order_and_the_trail_keeps_every_access(subject: Subject) {
    let (child, other) = (person(1), person(2));
    for minute in 0..30 {
        subject.search(child, minute * 2, "ed", &[]).await;
        let routine = AccessEvent { scheduled: true, ..access(next_id(), child, minute * 2 + 1, "gp") };
        subject.store().record_access(routine, vec![]).await.unwrap();
    }
    subject.search(other, 100, "ed", &[]).await;
    // What a search lists and checks requests against is rebuilt from the store on start.
    let recent = subject.store().load().await.unwrap().recent;
    let held: Vec<(DateTime<Utc>, bool)> =
        recent.with(child, |held| held.iter().map(|access| (access.accessed_at, access.scheduled)).collect());
    let expected: Vec<(DateTime<Utc>, bool)> = (0..60).map(|minute| (at(minute), minute % 2 == 1)).collect();
    assert_eq!(held, expected, "every access of the day, oldest first, scheduled ones marked");
    let listed = recent.with(child, |held| cpis_relay::accesses::listed_accesses(held, None));
    assert!(listed.iter().all(|access| !access.scheduled), "scheduled reads are never listed");
    assert_eq!(recent.with(other, <[_]>::len), 1);
    let trail = subject.store().accesses_of(child).await.unwrap();
    assert_eq!(trail.len(), 60, "the auditor sees every access, scheduled ones too");
    assert!(trail.windows(2).all(|pair| pair[0].accessed_at < pair[1].accessed_at), "oldest first");
    assert!(trail.iter().all(|access| access.nhs_number == child));
}

async fn a_request_is_found_only_by_its_whole_key(subject: Subject) {
    let child = person(1);
    let made = access(next_id(), child, 5, "u");
    subject.store().record_access(made.clone(), vec![]).await.unwrap();
    subject.search(child, 6, "u", &[]).await;
    let key = made.request_key();
    let recent = subject.store().load().await.unwrap().recent;
    let repeats =
        |key: &RequestKey| recent.with(key.nhs_number, |held| cpis_relay::accesses::is_repeat(held, key, at(7)));
    assert!(repeats(&key), "the request made at minute 5 is known after a reload");
    for other in [
        RequestKey { user_id: "v".into(), ..key.clone() },
        RequestKey { organisation_ods_code: "RR9".into(), ..key.clone() },
        RequestKey { care_setting: CareSetting::OutOfHoursGp, ..key.clone() },
        RequestKey { request_id: "another".into(), ..key.clone() },
        RequestKey { nhs_number: person(2), ..key.clone() },
    ] {
        assert!(!repeats(&other), "{other:?} was never made");
    }
}

async fn a_full_refresh_makes_the_set_exactly_the_new_one_and_never_half_of_it(mut subject: Subject) {
    const PEOPLE: u64 = 300;
    let set = |from: u64| -> Vec<StoredPlan> {
        (from..from + PEOPLE).map(|n| plan("706", n, PlanType::ChildProtection, None)).collect()
    };
    let keys = |plans: &[StoredPlan]| -> BTreeSet<(String, NhsNumber, PlanType)> {
        plans.iter().map(|plan| ("706".to_owned(), plan.nhs_number(), plan.plan_type())).collect()
    };
    subject.upsert("706", set(0)).await;
    subject.upsert("707", vec![plan("707", 5, PlanType::LookedAfter, None)]).await;
    let other = BTreeSet::from([("707".to_owned(), person(5), PlanType::LookedAfter)]);
    let (old, new) = (keys(&set(0)), keys(&set(PEOPLE / 2)));

    // Reads while the refresh commits see the old set or the new one, whole.
    let store = Arc::clone(subject.store.as_ref().unwrap());
    let refresh = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.replace_plans(authority("706"), set(PEOPLE / 2).into(), at(1)).await }
    });
    while !refresh.is_finished() {
        let seen = subject.plans().await;
        let (seen_706, seen_707): (BTreeSet<_>, BTreeSet<_>) = seen.into_iter().partition(|(la, _, _)| la == "706");
        assert!(seen_706 == old || seen_706 == new, "a read saw half a refresh: {} plans", seen_706.len());
        assert_eq!(seen_707, other, "another authority's plans are untouched");
    }
    refresh.await.unwrap().unwrap();
    drop(store);
    let expected: BTreeSet<_> = new.union(&other).cloned().collect();
    assert_eq!(subject.plans().await, expected);

    let doomed = person(PEOPLE / 2);
    subject.store().delete_plans("706".into(), doomed, None, at(2)).await.unwrap();
    subject.reopen().await;
    let after = subject.plans().await;
    assert_eq!(after.len(), expected.len() - 1);
    assert!(after.iter().all(|(_, nhs_number, _)| *nhs_number != doomed), "the deleted plan is gone");
}

async fn a_plans_history_holds_each_change_once_and_retention_removes_the_old(mut subject: Subject) {
    use PlanEventKind::*;
    use PlanType::{ChildProtection as Cp, LookedAfter as La};
    let child = person(7);
    let version = |la: &str, plan_type, end: Option<&str>, line: &str, minute| {
        let mut plan = plan(la, 7, plan_type, end).decode().unwrap();
        plan.address.lines = vec![line.into()];
        plan.loaded_at = at(minute);
        StoredPlan::encode(&plan, la.into()).unwrap()
    };
    let other = plan("706", 8, Cp, None);
    subject.upsert_at("706", vec![version("706", Cp, None, "1 Street", 0)], at(0)).await;
    // The same plan loaded again (another time) is no change.
    subject.upsert_at("706", vec![version("706", Cp, None, "1 Street", 1)], at(1)).await;
    let refresh = vec![version("706", Cp, None, "2 Road", 2), other.clone()];
    subject.store().replace_plans(authority("706"), refresh.into(), at(2)).await.unwrap();
    subject.upsert_at("707", vec![version("707", La, Some("2020-01-01"), "1 Street", 3)], at(3)).await;
    subject.store().replace_plans(authority("706"), vec![other].into(), at(4)).await.unwrap();
    subject.upsert_at("706", vec![version("706", Cp, None, "3 Lane", 5)], at(5)).await;
    subject.store().delete_plans("706".into(), child, None, at(6)).await.unwrap();
    subject.reopen().await;
    let line = |text: &str| Some(text.to_owned());
    let whole = vec![
        (0, "706".to_owned(), Cp, Loaded, line("1 Street")),
        (2, "706".to_owned(), Cp, Changed, line("2 Road")),
        (3, "707".to_owned(), La, Loaded, line("1 Street")),
        (4, "706".to_owned(), Cp, Withdrawn, None),
        (5, "706".to_owned(), Cp, Loaded, line("3 Lane")),
        (6, "706".to_owned(), Cp, Deleted, None),
    ];
    assert_eq!(subject.history(child).await, whole);
    assert_eq!(subject.history(person(8)).await, [(2, "706".to_owned(), Cp, Loaded, line(""))]);

    // Retention: the 707 plan ended in 2020 (expired, one more change); changes before minute 2 go.
    let expiry = Expiry {
        now: at(10),
        today: "2026-06-01".parse().unwrap(),
        acked_notifications_before: at(0),
        accesses_before: at(2),
        log_positions_below: u64::MAX,
        limit: EXPIRY_CHUNK,
    };
    let counts = subject.store().expire(expiry).await.unwrap();
    assert_eq!((counts.plans, counts.plan_changes), (1, 1));
    let mut kept = whole[1..].to_vec();
    kept.push((10, "707".to_owned(), La, Expired, None));
    assert_eq!(subject.history(child).await, kept);
    let again = subject.store().expire(expiry).await.unwrap();
    assert_eq!((again.plans, again.plan_changes), (0, 0), "nothing more is due");
}

async fn retention_removes_only_what_is_past_its_keeping_period(subject: Subject) {
    // Ended in 2020: invisible since 2021 (a year after its end). The others are current.
    subject
        .upsert(
            "706",
            vec![
                plan("706", 1, PlanType::ChildProtection, Some("2020-01-01")),
                plan("706", 2, PlanType::ChildProtection, None),
            ],
        )
        .await;
    let child = person(2);
    for minute in 0..4 {
        subject.search(child, minute * 60, "u", &["706"]).await;
    }
    subject.store().ack("706".into(), 3).await.unwrap();
    let expiry = Expiry {
        now: at(300),
        today: "2026-06-01".parse().unwrap(),
        // Notifications 1 and 2 are acknowledged and older; 3 is acknowledged but newer; 4 is not acknowledged.
        acked_notifications_before: at(100),
        // Accesses 1 and 2 (minutes 0 and 60) are older.
        accesses_before: at(90),
        // No log keeper runs here: nothing bounds retention by the tree.
        log_positions_below: u64::MAX,
        limit: EXPIRY_CHUNK,
    };
    let counts = subject.store().expire(expiry).await.unwrap();
    assert_eq!((counts.plans, counts.notifications, counts.accesses), (1, 2, 2));
    let left: Vec<u64> =
        subject.store().notifications_after("706", 0, 10).await.unwrap().iter().map(|n| n.sequence).collect();
    assert_eq!(left, [3, 4]);
    let trail: Vec<DateTime<Utc>> =
        subject.store().accesses_of(child).await.unwrap().iter().map(|a| a.accessed_at).collect();
    assert_eq!(trail, [at(120), at(180)]);
    assert_eq!(subject.plans().await, BTreeSet::from([("706".to_owned(), child, PlanType::ChildProtection)]));
    // Nothing more is due: a second pass removes nothing, and numbering goes on.
    let again = subject.store().expire(expiry).await.unwrap();
    assert_eq!((again.plans, again.notifications, again.accesses), (0, 0, 0));
    assert_eq!(subject.search(child, 300, "u", &["706"]).await, [("706".to_owned(), 5)]);
}

async fn a_persons_notifications_are_read_alone_by_authority_and_sequence(mut subject: Subject) {
    subject.upsert("706", vec![plan("706", 1, PlanType::ChildProtection, None)]).await;
    subject.upsert("707", vec![plan("707", 1, PlanType::LookedAfter, None)]).await;
    subject.upsert("706", vec![plan("706", 2, PlanType::ChildProtection, None)]).await;
    let (child, other) = (person(1), person(2));
    subject.search(child, 0, "u0", &["706", "707"]).await;
    subject.search(other, 1, "u1", &["706"]).await;
    subject.search(child, 2, "u2", &["707"]).await;
    subject.search(other, 3, "u3", &["706"]).await;
    subject.search(child, 4, "u4", &["706"]).await;
    let theirs = |rows: &[(&str, u64, &str)]| -> Vec<(String, u64, String)> {
        rows.iter().map(|(la, sequence, user)| ((*la).to_owned(), *sequence, (*user).to_owned())).collect()
    };
    let child_expected = theirs(&[("706", 1, "u0"), ("706", 4, "u4"), ("707", 1, "u0"), ("707", 2, "u2")]);
    assert_eq!(notifications_of(subject.store(), child).await, child_expected);
    assert_eq!(notifications_of(subject.store(), other).await, theirs(&[("706", 2, "u1"), ("706", 3, "u3")]));
    assert!(notifications_of(subject.store(), person(3)).await.is_empty(), "no one else's");

    subject.reopen().await;
    assert_eq!(notifications_of(subject.store(), child).await, child_expected, "the same after a reopen");
    // Retention removes the acknowledged old ones from the person's too.
    subject.store().ack("706".into(), 2).await.unwrap();
    let expiry = Expiry {
        now: at(10),
        today: "2026-06-01".parse().unwrap(),
        acked_notifications_before: at(10),
        accesses_before: at(-1),
        log_positions_below: u64::MAX,
        limit: EXPIRY_CHUNK,
    };
    assert_eq!(subject.store().expire(expiry).await.unwrap().notifications, 2);
    assert_eq!(
        notifications_of(subject.store(), child).await,
        theirs(&[("706", 4, "u4"), ("707", 1, "u0"), ("707", 2, "u2")])
    );
    assert_eq!(notifications_of(subject.store(), other).await, theirs(&[("706", 3, "u3")]));
}

/// (authority, sequence, user) of each of a person's notifications, as the store lists them.
/// Issue 31: a traced search's notifications keep its W3C trace context
/// through the store (and a restart), for the delivery agent to continue;
/// an untraced search's are stored as every notification was before traces
/// (no trailer in the embedded store, NULL in PostgreSQL) and read without one.
async fn a_traced_searchs_notifications_keep_its_traceparent_and_untraced_ones_have_none(mut subject: Subject) {
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    subject.upsert("706", vec![plan("706", 1, PlanType::ChildProtection, None)]).await;
    subject.upsert("707", vec![plan("707", 1, PlanType::LookedAfter, None)]).await;
    subject.search(person(1), 0, "untraced", &["706"]).await;
    let id = next_id();
    let drafts = ["706", "707"]
        .iter()
        .map(|la| NotificationDraft { traceparent: Some(TRACEPARENT.into()), ..draft(la, id) })
        .collect();
    let recorded = subject.store().record_access(access(id, person(1), 1, "traced"), drafts).await.unwrap();
    let Recorded::Notified(notified) = recorded else { panic!("a new request was taken for a repeat") };
    assert!(notified.iter().all(|n| n.draft.traceparent.as_deref() == Some(TRACEPARENT)));
    for reopened in [false, true] {
        if reopened {
            subject.reopen().await;
        }
        let store = subject.store();
        let traces = |page: Vec<cpis_relay::model::Notification>| -> Vec<(u64, Option<String>)> {
            page.into_iter().map(|n| (n.sequence, n.draft.traceparent)).collect()
        };
        let page = store.notifications_after("706", 0, 10).await.unwrap();
        assert_eq!(traces(page), [(1, None), (2, Some(TRACEPARENT.to_owned()))], "reopened: {reopened}");
        let page = store.notifications_after("707", 0, 10).await.unwrap();
        assert_eq!(traces(page), [(1, Some(TRACEPARENT.to_owned()))], "reopened: {reopened}");
        let of_person = store.notifications_of(person(1)).await.unwrap();
        assert_eq!(of_person.iter().filter(|n| n.draft.traceparent.is_some()).count(), 2, "reopened: {reopened}");
    }
}

async fn notifications_of(store: &dyn Store, person: NhsNumber) -> Vec<(String, u64, String)> {
    let found = store.notifications_of(person).await.unwrap();
    assert!(found.iter().all(|n| n.access.nhs_number == person), "only that person's");
    found.iter().map(|n| (n.draft.la_ods_code.clone(), n.sequence, n.access.accessor.user_id.clone())).collect()
}
