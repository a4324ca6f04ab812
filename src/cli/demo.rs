//! `cpis-relay demo`: the first command a newcomer runs. Starts a relay on
//! the embedded defaults in a temporary directory, uploads synthetic plans as
//! two local authorities, searches as an emergency department, and shows the
//! access notifications arriving and being acknowledged.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use clap::Args;
use futures::StreamExt;
use indicatif::ProgressBar;
use tokio::{net::TcpListener, sync::mpsc};
use tonic::transport::Channel;

use super::{CliError, clients, exit, upload};
use crate::{
    certs, client,
    clock::SystemClock,
    proto::{
        self, AckRequest, SearchRequest, SubscribeRequest, lookup_client::LookupClient,
        notifications_client::NotificationsClient,
    },
    relay::{Relay, RelaySettings},
    server::{self, ServerOptions},
    store::embedded::EmbeddedStore,
    synth,
    tls::{self, PemFiles},
};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Synthetic people to load (at most 900,000).
    #[arg(long, env = "CPIS_DEMO_PEOPLE", default_value_t = 2000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=crate::synth::MAX_PEOPLE as u64))]
    pub people: usize,
    /// Development certificates (created if missing).
    #[arg(long, env = "CPIS_CERTS_DIR", default_value = certs::DEV_DIR)]
    pub certs_dir: PathBuf,
    /// Keep the store here instead of a temporary directory.
    #[arg(long, env = "CPIS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

fn failed(error: impl std::fmt::Display) -> CliError {
    CliError::Failed(error.to_string())
}

pub async fn run(args: DemoArgs) -> Result<u8, CliError> {
    certs::ensure_dev(&args.certs_dir).map_err(failed)?;
    let temporary = tempfile::tempdir().map_err(failed)?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| temporary.path().to_owned());
    let server_pem = PemFiles::in_dir(&args.certs_dir, "server").read().map_err(failed)?;
    let store = Arc::new(EmbeddedStore::open(&data_dir).map_err(failed)?);
    let relay = Relay::open(store, Arc::new(SystemClock), RelaySettings::default()).await.map_err(failed)?;
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(failed)?;
    let admin = TcpListener::bind("127.0.0.1:0").await.map_err(failed)?;
    let address = listener.local_addr().map_err(failed)?;
    let admin_address = admin.local_addr().map_err(failed)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServerOptions::new(tls::server_config(&server_pem).map_err(failed)?);
    let server = tokio::spawn(server::run(listener, Some(admin), None, relay, options, async {
        let _ = stopped.await;
    }));
    println!("== cpis-relay demo ==");
    println!(
        "relay on https://{address} (mutual TLS), admin on http://{admin_address}/metrics, store in {}",
        data_dir.display()
    );

    let result = script(&args, &format!("https://localhost:{}", address.port())).await;
    let _ = stop.send(());
    let _ = server.await;
    drop(temporary);
    result
}

async fn connect(args: &DemoArgs, server: &str, identity: &str) -> Result<Channel, CliError> {
    let pem = PemFiles::in_dir(&args.certs_dir, identity).read().map_err(failed)?;
    client::connect(server, &pem, None).await.map_err(|error| CliError::Unavailable(error.to_string()))
}

async fn script(args: &DemoArgs, server: &str) -> Result<u8, CliError> {
    let today = chrono::Utc::now().date_naive();
    let records = synth::generate(args.people, 2026, today);
    println!(
        "\n-- 1. two local authorities upload their plans ({} synthetic people, NHS numbers 999...) --",
        args.people
    );
    for (identity, ods_code) in [("la-706", "706"), ("la-855", "855")] {
        let channel = connect(args, server, identity).await?;
        let authority = synth::authority(ods_code).ok_or_else(|| failed("no synthetic authority"))?;
        let mine: Vec<proto::PlanRecord> = records
            .iter()
            .filter(|record| record.la_ods_code == ods_code)
            .map(|record| record.record.clone())
            .collect();
        let wire = crate::service::convert::local_authority(&authority);
        let report =
            upload::send(channel, proto::UploadMode::FullRefresh, "demo.csv", wire, mine, &ProgressBar::hidden())
                .await?;
        let status = proto::UploadStatus::try_from(report.status).map(|status| status.as_str_name()).unwrap_or("?");
        println!(
            "{} ({ods_code}): {status}, {} plans loaded, {} rejected",
            authority.name, report.loaded, report.rejected
        );
    }

    println!("\n-- 2. both authorities subscribe to their access notifications --");
    let (arrived, mut arrivals) = mpsc::channel::<(String, proto::AccessNotification)>(64);
    let mut subscriptions = Vec::new();
    for (identity, ods_code) in [("la-706", "706"), ("la-855", "855")] {
        let mut notifications = NotificationsClient::new(connect(args, server, identity).await?);
        let mut stream = notifications.subscribe(SubscribeRequest { after_sequence: None }).await?.into_inner();
        let arrived = arrived.clone();
        let ods_code = ods_code.to_owned();
        subscriptions.push(tokio::spawn(async move {
            while let Some(Ok(notification)) = stream.next().await {
                if arrived.send((ods_code.clone(), notification)).await.is_err() {
                    break;
                }
            }
        }));
    }
    drop(arrived);
    println!("subscribed: 706, 855");

    println!("\n-- 3. Leeds Teaching Hospitals' emergency department searches --");
    let mut lookup = LookupClient::new(connect(args, server, "ed-rr8").await?);
    let of = |ods: &str| {
        records.iter().find(|record| record.la_ods_code == ods).map(|record| record.record.nhs_number.clone())
    };
    let child_706 = of("706").ok_or_else(|| failed("no 706 record"))?;
    let child_855 = of("855").ok_or_else(|| failed("no 855 record"))?;
    let unflagged = synth::unflagged_numbers(&records, 1, 7)[0].to_string();
    let searches = [
        ("Dr Ada Shah", "rr8-ada", child_706.as_str(), "req-1", "a child on a plan of Islington (706)"),
        (
            "Dr Ben Okafor",
            "rr8-ben",
            child_706.as_str(),
            "req-2",
            "the same child, another doctor: the first access shows",
        ),
        (
            "Dr Ben Okafor",
            "rr8-ben",
            child_706.as_str(),
            "req-2",
            "a client retry of that search (same request_id): no second notification",
        ),
        ("Nurse Cara Lee", "rr8-cara", child_855.as_str(), "req-3", "a child held by Leicestershire (855)"),
        (
            "Nurse Cara Lee",
            "rr8-cara",
            unflagged.as_str(),
            "req-4",
            "a person with no plan: not flagged, nothing notified, nothing stored",
        ),
    ];
    for (name, user_id, nhs_number, request_id, what) in searches {
        println!("\n> search {nhs_number} by {name}: {what}");
        let response = lookup
            .search(SearchRequest {
                nhs_number: nhs_number.to_owned(),
                accessor: Some(proto::Accessor {
                    user_id: user_id.into(),
                    name: name.into(),
                    role_code: "R8000".into(),
                }),
                care_setting: proto::CareSetting::EmergencyDepartment as i32,
                request_id: request_id.into(),
            })
            .await?
            .into_inner();
        print!("{}", clients::describe_search(&response));
    }
    println!("\n> search \"943 476 5918\" (bad check digit):");
    let invalid = lookup
        .search(SearchRequest {
            nhs_number: "943 476 5918".into(),
            accessor: Some(proto::Accessor {
                user_id: "rr8-ada".into(),
                name: "Dr Ada Shah".into(),
                role_code: String::new(),
            }),
            care_setting: proto::CareSetting::EmergencyDepartment as i32,
            request_id: String::new(),
        })
        .await;
    if let Err(status) = invalid {
        println!("{}", CliError::from(status));
    }

    println!("\n-- 4. access notifications arrive at the owning authorities (3 expected) --");
    let mut by_authority: HashMap<String, u64> = HashMap::new();
    for _ in 0..3 {
        let Ok(Some((ods_code, notification))) = tokio::time::timeout(Duration::from_secs(10), arrivals.recv()).await
        else {
            return Err(failed("expected notifications did not arrive within 10 s"));
        };
        println!("to {ods_code}: {}", clients::notification_json(&notification));
        by_authority.insert(ods_code, notification.sequence);
    }

    println!("\n-- 5. each authority acknowledges what it has received --");
    for (identity, ods_code) in [("la-706", "706"), ("la-855", "855")] {
        if let Some(sequence) = by_authority.get(ods_code) {
            let response = NotificationsClient::new(connect(args, server, identity).await?)
                .ack(AckRequest { sequence: *sequence })
                .await?
                .into_inner();
            println!("{ods_code} acknowledged through sequence {}", response.acked_through);
        }
    }

    println!("\n-- 6. roles are enforced from the certificate: a local authority cannot search --");
    let denied = LookupClient::new(connect(args, server, "la-706").await?)
        .search(SearchRequest {
            nhs_number: child_706.clone(),
            accessor: Some(proto::Accessor { user_id: "x".into(), name: "x".into(), role_code: String::new() }),
            care_setting: proto::CareSetting::EmergencyDepartment as i32,
            request_id: String::new(),
        })
        .await;
    if let Err(status) = denied {
        println!("{}", CliError::from(status));
    }
    for subscription in subscriptions {
        subscription.abort();
    }
    println!("\ndone. Next: `cpis-relay serve` runs a relay on 127.0.0.1:50051; see README.md for every command.");
    Ok(exit::OK)
}
