//! The storage comparison behind the flagged-search write path (issue 9):
//! what one durable commit of a batch of flagged searches costs on this
//! machine's disk, for three layouts.
//!
//! - `redb-views`: the layout before the change: every search writes its
//!   access into a per-person table and a time table, its notification into a
//!   per-authority table and the authority's cursor, all in one durable redb
//!   transaction (scattered B-tree pages, one `fdatasync`).
//! - `redb-journal`: the same searches as one record appended to a journal
//!   table in its own redb file (increasing keys: the rightmost leaf), one
//!   durable transaction; the views would be maintained off the commit path.
//! - `fjall`: an LSM engine with a write-ahead journal: the same view writes
//!   as the first layout, in one atomic batch across keyspaces, persisted with
//!   `SyncData` (a sequential journal append, one `fdatasync`).
//!
//! Each store is first filled with 200,000 accesses of random people, so the
//! B-trees have their real depth. Run: `cargo bench --bench journal`; each
//! line is one layout at one batch size, commit latency p50/p99 and the
//! searches per second one committing thread reaches.

use std::time::Instant;

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::StdRng};

const PREFILL: u64 = 200_000;
const ACCESS_BYTES: usize = 180;
const NOTIFICATION_BYTES: usize = 420;

/// One flagged search's keys: person, time, id, authority, sequence.
#[derive(Clone, Copy)]
struct Search {
    nhs: u64,
    at: i64,
    id: u128,
    la: &'static str,
    sequence: u64,
}

fn searches(rng: &mut StdRng, count: usize, clock: &mut i64, sequence: &mut u64) -> Vec<Search> {
    (0..count)
        .map(|_| {
            *clock += 1_000;
            *sequence += 1;
            Search {
                nhs: 9_990_000_000 + rng.random_range(0..900_000u64) * 11,
                at: *clock,
                id: rng.random(),
                la: if rng.random_bool(0.5) { "706" } else { "855" },
                sequence: *sequence,
            }
        })
        .collect()
}

trait Layout {
    fn name(&self) -> &'static str;
    fn commit(&mut self, batch: &[Search]);
}

mod redb_layouts {
    use redb::{Database, Durability, TableDefinition};

    use super::{ACCESS_BYTES, Layout, NOTIFICATION_BYTES, Search};

    const ACCESSES: TableDefinition<(u64, i64, u128), &[u8]> = TableDefinition::new("accesses");
    const ACCESS_TIMES: TableDefinition<(i64, u128), u64> = TableDefinition::new("access_times");
    const NOTIFICATIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("notifications");
    const CURSORS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("cursors");
    const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");

    pub struct Views(pub Database);
    pub struct Journal(pub Database, pub u64);

    impl Layout for Views {
        fn name(&self) -> &'static str {
            "redb-views"
        }
        fn commit(&mut self, batch: &[Search]) {
            let mut transaction = self.0.begin_write().unwrap();
            transaction.set_durability(Durability::Immediate);
            {
                let mut accesses = transaction.open_table(ACCESSES).unwrap();
                let mut times = transaction.open_table(ACCESS_TIMES).unwrap();
                let mut notifications = transaction.open_table(NOTIFICATIONS).unwrap();
                let mut cursors = transaction.open_table(CURSORS).unwrap();
                for search in batch {
                    accesses.insert((search.nhs, search.at, search.id), [7u8; ACCESS_BYTES].as_slice()).unwrap();
                    times.insert((search.at, search.id), search.nhs).unwrap();
                    notifications.insert((search.la, search.sequence), [9u8; NOTIFICATION_BYTES].as_slice()).unwrap();
                    cursors.insert(search.la, (search.sequence, 0)).unwrap();
                }
            }
            transaction.commit().unwrap();
        }
    }

    impl Layout for Journal {
        fn name(&self) -> &'static str {
            "redb-journal"
        }
        fn commit(&mut self, batch: &[Search]) {
            let record = vec![5u8; batch.len() * (ACCESS_BYTES + NOTIFICATION_BYTES)];
            let mut transaction = self.0.begin_write().unwrap();
            transaction.set_durability(Durability::Immediate);
            {
                let mut journal = transaction.open_table(JOURNAL).unwrap();
                self.1 += 1;
                journal.insert(self.1, record.as_slice()).unwrap();
            }
            transaction.commit().unwrap();
        }
    }
}

mod fjall_layout {
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

    use super::{ACCESS_BYTES, Layout, NOTIFICATION_BYTES, Search};

    pub struct Lsm {
        pub database: Database,
        pub accesses: Keyspace,
        pub times: Keyspace,
        pub notifications: Keyspace,
        pub cursors: Keyspace,
    }

    impl Lsm {
        pub fn open(path: &std::path::Path) -> Self {
            let database = Database::builder(path).open().unwrap();
            let keyspace = |name: &str| database.keyspace(name, KeyspaceCreateOptions::default).unwrap();
            Self {
                accesses: keyspace("accesses"),
                times: keyspace("access_times"),
                notifications: keyspace("notifications"),
                cursors: keyspace("cursors"),
                database,
            }
        }
    }

    impl Layout for Lsm {
        fn name(&self) -> &'static str {
            "fjall"
        }
        fn commit(&mut self, batch: &[Search]) {
            let mut write = self.database.batch().durability(Some(PersistMode::SyncData));
            for search in batch {
                let mut access_key = search.nhs.to_be_bytes().to_vec();
                access_key.extend_from_slice(&search.at.to_be_bytes());
                access_key.extend_from_slice(&search.id.to_be_bytes());
                write.insert(&self.accesses, access_key, [7u8; ACCESS_BYTES]);
                let mut time_key = search.at.to_be_bytes().to_vec();
                time_key.extend_from_slice(&search.id.to_be_bytes());
                write.insert(&self.times, time_key, search.nhs.to_be_bytes());
                let mut notification_key = search.la.as_bytes().to_vec();
                notification_key.extend_from_slice(&search.sequence.to_be_bytes());
                write.insert(&self.notifications, notification_key, [9u8; NOTIFICATION_BYTES]);
                write.insert(&self.cursors, search.la.as_bytes(), search.sequence.to_be_bytes());
            }
            write.commit().unwrap();
        }
    }
}

fn measure(
    layout: &mut dyn Layout,
    batch_size: usize,
    commits: usize,
    rng: &mut StdRng,
    clock: &mut i64,
    seq: &mut u64,
) {
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let started = Instant::now();
    for _ in 0..commits {
        let batch = searches(rng, batch_size, clock, seq);
        let begun = Instant::now();
        layout.commit(&batch);
        latencies.record(begun.elapsed().as_micros().max(1) as u64).unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{:<13} batch {:>3}: commit p50 {:>6} us  p99 {:>6} us  {:>8.0} searches/s",
        layout.name(),
        batch_size,
        latencies.value_at_quantile(0.5),
        latencies.value_at_quantile(0.99),
        (commits * batch_size) as f64 / seconds
    );
}

fn main() {
    // `cargo bench` passes harness flags such as `--bench`; this bench takes none.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let (mut clock, mut sequence) = (1_700_000_000_000_000i64, 0u64);
    let open_redb = |name: &str| redb::Database::create(dir.path().join(name)).unwrap();
    let mut layouts: Vec<Box<dyn Layout>> = vec![
        Box::new(redb_layouts::Views(open_redb("views.redb"))),
        Box::new(redb_layouts::Journal(open_redb("journal.redb"), 0)),
        Box::new(fjall_layout::Lsm::open(&dir.path().join("fjall"))),
    ];
    for layout in &mut layouts {
        // Fill in large non-measured batches so the trees have their real depth.
        for _ in 0..(PREFILL / 5_000) {
            let batch = searches(&mut rng, 5_000, &mut clock, &mut sequence);
            layout.commit(&batch);
        }
    }
    for batch_size in [1, 16, 64] {
        let commits = if batch_size == 1 { 1_000 } else { 300 };
        for layout in &mut layouts {
            measure(layout.as_mut(), batch_size, commits, &mut rng, &mut clock, &mut sequence);
        }
    }
}
