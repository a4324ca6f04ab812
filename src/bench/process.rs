//! The processes a measurement runs against, each started from this same
//! binary in its own process: the relay exactly as `serve` runs it (default
//! logging included, its log written to a file as a supervisor would), and
//! the echo baseline. The load generator stays in the bench's own process,
//! so it never shares a runtime, an allocator or cores' caches with what it
//! measures. Each child is ended by its PID when its handle is dropped.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::io::AsyncBufReadExt;

use crate::config::StoreKind;

/// A server started by the bench; killed when dropped.
pub struct ServerProcess {
    child: tokio::process::Child,
    pub url: String,
    /// The admin address (`/metrics`), for a relay.
    pub admin: Option<SocketAddr>,
    /// Where the process's stderr (its log) goes.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// The port its gRPC listens on.
    pub fn grpc_port(&self) -> Option<u16> {
        self.url.rsplit(':').next()?.parse().ok()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Resident set size of the server process, in bytes (Linux).
    pub fn resident_bytes(&self) -> Option<u64> {
        super::memory_bytes(&self.pid()?.to_string(), "VmRSS:")
    }

    /// Peak resident set size of the server process so far, in bytes (Linux).
    pub fn peak_resident_bytes(&self) -> Option<u64> {
        super::memory_bytes(&self.pid()?.to_string(), "VmHWM:")
    }

    /// Bytes the process has logged so far.
    pub fn log_bytes(&self) -> u64 {
        std::fs::metadata(&self.log).map(|meta| meta.len()).unwrap_or(0)
    }

    /// Stops the process with SIGTERM and waits for it (SIGKILL after `grace`).
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {what}: {source}")]
    Spawn { what: &'static str, source: std::io::Error },
    #[error("{what} did not print its listening line (log: {log})")]
    NoListeningLine { what: &'static str, log: String },
}

/// Starts the relay as `cpis-relay serve` on 127.0.0.1 with a store in a
/// fresh temporary directory and the certificates of `certs_dir`.
pub async fn start_relay(certs_dir: &Path, store: &StoreKind) -> Result<ServerProcess, ProcessError> {
    start_relay_with(certs_dir, store, &[]).await
}

/// [`start_relay`] with these variables added to its environment (the
/// national-day bench runs one node under libfaketime, its clock off).
pub async fn start_relay_with(
    certs_dir: &Path,
    store: &StoreKind,
    environment: &[(&str, String)],
) -> Result<ServerProcess, ProcessError> {
    let dir = tempfile::tempdir().map_err(|source| ProcessError::Spawn { what: "the relay", source })?;
    let store = match store {
        StoreKind::Embedded => "embedded",
        StoreKind::Memory => "memory",
        StoreKind::Postgres(url) => url.expose(),
    };
    let mut command = own_binary();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--store", store])
        // Room for --people up to the whole test range in one authority's refresh.
        .args(["--max-upload-records", "2000000"])
        // A load test measures capacity, from one organisation.
        .args(["--search-rate-per-second", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--certs-dir")
        .arg(certs_dir)
        .envs(environment.iter().map(|(name, value)| (name, value)));
    spawn(command, "the relay", dir).await
}

/// Starts the echo baseline (`bench --scenario echo`) answering with the
/// responses saved in `responses_dir`.
pub async fn start_echo(certs_dir: &Path, responses_dir: &Path) -> Result<ServerProcess, ProcessError> {
    let dir = tempfile::tempdir().map_err(|source| ProcessError::Spawn { what: "the echo", source })?;
    let mut command = own_binary();
    command
        .args(["bench", "--scenario", "echo"])
        .arg("--certs-dir")
        .arg(certs_dir)
        .arg("--data-dir")
        .arg(responses_dir);
    spawn(command, "the echo", dir).await
}

fn own_binary() -> tokio::process::Command {
    let binary = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("cpis-relay"));
    tokio::process::Command::new(binary)
}

async fn spawn(
    mut command: tokio::process::Command,
    what: &'static str,
    dir: tempfile::TempDir,
) -> Result<ServerProcess, ProcessError> {
    let log = dir.path().join("server.log");
    let log_file = std::fs::File::create(&log).map_err(|source| ProcessError::Spawn { what, source })?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProcessError::Spawn { what, source })?;
    let no_line = || ProcessError::NoListeningLine { what, log: log.display().to_string() };
    let stdout = child.stdout.take().ok_or_else(no_line)?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .ok_or_else(no_line)?;
    let field = |name: &str| -> Option<SocketAddr> {
        line.split_whitespace().find_map(|word| word.strip_prefix(name)).and_then(|address| address.parse().ok())
    };
    let grpc = field("grpc=").ok_or_else(no_line)?;
    Ok(ServerProcess {
        child,
        url: format!("https://localhost:{}", grpc.port()),
        admin: field("admin="),
        log,
        _dir: dir,
    })
}
