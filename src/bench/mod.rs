//! Measurement tools behind `cpis-relay bench`: the gRPC load generator
//! (optionally against an echo baseline), and in-process scenarios for the
//! store: filling it, timing start-up, and a retention soak with a fast clock.

pub mod cpu;
pub mod delay;
pub mod delivery;
pub mod echo;
pub mod faults;
pub mod load;
pub mod national_day;
pub mod process;
pub mod receiver;

use std::{path::Path, sync::Arc, time::Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::{
    auth::{Identity, Role},
    clock::Clock,
    model::LocalAuthority,
    proto,
    relay::{Relay, RelaySettings, UploadHeader, UploadMode},
    store::StoreError,
    synth, wire as convert,
};

/// Resident set size of this process in bytes (Linux), for memory figures.
pub fn resident_bytes() -> Option<u64> {
    memory_bytes("self", "VmRSS:")
}

/// A memory figure of `/proc/PROCESS/status` (`VmRSS:` now, `VmHWM:` its
/// peak), in bytes; `process` is a PID or `self`.
pub fn memory_bytes(process: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

/// Bytes of every file under a directory, its subdirectories included.
pub fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            Some(if meta.is_dir() { directory_bytes(&entry.path()) } else { meta.len() })
        })
        .sum()
}

fn la_identity(authority: &LocalAuthority) -> Identity {
    Identity { ods_code: authority.ods_code.clone(), organisation_name: authority.name.clone(), role: Role::SocialCare }
}

/// An emergency department search by the bench's user, with a server-made request id.
pub fn search_request(nhs_number: String, user_id: String) -> proto::SearchRequest {
    proto::SearchRequest {
        nhs_number,
        accessor: Some(proto::Accessor { user_id, name: "Bench User".into(), role_code: String::new() }),
        care_setting: proto::CareSetting::EmergencyDepartment as i32,
        request_id: String::new(),
    }
}

/// [`search_request`] as the domain takes it, for in-process searches.
pub fn search_query(nhs_number: String, user_id: String) -> crate::relay::SearchQuery {
    crate::relay::SearchQuery {
        nhs_number,
        accessor: Some(crate::model::Accessor { user_id, name: "Bench User".into(), role_code: String::new() }),
        care_setting: Some(crate::model::CareSetting::EmergencyDepartment),
        ..Default::default()
    }
}

/// An emergency department identity for in-process searches.
pub fn ed_identity() -> Identity {
    Identity {
        ods_code: "RR8".into(),
        organisation_name: "LEEDS TEACHING HOSPITALS NHS TRUST".into(),
        role: Role::UnscheduledCare,
    }
}

/// Loads `people` synthetic people into a relay in-process (every synthetic
/// authority, FULL_REFRESH); returns the flagged NHS numbers.
pub async fn load_people(
    relay: &Relay,
    people: usize,
    today: chrono::NaiveDate,
) -> Result<Vec<String>, crate::error::Error> {
    let records = synth::generate(people, 2026, today);
    for authority in synth::authorities() {
        let mine: Vec<_> = records
            .iter()
            .filter(|record| record.la_ods_code == authority.ods_code)
            .map(|record| crate::wire::plan_record_from_wire(record.record.clone()))
            .collect();
        // Each load replaces whatever set the relay held: the removal is the point.
        let header = UploadHeader {
            mode: UploadMode::FullRefresh,
            file_id: "bench".into(),
            local_authority: authority.clone(),
            allow_large_removal: true,
        };
        relay.upload(&la_identity(&authority), header, futures::stream::iter(mine.into_iter().map(Ok))).await?;
    }
    let mut flagged: Vec<String> = records.iter().map(|record| record.record.nhs_number.clone()).collect();
    flagged.dedup();
    Ok(flagged)
}

/// Runs `count` flagged searches in-process, `concurrency` at a time.
pub async fn search_many(relay: &Relay, flagged: &[String], count: usize, concurrency: usize, tag: &str) -> usize {
    let identity = Arc::new(ed_identity());
    futures::stream::iter(0..count)
        .map(|i| {
            let (relay, identity) = (relay.clone(), Arc::clone(&identity));
            let query = search_query(flagged[(i * 7919) % flagged.len()].clone(), format!("{tag}-{}", i % 500));
            async move { relay.search(&identity, query).await.is_ok() }
        })
        .buffer_unordered(concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await
}

/// Acknowledges everything delivered so far for every synthetic authority.
pub async fn ack_all(relay: &Relay) -> Result<(), crate::error::Error> {
    for authority in synth::authorities() {
        let last =
            relay.hub().positions().into_iter().find(|p| p.la_ods_code == authority.ods_code).map(|p| p.last_sequence);
        if let Some(last) = last.filter(|last| *last > 0) {
            relay.ack(&la_identity(&authority), last).await?;
        }
    }
    Ok(())
}

/// Time to open a store and rebuild the relay from it, and memory after.
#[derive(Debug, Serialize)]
pub struct StartupReport {
    pub seconds_to_ready: f64,
    /// Of which opening the store (the engine's recovery).
    pub store_open_seconds: f64,
    pub people: usize,
    pub plans: usize,
    pub resident_bytes_before: u64,
    pub resident_bytes_after: u64,
    pub store_bytes: u64,
}

/// Opens the store a bench scenario runs on: the embedded store in
/// `data_dir`, or the PostgreSQL database of `--store`.
pub async fn open_store(
    store: &crate::config::StoreKind,
    data_dir: &Path,
) -> Result<Arc<dyn crate::store::Store>, StoreError> {
    use crate::{config::StoreKind, store::postgres};
    Ok(match store {
        StoreKind::Embedded => Arc::new(crate::store::embedded::EmbeddedStore::open(data_dir)?),
        StoreKind::Memory => Arc::new(crate::store::memory::MemoryStore::new()),
        StoreKind::Postgres(url) => Arc::new(
            postgres::PostgresStore::open(&postgres::PostgresOptions {
                connect: postgres::ConnectOptions { url: url.clone(), password_file: None, pool_size: 16 },
                write_timeout: std::time::Duration::from_secs(30),
            })
            .await?,
        ),
    })
}

pub async fn startup(
    kind: &crate::config::StoreKind,
    data_dir: &Path,
    clock: Arc<dyn Clock>,
) -> Result<StartupReport, StoreError> {
    let resident_bytes_before = resident_bytes().unwrap_or(0);
    let started = Instant::now();
    let store = open_store(kind, data_dir).await?;
    let store_open_seconds = started.elapsed().as_secs_f64();
    let relay = Relay::open(store, clock, RelaySettings::default()).await?;
    let seconds_to_ready = started.elapsed().as_secs_f64();
    Ok(StartupReport {
        seconds_to_ready,
        store_open_seconds,
        people: relay.index().people(),
        plans: relay.index().count_by_type().values().sum(),
        resident_bytes_before,
        resident_bytes_after: resident_bytes().unwrap_or(0),
        store_bytes: directory_bytes(data_dir),
    })
}

/// The wire form of a synthetic authority, for upload headers.
pub fn wire_authority(ods_code: &str) -> Option<proto::LocalAuthority> {
    synth::authority(ods_code).map(|authority| convert::local_authority(&authority))
}
