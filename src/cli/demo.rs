//! `cpis-relay demo`: the first command a newcomer runs. Starts a relay on
//! the embedded defaults in a temporary directory, uploads synthetic plans as
//! two local authorities, searches as an emergency department (over gRPC and
//! once over the FHIR door, as a CP-IS API consumer would), and shows the
//! access notifications arriving and being acknowledged. The browser view is
//! open too: the demo prints its address and the development certificate to
//! import, and `--stay` keeps the relay running after the script for it.

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
    /// Keep the relay (and its browser view) running after the script, until Ctrl-C.
    #[arg(long, env = "CPIS_DEMO_STAY")]
    pub stay: bool,
    /// The browser view's address (a fixed port is easier to bookmark).
    #[arg(long, env = "CPIS_DEMO_WEB_LISTEN", default_value = "127.0.0.1:0")]
    pub web_listen: std::net::SocketAddr,
}

fn failed(error: impl std::fmt::Display) -> CliError {
    CliError::Failed(error.to_string())
}

pub(super) async fn run(args: DemoArgs) -> Result<u8, CliError> {
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
    certs::ensure_token_key(&args.certs_dir).map_err(failed)?;
    let tokens = crate::auth::token::TokenVerifier::from_jwks_file(
        &args.certs_dir.join(crate::auth::token::DEV_JWKS),
        crate::auth::token::TokenSettings::default(),
    )
    .map_err(failed)?;
    let fhir_listener = TcpListener::bind("127.0.0.1:0").await.map_err(failed)?;
    let fhir_address = fhir_listener.local_addr().map_err(failed)?;
    let tokens = Arc::new(tokens);
    let fhir = crate::fhir::FhirDoor { listener: fhir_listener, tokens: Arc::clone(&tokens) };
    let web_listener = TcpListener::bind(args.web_listen).await.map_err(failed)?;
    let web_address = web_listener.local_addr().map_err(failed)?;
    let web = crate::web::WebDoor { listener: web_listener, tokens: Some(tokens) };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServerOptions::new(tls::server_config(&server_pem).map_err(failed)?);
    let doors = server::Doors { fhir: Some(fhir), web: Some(web) };
    let server = tokio::spawn(server::run(listener, Some(admin), doors, relay, options, async {
        let _ = stopped.await;
    }));
    println!("== cpis-relay demo ==");
    println!(
        "relay on https://{address} (mutual TLS), FHIR door on https://{fhir_address}{}, admin on http://{admin_address}/metrics, store in {}",
        crate::fhir::BASE_PATH,
        data_dir.display()
    );

    print_browser_view(&args, web_address.port());

    let servers = Servers {
        grpc: format!("https://localhost:{}", address.port()),
        fhir: format!("https://localhost:{}{}", fhir_address.port(), crate::fhir::BASE_PATH),
    };
    let result = script(&args, &servers).await;
    if args.stay && result.is_ok() {
        println!(
            "\nthe relay keeps running for the browser view at https://localhost:{}/ (Ctrl-C to stop)",
            web_address.port()
        );
        super::serve::shutdown_signal().await;
    }
    let _ = stop.send(());
    let _ = server.await;
    drop(temporary);
    result
}

/// Where the browser view is and which certificate a browser needs for it.
fn print_browser_view(args: &DemoArgs, port: u16) {
    let dir = args.certs_dir.display();
    println!("browser view on https://localhost:{port}/ (see docs/browser.md):");
    if !args.certs_dir.join("user-ed-rr8.p12").exists() {
        println!(
            "  {dir} has no personal certificates yet: run `cpis-relay certs init --out {dir}` once, then import them"
        );
        return;
    }
    println!("  trust {dir}/ca.pem as a certificate authority, then import a person's certificate");
    println!("  (password {:?}) and pick it when the browser asks:", certs::DEV_P12_PASSWORD);
    for user in certs::DEV_USERS {
        println!("    {dir}/{}.p12  {} at {}", user.name, user.user_name, user.organisation);
    }
    if !args.stay {
        println!("  the demo stops when its script ends: run `cpis-relay demo --stay` to keep it open");
    }
}

async fn connect(args: &DemoArgs, server: &str, identity: &str) -> Result<Channel, CliError> {
    let pem = PemFiles::in_dir(&args.certs_dir, identity).read().map_err(failed)?;
    client::connect(server, &pem, None).await.map_err(|error| CliError::Unavailable(error.to_string()))
}

struct Servers {
    grpc: String,
    /// The FHIR door's base URL.
    fhir: String,
}

/// One FHIR search as the emergency department, with a development token:
/// the status and the Bundle.
async fn fhir_search(args: &DemoArgs, url: &str) -> Result<(u16, serde_json::Value), CliError> {
    use http_body_util::{BodyExt, Full};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let pem = PemFiles::in_dir(&args.certs_dir, "ed-rr8").read().map_err(failed)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pem.ca.as_bytes()) {
        roots.add(ca.map_err(failed)?).map_err(failed)?;
    }
    let chain = CertificateDer::pem_slice_iter(pem.cert.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(failed)?;
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).map_err(failed)?;
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(failed)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(failed)?;
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http1().build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let signing_key =
        std::fs::read_to_string(args.certs_dir.join(crate::auth::token::DEV_SIGNING_KEY)).map_err(failed)?;
    let token = crate::auth::token::mint(
        &signing_key,
        &crate::auth::token::DevToken {
            issuer: crate::auth::token::DEFAULT_ISSUER.into(),
            audience: crate::auth::token::DEFAULT_AUDIENCE.into(),
            user_id: "rr8-dan".into(),
            name: "Dr Dan Reid".into(),
            role_code: "R8000".into(),
            care_setting: Some(crate::model::CareSetting::EmergencyDepartment),
            lifetime: Duration::from_secs(300),
        },
    )
    .map_err(failed)?;
    let request = http::Request::get(url)
        .header("Authorization", format!("Bearer {token}"))
        .header("TraceID", uuid::Uuid::new_v4().to_string())
        .body(Full::new(bytes::Bytes::new()))
        .map_err(failed)?;
    let response = client.request(request).await.map_err(|error| CliError::Unavailable(error.to_string()))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(failed)?.to_bytes();
    Ok((status, serde_json::from_slice(&body).map_err(failed)?))
}

async fn script(args: &DemoArgs, servers: &Servers) -> Result<u8, CliError> {
    let server = servers.grpc.as_str();
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
        let wire = crate::wire::local_authority(&authority);
        let report =
            // The demo's set replaces whatever an earlier demo (of another size) left.
            upload::send(channel, proto::UploadMode::FullRefresh, true, "demo.csv", wire, mine, &ProgressBar::hidden())
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

    println!("\n-- 3b. the same department's CP-IS FHIR client searches the FHIR door (a development token) --");
    let url = format!(
        "{}/CareTeam?patient:identifier={}|{child_855}",
        servers.fhir,
        crate::fhir::resources::NHS_NUMBER_SYSTEM
    );
    println!("> GET {url}");
    let (status, bundle) = fhir_search(args, &url).await?;
    println!("{status}: a {} Bundle, total {}", bundle["type"].as_str().unwrap_or("?"), bundle["total"]);
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let resource = &entry["resource"];
        match resource["resourceType"].as_str() {
            Some("CareTeam") => println!(
                "  CareTeam: {} ({}), {}, office hours {}, out of hours {}",
                resource["category"][0]["coding"][0]["display"].as_str().unwrap_or("?"),
                resource["category"][0]["coding"][0]["code"].as_str().unwrap_or("?"),
                resource["name"].as_str().unwrap_or("?"),
                resource["telecom"][0]["value"].as_str().unwrap_or("?"),
                resource["telecom"][1]["value"].as_str().unwrap_or("?"),
            ),
            Some(other) => println!("  {other} (included): {}", resource["id"].as_str().unwrap_or("?")),
            None => {}
        }
    }

    println!("\n-- 4. access notifications arrive at the owning authorities (4 expected) --");
    let mut by_authority: HashMap<String, u64> = HashMap::new();
    for _ in 0..4 {
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
