//! `cpis-relay bench`: dispatch, and the in-process store scenarios (fill,
//! startup, retention); the arguments are in `bench_args`. The gRPC scenarios are in
//! `bench_grpc`: by default they start the relay as its own `serve` process on
//! 127.0.0.1 (embedded store in a temporary directory) so that a run is one
//! command; `--server` targets a running relay instead.

use std::{sync::Arc, time::Instant};

use serde_json::json;

use super::{
    CliError,
    bench_args::{BenchArgs, Scenario},
    exit,
};
use crate::{
    bench::{self, echo},
    certs,
    clock::{Clock, ManualClock, SystemClock},
    config::StoreKind,
    relay::{Relay, RelaySettings},
    store::embedded::EmbeddedStore,
    synth,
    tls::{self, PemFiles},
};

fn failed(error: impl std::fmt::Display) -> CliError {
    CliError::Failed(error.to_string())
}

pub(super) async fn run(args: BenchArgs) -> Result<u8, CliError> {
    certs::ensure_dev(&args.certs_dir).map_err(failed)?;
    match args.scenario {
        Scenario::Load => super::bench_grpc::load_scenario(&args).await,
        Scenario::Fill => fill(&args).await,
        Scenario::Startup => {
            let dir = args.data_dir.clone().ok_or_else(|| CliError::Config("--data-dir is required".into()))?;
            let report = bench::startup(&args.store, &dir, Arc::new(SystemClock)).await.map_err(failed)?;
            println!("{}", serde_json::to_string_pretty(&report).map_err(failed)?);
            Ok(exit::OK)
        }
        Scenario::Retention => retention(&args).await,
        Scenario::Delivery => super::bench_grpc::delivery(&args).await,
        Scenario::Refresh => super::bench_grpc::refresh(&args).await,
        Scenario::Echo => echo(&args).await,
        Scenario::NationalDay => super::bench_day::national_day(&args).await,
    }
}

/// The echo baseline in this process, until SIGTERM or SIGINT.
async fn echo(args: &BenchArgs) -> Result<u8, CliError> {
    let dir = args.data_dir.clone().ok_or_else(|| CliError::Config("--data-dir is required".into()))?;
    let server_pem = PemFiles::in_dir(&args.certs_dir, "server").read().map_err(failed)?;
    let tls_config = tls::server_config(&server_pem).map_err(failed)?;
    let server = echo::start_from_dir(tls_config, &dir).await.map_err(failed)?;
    println!("cpis-relay echo listening: grpc={}", server.address);
    super::serve::shutdown_signal().await;
    Ok(exit::OK)
}

async fn fill(args: &BenchArgs) -> Result<u8, CliError> {
    let dir = args.data_dir.clone().ok_or_else(|| CliError::Config("--data-dir is required".into()))?;
    let store = bench::open_store(&args.store, &dir).await.map_err(failed)?;
    // The fill loads up to the whole test range, one FULL_REFRESH per authority.
    // The access log is signed with the data directory's key, so `audit verify --data-dir` checks the fill.
    let log_signer = match args.store {
        StoreKind::Embedded => Some(Arc::new(
            crate::access_log::load_or_create_signer(
                crate::access_log::DEFAULT_LOG_NAME,
                &dir.join(crate::access_log::DEFAULT_KEY_FILE),
            )
            .map_err(|error| CliError::Failed(error.to_string()))?
            .0,
        )),
        _ => None,
    };
    let settings = RelaySettings { max_upload_records: synth::MAX_PEOPLE * 2, log_signer, ..RelaySettings::default() };
    let relay = Relay::open(store, Arc::new(SystemClock), settings).await.map_err(failed)?;
    let today = chrono::Utc::now().date_naive();
    let started = Instant::now();
    let flagged = bench::load_people(&relay, args.people, today).await.map_err(failed)?;
    let loaded_in = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let answered = bench::search_many(&relay, &flagged, args.notifications, 512, "fill").await;
    let searched_in = started.elapsed().as_secs_f64();
    // The tree of every access and a signed checkpoint of it, as a relay's keeper leaves them.
    let started = Instant::now();
    if let Some(keeper) = relay.log_keeper() {
        keeper.run(|keeper| keeper.checkpoint()).await.map_err(failed)?;
    }
    let logged_in = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"people": args.people, "plans_seconds": loaded_in, "searches": answered, "searches_seconds": searched_in,
               "access_log_seconds": logged_in, "store_bytes": bench::directory_bytes(&dir)})
    );
    Ok(exit::OK)
}

async fn retention(args: &BenchArgs) -> Result<u8, CliError> {
    let dir = tempfile::tempdir().map_err(failed)?;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let store = Arc::new(EmbeddedStore::open(dir.path()).map_err(failed)?);
    let relay = Relay::open(store, clock.clone(), RelaySettings::default()).await.map_err(failed)?;
    let flagged = bench::load_people(&relay, args.people, clock.today()).await.map_err(failed)?;
    let mut sizes = Vec::new();
    let mut retained: u64 = 0;
    for day in 1..=args.days {
        retained += bench::search_many(&relay, &flagged, args.searches_per_day, 256, &format!("d{day}")).await as u64;
        bench::ack_all(&relay).await.map_err(failed)?;
        clock.advance(chrono::Duration::days(1));
        retained -= relay.expire().await.map_err(failed)?.accesses;
        if day == 1 || day % 50 == 0 || day == args.days {
            let bytes = bench::directory_bytes(dir.path());
            eprintln!("day {day}: store {:.1} MiB, {retained} accesses retained", bytes as f64 / 1048576.0);
            sizes.push(json!({"day": day, "store_bytes": bytes, "accesses": retained}));
        }
    }
    println!("{}", json!({"searches_per_day": args.searches_per_day, "people": args.people, "sizes": sizes}));
    Ok(exit::OK)
}
