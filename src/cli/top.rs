//! `cpis-relay top`: a live view of a relay's `/metrics` for an operator on
//! a shell, refreshed every second and laid out for an 80x24 terminal. Rates
//! and latency quantiles are computed between two scrapes.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use clap::Args;
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{CliError, exit};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// The relay's admin address.
    #[arg(long, env = "CPIS_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Print one screen (after two scrapes) and exit.
    #[arg(long)]
    pub once: bool,
}

/// A plain HTTP/1.0 GET of the local admin page; no client library needed for one text page.
pub(super) async fn scrape(admin: SocketAddr) -> Result<Scrape, CliError> {
    let unavailable = |error: std::io::Error| CliError::Unavailable(format!("admin {admin}: {error}"));
    let mut stream = tokio::net::TcpStream::connect(admin).await.map_err(unavailable)?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.map_err(unavailable)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.map_err(unavailable)?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).map_err(unavailable)
}

/// One scrape reduced to what the screen shows.
#[derive(Default)]
struct Figures {
    counters: BTreeMap<String, f64>,
    gauges: BTreeMap<String, f64>,
    histograms: BTreeMap<String, Vec<(f64, f64)>>,
}

fn key(metric: &str, labels: &[(&str, &str)]) -> String {
    let mut key = metric.to_owned();
    for (name, value) in labels {
        key.push_str(&format!("|{name}={value}"));
    }
    key
}

impl Figures {
    fn from(scrape: &Scrape) -> Self {
        let mut figures = Self::default();
        for sample in &scrape.samples {
            let labels: Vec<(&str, &str)> = ["outcome", "la", "type", "status", "reason", "code", "rpc"]
                .iter()
                .filter_map(|name| sample.labels.get(name).map(|v| (*name, v)))
                .collect();
            let name = key(&sample.metric, &labels);
            match &sample.value {
                Value::Counter(value) | Value::Untyped(value) => {
                    *figures.counters.entry(name).or_default() += value;
                }
                Value::Gauge(value) => {
                    figures.gauges.insert(name, *value);
                }
                Value::Histogram(buckets) => {
                    figures
                        .histograms
                        .insert(name, buckets.iter().map(|bucket| (bucket.less_than, bucket.count)).collect());
                }
                Value::Summary(_) => {}
            }
        }
        figures
    }

    fn counter(&self, name: &str) -> f64 {
        self.counters.get(name).copied().unwrap_or(0.0)
    }

    /// Sum of a counter over every label set, by metric name.
    fn counter_sum(&self, metric: &str, filter: impl Fn(&str) -> bool) -> f64 {
        self.counters
            .iter()
            .filter(|(key, _)| key.split('|').next() == Some(metric) && filter(key))
            .map(|(_, value)| value)
            .sum()
    }

    fn gauge(&self, name: &str) -> f64 {
        self.gauges.get(name).copied().unwrap_or(0.0)
    }
}

/// A quantile from the bucket counts added between two scrapes, in milliseconds.
fn quantile(before: Option<&Vec<(f64, f64)>>, after: Option<&Vec<(f64, f64)>>, q: f64) -> Option<f64> {
    let after = after?;
    let deltas: Vec<(f64, f64)> = after
        .iter()
        .map(|(bound, count)| {
            let earlier = before.and_then(|b| b.iter().find(|(other, _)| other == bound)).map_or(0.0, |(_, c)| *c);
            (*bound, count - earlier)
        })
        .collect();
    let total = deltas.iter().map(|(_, count)| *count).fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    deltas.iter().find(|(_, count)| *count >= total * q).map(|(bound, _)| bound * 1000.0)
}

fn milliseconds(value: Option<f64>) -> String {
    value.map_or_else(
        || "-".to_owned(),
        |ms| if ms.is_infinite() { ">5000 ms".to_owned() } else { format!("{ms:.2} ms") },
    )
}

fn render(admin: SocketAddr, before: &Figures, after: &Figures, seconds: f64) -> String {
    let rate = |name: &str| (after.counter(name) - before.counter(name)).max(0.0) / seconds;
    let rate_sum = |metric: &str, filter: &dyn Fn(&str) -> bool| {
        (after.counter_sum(metric, filter) - before.counter_sum(metric, filter)).max(0.0) / seconds
    };
    let search = "cpis_search_duration_seconds";
    let sync = "cpis_store_sync_duration_seconds";
    let commits = rate("cpis_store_commits_total");
    let batch = if commits > 0.0 { rate("cpis_store_changes_total") / commits } else { 0.0 };
    let mut lines = vec![
        format!("cpis-relay top  {admin}  {}", chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ")),
        String::new(),
        format!(
            "searches/s {:>8.1}  flagged {:>7.1}  unflagged {:>7.1}  invalid {:>5.1}",
            rate_sum("cpis_searches_total", &|_| true),
            rate("cpis_searches_total|outcome=flagged"),
            rate("cpis_searches_total|outcome=unflagged"),
            rate("cpis_searches_total|outcome=invalid"),
        ),
        format!(
            "search latency p50 {}  p99 {}",
            milliseconds(quantile(before.histograms.get(search), after.histograms.get(search), 0.5)),
            milliseconds(quantile(before.histograms.get(search), after.histograms.get(search), 0.99)),
        ),
        format!(
            "notifications/s emitted {:>7.1}  delivered {:>7.1}  held {:>5.0}",
            rate("cpis_notifications_emitted_total"),
            rate("cpis_notifications_delivered_total"),
            after.gauge("cpis_notifications_held"),
        ),
        format!(
            "store sync p99 {}  commits/s {commits:>6.1}  batch {batch:>5.1}  failures/s {:>4.1}",
            milliseconds(quantile(before.histograms.get(sync), after.histograms.get(sync), 0.99)),
            rate("cpis_store_sync_failures_total"),
        ),
        format!(
            "shed/s {:>6.1}  unavailable/s {:>6.1}  auth denied/s {:>6.1}",
            rate_sum("cpis_rpc_total", &|key| key.contains("code=ResourceExhausted")),
            rate_sum("cpis_rpc_total", &|key| key.contains("code=Unavailable")),
            rate_sum("cpis_auth_denied_total", &|_| true),
        ),
        format!(
            "plans  CPPI {:>8.0}  LACI {:>8.0}  UCPI {:>8.0}",
            after.gauge("cpis_plans|type=CPPI"),
            after.gauge("cpis_plans|type=LACI"),
            after.gauge("cpis_plans|type=UCPI"),
        ),
        String::new(),
        format!("{:<10} {:>10} {:>16} {:>12}", "LA", "backlog", "oldest unacked", "subscribers"),
    ];
    let authorities: Vec<&str> =
        after.gauges.keys().filter_map(|key| key.strip_prefix("cpis_notification_backlog|la=")).collect();
    let room = 24usize.saturating_sub(lines.len() + 1);
    for la in authorities.iter().take(room) {
        lines.push(format!(
            "{:<10} {:>10.0} {:>14.1} s {:>12.0}",
            la,
            after.gauge(&format!("cpis_notification_backlog|la={la}")),
            after.gauge(&format!("cpis_notification_oldest_unacked_seconds|la={la}")),
            after.gauge(&format!("cpis_subscribers|la={la}")),
        ));
    }
    if authorities.len() > room {
        lines.push(format!("... and {} more local authorities", authorities.len() - room));
    }
    lines.iter().map(|line| line.chars().take(80).collect::<String>() + "\n").collect()
}

pub(super) async fn run(args: TopArgs) -> Result<u8, CliError> {
    let interval = Duration::from_secs_f64(args.interval.max(0.1));
    let mut before = Figures::from(&scrape(args.admin).await?);
    let mut taken = std::time::Instant::now();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(exit::OK),
        }
        let after = Figures::from(&scrape(args.admin).await?);
        let seconds = taken.elapsed().as_secs_f64();
        taken = std::time::Instant::now();
        let screen = render(args.admin, &before, &after, seconds);
        if terminal {
            print!("\x1b[2J\x1b[H{screen}");
        } else {
            print!("{screen}");
        }
        if args.once {
            return Ok(exit::OK);
        }
        before = after;
    }
}
