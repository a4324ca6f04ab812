//! The server's TLS configuration as a cell that can be replaced while the
//! relay runs: the certificate, key, CA and CRLs are read again on SIGHUP and
//! when their contents change (polled). Each new handshake takes the
//! configuration current at its start; established connections keep the one
//! they were made with, so a reload never drops a connection. A reload that
//! fails (a file missing, bad PEM, a key that does not match) keeps the old
//! configuration, says why in a warning and counts
//! `cpis_tls_reloads_total{outcome="failure"}`. Each successful reload is
//! announced ([`ServerTls::reloads`]) so that established connections check
//! their peer against it and end if it is now revoked.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, UnixTime},
    server::danger::ClientCertVerifier,
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{PemFiles, PemText, TlsError, client_verifier, parse_crls, server_config_with_verifier};

/// Outcomes of `cpis_tls_reloads_total{outcome}`.
pub const RELOAD_OUTCOMES: [&str; 2] = ["success", "failure"];

/// The files the server's TLS configuration is read from.
#[derive(Clone, Debug)]
pub struct ServerTlsFiles {
    pub pem: PemFiles,
    /// Certificate revocation lists, PEM or DER; none to check no revocation.
    pub crls: Vec<PathBuf>,
}

/// The application protocol a listener offers over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2 only.
    H2,
    /// The FHIR door: HTTP/1.1 only.
    Http1,
}

/// One loaded configuration, per protocol.
struct Loaded {
    h2: Arc<ServerConfig>,
    http1: Arc<ServerConfig>,
    /// Its client certificate verifier, when built here (not for a fixed configuration).
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl Loaded {
    fn new(h2: Arc<ServerConfig>, verifier: Option<Arc<dyn ClientCertVerifier>>) -> Self {
        let mut http1 = (*h2).clone();
        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self { h2, http1: Arc::new(http1), verifier }
    }
}

/// A cheap handle to the current server TLS configuration.
#[derive(Clone)]
pub struct ServerTls {
    shared: Arc<ReloadState>,
}

/// The configuration in use, and the files and last reload it was read from.
struct ReloadState {
    current: RwLock<Arc<Loaded>>,
    files: Option<ServerTlsFiles>,
    /// What the last reload attempt saw (a digest of the files' contents, or
    /// why they could not be read), so that polling acts once per change.
    last_seen: Mutex<Option<Seen>>,
    /// Counts successful reloads, for established connections to re-check their peer.
    reloads: watch::Sender<u64>,
}

#[derive(Clone, PartialEq, Eq)]
enum Seen {
    Contents([u8; 32]),
    Unreadable(String),
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.shared.files).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A configuration that never reloads (nothing to read it from).
    pub fn fixed(config: Arc<ServerConfig>) -> Self {
        Self::with(Loaded::new(config, None), None, None)
    }

    /// Reads `files` now (an error here is a configuration error at start);
    /// [`ServerTls::reload`] reads them again.
    pub fn from_files(files: ServerTlsFiles) -> Result<Self, TlsError> {
        let (seen, contents) = read(&files)?;
        let loaded = contents.build()?;
        Ok(Self::with(loaded, Some(files), Some(Seen::Contents(seen))))
    }

    fn with(loaded: Loaded, files: Option<ServerTlsFiles>, seen: Option<Seen>) -> Self {
        Self {
            shared: Arc::new(ReloadState {
                current: RwLock::new(Arc::new(loaded)),
                files,
                last_seen: Mutex::new(seen),
                reloads: watch::Sender::new(0),
            }),
        }
    }

    /// Changes with every successful reload.
    pub(super) fn reloads(&self) -> watch::Receiver<u64> {
        self.shared.reloads.subscribe()
    }

    /// Whether a peer's certificate chain, verified at its handshake, passes
    /// the current configuration now (a reloaded CRL, its expiry); why not otherwise.
    pub(super) fn still_trusted(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let loaded = Arc::clone(&self.shared.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let (Some(verifier), Some((end_entity, intermediates))) = (&loaded.verifier, chain.split_first()) else {
            return Ok(());
        };
        verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(drop)
            .map_err(|error| error.to_string())
    }

    /// The configuration for a handshake starting now.
    pub fn config(&self, alpn: Alpn) -> Arc<ServerConfig> {
        let loaded = Arc::clone(&self.shared.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()));
        match alpn {
            Alpn::H2 => Arc::clone(&loaded.h2),
            Alpn::Http1 => Arc::clone(&loaded.http1),
        }
    }

    /// Reads the files again and, if they make a valid configuration, uses it
    /// for every new handshake (SIGHUP). A failure keeps the old one.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.reload_when(|_| true).map(|_| ())
    }

    /// [`ServerTls::reload`] only if the files changed since the last attempt;
    /// true if a new configuration is in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.reload_when(|changed| changed)
    }

    fn reload_when(&self, wanted: impl FnOnce(bool) -> bool) -> Result<bool, TlsError> {
        let Some(files) = &self.shared.files else {
            return Ok(false);
        };
        let read = read(files);
        let seen = match &read {
            Ok((digest, _)) => Seen::Contents(*digest),
            Err(error) => Seen::Unreadable(error.to_string()),
        };
        {
            let mut last_seen = self.shared.last_seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let changed = last_seen.as_ref() != Some(&seen);
            if !wanted(changed) {
                return Ok(false);
            }
            *last_seen = Some(seen);
        }
        match read.and_then(|(_, contents)| contents.build()) {
            Ok(loaded) => {
                *self.shared.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(loaded);
                self.shared.reloads.send_modify(|count| *count += 1);
                metrics::counter!("cpis_tls_reloads_total", "outcome" => "success").increment(1);
                tracing::info!(crls = files.crls.len(), "TLS configuration reloaded; new connections use it");
                Ok(true)
            }
            Err(error) => {
                metrics::counter!("cpis_tls_reloads_total", "outcome" => "failure").increment(1);
                tracing::warn!(%error, "TLS configuration not reloaded; the previous one stays in use");
                Err(error)
            }
        }
    }

    /// Checks the files every `interval` and reloads when they change, until
    /// the returned task is aborted or the runtime stops.
    pub fn spawn_watch(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let checking = tls.clone();
                // File reads and CRL parsing stay off the async workers.
                let _ = tokio::task::spawn_blocking(move || checking.reload_if_changed()).await;
            }
        })
    }
}

/// The files' contents, read once so that what is built is what was digested.
struct Contents {
    pem: PemText,
    crls: Vec<(PathBuf, Vec<u8>)>,
}

impl Contents {
    fn build(self) -> Result<Loaded, TlsError> {
        let mut crls = Vec::new();
        for (path, bytes) in self.crls {
            crls.extend(parse_crls(&bytes).map_err(|message| TlsError::File { path, message })?);
        }
        let verifier = client_verifier(&self.pem, crls)?;
        Ok(Loaded::new(server_config_with_verifier(&self.pem, Arc::clone(&verifier))?, Some(verifier)))
    }
}

fn read(files: &ServerTlsFiles) -> Result<([u8; 32], Contents), TlsError> {
    let pem = files.pem.read()?;
    let mut digest = Sha256::new();
    for part in [&pem.ca, &pem.cert, &pem.key] {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part.as_bytes());
    }
    let mut crls = Vec::with_capacity(files.crls.len());
    for path in &files.crls {
        let bytes =
            std::fs::read(path).map_err(|error| TlsError::File { path: path.clone(), message: error.to_string() })?;
        digest.update((bytes.len() as u64).to_le_bytes());
        digest.update(&bytes);
        crls.push((path.clone(), bytes));
    }
    Ok((digest.finalize().into(), Contents { pem, crls }))
}
