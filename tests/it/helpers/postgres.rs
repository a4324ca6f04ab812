//! A private PostgreSQL cluster per test, from Debian's `postgresql`
//! package: `initdb` and `pg_ctl` in a temporary directory, on a free port of
//! 127.0.0.1, as an unprivileged user (PostgreSQL refuses to run as root:
//! under root the cluster runs as the package's `postgres` user). It never
//! touches a system cluster, and is stopped (immediately) when dropped.
//!
//! A cluster can also run on a test host in a network namespace
//! (tests/it/helpers/netns.rs), listening on that host's address as well.
//!
//! Without PostgreSQL the tests fail, saying how to install it.

use std::{
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
};

use cpis_relay::{
    clock::ManualClock,
    relay::RelaySettings,
    store::{
        Store,
        postgres::{ConnectOptions, PostgresOptions, PostgresStore, StoreUrl},
    },
};

use super::{Pki, TestRelay};

pub struct PgCluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    /// The network namespace it runs in and its address there; none: 127.0.0.1.
    host: Option<(String, String)>,
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CPIS_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed: these tests start their own server from Debian's package \
             (apt-get install postgresql; .ci/run installs it), or set CPIS_PG_BIN to a directory holding initdb and pg_ctl"
        ),
    }
}

/// Under root: the uid and gid of the `postgres` user the package creates.
fn unprivileged_owner() -> Option<(u32, u32)> {
    let me = std::fs::metadata("/proc/self").map(|meta| meta.uid()).unwrap_or(0);
    if me != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|line| line.starts_with("postgres:"))
        .expect("running as root, the tests run PostgreSQL as the postgres user, which Debian's package creates");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PgCluster {
    /// Initialises and starts a cluster (user `cpis`, trust on loopback).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`PgCluster::start`], with extra `postgresql.conf` lines.
    pub fn start_with(settings: &[&str]) -> Self {
        Self::start_on(None, settings)
    }

    /// A cluster on the test host `ip` in network namespace `ns`, reachable
    /// from the hosts of `subnet` (CIDR) without a password.
    pub fn start_in(ns: &str, ip: &str, subnet: &str) -> Self {
        let line = format!("SUBNET {subnet}");
        Self::start_on(Some((ns.to_owned(), ip.to_owned())), &[&line])
    }

    fn start_on(host: Option<(String, String)>, settings: &[&str]) -> Self {
        let bin = bin_dir();
        let owner = unprivileged_owner();
        let dir = tempfile::tempdir().unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let cluster = Self { port: free_port(), dir, bin, owner, host };
        cluster.run_ok(
            cluster
                .command("initdb")
                .args(["-U", "cpis", "--auth=trust", "-E", "UTF8", "--no-locale", "-D"])
                .arg(cluster.data()),
        );
        let listen = match &cluster.host {
            Some((_, ip)) => format!("127.0.0.1,{ip}"),
            None => "127.0.0.1".to_owned(),
        };
        let mut conf = format!(
            "listen_addresses = '{listen}'\nport = {}\nunix_socket_directories = '{}'\nmax_connections = 200\n\
             shared_buffers = 32MB\nwal_level = replica\nmax_wal_senders = 4\nlog_min_messages = warning\n",
            cluster.port,
            cluster.dir.path().display()
        );
        for line in settings {
            if let Some(subnet) = line.strip_prefix("SUBNET ") {
                cluster.append_hba(&format!("host all cpis {subnet} trust\n"));
                continue;
            }
            conf.push_str(line);
            conf.push('\n');
        }
        cluster.append_conf(&conf);
        cluster.append_hba("host replication cpis 127.0.0.1/32 trust\n");
        cluster.pg_ctl_start();
        cluster
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn append_conf(&self, text: &str) {
        append(&self.data().join("postgresql.conf"), text);
    }

    fn append_hba(&self, text: &str) {
        append(&self.data().join("pg_hba.conf"), text);
    }

    /// A URL of `database` for user `cpis`.
    pub fn url(&self, database: &str) -> String {
        let host = self.host.as_ref().map_or("127.0.0.1", |(_, ip)| ip.as_str());
        format!("postgres://cpis@{host}:{}/{database}?sslmode=disable", self.port)
    }

    /// A PostgreSQL program as the cluster's owner, in its namespace if it has one.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let Some((ns, _)) = &self.host else {
            let mut command = Command::new(path);
            if let Some((uid, gid)) = self.owner {
                command.uid(uid).gid(gid);
            }
            return command;
        };
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]);
        if let Some((uid, gid)) = self.owner {
            command.args(["setpriv", &format!("--reuid={uid}"), &format!("--regid={gid}"), "--clear-groups"]);
        }
        command.arg(path);
        command
    }

    /// Creates a database and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// Runs SQL with psql and returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = self.run_ok(
            self.command("psql")
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "cpis"])
                .args(["-p", &self.port.to_string(), "-d", database, "-c", sql]),
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    pub fn pg_ctl_start(&self) {
        self.run_ok(
            self.command("pg_ctl")
                .args(["-w", "-t", "60", "-D"])
                .arg(self.data())
                .arg("-l")
                .arg(self.log())
                .arg("start"),
        );
    }

    /// Stops the server: `fast` (clients disconnected, clean) or `immediate` (as a crash).
    pub fn pg_ctl_stop(&self, mode: &str) {
        self.run_ok(self.command("pg_ctl").args(["-w", "-m", mode, "-D"]).arg(self.data()).arg("stop"));
    }

    /// Makes a standby of this (primary) cluster with `pg_basebackup -R`.
    pub fn standby(&self, name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let standby =
            Self { port: free_port(), dir, bin: self.bin.clone(), owner: self.owner, host: self.host.clone() };
        standby.run_ok(
            standby
                .command("pg_basebackup")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "cpis",
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                ])
                .arg("-D")
                .arg(standby.data()),
        );
        standby.append_conf(&format!(
            "port = {}\nunix_socket_directories = '{}'\ncluster_name = '{name}'\nprimary_conninfo = 'host=127.0.0.1 port={} user=cpis application_name={name}'\n",
            standby.port,
            standby.dir.path().display(),
            self.port
        ));
        standby.pg_ctl_start();
        standby
    }

    pub fn promote(&self) {
        self.run_ok(self.command("pg_ctl").args(["-w", "-D"]).arg(self.data()).arg("promote"));
    }

    fn run_ok(&self, command: &mut Command) -> Output {
        let output = command.env_remove("PGPASSWORD").current_dir(self.dir.path()).output().unwrap();
        if !output.status.success() {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            panic!(
                "{:?} failed: {}\n{}\nserver log:\n{log}",
                command,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        output
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let mut command = self.command("pg_ctl");
        command.args(["-w", "-m", "immediate", "-D"]).arg(self.data()).arg("stop");
        let _ = command.current_dir(self.dir.path()).output();
    }
}

/// How a test node reaches the database at `url`: a pool of `pool_size`
/// connections, a write given up after `write_timeout`.
pub fn pg_options(url: &str, pool_size: usize, write_timeout: std::time::Duration) -> PostgresOptions {
    PostgresOptions {
        connect: ConnectOptions { url: StoreUrl::parse(url).unwrap(), password_file: None, pool_size },
        write_timeout,
    }
}

/// A relay node in this process on the PostgreSQL database of `options`,
/// sharing the test's PKI and clock with its other nodes, its spill in a
/// temporary directory of its own; `settings` say the rest.
pub async fn pg_relay(
    pki: &Pki,
    clock: &Arc<ManualClock>,
    options: &PostgresOptions,
    settings: RelaySettings,
) -> TestRelay {
    cpis_relay::tls::install_crypto_provider();
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(options).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let settings = RelaySettings { spill_dir: Some(dir.path().to_owned()), ..settings };
    TestRelay::serve(pki.clone(), store, Arc::clone(clock), settings, dir).await
}
