//! The load generator: C connections with M searches in flight on each, sent
//! back to back. Only searches started after the warm-up and finished within
//! the measured window count; latencies go into an HDR histogram.
//!
//! It must cost far less than what it measures: the machine is shared with
//! the server under test. So answers are not decoded (a 2.4 kB flagged answer
//! with 25 previous accesses is a few hundred allocations to decode), only
//! their status, size and flag are read; and the CPU the generator itself
//! used is measured and reported (see [`super::cpu`]).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

use super::cpu::{self, CpuShare};
use crate::{client, proto, tls::PemText};

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub connections: usize,
    pub in_flight: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Share of searches that hit a flagged person.
    pub flagged_ratio: f64,
    /// The server's process, whose CPU is measured beside the generator's.
    pub server_pid: Option<u32>,
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
    /// Answers that said "flagged".
    pub flagged: u64,
    /// Where the CPU went during the measured window.
    pub cpu: CpuShare,
}

fn histogram() -> Histogram<u64> {
    latency_histogram(60_000_000)
}

/// A histogram of microseconds from 1 to `max`, three significant figures.
pub(crate) fn latency_histogram(max: u64) -> Histogram<u64> {
    #[allow(clippy::expect_used, reason = "the bounds are the bench's constants: 1 < 2 * 1 <= max, 3 figures")]
    Histogram::new_with_bounds(1, max, 3).expect("constant bounds are valid")
}

impl LoadReport {
    fn from(histogram: &Histogram<u64>, errors: u64, flagged: u64, seconds: f64, cpu: CpuShare) -> Self {
        Self {
            flagged,
            cpu,
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
    let cpu_window = tokio::spawn({
        let server_pid = options.server_pid;
        async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let before = cpu::sample(server_pid);
            tokio::time::sleep_until(end.into()).await;
            (before, cpu::sample(server_pid))
        }
    });
    let mut tasks = Vec::new();
    for (connection, channel) in channels.into_iter().enumerate() {
        for slot in 0..options.in_flight {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            let (flagged, unflagged) = (flagged.to_vec(), unflagged.to_vec());
            let ratio = options.flagged_ratio;
            let user_id = format!("bench-{connection}-{slot}");
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64((connection * 1_000 + slot) as u64);
                let mut latencies = histogram();
                let (mut errors, mut flagged_answers) = (0u64, 0u64);
                let path = tonic::codegen::http::uri::PathAndQuery::from_static("/cpis.v1.Lookup/Search");
                while Instant::now() < end {
                    let pool = if !flagged.is_empty() && rng.random_bool(ratio) { &flagged } else { &unflagged };
                    let request = super::search_request(pool[rng.random_range(0..pool.len())].clone(), user_id.clone());
                    let started = Instant::now();
                    let result = match grpc.ready().await {
                        Ok(()) => grpc.unary(tonic::Request::new(request), path.clone(), SearchCodec).await,
                        Err(error) => Err(tonic::Status::unavailable(error.to_string())),
                    };
                    let finished = Instant::now();
                    if started < measure_from || finished > end {
                        continue;
                    }
                    match result {
                        Ok(answer) => {
                            let _ = latencies.record((finished - started).as_micros().max(1) as u64);
                            flagged_answers += u64::from(answer.into_inner().flagged);
                        }
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors, flagged_answers)
            }));
        }
    }
    let mut total = histogram();
    let (mut errors, mut flagged_answers) = (0, 0);
    for task in tasks {
        if let Ok((latencies, task_errors, task_flagged)) = task.await {
            let _ = total.add(&latencies);
            errors += task_errors;
            flagged_answers += task_flagged;
        }
    }
    let seconds = options.duration.as_secs_f64();
    let share = match cpu_window.await {
        Ok((before, after)) => CpuShare::between(before, after, seconds),
        Err(_) => CpuShare::default(),
    };
    Ok(LoadReport::from(&total, errors, flagged_answers, seconds, share))
}

/// What the generator reads of an answer: that it came, and its flag.
pub struct Answered {
    pub flagged: bool,
}

/// Encodes searches with prost and reads only the flag of each answer:
/// `SearchResponse.flagged` is field 1, so a flagged answer begins with the
/// bytes 0x08 0x01 (prost writes fields in number order and omits `false`).
#[derive(Clone, Copy, Default)]
struct SearchCodec;

struct SkipDecoder;

impl tonic::codec::Decoder for SkipDecoder {
    type Item = Answered;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Answered>, tonic::Status> {
        use bytes::Buf;
        let flagged = buf.chunk().starts_with(&[0x08, 0x01]);
        buf.advance(buf.remaining());
        Ok(Some(Answered { flagged }))
    }
}

impl tonic::codec::Codec for SearchCodec {
    type Encode = proto::SearchRequest;
    type Decode = Answered;
    type Encoder = tonic_prost::ProstEncoder<proto::SearchRequest>;
    type Decoder = SkipDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        SkipDecoder
    }
}
