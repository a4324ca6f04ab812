//! What the other relay nodes commit, as each node follows it.
//!
//! Plan changes: every committed plan change is a row of
//! `cpis_plan_changes` under a version taken from the `cpis_plan_feed` row,
//! whose lock is held to commit, so versions are in commit order and a node
//! that has applied version N reads "after N" without ever skipping one.
//!
//! Hints: writers `NOTIFY cpis_relay` in the committing transaction; a
//! listening connection here turns them into [`Hint`]s. A hint only wakes a
//! node sooner: the relay also polls, so a lost hint or a dropped listening
//! connection costs latency, never a change. The hints of a node's own
//! searches name it, and that node ignores them: it knows its accesses and
//! notifications already, and its reads of the log start past the positions
//! it took ([`super::own`]).
//!
//! Stalled reads: a read that has not finished after [`STALLED_AFTER`] is
//! checked by connecting to the database's hosts (one round trip). If none
//! accepts, the read fails, every connection opened before is abandoned
//! ([`Abandon`]), and later reads start only once a host accepts again. So
//! a healed partition is caught up within about a second, not whenever TCP
//! next retransmits on a connection from before (its interval doubling at
//! each loss). A read that is only slow (a large page over a distant link) is
//! left to finish while the database answers.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use futures::{FutureExt, StreamExt, future::BoxFuture};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{
    connect::{Abandon, Connector},
    db_error, pool_error,
};
use crate::{
    model::{LocalAuthority, PlanType},
    nhs::NhsNumber,
    store::{AccessPage, Change, Cursor, Feed, Hint, PlanChanges, StoreError},
    stored::{StoredAccess, StoredPlan},
};

/// The notification channel writers and listeners use.
pub(super) const CHANNEL: &str = "cpis_relay";

/// A plan change as the feed keeps it.
#[derive(Serialize, Deserialize)]
enum FeedChange {
    Upsert { authority: LocalAuthority, plans: Vec<FeedPlan> },
    Replace { authority: LocalAuthority, plans: Vec<FeedPlan> },
    Delete { la_ods_code: String, nhs_number: u64, plan_type: Option<PlanType> },
}

#[derive(Serialize, Deserialize)]
struct FeedPlan {
    nhs_number: u64,
    plan_type: PlanType,
    bytes: Vec<u8>,
}

fn feed_plans(plans: &[StoredPlan]) -> Vec<FeedPlan> {
    plans
        .iter()
        .map(|plan| FeedPlan {
            nhs_number: plan.nhs_number().as_u64(),
            plan_type: plan.plan_type(),
            bytes: plan.bytes().to_vec(),
        })
        .collect()
}

/// The feed row of a plan change: its kind, and its bytes.
pub(super) fn encode(change: &Change) -> Result<(&'static str, Vec<u8>), StoreError> {
    let (kind, record) = match change {
        Change::UpsertPlans { authority, plans, .. } => {
            ("upsert", FeedChange::Upsert { authority: authority.clone(), plans: feed_plans(plans) })
        }
        Change::ReplacePlans { authority, plans, .. } => {
            ("replace", FeedChange::Replace { authority: authority.clone(), plans: feed_plans(plans) })
        }
        Change::DeletePlans { la_ods_code, nhs_number, plan_type, .. } => (
            "delete",
            FeedChange::Delete {
                la_ods_code: la_ods_code.clone(),
                nhs_number: nhs_number.as_u64(),
                plan_type: *plan_type,
            },
        ),
        _ => return Err(StoreError::Corrupt("only plan changes go into the plan feed".into())),
    };
    let bytes = postcard::to_allocvec(&record)
        .map_err(|error| StoreError::Corrupt(format!("encoding a plan change: {error}")))?;
    Ok((kind, bytes))
}

/// A feed row as a change; `at` is when it committed (followers apply plans, not history).
fn decode(bytes: &[u8], at: chrono::DateTime<chrono::Utc>) -> Result<Change, StoreError> {
    let record: FeedChange =
        postcard::from_bytes(bytes).map_err(|error| StoreError::Corrupt(format!("plan feed: {error}")))?;
    let stored = |la: &Arc<str>, plans: Vec<FeedPlan>| -> Result<Arc<[StoredPlan]>, StoreError> {
        plans
            .into_iter()
            .map(|plan| {
                let nhs_number = NhsNumber::from_u64(plan.nhs_number)
                    .map_err(|error| StoreError::Corrupt(format!("plan feed: {error}")))?;
                StoredPlan::from_stored(Arc::clone(la), nhs_number, plan.plan_type, &plan.bytes)
            })
            .collect()
    };
    Ok(match record {
        FeedChange::Upsert { authority, plans } => {
            let la: Arc<str> = authority.ods_code.as_str().into();
            Change::UpsertPlans { plans: stored(&la, plans)?, authority, at }
        }
        FeedChange::Replace { authority, plans } => {
            let la: Arc<str> = authority.ods_code.as_str().into();
            Change::ReplacePlans { plans: stored(&la, plans)?, authority, at }
        }
        FeedChange::Delete { la_ods_code, nhs_number, plan_type } => Change::DeletePlans {
            la_ods_code,
            nhs_number: NhsNumber::from_u64(nhs_number)
                .map_err(|error| StoreError::Corrupt(format!("plan feed: {error}")))?,
            plan_type,
            at,
        },
    })
}

/// A hint's payload: `n LA=SEQ,LA=SEQ @NODE` (accesses were stored by node
/// process NODE, with these authorities' positions; the list may be empty;
/// relays before 2026-12-08 wrote no `@NODE`, and read one as a request for a
/// full read), `a LA=SEQ` (acknowledged), `p` (plans changed). Writers build
/// it in SQL (see `accesses`). With the node that wrote it, if it says.
fn parse_hint(payload: &str) -> (Hint, Option<i64>) {
    let (payload, node) = match payload.rsplit_once(" @") {
        Some((rest, node)) if payload.starts_with("n ") => match node.parse() {
            Ok(node) => (rest, Some(node)),
            Err(_) => return (Hint::Resync, None),
        },
        _ => (payload, None),
    };
    (parse_positions(payload), node)
}

fn parse_positions(payload: &str) -> Hint {
    let position = |pair: &str| pair.split_once('=').and_then(|(la, seq)| Some((la.to_owned(), seq.parse().ok()?)));
    match payload.split_once(' ') {
        Some(("n", "")) => Hint::Notified(Vec::new()),
        Some(("n", rest)) => match rest.split(',').map(position).collect::<Option<Vec<_>>>() {
            Some(positions) => Hint::Notified(positions),
            None => Hint::Resync,
        },
        Some(("a", rest)) => position(rest).map_or(Hint::Resync, |(la, through)| Hint::Acked(la, through)),
        None if payload == "p" => Hint::Plans,
        _ => Hint::Resync,
    }
}

/// How long a read of the feed runs before the database is checked afresh.
pub(super) const STALLED_AFTER: Duration = Duration::from_secs(1);
/// How long a new connection may take to answer that check.
const PROBE_WITHIN: Duration = Duration::from_secs(1);

/// Watches reads for the database having stopped answering.
#[derive(Clone)]
pub(super) struct Stalls {
    /// The database's hosts and ports, as the store URL names them.
    pub hosts: Arc<[(tokio_postgres::config::Host, u16)]>,
    pub abandon: Abandon,
    /// Set when a check found no host answering, cleared when one does.
    unreachable: Arc<std::sync::atomic::AtomicBool>,
}

impl Stalls {
    pub(super) fn of(connector: &Connector, abandon: Abandon) -> Self {
        let config = &connector.config;
        let ports = config.get_ports();
        let hosts = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(n, host)| (host.clone(), ports.get(n).or(ports.first()).copied().unwrap_or(5432)))
            .collect();
        Self { hosts, abandon, unreachable: Arc::default() }
    }

    /// `read`'s result, or an error once it has stalled and the database's
    /// hosts cannot be reached either (every connection opened before is then
    /// abandoned).
    async fn guard<T>(self, read: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering;
        // Once the database could not be reached, a read starts only when it can
        // be again: a connection attempted while it cannot is retried by TCP
        // with a growing interval, and would answer long after the link heals.
        if self.unreachable.load(Ordering::Relaxed) {
            if !self.probe().await {
                return Err(self.unreachable_error());
            }
            self.unreachable.store(false, Ordering::Relaxed);
        }
        tokio::pin!(read);
        loop {
            tokio::select! {
                result = &mut read => return result,
                () = tokio::time::sleep(STALLED_AFTER) => {}
            }
            tokio::select! {
                result = &mut read => return result,
                answers = self.probe() => if answers {
                    tracing::debug!("a read of the other nodes' changes is slow, but the database answers: waiting for it");
                } else {
                    self.unreachable.store(true, std::sync::atomic::Ordering::Relaxed);
                    self.abandon.opened_before(Instant::now());
                    return Err(self.unreachable_error());
                },
            }
        }
    }

    fn unreachable_error(&self) -> StoreError {
        StoreError::Io(format!(
            "no database host accepted a connection within {} ms (a read of the other nodes' changes \
             stalled for over {} ms); connections opened before are abandoned",
            PROBE_WITHIN.as_millis(),
            STALLED_AFTER.as_millis()
        ))
    }

    /// Whether any of the database's hosts accepts a connection within
    /// [`PROBE_WITHIN`]: one round trip, so a distant database still answers,
    /// while a partition does not.
    async fn probe(&self) -> bool {
        use tokio_postgres::config::Host;
        let attempts = self.hosts.iter().map(|(host, port)| {
            let (host, port) = (host.clone(), *port);
            async move {
                match host {
                    Host::Tcp(name) => tokio::net::TcpStream::connect((name.as_str(), port)).await.map(drop),
                    #[cfg(unix)]
                    Host::Unix(dir) => {
                        tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await.map(drop)
                    }
                }
            }
            .boxed()
        });
        if self.hosts.is_empty() {
            return true;
        }
        let any = futures::future::select_ok(attempts);
        matches!(tokio::time::timeout(PROBE_WITHIN, any).await, Ok(Ok(_)))
    }
}

/// The feed of a PostgreSQL store.
pub(super) struct PostgresFeed {
    pub pool: Pool,
    /// This node process, as `cpis_accesses.written_by` names it.
    pub node: i64,
    /// The log positions this node committed, which its reads skip.
    pub own: Arc<super::own::OwnPositions>,
    pub hints: broadcast::Sender<Hint>,
    pub stalls: Stalls,
}

impl Feed for PostgresFeed {
    fn plan_changes_after(&self, version: u64, limit: usize) -> BoxFuture<'static, Result<PlanChanges, StoreError>> {
        let pool = self.pool.clone();
        self.stalls.clone().guard(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let after = version as i64;
            let head: i64 = client
                .query_one("SELECT version FROM cpis_plan_feed WHERE id = 1", &[])
                .await
                .map_err(db_error)?
                .get(0);
            if head <= after {
                return Ok(PlanChanges::Changes(Vec::new()));
            }
            let rows = client
                .query(
                    "SELECT version, change, committed_at FROM cpis_plan_changes WHERE version > $1 ORDER BY version LIMIT $2",
                    &[&after, &(limit as i64)],
                )
                .await
                .map_err(db_error)?;
            // Versions are consecutive: a missing one was pruned (the node fell too far behind).
            if rows.first().is_none_or(|row| row.get::<_, i64>(0) != after + 1) {
                return Ok(PlanChanges::Gap);
            }
            let mut changes = Vec::with_capacity(rows.len());
            for row in rows {
                changes.push((row.get::<_, i64>(0) as u64, decode(row.get::<_, &[u8]>(1), row.get(2))?));
            }
            Ok(PlanChanges::Changes(changes))
        })
        .boxed()
    }

    fn database_time(&self) -> BoxFuture<'static, Result<chrono::DateTime<chrono::Utc>, StoreError>> {
        let pool = self.pool.clone();
        self.stalls
            .clone()
            .guard(async move {
                let client = pool.get().await.map_err(pool_error)?;
                Ok(client.query_one("SELECT clock_timestamp()", &[]).await.map_err(db_error)?.get(0))
            })
            .boxed()
    }

    fn cursors(&self) -> BoxFuture<'static, Result<Vec<Cursor>, StoreError>> {
        let pool = self.pool.clone();
        self.stalls
            .clone()
            .guard(async move {
                let client = pool.get().await.map_err(pool_error)?;
                read_cursors(&client).await
            })
            .boxed()
    }

    fn accesses_from(&self, position: u64, limit: usize) -> BoxFuture<'static, Result<AccessPage, StoreError>> {
        let (pool, node) = (self.pool.clone(), self.node);
        // Past this node's own accesses: it knows them, and reading them only to skip them costs the database.
        let position = self.own.skip(position);
        self.stalls
            .clone()
            .guard(async move {
                let client = pool.get().await.map_err(pool_error)?;
                // Other nodes' accesses (this node knows its own), and in the same snapshot
                // the log's size: with a page not full, everything below it has been read.
                let statement = client
                    .prepare_cached(
                        "SELECT position, record FROM (
                         SELECT position, record FROM cpis_accesses WHERE position >= $1 AND written_by <> $3
                         ORDER BY position LIMIT $2) AS page
                     UNION ALL SELECT size, NULL FROM cpis_log WHERE id = 1",
                    )
                    .await
                    .map_err(db_error)?;
                let rows =
                    client.query(&statement, &[&(position as i64), &(limit as i64), &node]).await.map_err(db_error)?;
                let mut accesses = Vec::with_capacity(rows.len());
                let (mut last, mut size) = (None, position);
                for row in &rows {
                    match row.get::<_, Option<&[u8]>>(1) {
                        Some(record) => {
                            accesses.push(StoredAccess::from_stored(record));
                            last = Some(row.get::<_, i64>(0) as u64);
                        }
                        None => size = row.get::<_, i64>(0) as u64,
                    }
                }
                let next = match last {
                    Some(last) if accesses.len() == limit => last + 1,
                    _ => size.max(position),
                };
                Ok(AccessPage { accesses, next })
            })
            .boxed()
    }

    fn hints(&self) -> broadcast::Receiver<Hint> {
        self.hints.subscribe()
    }
}

pub(super) async fn read_cursors(client: &impl deadpool_postgres::GenericClient) -> Result<Vec<Cursor>, StoreError> {
    let rows = client
        .query("SELECT la_ods_code, last_sequence, acked_through FROM cpis_cursors", &[])
        .await
        .map_err(db_error)?;
    Ok(rows
        .iter()
        .map(|row| Cursor {
            la_ods_code: row.get(0),
            last_sequence: row.get::<_, i64>(1) as u64,
            acked_through: row.get::<_, i64>(2) as u64,
        })
        .collect())
}

/// Listens on [`CHANNEL`] until `alive`'s sender (the store) is dropped,
/// reconnecting (with a [`Hint::Resync`] after each reconnect) whenever the
/// connection drops.
pub(super) fn spawn_listener(
    connector: Connector,
    hints: broadcast::Sender<Hint>,
    mut alive: tokio::sync::watch::Receiver<()>,
    node: i64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                error = listen(&connector, &hints, node) => {
                    tracing::warn!(%error, "the PostgreSQL listening connection dropped; polling covers it while it reconnects");
                }
                _ = alive.changed() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = alive.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    })
}

/// Listens until the connection fails; returns why.
async fn listen(connector: &Connector, hints: &broadcast::Sender<Hint>, node: i64) -> StoreError {
    match listen_once(connector, hints, node).await {
        Ok(()) => StoreError::Io("the listening connection closed".into()),
        Err(error) => error,
    }
}

/// Passes on every hint but those of this node's own searches.
async fn listen_once(connector: &Connector, hints: &broadcast::Sender<Hint>, node: i64) -> Result<(), StoreError> {
    let (client, mut connection) = connector.config.connect(connector.tls.clone()).await.map_err(db_error)?;
    let (messages_tx, mut messages) = futures::channel::mpsc::unbounded();
    let driver = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            match message {
                Ok(message) => {
                    if messages_tx.unbounded_send(message).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "listening connection ended");
                    return;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await.map_err(db_error)?;
    // Anything committed while not listening is found by a full read.
    let _ = hints.send(Hint::Resync);
    while let Some(message) = messages.next().await {
        if let tokio_postgres::AsyncMessage::Notification(notification) = message {
            match parse_hint(notification.payload()) {
                (Hint::Notified(_), Some(from)) if from == node => {}
                (hint, _) => {
                    let _ = hints.send(hint);
                }
            }
        }
    }
    driver.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_round_trip_and_anything_unexpected_asks_for_a_full_read() {
        let hint = |payload: &str| parse_hint(payload).0;
        assert_eq!(hint("n 706=7,A1B2C=12"), Hint::Notified(vec![("706".into(), 7), ("A1B2C".into(), 12)]));
        assert_eq!(hint("n "), Hint::Notified(Vec::new()));
        assert_eq!(hint("a 706=9"), Hint::Acked("706".into(), 9));
        assert_eq!(hint("p"), Hint::Plans);
        assert_eq!(hint("n"), Hint::Resync);
        assert_eq!(hint("n 706=x"), Hint::Resync);
        assert_eq!(hint("zzz"), Hint::Resync);
        assert_eq!(hint("n 706=7 @x"), Hint::Resync);
    }

    #[test]
    fn a_hint_names_the_node_whose_searches_it_announces() {
        assert_eq!(
            parse_hint("n 706=7,A1B2C=12 @-8145"),
            (Hint::Notified(vec![("706".into(), 7), ("A1B2C".into(), 12)]), Some(-8145))
        );
        assert_eq!(parse_hint("n  @3"), (Hint::Notified(Vec::new()), Some(3)));
        assert_eq!(
            parse_hint("n 706=7"),
            (Hint::Notified(vec![("706".into(), 7)]), None),
            "a relay before the node names"
        );
        assert_eq!(parse_hint("a 706=9"), (Hint::Acked("706".into(), 9), None));
    }
}
