//! The load generator: C connections with M searches in flight on each, sent
//! back to back. Only searches started after the warm-up and finished within
//! the measured window count; latencies go into an HDR histogram.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::{client, proto::lookup_client::LookupClient, tls::PemText};

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub connections: usize,
    pub in_flight: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Share of searches that hit a flagged person.
    pub flagged_ratio: f64,
}

/// What one load run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

impl LoadReport {
    fn from(histogram: &Histogram<u64>, errors: u64, seconds: f64) -> Self {
        Self {
            requests: histogram.len(),
            errors,
            seconds,
            requests_per_second: histogram.len() as f64 / seconds,
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// Searches `server` as `pem` for the options' duration.
pub async fn run(
    server: &str,
    pem: &PemText,
    flagged: &[String],
    unflagged: &[String],
    options: &LoadOptions,
) -> Result<LoadReport, client::ClientError> {
    let mut channels = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        channels.push(client::connect(server, pem, None).await?);
    }
    let start = Instant::now();
    let measure_from = start + options.warmup;
    let end = measure_from + options.duration;
    let mut tasks = Vec::new();
    for (connection, channel) in channels.into_iter().enumerate() {
        for slot in 0..options.in_flight {
            let mut lookup = LookupClient::new(channel.clone());
            let (flagged, unflagged) = (flagged.to_vec(), unflagged.to_vec());
            let ratio = options.flagged_ratio;
            let user_id = format!("bench-{connection}-{slot}");
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64((connection * 1_000 + slot) as u64);
                let mut latencies = histogram();
                let mut errors = 0u64;
                while Instant::now() < end {
                    let pool = if !flagged.is_empty() && rng.random_bool(ratio) { &flagged } else { &unflagged };
                    let request = super::search_request(pool[rng.random_range(0..pool.len())].clone(), user_id.clone());
                    let started = Instant::now();
                    let result = lookup.search(request).await;
                    let finished = Instant::now();
                    if started < measure_from || finished > end {
                        continue;
                    }
                    match result {
                        Ok(_) => {
                            let _ = latencies.record((finished - started).as_micros().max(1) as u64);
                        }
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            }));
        }
    }
    let mut total = histogram();
    let mut errors = 0;
    for task in tasks {
        if let Ok((latencies, task_errors)) = task.await {
            let _ = total.add(&latencies);
            errors += task_errors;
        }
    }
    Ok(LoadReport::from(&total, errors, options.duration.as_secs_f64()))
}
