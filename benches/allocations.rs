//! Heap allocations per search, counted (issue 29, item 2): a deterministic
//! figure where timings on a shared machine are not. A counting global
//! allocator (the system allocator underneath) counts every allocation and
//! reallocation of the process, on every thread, while a relay in-process
//! answers searches one at a time: from the request's wire bytes (decoded as
//! tonic would) through `Relay::search` (validation, index lookup, the
//! commit of the access and its notification on the store's writer thread,
//! the access log's keeper, the in-memory accesses) to the answer's wire bytes
//! (a `SearchAnswer`, as the server sends it, encoded into a buffer kept
//! between searches, as tonic's encoder keeps its own). What tonic, HTTP/2 and TLS allocate around that is not counted.
//!
//! `cargo bench --bench allocations` prints one row per case; the budget of
//! a flagged search is 20.

// A global allocator can only be written with `unsafe` (the trait is): this
// one forwards every call to the system allocator unchanged and counts it.
#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use cpis_relay::{
    bench::{ed_identity, load_people, search_request},
    clock::SystemClock,
    proto,
    relay::{Relay, RelaySettings},
    service::answer::SearchAnswer,
    store::{Store, embedded::EmbeddedStore, memory::MemoryStore},
    wire as convert,
};
use prost::Message;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static REALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size.saturating_sub(layout.size()) as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Clone, Copy)]
struct Counts {
    allocations: u64,
    reallocations: u64,
    bytes: u64,
}

fn counts() -> Counts {
    Counts {
        allocations: ALLOCATIONS.load(Ordering::Relaxed),
        reallocations: REALLOCATIONS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
    }
}

/// People searched in turn: few enough that each has 25 previous accesses
/// listed once warmed up, as the gRPC bench's flagged answer has.
const PEOPLE_SEARCHED: usize = 200;
/// Users searching, one per round over the people: each person is searched
/// by each user in turn, so 25 of the listed accesses are distinct users.
const USERS: usize = 40;
const WARM_UP_ROUNDS: usize = 45;
const MEASURED_ROUNDS: usize = 10;

struct Case {
    name: &'static str,
    flagged: bool,
}

async fn measure(relay: &Relay, people: &[String], case: &Case) -> (Counts, usize, usize) {
    let identity = ed_identity();
    let users: Vec<String> = (0..USERS).map(|user| format!("bench-user-{user}")).collect();
    // The requests' wire bytes, made before counting (a client made them).
    let requests: Vec<Vec<Vec<u8>>> = (0..USERS)
        .map(|user| {
            people
                .iter()
                .map(|nhs| search_request(nhs.clone(), users[user].clone()).encode_to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut answer = Vec::with_capacity(16 * 1024);
    let mut listed = 0;
    let mut search = async |round: usize, person: usize| {
        let request = proto::SearchRequest::decode(&requests[round % USERS][person][..]).unwrap();
        let query = convert::search_query(request).unwrap();
        let outcome = relay.search(&identity, query).await.unwrap();
        assert_eq!(outcome.flagged(), case.flagged);
        let listed = outcome.previous_accesses.len();
        answer.clear();
        SearchAnswer(outcome).encode(&mut answer).unwrap();
        listed
    };
    let rounds = if case.flagged { WARM_UP_ROUNDS } else { 1 };
    for round in 0..rounds {
        for person in 0..people.len() {
            search(round, person).await;
        }
    }
    let before = counts();
    let mut searches = 0;
    for round in rounds..rounds + MEASURED_ROUNDS {
        for person in 0..people.len() {
            listed += search(round, person).await;
            searches += 1;
        }
    }
    let after = counts();
    let spent = Counts {
        allocations: after.allocations - before.allocations,
        reallocations: after.reallocations - before.reallocations,
        bytes: after.bytes - before.bytes,
    };
    (spent, searches, listed / searches.max(1))
}

async fn run(store_name: &str, store: Arc<dyn Store>) {
    let relay = Relay::open(store, Arc::new(SystemClock), RelaySettings::default()).await.unwrap();
    let today = chrono::Utc::now().date_naive();
    let flagged = load_people(&relay, 10_000, today).await.unwrap();
    let flagged_people: Vec<String> = flagged.iter().step_by(7).take(PEOPLE_SEARCHED).cloned().collect();
    let records = cpis_relay::synth::generate(10_000, 2026, today);
    let unflagged_people: Vec<String> =
        cpis_relay::synth::unflagged_numbers(&records, PEOPLE_SEARCHED, 11).iter().map(ToString::to_string).collect();
    for (case, people) in [
        (Case { name: "flagged", flagged: true }, &flagged_people),
        (Case { name: "unflagged", flagged: false }, &unflagged_people),
    ] {
        let (spent, searches, listed) = measure(&relay, people, &case).await;
        let per = |n: u64| n as f64 / searches as f64;
        println!(
            "allocations per {:<9} search, {:<8} store: {:>6.1} (+ {:.1} reallocations, {:>7.0} bytes; {} searches, {} previous accesses listed)",
            case.name,
            store_name,
            per(spent.allocations),
            per(spent.reallocations),
            per(spent.bytes),
            searches,
            listed,
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        run("memory", Arc::new(MemoryStore::new())).await;
        let dir = tempfile::tempdir().unwrap();
        run("embedded", Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
    });
}
