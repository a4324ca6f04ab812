//! `cpis-relay deliver`: a local authority's delivery agent. It subscribes
//! to the relay with the authority's certificate, hands each notification
//! to every configured sink (a signed webhook, an outbox folder), and
//! acknowledges a sequence only once every sink has delivered it (or parked
//! it in the dead-letter directory). It is purely a client of
//! `Notifications.Subscribe` and `Notifications.Ack`.
//!
//! Guarantees: notifications are delivered in sequence order, at least
//! once. Each (re)subscription leaves `after_sequence` absent, so the relay
//! resumes after the last acknowledged sequence: a crash between delivery
//! and acknowledgement redelivers that notification with the same id
//! (receivers dedupe on it), and nothing is lost. The relay connection is
//! retried with backoff, moving to the next `--server` after each failure.
//! Shutdown lets the delivery in flight finish its current attempt, then
//! stops without starting another; what was not acknowledged is redelivered
//! on the next start.
//!
//! # Layout
//! - [`payload`]: the JSON (and XML) form of a notification.
//! - [`webhook`]: signing, the HTTP client, retries and refusals.
//! - [`files`]: the outbox sink and the dead-letter directory.
//! - [`retry`]: backoff with jitter and `Retry-After`.
//! - [`metrics`] and [`admin`]: the agent's metrics, health and admin port.
//! - [`config`]: settings from a TOML file, `CPIS_DELIVER_*` and flags.
//! - [`log_check`]: the authority's check that each notification it
//!   delivered is in the relay's witnessed access log.
//!
//! Nothing at info level or above logs personal data: notifications are
//! named by sequence and id.

pub mod admin;
pub mod config;
pub mod files;
pub mod log_check;
pub mod metrics;
pub mod payload;
pub mod retry;
pub mod webhook;

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::{
    client,
    proto::{AccessNotification, AckRequest, SubscribeRequest, notifications_client::NotificationsClient},
    tls::PemText,
};
use metrics::{SinkKind, Status};
use payload::Delivery;
use retry::Backoff;

/// What a sink did with one notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Refused by the receiver and parked in the dead-letter directory.
    DeadLettered,
    /// Shutdown came before it was delivered: do not acknowledge.
    Interrupted,
}

/// A destination for notifications.
#[derive(Clone, Debug)]
pub enum Sink {
    Webhook(Box<webhook::WebhookSink>),
    Outbox(files::OutboxSink),
}

impl Sink {
    pub fn kind(&self) -> SinkKind {
        match self {
            Self::Webhook(_) => SinkKind::Webhook,
            Self::Outbox(_) => SinkKind::Outbox,
        }
    }

    async fn deliver(&self, delivery: &Delivery, mut shutdown: watch::Receiver<bool>, status: &Status) -> Outcome {
        match self {
            Self::Webhook(sink) => sink.deliver(delivery, &mut shutdown, status).await,
            Self::Outbox(sink) => sink.deliver(delivery, &mut shutdown).await,
        }
    }
}

/// How the agent reaches the relay.
#[derive(Clone)]
pub struct AgentOptions {
    /// Relay addresses, tried in turn.
    pub servers: Vec<String>,
    /// The local authority's certificate, key and the relay's CA.
    pub pem: PemText,
    pub reconnect: Backoff,
    /// Notifications read ahead of delivery.
    pub read_ahead: usize,
}

/// The delivery agent. Build it, keep [`Agent::status`] if you want to
/// watch it, then [`Agent::run`] it.
pub struct Agent {
    options: AgentOptions,
    sinks: Vec<Sink>,
    status: Status,
    /// The check of the relay's access log; `None` when turned off.
    log_check: Option<log_check::LogCheck>,
}

/// Why a subscription ended.
enum SessionEnd {
    Stopped,
    /// The relay ended the stream (it is draining): go to the next one.
    Ended,
    Failed(String),
}

impl Agent {
    /// `unhealthy_after`: see [`Status::new`]. Installs the metrics, all at
    /// zero. With `log_check`, opens its state directory (or says why not).
    pub fn new(
        options: AgentOptions,
        sinks: Vec<Sink>,
        unhealthy_after: Duration,
        log_check: Option<log_check::LogCheckOptions>,
    ) -> Result<Self, String> {
        metrics::init();
        let status = Status::new(unhealthy_after);
        let log_check = log_check.map(|check| log_check::LogCheck::open(check, status.clone())).transpose()?;
        Ok(Self { options, sinks, status, log_check })
    }

    pub fn status(&self) -> Status {
        self.status.clone()
    }

    /// Delivers until `shutdown` resolves, then lets the delivery in flight
    /// finish its current attempt and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop, stopping) = watch::channel(false);
        let checking = self.log_check.clone().filter(|_| !self.options.servers.is_empty()).map(|check| {
            tokio::spawn(check.run(self.options.servers.clone(), self.options.pem.clone(), stopping.clone()))
        });
        let delivering = self.deliver_until_stopped(stopping);
        tokio::pin!(delivering, shutdown);
        let mut signalled = false;
        loop {
            tokio::select! {
                () = &mut delivering => break,
                () = &mut shutdown, if !signalled => {
                    signalled = true;
                    tracing::info!("stopping after the delivery in flight");
                    stop.send_replace(true);
                }
            }
        }
        stop.send_replace(true);
        if let Some(checking) = checking {
            let _ = checking.await;
        }
        self.status.set_connected(false);
        tracing::info!(acked_through = *self.status.acked_sequence().borrow(), "delivery agent stopped");
    }

    async fn deliver_until_stopped(&self, mut stopping: watch::Receiver<bool>) {
        let servers = &self.options.servers;
        if servers.is_empty() {
            tracing::error!("no relay address to subscribe to");
            return;
        }
        let mut next_server = 0;
        let mut failures = 0;
        // Delivered everywhere but not yet acknowledged (the ack failed): acknowledged first on reconnect.
        let mut pending_ack = None;
        while !retry::stopping(&stopping) {
            let server = &servers[next_server % servers.len()];
            let (end, progressed) = self.session(server, &mut pending_ack, &mut stopping).await;
            self.status.set_connected(false);
            self.status.idle();
            if progressed {
                failures = 0;
            }
            let reason = match end {
                SessionEnd::Stopped => return,
                SessionEnd::Ended => "the relay ended the subscription".to_owned(),
                SessionEnd::Failed(reason) => reason,
            };
            failures += 1;
            next_server += 1;
            metrics::reconnected();
            let delay = self.options.reconnect.delay(failures);
            tracing::warn!(
                %server,
                %reason,
                next = %servers[next_server % servers.len()],
                retry_in_ms = delay.as_millis() as u64,
                "not subscribed to the relay; reconnecting"
            );
            if !retry::wait(delay, &mut stopping).await {
                return;
            }
        }
    }

    /// One subscription: connect, acknowledge what is pending, subscribe,
    /// deliver until it ends. Returns why, and whether anything was delivered.
    async fn session(
        &self,
        server: &str,
        pending_ack: &mut Option<u64>,
        stopping: &mut watch::Receiver<bool>,
    ) -> (SessionEnd, bool) {
        let channel = tokio::select! {
            channel = client::connect(server, &self.options.pem, None) => channel,
            _ = stopping.wait_for(|stop| *stop) => return (SessionEnd::Stopped, false),
        };
        let mut notifications = match channel {
            Ok(channel) => NotificationsClient::new(channel),
            Err(error) => return (SessionEnd::Failed(error_chain(&error)), false),
        };
        // Acknowledging what was delivered before the connection broke; with
        // nothing pending, Ack(0) changes nothing and reads the relay's position.
        let sequence = pending_ack.unwrap_or(0);
        match call(notifications.ack(AckRequest { sequence })).await {
            Ok(response) => self.status.acked(response.into_inner().acked_through),
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                // This relay has not seen that sequence (another node, a restored store): it will come again.
                tracing::warn!(sequence, %status, "relay refused a pending acknowledgement");
            }
            Err(status) => return (SessionEnd::Failed(format!("acknowledging: {status}")), false),
        }
        *pending_ack = None;
        let stream = match call(notifications.subscribe(SubscribeRequest { after_sequence: None })).await {
            Ok(response) => response.into_inner(),
            Err(status) => return (SessionEnd::Failed(format!("subscribe: {status}")), false),
        };
        self.status.set_connected(true);
        tracing::info!(%server, acked_through = *self.status.acked_sequence().borrow(), "subscribed; delivering");
        let mut arrivals = self.read_ahead(stream);
        let mut progressed = false;
        loop {
            let arrival = tokio::select! {
                arrival = arrivals.recv() => arrival,
                _ = stopping.wait_for(|stop| *stop) => return (SessionEnd::Stopped, progressed),
            };
            let notification = match arrival {
                None => return (SessionEnd::Ended, progressed),
                Some(Err(status)) => return (SessionEnd::Failed(format!("subscription: {status}")), progressed),
                Some(Ok(notification)) => notification,
            };
            let delivery = Delivery::from_wire(&notification);
            // The search's trace goes on here: the webhook POST and the acknowledgement.
            let traced = crate::traces::continued_span("deliver notification", delivery.traceparent.as_deref());
            traced.record("sequence", delivery.sequence);
            if !self.deliver_everywhere(&delivery, stopping).instrument(traced.clone()).await {
                return (SessionEnd::Stopped, progressed);
            }
            progressed = true;
            if let Some(check) = &self.log_check {
                check.delivered(&notification);
            }
            *pending_ack = Some(delivery.sequence);
            if let Err(end) = self.ack(&mut notifications, delivery.sequence).instrument(traced).await {
                return (end, progressed);
            }
            *pending_ack = None;
        }
    }

    /// Streams notifications into a bounded channel ahead of delivery, so
    /// that the backlog gauge sees what has arrived. The reader ends with
    /// the stream or when the receiver is dropped.
    fn read_ahead(
        &self,
        mut stream: tonic::Streaming<AccessNotification>,
    ) -> mpsc::Receiver<Result<AccessNotification, tonic::Status>> {
        let (sender, receiver) = mpsc::channel(self.options.read_ahead.max(1));
        let status = self.status.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    () = sender.closed() => return,
                };
                let Some(item) = item else { return };
                if let Ok(notification) = &item {
                    status.saw(notification.sequence);
                }
                if sender.send(item).await.is_err() {
                    return;
                }
            }
        });
        receiver
    }

    /// Hands `delivery` to every sink at once; true when all are done with it.
    async fn deliver_everywhere(&self, delivery: &Delivery, stopping: &watch::Receiver<bool>) -> bool {
        self.status.delivering(delivery.accessed_at);
        let outcomes = futures::future::join_all(
            self.sinks.iter().map(|sink| sink.deliver(delivery, stopping.clone(), &self.status)),
        )
        .await;
        self.status.idle();
        let interrupted = outcomes.contains(&Outcome::Interrupted);
        if interrupted {
            tracing::info!(sequence = delivery.sequence, "shutdown before delivery finished; it will be redelivered");
        }
        !interrupted
    }

    async fn ack(
        &self,
        notifications: &mut NotificationsClient<tonic::transport::Channel>,
        sequence: u64,
    ) -> Result<(), SessionEnd> {
        let span = crate::traced_span!("ack", otel.kind = "client", sequence);
        let request = span.in_scope(|| {
            let mut request = tonic::Request::new(AckRequest { sequence });
            if let Some(value) = crate::traces::current_traceparent().and_then(|value| value.parse().ok()) {
                request.metadata_mut().insert(crate::traces::TRACEPARENT, value);
            }
            request
        });
        match call(notifications.ack(request)).instrument(span).await {
            Ok(response) => {
                self.status.acked(response.into_inner().acked_through);
                Ok(())
            }
            Err(status) => Err(SessionEnd::Failed(format!("acknowledging {sequence}: {status}"))),
        }
    }
}

/// An error and its causes on one line: hyper's and tonic's own messages alone say little.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Errors that print their source already need it only once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// How long the relay may take to answer an Ack or to open a subscription.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A unary call (or a stream's opening) bounded by [`CALL_TIMEOUT`], so a
/// relay that stops answering is left for the next one.
async fn call<T>(
    request: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    tokio::time::timeout(CALL_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("the relay did not answer in time")))
}
