//! Getting the keeper's checkpoints witnessed: a task beside the keeper
//! (never on a search's path) sends each new signed checkpoint to every
//! configured witness as a C2SP tlog-witness `add-checkpoint` request, with
//! the consistency proof from the size that witness last cosigned, checks
//! the cosignature that comes back with the witness's public key, and once
//! a quorum (k of n) cosigned one checkpoint records it as published
//! ([`super::LogKeeper::record_witnessed`]), which the relay then serves.
//!
//! A witness's size is learnt from its 409 answer (the spec's way: a log
//! that does not know it asks with old size 0). Metrics, per witness name
//! (no personal data): `cpis_witness_size{witness}` (the size it last
//! cosigned), `cpis_witness_failures_total{witness,reason}`;
//! `cpis_access_log_witnessed_size` is the size a quorum cosigned.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};

use super::{LogKeeper, SignedCheckpoint};
use crate::transparency::cosignature::{AddCheckpoint, CosignerKey, add_signature_lines, verify_cosignatures};

/// How long one witness may take to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Failure reasons, the label values of `cpis_witness_failures_total`.
const REASONS: [&str; 4] = ["unreachable", "conflict", "refused", "bad_cosignature"];

/// One witness the relay asks: its submission prefix and its public key.
#[derive(Clone, Debug)]
pub struct WitnessEndpoint {
    pub url: http::Uri,
    pub key: CosignerKey,
}

/// The witnesses and how many of them must cosign a checkpoint for it to count as published.
#[derive(Clone, Debug)]
pub struct WitnessPolicy {
    pub witnesses: Vec<WitnessEndpoint>,
    pub quorum: usize,
    /// PEM certificates that https:// witnesses are checked against instead of the system's roots.
    pub ca_pem: Option<String>,
}

impl WitnessPolicy {
    /// From `KEY@URL` entries (the witness's `name+id+base64(0x04||key)` and
    /// its http(s) submission prefix) and a quorum (default: all of them).
    pub fn parse(entries: &[String], quorum: Option<usize>) -> Result<Option<Self>, String> {
        if entries.is_empty() {
            return match quorum {
                Some(_) => Err("witness_quorum: no witness is configured".into()),
                None => Ok(None),
            };
        }
        let mut witnesses = Vec::new();
        for entry in entries {
            let (key, url) = entry
                .split_once("@http")
                .ok_or_else(|| format!("witness (--witness): {entry:?} is not KEY@URL (an http:// or https:// URL)"))?;
            let key = CosignerKey::parse(key).map_err(|error| format!("witness: {error}"))?;
            let url: http::Uri =
                format!("http{url}").parse().map_err(|error| format!("witness: {key}: the URL: {error}"))?;
            if witnesses.iter().any(|known: &WitnessEndpoint| known.key.name() == key.name()) {
                return Err(format!("witness: {} is named twice", key.name()));
            }
            witnesses.push(WitnessEndpoint { url, key });
        }
        let quorum = quorum.unwrap_or(witnesses.len());
        if quorum == 0 || quorum > witnesses.len() {
            return Err(format!("witness_quorum: must be 1 to {} (the witnesses configured)", witnesses.len()));
        }
        Ok(Some(Self { witnesses, quorum, ca_pem: None }))
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn http_client(ca_pem: Option<&str>) -> Result<HttpClient, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(REQUEST_TIMEOUT));
    // Witnesses on https:// are checked against the CA given, or else the system's roots.
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let certificate = certificate.map_err(|error| format!("witness CA: {error}"))?;
                roots.add(certificate).map_err(|error| format!("witness CA: {error}"))?;
            }
            if roots.is_empty() {
                return Err("witness CA: no PEM certificate found".into());
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::crypto::provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector))
}

/// A GET of `url` (a witness's `/checkpoint`), for `audit verify`: status and
/// body; https:// checked against `ca_pem` (PEM) if given, else the system's roots.
pub async fn fetch(url: &str, ca_pem: Option<&str>) -> Result<(u16, String), String> {
    let client = http_client(ca_pem)?;
    let request = http::Request::get(url).body(Full::new(Bytes::new())).map_err(|error| error.to_string())?;
    exchange(&client, request).await
}

/// Most a witness's answer may hold: a signed note with its cosignatures, or
/// one cosignature line, is a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One request to a witness: the status and the body (at most
/// [`MAX_ANSWER_BYTES`]), or why not, within [`REQUEST_TIMEOUT`].
async fn exchange(client: &HttpClient, request: http::Request<Full<Bytes>>) -> Result<(u16, String), String> {
    let exchange = async {
        let response = client.request(request).await.map_err(|error| error.to_string())?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|error| format!("its answer: {error}"))?
            .to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| "no answer in time".to_owned())?
}

/// At start, before the keeper signs: each witness's latest cosigned
/// checkpoint of this log (`GET /checkpoint?origin=`), kept if the log's key
/// signed it and that witness cosigned it; the largest becomes the keeper's
/// witnessed checkpoint, which every signature must extend. So a store cut or
/// rewritten while the relay was stopped, its signed notes with it, is
/// refused at the first signature, not signed. A witness that does not
/// answer (within the request timeout) is skipped.
pub(crate) async fn learn_witnessed(keeper: &LogKeeper, policy: &WitnessPolicy) {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let origin = utf8_percent_encode(keeper.verifier().name(), NON_ALPHANUMERIC).to_string();
    let fetches = policy.witnesses.iter().map(|endpoint| {
        let url = format!("{}/checkpoint?origin={origin}", endpoint.url.to_string().trim_end_matches('/'));
        async move { (endpoint, fetch(&url, policy.ca_pem.as_deref()).await) }
    });
    let mut largest: Option<SignedCheckpoint> = None;
    for (endpoint, answer) in futures::future::join_all(fetches).await {
        let note = match answer {
            Ok((200, note)) => note,
            Ok((status, _)) => {
                tracing::debug!(witness = endpoint.key.name(), status, "no checkpoint of this log from the witness");
                continue;
            }
            Err(error) => {
                tracing::warn!(witness = endpoint.key.name(), %error, "cannot read the witness's latest checkpoint at start");
                continue;
            }
        };
        let Ok(checkpoint) = crate::transparency::Checkpoint::verify(&note, keeper.verifier()) else { continue };
        if verify_cosignatures(&note, std::slice::from_ref(&endpoint.key)).map_or(true, |cosigned| cosigned.is_empty())
        {
            continue;
        }
        if largest.as_ref().is_none_or(|largest| largest.checkpoint.size < checkpoint.size) {
            largest = Some(SignedCheckpoint { checkpoint, note });
        }
    }
    if let Some(witnessed) = largest {
        tracing::info!(size = witnessed.checkpoint.size, "the witnesses' latest checkpoint, which the log must extend");
        keeper.learn_witnessed(witnessed);
    }
}

/// What one witness answered.
enum Outcome {
    /// Its cosignature line, verified.
    Cosigned(String),
    /// 409: it last cosigned this size.
    Conflict(u64),
    /// Any other failure, with the metric's reason.
    Failed(&'static str, String),
}

/// One witness as the task follows it.
struct Follower {
    endpoint: WitnessEndpoint,
    /// The size it last cosigned, once known.
    size: Option<u64>,
    /// Its cosignature line and the note (the checkpoint as signed) it cosigns.
    cosignature: Option<(String, String)>,
}

impl Follower {
    /// Its cosignature line of `note`, if it cosigned that very note.
    fn cosigned(&self, note: &str) -> Option<&str> {
        self.cosignature.as_ref().filter(|(cosigned, _)| cosigned == note).map(|(_, line)| line.as_str())
    }
}

/// Sends every new checkpoint of `keeper` to the witnesses of `policy`
/// until `done` flips (the keeper signed its last checkpoint), then once more.
pub(crate) async fn witness_checkpoints(
    keeper: LogKeeper,
    policy: Arc<WitnessPolicy>,
    retry: Duration,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    for endpoint in &policy.witnesses {
        for reason in REASONS {
            metrics::counter!("cpis_witness_failures_total", "witness" => endpoint.key.name().to_owned(), "reason" => reason)
                .increment(0);
        }
        metrics::gauge!("cpis_witness_size", "witness" => endpoint.key.name().to_owned()).set(0.0);
    }
    metrics::gauge!("cpis_access_log_witnessed_size").set(0.0);
    let client = match http_client(policy.ca_pem.as_deref()) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot make the witnesses' HTTP client: checkpoints are not witnessed");
            return;
        }
    };
    let mut followers: Vec<Follower> = policy
        .witnesses
        .iter()
        .map(|endpoint| Follower { endpoint: endpoint.clone(), size: None, cosignature: None })
        .collect();
    let mut signed = keeper.signed_checkpoints();
    let mut ticks = tokio::time::interval(retry);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The size published and by how many witnesses' cosignatures.
    let mut published: Option<(u64, usize)> = None;
    loop {
        let last = tokio::select! {
            _ = signed.changed() => false,
            _ = ticks.tick() => false,
            _ = done.wait_for(|done| *done) => true,
        };
        let Some(latest) = signed.borrow_and_update().clone() else {
            if last {
                return;
            }
            continue;
        };
        let size = latest.checkpoint.size;
        // Witnesses behind are asked again each interval, even once a quorum
        // published the checkpoint: their failures show in the metrics. The
        // last checkpoint is recorded (and stored) whoever cosigned it before.
        let all_cosigned = followers.iter().all(|follower| follower.cosigned(&latest.note).is_some());
        if all_cosigned && !last {
            continue;
        }
        let round = push_round(&keeper, &client, &mut followers, &latest);
        let cosigned =
            if last { tokio::time::timeout(REQUEST_TIMEOUT, round).await.unwrap_or_default() } else { round.await };
        let more = last || published.is_none_or(|(at, count)| at != size || cosigned.len() > count);
        if cosigned.len() >= policy.quorum && more {
            let note = cosigned.iter().fold(latest.note.clone(), |note, line| add_signature_lines(&note, line));
            let witnessed = SignedCheckpoint { checkpoint: latest.checkpoint.clone(), note };
            match keeper.run(move |keeper| keeper.record_witnessed(witnessed, last)).await {
                Ok(()) => published = Some((size, cosigned.len())),
                Err(error) => tracing::error!(%error, "cannot store the witnessed checkpoint; will retry"),
            }
        }
        if last {
            return;
        }
    }
}

/// Offers `latest` to every witness that has not cosigned it yet, at once;
/// returns the cosignature lines of `latest` held now.
async fn push_round(
    keeper: &LogKeeper,
    client: &HttpClient,
    followers: &mut [Follower],
    latest: &SignedCheckpoint,
) -> Vec<String> {
    let size = latest.checkpoint.size;
    let pushes =
        followers.iter_mut().filter(|follower| follower.cosigned(&latest.note).is_none()).map(|follower| async move {
            // At most twice: a 409 teaches the witness's size, then the proof from it.
            for _ in 0..2 {
                let old = follower.size.unwrap_or(0).min(size);
                let proof = match keeper.run(move |keeper| Ok(keeper.consistency(old, size))).await {
                    Ok(Ok(proof)) => proof,
                    Ok(Err(error)) => {
                        fail(follower, "refused", format!("no consistency proof from {old} to {size}: {error}"));
                        return;
                    }
                    Err(error) => {
                        fail(follower, "unreachable", format!("the keeper: {error}"));
                        return;
                    }
                };
                let request = AddCheckpoint { old_size: old, proof, note: latest.note.clone() };
                match add_checkpoint(client, &follower.endpoint, &request, &latest.checkpoint.text()).await {
                    Outcome::Cosigned(line) => {
                        follower.size = Some(size);
                        follower.cosignature = Some((latest.note.clone(), line));
                        metrics::gauge!("cpis_witness_size", "witness" => follower.endpoint.key.name().to_owned())
                            .set(size as f64);
                        return;
                    }
                    Outcome::Conflict(theirs) if follower.size != Some(theirs) && theirs <= size => {
                        follower.size = Some(theirs);
                    }
                    // It already cosigned a larger checkpoint: another node's of the same
                    // log (the nodes share one key). Not a refusal; nothing to send.
                    Outcome::Conflict(theirs) if theirs > size => {
                        tracing::debug!(theirs, size, "the witness holds a larger checkpoint of this log");
                        follower.size = Some(theirs);
                        return;
                    }
                    Outcome::Conflict(theirs) => {
                        fail(
                            follower,
                            "conflict",
                            format!("it cosigned size {theirs} of this log; this checkpoint is of {size}"),
                        );
                        follower.size = Some(theirs);
                        return;
                    }
                    Outcome::Failed(reason, detail) => {
                        fail(follower, reason, detail);
                        return;
                    }
                }
            }
        });
    futures::future::join_all(pushes).await;
    followers.iter().filter_map(|follower| follower.cosigned(&latest.note).map(str::to_owned)).collect()
}

fn fail(follower: &Follower, reason: &'static str, detail: String) {
    let witness = follower.endpoint.key.name().to_owned();
    metrics::counter!("cpis_witness_failures_total", "witness" => witness.clone(), "reason" => reason).increment(1);
    tracing::warn!(%witness, reason, %detail, "a witness did not cosign the access log's checkpoint");
}

/// One `add-checkpoint` exchange; checks the cosignature of the note `text`.
async fn add_checkpoint(
    client: &HttpClient,
    endpoint: &WitnessEndpoint,
    request: &AddCheckpoint,
    text: &str,
) -> Outcome {
    let url = format!("{}/add-checkpoint", endpoint.url.to_string().trim_end_matches('/'));
    let built = http::Request::post(url.as_str())
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(request.encode())));
    let built = match built {
        Ok(built) => built,
        Err(error) => return Outcome::Failed("unreachable", error.to_string()),
    };
    let (status, body) = match exchange(client, built).await {
        Ok(answer) => answer,
        Err(error) => return Outcome::Failed("unreachable", error),
    };
    match status {
        200 => {
            // Keep a line of this witness's key that verifies; ignore others, as the spec asks.
            let verified = body.split_inclusive('\n').find(|line| {
                let note = format!("{text}\n{line}");
                verify_cosignatures(&note, std::slice::from_ref(&endpoint.key)).is_ok_and(|found| !found.is_empty())
            });
            match verified {
                Some(line) => Outcome::Cosigned(line.to_owned()),
                None => Outcome::Failed("bad_cosignature", "no cosignature of its key verifies".into()),
            }
        }
        409 => match body.trim().parse() {
            Ok(size) => Outcome::Conflict(size),
            Err(_) => Outcome::Failed("conflict", format!("409 without a size: {}", body.trim())),
        },
        code => Outcome::Failed("refused", format!("{code}: {}", body.trim())),
    }
}
