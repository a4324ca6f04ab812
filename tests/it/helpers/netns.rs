//! Test hosts in network namespaces that the test makes itself (root only):
//! each host is a namespace with one veth end on a bridge that the test also
//! makes, with an address of a /24 private to the test. The test process
//! reaches the hosts through the bridge's own address; every packet stays on
//! the interfaces made here, and everything is removed when dropped.
//!
//! Faults are netfilter rules inside a host's namespace: a cut link drops
//! every packet to and from a peer (TCP stalls, as through a partition; no
//! reset), and a lossy link drops a random share of them. This kernel has no
//! `sch_netem`, so delay is not injected here (see docs/several-nodes.md, "Network faults").

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// A network of test hosts. `None` from [`Net::new`] when not root or when
/// `ip`/`iptables` are missing: the caller skips, saying why.
pub struct Net {
    /// The first three octets of the network, e.g. "10.213.7".
    pub prefix: String,
    bridge: String,
    hosts: Vec<String>,
}

/// One test host: its namespace and address.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub ip: String,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program).args(args).output().map_err(|error| format!("{program}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

fn must(program: &str, args: &[&str]) {
    if let Err(error) = run(program, args) {
        panic!("{error}");
    }
}

static NETWORKS: AtomicU32 = AtomicU32::new(0);

impl Net {
    pub fn new() -> Result<Self, String> {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| status.lines().find(|line| line.starts_with("Uid:")).map(str::to_owned))
            .unwrap_or_default();
        if uid.split_whitespace().nth(1) != Some("0") {
            return Err("network namespaces need root (CI runs as root)".into());
        }
        run("iptables", &["--version"])
            .map_err(|error| format!("iptables is missing ({error}); scripts/setup.sh installs it"))?;
        // Distinct per process and per network, so tests running at once never share one.
        let number = std::process::id() % 200 * 4 + NETWORKS.fetch_add(1, Ordering::Relaxed) % 4;
        let (second, third) = (200 + number / 250, number % 250);
        let net = Self { prefix: format!("10.{second}.{third}"), bridge: format!("cpisbr{number}"), hosts: Vec::new() };
        let _ = run("ip", &["link", "del", &net.bridge]);
        run("ip", &["link", "add", &net.bridge, "type", "bridge"])?;
        must("ip", &["addr", "add", &format!("{}.1/24", net.prefix), "dev", &net.bridge]);
        must("ip", &["link", "set", &net.bridge, "up"]);
        Ok(net)
    }

    /// The test process's own address on the network (the bridge's).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    pub fn subnet(&self) -> String {
        format!("{}.0/24", self.prefix)
    }

    /// Adds a host at `.octet`, up, with its loopback up.
    pub fn host(&mut self, name: &str, octet: u8) -> Host {
        let ns = format!("{}-{name}", self.bridge);
        let (outside, inside) = (format!("{}h{octet}", &self.bridge[4..]), format!("{}n{octet}", &self.bridge[4..]));
        let _ = run("ip", &["netns", "del", &ns]);
        must("ip", &["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        must("ip", &["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
        must("ip", &["link", "set", &inside, "netns", &ns]);
        must("ip", &["link", "set", &outside, "master", &self.bridge, "up"]);
        let ip = format!("{}.{octet}", self.prefix);
        must("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", &inside]);
        must("ip", &["-n", &ns, "link", "set", &inside, "up"]);
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        Host { ns, ip }
    }

    fn iptables(host: &Host, args: &[&str]) {
        let mut full = vec!["netns", "exec", &host.ns, "iptables", "-w"];
        full.extend_from_slice(args);
        must("ip", &full);
    }

    /// Cuts `host` off from `peer` (an address): every packet between them dropped.
    pub fn cut(&self, host: &Host, peer: &str) {
        Self::iptables(host, &["-A", "INPUT", "-s", peer, "-j", "DROP"]);
        Self::iptables(host, &["-A", "OUTPUT", "-d", peer, "-j", "DROP"]);
    }

    /// Drops a random `share` (0..1) of the packets between `host` and `peer`, each way.
    pub fn lossy(&self, host: &Host, peer: &str, share: f64) {
        let probability = format!("{share}");
        for (chain, side) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            Self::iptables(
                host,
                &[
                    "-A",
                    chain,
                    side,
                    peer,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &probability,
                    "-j",
                    "DROP",
                ],
            );
        }
    }

    /// Removes every fault of `host`.
    pub fn heal(&self, host: &Host) {
        Self::iptables(host, &["-F", "INPUT"]);
        Self::iptables(host, &["-F", "OUTPUT"]);
    }

    /// `program` run in `host`'s namespace.
    pub fn command(&self, host: &Host, program: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ip");
        command.args(["netns", "exec", &host.ns, program]);
        command
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}
