//! Micro-benchmarks of the relay's hot paths, in-process (no network):
//! NHS number parsing, index lookup with a full test range of people, the
//! search path, store commits at several batch sizes, and a FULL_REFRESH of
//! 150,000 records. `cargo bench`; the load generator is `cpis-relay bench`.

use std::sync::Arc;

use chrono::NaiveDate;
use cpis_relay::{
    auth::{Identity, Role},
    bench::{ed_identity, load_people},
    clock::SystemClock,
    index::Index,
    model::{AccessEvent, Accessor, Address, CareSetting, NotificationDraft, Plan, PlanType},
    nhs::NhsNumber,
    relay::{Relay, RelaySettings, UploadHeader, UploadMode},
    store::{Change, Store, embedded::EmbeddedStore, memory::MemoryStore},
    stored::StoredPlan,
    synth, wire,
};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn people(count: usize) -> Vec<NhsNumber> {
    (999_000_000u64..).filter_map(NhsNumber::complete).take(count).collect()
}

fn plan(nhs_number: NhsNumber) -> Plan {
    Plan {
        nhs_number,
        la_ods_code: "706".into(),
        local_id: "706-0000001".into(),
        given_name: "Amelia".into(),
        family_name: "Wilson".into(),
        date_of_birth: NaiveDate::from_ymd_opt(2016, 1, 2).unwrap(),
        address: Address { lines: vec!["145 Church Road".into(), "London".into()], postcode: "N1 2ZZ".into() },
        plan_type: PlanType::ChildProtection,
        start_date: NaiveDate::from_ymd_opt(2025, 5, 25).unwrap(),
        end_date: None,
        expected_delivery_date: None,
        team_code: "CSC-1".into(),
        loaded_at: chrono::Utc::now(),
    }
}

fn nhs_parsing(c: &mut Criterion) {
    c.bench_function("nhs/parse_spaced", |b| b.iter(|| NhsNumber::parse(std::hint::black_box("943 476 5919"))));
}

fn index_lookup(c: &mut Criterion) {
    let numbers = people(900_000);
    let index = Index::new();
    let la: Arc<str> = "706".into();
    index.upsert(numbers.iter().map(|&n| StoredPlan::encode(&plan(n), Arc::clone(&la)).unwrap()));
    let mut step = 0usize;
    c.bench_function("index/lookup_900k_people", |b| {
        b.iter(|| {
            step = (step + 7919) % numbers.len();
            index.plans(numbers[step])
        })
    });
}

fn search_path(c: &mut Criterion) {
    let runtime = runtime();
    let relay = runtime.block_on(async {
        let relay =
            Relay::open(Arc::new(MemoryStore::new()), Arc::new(SystemClock), RelaySettings::default()).await.unwrap();
        let flagged = load_people(&relay, 50_000, chrono::Utc::now().date_naive()).await.unwrap();
        (relay, flagged)
    });
    let (relay, flagged) = relay;
    let identity = ed_identity();
    let records = synth::generate(50_000, 2026, chrono::Utc::now().date_naive());
    let unflagged: Vec<String> =
        synth::unflagged_numbers(&records, 1_000, 11).iter().map(ToString::to_string).collect();
    assert!(unflagged.iter().all(|nhs| !flagged.contains(nhs)), "the unflagged sample holds no loaded person");
    let request = |nhs_number: &str| cpis_relay::bench::search_query(nhs_number.to_owned(), "bench".into());
    let mut group = c.benchmark_group("search/in_process");
    let mut step = 0usize;
    group.bench_function("unflagged", |b| {
        b.to_async(&runtime).iter(|| {
            step = (step + 1) % unflagged.len();
            let request = request(&unflagged[step]);
            let (relay, identity) = (relay.clone(), identity.clone());
            async move { relay.search(&identity, request).await.unwrap() }
        })
    });
    group.bench_function("flagged_memory_store", |b| {
        b.to_async(&runtime).iter(|| {
            step = (step + 7919) % flagged.len();
            let request = request(&flagged[step]);
            let (relay, identity) = (relay.clone(), identity.clone());
            async move { relay.search(&identity, request).await.unwrap() }
        })
    });
    group.finish();
}

fn access_change(i: u64) -> Change {
    let nhs_number = people(1)[0];
    Change::RecordAccess {
        access: AccessEvent {
            id: u128::from(i) << 64 | u128::from(rand::random::<u64>()),
            accessed_at: chrono::Utc::now(),
            nhs_number,
            organisation_ods_code: "RR8".into(),
            organisation_name: "LEEDS TEACHING HOSPITALS NHS TRUST".into(),
            care_setting: CareSetting::EmergencyDepartment,
            accessor: Accessor { user_id: format!("user-{i}"), name: "Bench User".into(), role_code: String::new() },
            request_id: format!("request-{i}"),
            scheduled: false,
        },
        drafts: vec![NotificationDraft {
            la_ods_code: "706".into(),
            notification_id: format!("n-{i}"),
            local_id: "706-0000001".into(),
            plan_type: PlanType::ChildProtection,
            team_code: "CSC-1".into(),
            traceparent: None,
        }],
    }
}

fn store_commits(c: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut group = c.benchmark_group("store/commit_concurrent_changes");
    group.sample_size(20);
    for batch in [1u64, 16, 256] {
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.to_async(&runtime).iter(|| {
                let store = store.clone();
                async move {
                    let applied = futures::future::join_all((0..batch).map(|i| store.apply(access_change(i)))).await;
                    assert!(applied.iter().all(Result::is_ok));
                }
            })
        });
    }
    group.finish();
}

fn full_refresh(c: &mut Criterion) {
    let runtime = runtime();
    let today = chrono::Utc::now().date_naive();
    let records: Vec<_> = synth::generate(150_000, 7, today)
        .into_iter()
        .map(|record| wire::plan_record_from_wire(record.record))
        .take(150_000)
        .collect();
    let authority = synth::authority("706").unwrap();
    let identity =
        Identity { ods_code: "706".into(), organisation_name: authority.name.clone(), role: Role::SocialCare };
    let mut group = c.benchmark_group("upload");
    group.sample_size(10);
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("full_refresh_150k_embedded", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let relay = runtime.block_on(async {
                    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
                    Relay::open(store, Arc::new(SystemClock), RelaySettings::default()).await.unwrap()
                });
                (dir, relay, records.clone())
            },
            |(dir, relay, records)| {
                runtime.block_on(async {
                    let header = UploadHeader {
                        mode: UploadMode::FullRefresh,
                        file_id: "bench".into(),
                        local_authority: authority.clone(),
                        allow_large_removal: true,
                    };
                    let outcome = relay
                        .upload(&identity, header, futures::stream::iter(records.into_iter().map(Ok)))
                        .await
                        .unwrap();
                    assert!(outcome.loaded > 0);
                });
                drop(relay);
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, nhs_parsing, index_lookup, search_path, store_commits, full_refresh);
criterion_main!(benches);
