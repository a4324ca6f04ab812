//! The ops overview: readiness, held and quarantined notifications, authorities' backlogs
//! and oldest unacknowledged accesses, and error counts since start and
//! over the last few minutes, read from the process's own metrics. A glance,
//! linking to `/metrics` for the rest. Everything comes from what the relay
//! holds in memory (never a store read), at most [`RATE_PER_SECOND`] pages a
//! second per organisation. It holds no personal data, so any authenticated
//! certificate may read it, but backlogs are shown only to auditors (every
//! authority) and to a local authority (its own): not to clinicians.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    response::{IntoResponse, Response},
};
use maud::html;
use prometheus_parse::{Scrape, Value};

use super::{Viewer, Web, WebError, layout};
use crate::auth::Role;

/// The error counters shown, as (metric, label to split by, what a person reads).
const ERROR_METRICS: [(&str, &str, &str); 6] = [
    ("cpis_searches_total", "outcome", "Searches refused or failed"),
    ("cpis_auth_denied_total", "reason", "Authentication and role refusals"),
    ("cpis_store_failures_total", "", "Store write failures"),
    ("cpis_notifications_refused_total", "", "Notifications refused (held store full)"),
    ("cpis_tls_handshake_failures_total", "reason", "TLS handshake failures"),
    ("cpis_rate_limited_total", "", "Searches over an organisation's rate limit"),
];

/// Search outcomes that are not errors.
const FINE_OUTCOMES: [&str; 2] = ["flagged", "unflagged"];

/// Pages a second, and the burst, per organisation.
pub(crate) const RATE_PER_SECOND: f64 = 1.0;
pub(crate) const BURST: u32 = 10;

/// How far back "recent" looks.
const RECENT: Duration = Duration::from_secs(5 * 60);

/// Snapshots of the error counters, so the page can say what changed recently.
pub(crate) struct ErrorCounts {
    samples: Mutex<VecDeque<(Instant, BTreeMap<String, f64>)>>,
}

impl ErrorCounts {
    pub(crate) fn new() -> Self {
        Self { samples: Mutex::new(VecDeque::new()) }
    }

    /// The counters now, and their values at the oldest sample within
    /// [`RECENT`] (or the oldest kept), with how long ago that was.
    fn observe(&self, now: BTreeMap<String, f64>) -> (BTreeMap<String, f64>, Duration) {
        let at = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while samples.len() > 1 && samples.get(1).is_some_and(|(taken, _)| at.duration_since(*taken) >= RECENT) {
            samples.pop_front();
        }
        let baseline = samples.front().cloned().unwrap_or((at, now.clone()));
        // One sample a minute at most is enough to look five minutes back.
        if samples.back().is_none_or(|(taken, _)| at.duration_since(*taken) >= Duration::from_secs(60)) {
            samples.push_back((at, now));
        }
        (baseline.1, at.duration_since(baseline.0))
    }
}

impl Default for ErrorCounts {
    fn default() -> Self {
        Self::new()
    }
}

/// Error counter values by "metric label" name, from the process's metrics.
fn error_counters() -> BTreeMap<String, f64> {
    let text = crate::telemetry::metrics().render();
    let Ok(scrape) = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))) else { return BTreeMap::new() };
    let mut counters = BTreeMap::new();
    for sample in &scrape.samples {
        let Some((_, label, title)) = ERROR_METRICS.iter().find(|(metric, _, _)| *metric == sample.metric) else {
            continue;
        };
        let value = match sample.value {
            Value::Counter(value) | Value::Untyped(value) | Value::Gauge(value) => value,
            _ => continue,
        };
        let detail = if label.is_empty() { None } else { sample.labels.get(label) };
        if sample.metric == "cpis_searches_total" && detail.is_some_and(|outcome| FINE_OUTCOMES.contains(&outcome)) {
            continue;
        }
        let key = match detail {
            Some(detail) => format!("{title}: {detail}"),
            None => (*title).to_owned(),
        };
        *counters.entry(key).or_insert(0.0) += value;
    }
    counters
}

/// GET /ops
pub async fn page(State(web): State<Web>, viewer: Viewer) -> Result<Response, WebError> {
    if let Err(retry_after) = web.ops_rate.check(&viewer.identity.ods_code) {
        let message = format!("too many status pages; try again in {} s", retry_after.as_secs().max(1));
        return Err(crate::error::Error::RateLimited { message, retry_after }.into());
    }
    let ready = *web.ready.borrow();
    let held = web.relay.hub().held();
    let quarantined = web.relay.quarantined();
    let shows_backlogs = matches!(viewer.identity.role, Role::Auditor | Role::SocialCare);
    let backlogs = web.relay.backlogs(&viewer.identity);
    let now = web.relay.now();
    let counters = error_counters();
    let (baseline, window) = web.errors.observe(counters.clone());
    let minutes = (window.as_secs() / 60).max(1);
    Ok(layout::page(
        "Service status",
        Some(&viewer),
        html! {
            h1 { "Service status" }
            div class="stats" {
                p class={ "stat " (if ready { "stat-ok" } else { "stat-bad" }) } {
                    span class="stat-value" { (if ready { "Ready" } else { "Not ready" }) }
                    " " span class="stat-label" { "readiness (/readyz)" }
                }
                p class={ "stat " (if held == 0 { "stat-ok" } else { "stat-bad" }) } {
                    span class="stat-value" { (held) } " " span class="stat-label" { "searches with notifications held for retry" }
                }
                p class={ "stat " (if quarantined == 0 { "stat-ok" } else { "stat-bad" }) } id="quarantined" {
                    span class="stat-value" { (quarantined) } " " span class="stat-label" { "searches quarantined: their authorities not notified (cpis-relay quarantine list)" }
                }
            }
            @if !shows_backlogs {} @else {
            h2 { "Notification backlog by local authority" }
            @if backlogs.is_empty() { p { "No local authority is known yet." } } @else {
                table class="table" {
                    thead { tr { th scope="col" { "Local authority" } th scope="col" class="numeric" { "Unacknowledged" } th scope="col" { "Oldest" } th scope="col" class="numeric" { "Subscribers" } } }
                    tbody {
                        @for backlog in &backlogs {
                            tr {
                                td { (backlog.la_ods_code) }
                                td class="numeric" { (backlog.backlog) }
                                td { @match backlog.oldest_unacked_at { Some(at) => { (layout::age((now - at).num_seconds())) " ago" } None => { "–" } } }
                                td class="numeric" { (backlog.subscribers) }
                            }
                        }
                    }
                }
            }
            }
            h2 { "Errors" }
            @if counters.values().all(|value| *value == 0.0) { p { "No errors counted since the relay started." } } @else {
                table class="table" {
                    thead { tr { th scope="col" { "What" } th scope="col" class="numeric" { "Since start" } th scope="col" class="numeric" { "Last " (minutes) " min" } } }
                    tbody {
                        @for (name, value) in counters.iter().filter(|(_, value)| **value > 0.0) {
                            tr {
                                td { (name) }
                                td class="numeric" { (value) }
                                td class="numeric" { (value - baseline.get(name).copied().unwrap_or(0.0)) }
                            }
                        }
                    }
                }
            }
            @if let Some(url) = &web.metrics_url {
                p { "Everything else: " a href=(url) { "the Prometheus metrics on the admin port" } "." }
            }
        },
    )
    .into_response())
}
