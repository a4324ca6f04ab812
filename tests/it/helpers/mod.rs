//! The one test harness: a real relay in-process on 127.0.0.1:0 over real
//! mutual TLS, with a fresh PKI, a real store in a temporary directory and a
//! manual clock (here), and what some groups need besides: a private
//! PostgreSQL cluster (`postgres`, `pg_load`), a proxy that cuts a node off
//! after a chosen statement (`cut_proxy`), network namespaces (`netns`,
//! `fault_run`), a filesystem that forgets unsynced writes (`powercut`,
//! `tmpfs`), the browser view (`web_relay`), a `deliver` agent and webhook
//! receivers (`agent`, `webhook_receiver`). No sleeps: everything waits on
//! the thing it needs.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use cpis_relay::{
    certs::{Authority, DEV_IDENTITIES, Pair},
    client,
    clock::ManualClock,
    proto::{
        self, SearchRequest, UploadHeader, UploadMessage, audit_client::AuditClient, lookup_client::LookupClient,
        notifications_client::NotificationsClient, plans_client::PlansClient, upload_message::Body,
    },
    relay::{Relay, RelaySettings},
    server::{self, ServerError, ServerOptions},
    store::{
        Store,
        embedded::EmbeddedStore,
        faults::{Faults, FaultyStore},
        memory::MemoryStore,
    },
    tls::{self, PemText},
};
use futures::StreamExt;

pub mod agent;
pub mod cut_proxy;
pub mod fault_run;
mod https;
pub mod netns;
pub mod pg_load;
pub mod postgres;
pub mod powercut;
mod refresh;
pub mod tmpfs;
pub mod web_relay;
pub mod webhook_receiver;
pub use https::*;
#[allow(unused_imports)] // Used by the refresh tests only.
pub use refresh::refresh_searcher;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Code, Status, transport::Channel};

/// The start of every test's manual clock.
pub fn test_start() -> DateTime<Utc> {
    "2026-06-01T09:00:00Z".parse().unwrap()
}

/// A fresh CA with a server certificate and the four dev identities
/// (cloned, the same CA: several relay nodes trusted by the same clients).
#[derive(Clone)]
pub struct Pki {
    pub authority: Arc<Authority>,
    pub server: Pair,
}

impl Pki {
    pub fn new() -> Self {
        Self::for_names(&["localhost", "127.0.0.1"])
    }

    /// A CA whose server certificate names these hosts and addresses.
    pub fn for_names(names: &[&str]) -> Self {
        let authority = Authority::generate("test CA").unwrap();
        let server = authority.issue_server(names).unwrap();
        Self { authority: Arc::new(authority), server }
    }

    pub fn server_pem(&self) -> PemText {
        PemText { ca: self.authority.cert_pem(), cert: self.server.cert_pem.clone(), key: self.server.key_pem.clone() }
    }

    /// PEM text for a dev identity by name: ed-rr8, gp-y02, la-706, la-855, auditor.
    pub fn client_pem(&self, name: &str) -> PemText {
        let identity = DEV_IDENTITIES.iter().find(|identity| identity.name == name).expect("a dev identity");
        let pair = self.authority.issue_client(identity.ods_code, identity.organisation, Some(identity.role)).unwrap();
        PemText { ca: self.authority.cert_pem(), cert: pair.cert_pem, key: pair.key_pem }
    }

    /// Writes ca.pem and NAME.pem/NAME.key for every dev identity, as `certs init` lays them out.
    pub fn write_dev_layout(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("ca.pem"), self.authority.cert_pem()).unwrap();
        for identity in DEV_IDENTITIES {
            let pem = self.client_pem(identity.name);
            std::fs::write(dir.join(format!("{}.pem", identity.name)), pem.cert).unwrap();
            std::fs::write(dir.join(format!("{}.key", identity.name)), pem.key).unwrap();
        }
    }
}

impl Pki {
    /// The dev layout plus server.pem/server.key, for a `serve` subprocess.
    pub fn write_server_layout(&self, dir: &Path) {
        self.write_dev_layout(dir);
        std::fs::write(dir.join("server.pem"), &self.server.cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), &self.server.key_pem).unwrap();
    }
}

/// A `cpis-relay serve` subprocess.
pub struct Running {
    pub child: tokio::process::Child,
    pub url: String,
    pub admin: SocketAddr,
    pub stderr: Option<tokio::process::ChildStderr>,
    /// The line `serve` printed with its bound addresses.
    pub listening: String,
}

/// The access log key every PostgreSQL node this test process starts is
/// given (`--log-key`): a deployment signs with one key, and a node with
/// another refuses to start. Made once, in the build's scratch directory.
pub fn deployment_log_key() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("log-keys").join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("access-log.key");
        cpis_relay::access_log::load_or_create_signer(cpis_relay::access_log::DEFAULT_LOG_NAME, &key).unwrap();
        key.to_str().unwrap().to_owned()
    })
}

/// `serve`'s data directory and certificates in `dir`: `dir/data` and the
/// server layout of `dir/certs` (see [`Pki::write_server_layout`]).
pub fn serve_layout(dir: &Path) -> Vec<std::ffi::OsString> {
    let certs = dir.join("certs");
    let mut args: Vec<std::ffi::OsString> = vec!["--data-dir".into(), dir.join("data").into()];
    for (flag, file) in [("--ca", "ca.pem"), ("--cert", "server.pem"), ("--key", "server.key")] {
        args.push(flag.into());
        args.push(certs.join(file).into());
    }
    args
}

/// Starts `cpis-relay serve` on port 0 with `dir/certs` (see
/// [`Pki::write_server_layout`]) and `dir/data`; reads the bound addresses
/// from its stdout. Stderr is captured for callers that read logs.
pub async fn start(dir: &Path, extra: &[&str], log_filter: &str) -> Running {
    start_with_env(dir, extra, log_filter, &[]).await
}

/// [`start`] with extra environment variables (the debug-only store fault
/// switch is cleared unless given here).
pub async fn start_with_env(dir: &Path, extra: &[&str], log_filter: &str, env: &[(&str, &str)]) -> Running {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(serve_layout(dir))
        .args(extra)
        .env("CPIS_LOG", log_filter)
        .env_remove("CPIS_TEST_FAIL_STORE_WRITES")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.unwrap().unwrap().unwrap();
    let field = |name: &str| -> SocketAddr {
        line.split_whitespace().find_map(|word| word.strip_prefix(name)).expect("the listening line").parse().unwrap()
    };
    let (grpc, admin) = (field("grpc="), field("admin="));
    Running { child, url: format!("https://localhost:{}", grpc.port()), admin, stderr, listening: line }
}

pub enum StoreChoice {
    Embedded,
    Memory,
}

pub struct TestRelay {
    pub address: SocketAddr,
    pub admin: SocketAddr,
    /// The FHIR door, when started with [`TestRelay::start_fhir`].
    pub fhir: Option<FhirTest>,
    pub pki: Pki,
    pub relay: Relay,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn Store>,
    /// Makes the store's writes fail or stall (the store is wrapped in a `FaultyStore`).
    pub faults: Faults,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestRelay {
    pub async fn start() -> Self {
        Self::start_with(StoreChoice::Embedded, RelaySettings::default()).await
    }

    pub async fn start_with(choice: StoreChoice, settings: RelaySettings) -> Self {
        tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = match choice {
            StoreChoice::Embedded => Arc::new(EmbeddedStore::open(dir.path()).unwrap()),
            StoreChoice::Memory => Arc::new(MemoryStore::new()),
        };
        let clock = Arc::new(ManualClock::new(test_start()));
        Self::serve(Pki::new(), store, clock, settings, dir).await
    }

    /// A relay on the embedded store with adjusted server options.
    pub async fn start_tuned(tune: impl FnOnce(&mut ServerOptions)) -> Self {
        tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let clock = Arc::new(ManualClock::new(test_start()));
        Self::serve_tuned(Pki::new(), store, clock, RelaySettings::default(), dir, tune).await
    }

    /// Serves an existing store (for restarts), keeping the PKI and directory.
    pub async fn serve(
        pki: Pki,
        store: Arc<dyn Store>,
        clock: Arc<ManualClock>,
        settings: RelaySettings,
        dir: tempfile::TempDir,
    ) -> Self {
        Self::serve_tuned(pki, store, clock, settings, dir, |_| {}).await
    }

    pub async fn serve_tuned(
        pki: Pki,
        store: Arc<dyn Store>,
        clock: Arc<ManualClock>,
        settings: RelaySettings,
        dir: tempfile::TempDir,
        tune: impl FnOnce(&mut ServerOptions),
    ) -> Self {
        Self::serve_doors(pki, store, clock, settings, dir, tune, false).await
    }

    /// A relay on the embedded store with its FHIR door open too (a fresh token key).
    pub async fn start_fhir() -> Self {
        Self::start_fhir_tuned(|_| {}).await
    }

    /// [`TestRelay::start_fhir`] with adjusted server options.
    pub async fn start_fhir_tuned(tune: impl FnOnce(&mut ServerOptions)) -> Self {
        tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let clock = Arc::new(ManualClock::new(test_start()));
        Self::serve_doors(Pki::new(), store, clock, RelaySettings::default(), dir, tune, true).await
    }

    /// A relay on the memory store with its FHIR door open and these relay settings.
    pub async fn start_fhir_with(settings: RelaySettings) -> Self {
        tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(test_start()));
        Self::serve_doors(Pki::new(), store, clock, settings, dir, |_| {}, true).await
    }

    async fn serve_doors(
        pki: Pki,
        store: Arc<dyn Store>,
        clock: Arc<ManualClock>,
        settings: RelaySettings,
        dir: tempfile::TempDir,
        tune: impl FnOnce(&mut ServerOptions),
        with_fhir: bool,
    ) -> Self {
        let (fhir_door, fhir) = if with_fhir {
            let (signing_key, jwks) = cpis_relay::auth::token::generate_dev_key().unwrap();
            let tokens = cpis_relay::auth::token::TokenVerifier::from_jwks(&jwks, fhir_token_settings()).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let door = cpis_relay::fhir::FhirDoor { listener, tokens: Arc::new(tokens) };
            (Some(door), Some(FhirTest { address, signing_key, jwks }))
        } else {
            (None, None)
        };
        let faulty = FaultyStore::new(store);
        let faults = faulty.faults().clone();
        let store: Arc<dyn Store> = Arc::new(faulty);
        let relay = Relay::open(Arc::clone(&store), clock.clone(), settings).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let mut options = ServerOptions::new(tls::server_config(&pki.server_pem()).unwrap());
        options.grace_period = Duration::from_secs(5);
        tune(&mut options);
        let (stop, stopped) = oneshot::channel::<()>();
        let handle =
            tokio::spawn(server::run(listener, Some(admin_listener), fhir_door, relay.clone(), options, async {
                let _ = stopped.await;
            }));
        Self { address, admin, fhir, pki, relay, clock, store, faults, dir, stop: Some(stop), handle: Some(handle) }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.address.port())
    }

    pub async fn channel(&self, identity: &str) -> Channel {
        self.channel_with(&self.pki.client_pem(identity)).await.unwrap()
    }

    pub async fn channel_with(&self, pem: &PemText) -> Result<Channel, client::ClientError> {
        client::connect(&self.url(), pem, None).await
    }

    pub async fn lookup(&self) -> LookupClient<Channel> {
        LookupClient::new(self.channel("ed-rr8").await)
    }

    pub async fn plans(&self, identity: &str) -> PlansClient<Channel> {
        PlansClient::new(self.channel(identity).await)
    }

    pub async fn notifications(&self, identity: &str) -> NotificationsClient<Channel> {
        NotificationsClient::new(self.channel(identity).await)
    }

    /// An incremental upload as local authority `ods_code` that must succeed.
    pub async fn load(&self, ods_code: &str, records: Vec<proto::PlanRecord>) -> proto::UploadReport {
        let mut plans = self.plans(&format!("la-{ods_code}")).await;
        upload(&mut plans, ods_code, proto::UploadMode::Incremental, records).await.unwrap()
    }

    /// `identity`'s notifications from after its last acknowledged one, as a plain `Subscribe` streams them.
    pub async fn subscribe(&self, identity: &str) -> tonic::Streaming<proto::AccessNotification> {
        let mut notifications = self.notifications(identity).await;
        notifications.subscribe(proto::SubscribeRequest::default()).await.unwrap().into_inner()
    }

    pub async fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel("auditor").await)
    }

    /// Stops the server and waits for it, returning the parts for a restart.
    pub async fn stop(mut self) -> (Pki, Arc<dyn Store>, Arc<ManualClock>, tempfile::TempDir) {
        self.shutdown().await;
        let Self { pki, store, clock, dir, relay, .. } = self;
        drop(relay);
        // Nothing the relay started may outlive it: a restart on the same files needs them free.
        assert_eq!(Arc::strong_count(&store), 1, "a task of the stopped relay still holds its store");
        (pki, store, clock, dir)
    }

    pub async fn shutdown(&mut self) {
        self.begin_shutdown();
        self.wait_stopped().await;
    }

    /// Signals shutdown (as SIGTERM would) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the server to finish draining and stop.
    pub async fn wait_stopped(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }
}

/// Synthetic LA contact details for the header of an upload by `ods_code`.
pub fn authority(ods_code: &str) -> proto::LocalAuthority {
    let known = cpis_relay::synth::authority(ods_code).expect("a synthetic authority");
    cpis_relay::wire::local_authority(&known)
}

/// The `n`th valid NHS number of the test range, from 999 000 000 0 up.
pub fn nhs(n: u64) -> String {
    nhs_numbers(n as usize + 1).pop().unwrap()
}

/// The first `count` valid NHS numbers of the test range.
pub fn nhs_numbers(count: usize) -> Vec<String> {
    (999_000_000u64..).filter_map(cpis_relay::nhs::NhsNumber::complete).take(count).map(|n| n.to_string()).collect()
}

/// A valid, current plan record.
pub fn record(nhs_number: &str, plan_type: proto::PlanType) -> proto::PlanRecord {
    let unborn = plan_type == proto::PlanType::UnbornChildProtection;
    proto::PlanRecord {
        nhs_number: nhs_number.to_owned(),
        local_id: format!("L-{nhs_number}-{}", plan_type as i32),
        given_name: "Sam".into(),
        family_name: "Testchild".into(),
        date_of_birth: if unborn { "1998-02-03".into() } else { "2016-04-05".into() },
        address: Some(proto::Address {
            lines: vec!["1 Test Street".into(), "Testtown".into()],
            postcode: "ZZ1 1ZZ".into(),
        }),
        r#type: plan_type as i32,
        start_date: "2026-01-10".into(),
        end_date: String::new(),
        expected_delivery_date: if unborn { "2026-09-01".into() } else { String::new() },
        team_code: "TEAM-A".into(),
    }
}

pub async fn upload(
    client: &mut PlansClient<Channel>,
    ods_code: &str,
    mode: proto::UploadMode,
    records: Vec<proto::PlanRecord>,
) -> Result<proto::UploadReport, Status> {
    let header = UploadMessage {
        body: Some(Body::Header(UploadHeader {
            mode: mode as i32,
            file_id: "test".into(),
            local_authority: Some(authority(ods_code)),
            // These tests replace sets on purpose; tests/it/relay/upload_limits.rs covers the refusal.
            allow_large_removal: true,
        })),
    };
    let messages = std::iter::once(header)
        .chain(records.into_iter().map(|record| UploadMessage { body: Some(Body::Record(record)) }));
    client.upload(futures::stream::iter(messages)).await.map(|response| response.into_inner())
}

pub fn search_request(nhs_number: &str, user_id: &str, request_id: &str) -> SearchRequest {
    SearchRequest {
        nhs_number: nhs_number.to_owned(),
        accessor: Some(proto::Accessor {
            user_id: user_id.into(),
            name: format!("Dr {user_id}"),
            role_code: "R8000".into(),
        }),
        care_setting: proto::CareSetting::EmergencyDepartment as i32,
        request_id: request_id.into(),
    }
}

/// The single field violation of an INVALID_ARGUMENT status.
pub fn field_violation(status: &Status) -> (String, String) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = tonic_types::StatusExt::get_details_bad_request(status).expect("a BadRequest detail");
    assert_eq!(details.field_violations.len(), 1, "{details:?}");
    let violation = &details.field_violations[0];
    (violation.field.clone(), violation.description.clone())
}

/// The next item of a stream, failing the test if none comes within 10 s.
pub async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a message within 10 s")
        .expect("the stream to continue")
        .expect("an Ok message")
}

/// Reads a server stream to its end.
pub async fn collect<T>(stream: tonic::Streaming<T>) -> Vec<T> {
    stream.map(|item| item.unwrap()).collect().await
}

/// The HTTP status of a GET on the admin port.
/// A metric's value in a relay's `/metrics`, if it is there.
pub async fn relay_metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = admin_get(admin, "/metrics").await;
    body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

/// Waits until gRPC health reports `want` for the whole server.
pub async fn wait_for_health(relay: &TestRelay, want: tonic_health::pb::health_check_response::ServingStatus) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(relay.channel("ed-rr8").await);
    let mut updates =
        health.watch(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    loop {
        if next(&mut updates).await.status == want as i32 {
            return;
        }
    }
}
