//! Where the CPU went during a measurement: the load generator's own
//! process, the server's, and the whole machine, read from `/proc` (Linux)
//! at the start and end of the measured window. A load generator that takes
//! as much of the machine as the server it measures is the limit of the run,
//! and the report says so.

use serde::Serialize;

/// Clock ticks per second of `/proc/*/stat` (`CLK_TCK`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// Counters at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    /// Busy and total ticks of all cores (`/proc/stat`).
    machine_busy: u64,
    machine_total: u64,
    /// User and system ticks of this process and of the server's.
    client: u64,
    server: Option<u64>,
}

/// CPU used between two samples.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct CpuShare {
    /// Cores of the machine.
    pub cores: usize,
    /// Fraction of all cores busy (anything: client, server, the rest).
    pub machine_busy: f64,
    /// Cores' worth of CPU the load generator used.
    pub client_cores: f64,
    /// Cores' worth the server used, when its process is known.
    pub server_cores: Option<f64>,
}

/// CPU seconds (user and system) a process has used so far.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    process_ticks(&pid.to_string()).map(|ticks| ticks as f64 / TICKS_PER_SECOND)
}

fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = cpu.split_whitespace().filter_map(|value| value.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum();
    // idle and iowait are the 4th and 5th.
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Reads the counters now.
pub fn sample(server_pid: Option<u32>) -> CpuSample {
    let (machine_busy, machine_total) = machine_ticks().unwrap_or_default();
    CpuSample {
        machine_busy,
        machine_total,
        client: process_ticks("self").unwrap_or_default(),
        server: server_pid.and_then(|pid| process_ticks(&pid.to_string())),
    }
}

impl CpuShare {
    pub fn between(before: CpuSample, after: CpuSample, seconds: f64) -> Self {
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        let total = after.machine_total.saturating_sub(before.machine_total).max(1) as f64;
        let cores_of = |ticks: u64| ticks as f64 / TICKS_PER_SECOND / seconds.max(f64::EPSILON);
        Self {
            cores,
            machine_busy: after.machine_busy.saturating_sub(before.machine_busy) as f64 / total,
            client_cores: cores_of(after.client.saturating_sub(before.client)),
            server_cores: before.server.zip(after.server).map(|(start, end)| cores_of(end.saturating_sub(start))),
        }
    }

    /// What limited the run: `"client"` when the machine was saturated and
    /// the load generator used at least as much of it as the server, `"server"`
    /// when the machine was saturated otherwise, `"neither"` when it was not
    /// (latency and the requests in flight set the rate).
    pub fn limit(&self) -> &'static str {
        if self.machine_busy < 0.9 {
            return "neither";
        }
        match self.server_cores {
            Some(server) if self.client_cores >= server => "client",
            Some(_) => "server",
            None => "unknown",
        }
    }

    /// The mean of several runs' shares.
    pub fn mean(shares: &[CpuShare]) -> Self {
        let n = shares.len().max(1) as f64;
        let servers: Vec<f64> = shares.iter().filter_map(|share| share.server_cores).collect();
        Self {
            cores: shares.first().map_or(0, |share| share.cores),
            machine_busy: shares.iter().map(|share| share.machine_busy).sum::<f64>() / n,
            client_cores: shares.iter().map(|share| share.client_cores).sum::<f64>() / n,
            server_cores: (!servers.is_empty()).then(|| servers.iter().sum::<f64>() / servers.len() as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_the_machine_are_read() {
        let before = sample(Some(std::process::id()));
        let mut spin = 0u64;
        for i in 0..20_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        std::hint::black_box(spin);
        let after = sample(Some(std::process::id()));
        assert!(after.machine_total > before.machine_total, "the machine's counters move");
        assert!(after.client >= before.client);
        let share = CpuShare::between(before, after, 1.0);
        assert_eq!(share.server_cores, Some(share.client_cores), "the same process read twice");
    }

    #[test]
    fn the_limit_is_the_side_that_took_the_saturated_machine() {
        let share = |busy, client, server| CpuShare {
            cores: 2,
            machine_busy: busy,
            client_cores: client,
            server_cores: Some(server),
        };
        assert_eq!(share(0.98, 1.1, 0.9).limit(), "client");
        assert_eq!(share(0.98, 0.6, 1.3).limit(), "server");
        assert_eq!(share(0.5, 0.5, 0.5).limit(), "neither");
    }
}
