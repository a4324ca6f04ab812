//! Network faults for the national day, made with netfilter in the network
//! namespace the day runs in (`scripts/national-day.sh --faults` makes one,
//! and [`Firewall::new`] refuses the machine's own): every packet to or from
//! a port is dropped (a cut link: TCP stalls and backs off as through a
//! partition, no reset), or a random share of them (a lossy link). The nodes
//! reach the database through their own proxies (`delay`), so a node's link
//! to the database is the ports of its proxies, and its link to its clients
//! is its gRPC port; its admin port stays reachable for the bench's metrics.
//!
//! All rules live in one chain of this process's, jumped to from `OUTPUT`
//! (every loopback packet passes there once), removed when the firewall is
//! dropped.

use std::{process::Command, sync::Mutex};

/// This day's netfilter chain.
pub struct Firewall {
    chain: String,
    /// The rules added, by port, to remove them when the port heals.
    rules: Mutex<Vec<(u16, Vec<String>)>>,
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let output = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|error| format!("iptables: {error} (apt-get install iptables)"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// Whether this process runs in a named network namespace (one `ip netns
/// add` made, listed in /run/netns), not the machine's.
fn in_own_namespace() -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    let mine = std::fs::metadata("/proc/self/ns/net").map_err(|error| format!("/proc/self/ns/net: {error}"))?;
    let Ok(named) = std::fs::read_dir("/run/netns") else { return Ok(false) };
    Ok(named
        .flatten()
        .any(|entry| std::fs::metadata(entry.path()).is_ok_and(|ns| (ns.dev(), ns.ino()) == (mine.dev(), mine.ino()))))
}

impl Firewall {
    /// A chain for this process. Needs root, iptables, and a network
    /// namespace other than the machine's: the faults stay inside it.
    pub fn new() -> Result<Self, String> {
        if !in_own_namespace()? {
            return Err("network faults are made only inside a network namespace of their own, never on the \
                        machine's: run scripts/national-day.sh --faults, which makes one"
                .into());
        }
        let chain = format!("CPISDAY{}", std::process::id());
        iptables(&["-N", &chain]).map_err(|error| format!("{error} (network faults need root)"))?;
        let firewall = Self { chain, rules: Mutex::new(Vec::new()) };
        iptables(&["-I", "OUTPUT", "-j", &firewall.chain])?;
        Ok(firewall)
    }

    fn add(&self, port: u16, extra: &[&str]) -> Result<(), String> {
        for side in ["--dport", "--sport"] {
            let port_text = port.to_string();
            let mut rule = vec!["-p", "tcp", side, &port_text];
            rule.extend_from_slice(extra);
            rule.extend(["-j", "DROP"]);
            let mut args = vec!["-A", &self.chain];
            args.extend(&rule);
            iptables(&args)?;
            let kept = rule.iter().map(|word| word.to_string()).collect();
            self.rules.lock().map_err(|_| "firewall rules poisoned")?.push((port, kept));
        }
        Ok(())
    }

    /// Drops every packet to or from `port`.
    pub fn cut(&self, port: u16) -> Result<(), String> {
        self.add(port, &[])
    }

    /// Drops a random `share` (0..1) of the packets to or from `port`.
    pub fn lossy(&self, port: u16, share: f64) -> Result<(), String> {
        let probability = share.to_string();
        self.add(port, &["-m", "statistic", "--mode", "random", "--probability", &probability])
    }

    /// Removes every fault on `port`.
    pub fn heal(&self, port: u16) -> Result<(), String> {
        let mut rules = self.rules.lock().map_err(|_| "firewall rules poisoned")?;
        for (_, rule) in rules.iter().filter(|(held, _)| *held == port) {
            let mut args = vec!["-D", self.chain.as_str()];
            args.extend(rule.iter().map(String::as_str));
            iptables(&args)?;
        }
        rules.retain(|(held, _)| *held != port);
        Ok(())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "OUTPUT", "-j", &self.chain]);
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}
