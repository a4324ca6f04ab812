//! The national day's plan uploads (see `bench_day`): every authority's
//! FULL_REFRESH, four at a time, first and again at 2 am; each daytime hour
//! ten authorities moving 1 % of their people, each change timed until every
//! node shows it (searched as scheduled care, which notifies no one).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{Rng, rngs::StdRng};
use tonic::transport::Channel;

use super::CliError;
use crate::{model::LocalAuthority, proto, proto::lookup_client::LookupClient, wire as convert};

fn failed(error: impl std::fmt::Display) -> CliError {
    CliError::Failed(error.to_string())
}

/// What the plan uploads of the day measured.
#[derive(Default)]
pub(super) struct Uploads {
    pub(super) nightly_seconds: f64,
    pub(super) incremental: u64,
    pub(super) changed_records: u64,
    /// Milliseconds from an upload's answer until another node showed the change.
    pub(super) propagation: Vec<f64>,
    pub(super) failures: Vec<String>,
}

pub(super) fn plans_owned(plans: &HashMap<&str, Vec<proto::PlanRecord>>) -> HashMap<String, Vec<proto::PlanRecord>> {
    plans.iter().map(|(la, records)| ((*la).to_owned(), records.clone())).collect()
}

pub(super) async fn upload(
    channel: Channel,
    mode: proto::UploadMode,
    authority: &LocalAuthority,
    records: Vec<proto::PlanRecord>,
) -> Result<(), CliError> {
    let count = records.len() as u64;
    let hidden = indicatif::ProgressBar::hidden();
    let wire = convert::local_authority(authority);
    let report = super::upload::send(channel, mode, true, "national-day", wire, records, &hidden).await?;
    if report.loaded != count {
        return Err(failed(format!("{}: loaded {} of {count} records", authority.ods_code, report.loaded)));
    }
    Ok(())
}

/// Every authority's FULL_REFRESH, four at a time.
pub(super) async fn refresh_all(
    channels: &HashMap<String, Channel>,
    authorities: &HashMap<&str, &LocalAuthority>,
    plans: &HashMap<&str, Vec<proto::PlanRecord>>,
) -> Result<(), CliError> {
    use futures::StreamExt;
    let uploads = plans.iter().map(|(la, records)| {
        let (channel, authority) = (channels[*la].clone(), authorities[*la]);
        upload(channel, proto::UploadMode::FullRefresh, authority, records.clone())
    });
    let results: Vec<Result<(), CliError>> = futures::stream::iter(uploads).buffer_unordered(4).collect().await;
    results.into_iter().collect()
}

/// The nightly FULL_REFRESH of every authority, four at a time, while searches go on.
pub(super) async fn nightly(
    channels: HashMap<String, Channel>,
    authorities: Vec<LocalAuthority>,
    plans: HashMap<String, Vec<proto::PlanRecord>>,
    uploads: Arc<tokio::sync::Mutex<Uploads>>,
) {
    use futures::StreamExt;
    let started = Instant::now();
    let mut refreshes = Vec::new();
    for authority in authorities {
        let Some(records) = plans.get(&authority.ods_code).cloned() else { continue };
        let channel = channels[&authority.ods_code].clone();
        refreshes.push(async move {
            let result = upload(channel, proto::UploadMode::FullRefresh, &authority, records).await;
            result.err().map(|error| format!("nightly {}: {error}", authority.ods_code))
        });
    }
    let failures: Vec<String> =
        futures::stream::iter(refreshes).buffer_unordered(4).filter_map(|f| async { f }).collect().await;
    let mut uploads = uploads.lock().await;
    uploads.failures.extend(failures);
    uploads.nightly_seconds = started.elapsed().as_secs_f64();
}

/// One hour's changes: ten authorities each move 1 % of their people (new address line).
pub(super) fn change_some(
    plans: &[crate::synth::SynthRecord],
    hour: usize,
    rng: &mut StdRng,
) -> Vec<(String, Vec<proto::PlanRecord>)> {
    let mut by: BTreeMap<&str, Vec<&proto::PlanRecord>> = BTreeMap::new();
    for plan in plans {
        by.entry(plan.la_ods_code.as_str()).or_default().push(&plan.record);
    }
    let las: Vec<&str> = by.keys().copied().collect();
    (0..10)
        .map(|_| {
            let la = las[rng.random_range(0..las.len())];
            let records = &by[la];
            let count = (records.len() / 100).max(1);
            let from = rng.random_range(0..records.len());
            let changed = (0..count)
                .map(|k| {
                    let mut record = records[(from + k) % records.len()].clone();
                    if let Some(address) = record.address.as_mut() {
                        // One new address per person, whichever of their plans carries it.
                        let house = record.nhs_number.bytes().fold(0u32, |sum, digit| sum * 7 + u32::from(digit)) % 500;
                        address.lines = vec![format!("{} Moved Street (h{hour})", house + 1)];
                    }
                    record
                })
                .collect();
            (la.to_owned(), changed)
        })
        .collect()
}

/// Uploads one hour's changes; times each until every node shows it (searched as scheduled care: silent).
pub(super) async fn incremental(
    channels: HashMap<String, Channel>,
    authorities: Vec<LocalAuthority>,
    changes: Vec<(String, Vec<proto::PlanRecord>)>,
    probes: Vec<LookupClient<Channel>>,
    uploads: Arc<tokio::sync::Mutex<Uploads>>,
) {
    for (la, records) in changes {
        let Some(authority) = authorities.iter().find(|authority| authority.ods_code == la) else { continue };
        let probe_record = records[0].clone();
        let count = records.len() as u64;
        if let Err(error) = upload(channels[&la].clone(), proto::UploadMode::Incremental, authority, records).await {
            uploads.lock().await.failures.push(format!("incremental {la}: {error}"));
            continue;
        }
        let uploaded = Instant::now();
        let wanted = probe_record.address.clone().unwrap_or_default().lines;
        for probe in &probes {
            let seen = shows(probe, &probe_record.nhs_number, &wanted, Duration::from_secs(30)).await;
            let mut uploads = uploads.lock().await;
            if seen {
                uploads.propagation.push(uploaded.elapsed().as_secs_f64() * 1000.0);
            } else {
                uploads.failures.push(format!("{la}: a change not seen on a node within 30 s"));
            }
        }
        let mut uploads = uploads.lock().await;
        uploads.incremental += 1;
        uploads.changed_records += count;
    }
}

/// Whether `probe`'s node shows `nhs_number` at the address `wanted` within
/// `within` (searched as scheduled care, which notifies no one).
pub(super) async fn shows(
    probe: &LookupClient<Channel>,
    nhs_number: &str,
    wanted: &[String],
    within: Duration,
) -> bool {
    let mut probe = probe.clone();
    let mut request = crate::bench::search_request(nhs_number.to_owned(), "nd-probe".into());
    request.care_setting = proto::CareSetting::GeneralPractice as i32;
    tokio::time::timeout(within, async {
        loop {
            if let Ok(response) = probe.search(request.clone()).await
                && response.into_inner().person.and_then(|person| person.address).is_some_and(|a| a.lines == wanted)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok()
}
