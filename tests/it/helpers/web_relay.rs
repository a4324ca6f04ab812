//! A relay in-process with its browser view open (and gRPC for loading
//! plans), and an HTTPS client that presents a personal or organisation
//! certificate as a browser would: forms POSTed url-encoded, answers read whole.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use cpis_relay::{
    certs::{Authority, DEV_USERS, DevUser},
    clock::ManualClock,
    relay::{Relay, RelaySettings},
    server::{self, Doors, ServerError, ServerOptions},
    store::{Store, memory::MemoryStore},
    tls::{self, PemText},
    web::WebDoor,
};
use http_body_util::{BodyExt, Full};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::helpers::{Https, Pki, https_client, test_start};

pub struct WebRelay {
    pub pki: Pki,
    pub relay: Relay,
    pub grpc: SocketAddr,
    pub web: SocketAddr,
    /// Makes the store's writes fail or stall (the store is wrapped in a `FaultyStore`).
    pub faults: cpis_relay::store::faults::Faults,
    /// The FHIR door's token key, when the view accepts bearer tokens.
    pub signing_key: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

impl WebRelay {
    pub async fn start(settings: RelaySettings) -> Self {
        Self::start_with(Pki::new(), settings, false).await
    }

    /// `bearer`: the view also takes the user from a FHIR door token.
    pub async fn start_with(pki: Pki, settings: RelaySettings, bearer: bool) -> Self {
        tls::install_crypto_provider();
        let faulty = cpis_relay::store::faults::FaultyStore::new(Arc::new(MemoryStore::new()));
        let faults = faulty.faults().clone();
        let store: Arc<dyn Store> = Arc::new(faulty);
        let clock = Arc::new(ManualClock::new(test_start()));
        let relay = Relay::open(store, clock, settings).await.unwrap();
        let (tokens, signing_key) = if bearer {
            let (signing_key, jwks) = cpis_relay::auth::token::generate_dev_key().unwrap();
            let tokens = cpis_relay::auth::token::TokenVerifier::from_jwks(&jwks, Default::default()).unwrap();
            (Some(Arc::new(tokens)), Some(signing_key))
        } else {
            (None, None)
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let web_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc, web) = (listener.local_addr().unwrap(), web_listener.local_addr().unwrap());
        let mut options = ServerOptions::new(tls::server_config(&pki.server_pem()).unwrap());
        options.grace_period = Duration::from_secs(5);
        let doors = Doors { fhir: None, web: Some(WebDoor { listener: web_listener, tokens }) };
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::run(listener, Some(admin), doors, relay.clone(), options, async {
            let _ = stopped.await;
        }));
        Self { pki, relay, grpc, web, faults, signing_key, stop: Some(stop), handle: Some(handle) }
    }

    pub fn base(&self) -> String {
        format!("https://localhost:{}", self.web.port())
    }

    /// A browser presenting the personal certificate of a development user (see `certs::DEV_USERS`).
    pub fn user(&self, name: &str) -> Browser {
        Browser::new(self.base(), &user_pem(&self.pki.authority, name))
    }

    /// A browser presenting an organisation's certificate (no user named).
    pub fn organisation(&self, identity: &str) -> Browser {
        Browser::new(self.base(), &self.pki.client_pem(identity))
    }

    /// Loads current plans for these people as local authority `ods_code` over gRPC.
    pub async fn load(&self, ods_code: &str, nhs_numbers: &[&str]) {
        let records = nhs_numbers
            .iter()
            .map(|number| crate::helpers::record(number, cpis_relay::proto::PlanType::ChildProtection))
            .collect();
        self.load_records(ods_code, records).await;
    }

    /// Loads these records as local authority `ods_code` over gRPC.
    pub async fn load_records(&self, ods_code: &str, records: Vec<cpis_relay::proto::PlanRecord>) {
        let channel = cpis_relay::client::connect(
            &format!("https://localhost:{}", self.grpc.port()),
            &self.pki.client_pem(&format!("la-{ods_code}")),
            None,
        )
        .await
        .unwrap();
        let mut plans = cpis_relay::proto::plans_client::PlansClient::new(channel);
        crate::helpers::upload(&mut plans, ods_code, cpis_relay::proto::UploadMode::Incremental, records)
            .await
            .unwrap();
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }
}

pub fn dev_user(name: &str) -> &'static DevUser {
    DEV_USERS.iter().find(|user| user.name == name).expect("a development user")
}

pub fn user_pem(authority: &Authority, name: &str) -> PemText {
    let pair = authority.issue_user(dev_user(name)).unwrap();
    PemText { ca: authority.cert_pem(), cert: pair.cert_pem, key: pair.key_pem }
}

/// One answer, read whole.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The CSRF token of the page's first form.
    pub fn csrf(&self) -> String {
        self.field("csrf")
    }

    /// The value of the page's first hidden field `name`.
    pub fn field(&self, name: &str) -> String {
        let marker = format!(r#"name="{name}" value=""#);
        let at = self.body.find(&marker).unwrap_or_else(|| panic!("a {name} field in {}", self.body));
        let rest = &self.body[at + marker.len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

/// A client presenting one certificate, as one browser would.
pub struct Browser {
    base: String,
    client: Https,
    /// Sent with every request, as a smartcard middleware might (`Authorization: Bearer ...`).
    pub authorization: Option<String>,
}

impl Browser {
    /// A browser for the view at `base`, presenting `pem`.
    pub fn at(base: String, pem: &PemText) -> Self {
        Self::new(base, pem)
    }

    fn new(base: String, pem: &PemText) -> Self {
        Self { base, client: https_client(pem), authorization: None }
    }

    pub async fn get(&self, path: &str) -> Page {
        self.send("GET", path, &[], &[]).await
    }

    /// POSTs a url-encoded form (same-origin, as a browser sends it).
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let origin = self.base.clone();
        self.send("POST", path, form, &[("origin", origin.as_str())]).await
    }

    pub async fn send(&self, method: &str, path: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Page {
        let body: String = form
            .iter()
            .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        let mut request = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if method == "POST" {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization.as_str());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            self.client.request(request.body(Full::new(Bytes::from(body))).unwrap()),
        )
        .await
        .expect("an answer within 10 s")
        .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Page { status, headers, body: String::from_utf8(bytes.to_vec()).unwrap() }
    }

    /// Opens a stream (server-sent events) and returns its response to read from.
    pub async fn open(&self, path: &str) -> hyper::Response<hyper::body::Incoming> {
        let request =
            hyper::Request::builder().uri(format!("{}{path}", self.base)).body(Full::new(Bytes::new())).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.client.request(request)).await.unwrap().unwrap()
    }
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}
