//! The PostgreSQL store: several relay nodes on one database.
//!
//! Acknowledged means committed (written to the primary's WAL, and to a
//! synchronous standby where the server is configured so). A FULL_REFRESH is
//! one transaction; request ids are a unique key; every plan change is also
//! a row of the plan feed that the other nodes follow ([`feed`]); flagged
//! searches are written in shared transactions ([`accesses`]).
//!
//! Each node keeps its whole index in memory, as with the embedded store:
//! searches never wait on the database for plans, only for the commit of
//! their access and notifications, and when the database is down those are
//! held by the relay and written once it is back.

mod accesses;
pub mod check;
pub mod connect;
mod feed;
mod log;
mod own;
mod retention;
mod schema;
mod writes;

use std::{collections::HashMap, sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use futures::{FutureExt, StreamExt, future::BoxFuture};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use connect::{ConnectOptions, StoreUrl};
pub use schema::SCHEMA_VERSION;

use super::{Applied, Change, Cursor, Feed, Snapshot, Store, StoreError};
use crate::{
    accesses::Recent,
    model::{AccessEvent, LocalAuthority, Notification, NotificationDraft, PlanType},
    nhs::NhsNumber,
    plan_history::PlanEvent,
    stored::{StoredAccess, StoredPlan},
};

/// Settings of a PostgreSQL store beyond how to connect.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    pub connect: ConnectOptions,
    /// Longest a batch of searches may take to commit before it counts as failed.
    pub write_timeout: Duration,
}

pub struct PostgresStore {
    pool: Pool,
    accesses: mpsc::UnboundedSender<accesses::AccessJob>,
    feed: Arc<feed::PostgresFeed>,
    /// The access log, whose blocking methods run their queries on this runtime.
    log: Arc<log::PostgresLog>,
    /// Dropped with the store: ends the listening task.
    _alive: watch::Sender<()>,
}

/// Connections the feed reads over (plans beside accesses, the clock, and a
/// node's own catch-up before a plan change), apart from the pool's.
const FEED_CONNECTIONS: usize = 4;

impl PostgresStore {
    /// Connects, applies the schema's migrations and starts listening for
    /// other nodes' commits.
    pub async fn open(options: &PostgresOptions) -> Result<Self, StoreError> {
        let connector = connect::Connector::new(&options.connect)?;
        let abandon = connect::Abandon::default();
        let pool = connector.pool(options.connect.pool_size, &abandon)?;
        {
            let mut client = pool.get().await.map_err(pool_error)?;
            schema::migrate(&mut client).await?;
        }
        let (hints, _) = broadcast::channel(1024);
        let (alive, listening) = watch::channel(());
        let stalls = feed::Stalls::of(&connector, abandon.clone());
        // Random per process: a restarted node reads its own earlier accesses back like any other's.
        let node = rand::random::<i64>() | 1;
        feed::spawn_listener(connector.clone(), hints.clone(), listening, node);
        let own = Arc::new(own::OwnPositions::default());
        Ok(Self {
            accesses: accesses::spawn_writer(
                pool.clone(),
                options.write_timeout,
                accesses::Writer { node, own: Arc::clone(&own) },
                abandon.clone(),
            ),
            feed: Arc::new(feed::PostgresFeed {
                // Its own connections: following never waits for a slot behind
                // writers whose connections are stuck in a cut.
                pool: connector.pool(FEED_CONNECTIONS, &abandon)?,
                hints,
                node,
                own,
                stalls,
            }),
            log: Arc::new(log::PostgresLog { pool: pool.clone(), runtime: tokio::runtime::Handle::current() }),
            pool,
            _alive: alive,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// A database error as the relay reports it: the server's code and message,
/// never its DETAIL (which can quote a row's values, an NHS number among them).
/// The server refusing what it was sent (SQLSTATE class 22, data exception
/// such as NUL in text; 23, integrity constraint violation; 54, program
/// limit exceeded such as an index row too large) is [`StoreError::Rejected`]:
/// the same statement fails however often it is retried. Everything else
/// (connections, timeouts, the server shutting down) is the store failing.
pub(crate) fn db_error(error: tokio_postgres::Error) -> StoreError {
    match error.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let text = format!("PostgreSQL {code}: {}", db.message());
            if ["22", "23", "54"].iter().any(|class| code.starts_with(class)) {
                StoreError::Rejected(text)
            } else {
                StoreError::Io(text)
            }
        }
        None => StoreError::Io(format!("PostgreSQL: {error}")),
    }
}

pub(crate) fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => db_error(error),
        other => StoreError::Io(format!("PostgreSQL connection pool: {other}")),
    }
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

/// A notification row back in the relay's terms (`traceparent` is NULL in rows of untraced searches and in
/// rows written before schema version 5).
pub(crate) fn notification(
    sequence: i64,
    draft: &[u8],
    access: &[u8],
    traceparent: Option<&str>,
) -> Result<Notification, StoreError> {
    let mut draft: NotificationDraft = postcard::from_bytes(draft).map_err(|error| corrupt("notifications", error))?;
    draft.traceparent = traceparent.and_then(crate::traces::checked_traceparent);
    let access = StoredAccess::from_stored(access).view()?.to_event();
    Ok(Notification { sequence: sequence as u64, draft, access })
}

fn plan_type_of(code: &str) -> Result<PlanType, StoreError> {
    PlanType::parse(code).ok_or_else(|| StoreError::Corrupt(format!("plans: unknown plan type {code:?}")))
}

fn nhs_number_of(value: i64) -> Result<NhsNumber, StoreError> {
    NhsNumber::from_u64(value as u64).map_err(|error| corrupt("plans", error))
}

/// A care setting as the `care_setting` columns hold it (its variant name).
pub(crate) fn care_setting_text(setting: crate::model::CareSetting) -> &'static str {
    setting.stored_name()
}

/// A read-only transaction that sees one snapshot of the whole database.
pub(crate) async fn snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db_error)
}

async fn load(pool: Pool) -> Result<Snapshot, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    // One snapshot: the plans, positions and feed version agree with each other.
    let transaction = snapshot(&mut client).await?;
    let plan_version: i64 =
        transaction.query_one("SELECT version FROM cpis_plan_feed WHERE id = 1", &[]).await.map_err(db_error)?.get(0);
    let mut authorities = Vec::new();
    let mut codes: HashMap<String, Arc<str>> = HashMap::new();
    for row in transaction.query("SELECT record FROM cpis_authorities", &[]).await.map_err(db_error)? {
        let authority: LocalAuthority =
            postcard::from_bytes(row.get::<_, &[u8]>(0)).map_err(|error| corrupt("authorities", error))?;
        codes.insert(authority.ods_code.clone(), authority.ods_code.as_str().into());
        authorities.push(authority);
    }
    let cursors: Vec<Cursor> = feed::read_cursors(&transaction).await?;
    let rows = transaction
        .query_raw(
            "SELECT la_ods_code, nhs_number, plan_type, record FROM cpis_plans",
            std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
        )
        .await
        .map_err(db_error)?;
    let mut rows = std::pin::pin!(rows);
    let mut plans = Vec::new();
    while let Some(row) = rows.next().await {
        let row = row.map_err(db_error)?;
        let la: &str = row.get(0);
        let shared = match codes.get(la) {
            Some(code) => Arc::clone(code),
            None => Arc::clone(codes.entry(la.to_owned()).or_insert_with(|| la.into())),
        };
        plans.push(StoredPlan::from_stored(
            shared,
            nhs_number_of(row.get(1))?,
            plan_type_of(row.get(2))?,
            row.get::<_, &[u8]>(3),
        )?);
    }
    let access_position: i64 =
        transaction.query_one("SELECT size FROM cpis_log WHERE id = 1", &[]).await.map_err(db_error)?.get(0);
    let recent = recent_accesses(&transaction).await?;
    transaction.commit().await.map_err(db_error)?;
    Ok(Snapshot {
        authorities,
        plans,
        cursors,
        plan_version: plan_version as u64,
        recent,
        access_position: access_position as u64,
    })
}

/// Every person's recent accesses, read person by person.
async fn recent_accesses(transaction: &deadpool_postgres::Transaction<'_>) -> Result<Recent, StoreError> {
    let recent = Recent::new();
    let rows = transaction
        .query_raw(
            "SELECT nhs_number, record FROM cpis_accesses ORDER BY nhs_number",
            std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
        )
        .await
        .map_err(db_error)?;
    let mut rows = std::pin::pin!(rows);
    let mut person: Option<i64> = None;
    let mut records: Vec<StoredAccess> = Vec::new();
    let flush = |person: Option<i64>, records: &mut Vec<StoredAccess>| -> Result<(), StoreError> {
        if let Some(person) = person {
            let views = records.iter().map(StoredAccess::view).collect::<Result<Vec<_>, _>>()?;
            recent.load_person(nhs_number_of(person)?, views);
        }
        records.clear();
        Ok(())
    };
    while let Some(row) = rows.next().await {
        let row = row.map_err(db_error)?;
        let nhs: i64 = row.get(0);
        if person != Some(nhs) {
            flush(person, &mut records)?;
            person = Some(nhs);
        }
        records.push(StoredAccess::from_stored(row.get::<_, &[u8]>(1)));
    }
    flush(person, &mut records)?;
    Ok(recent)
}

impl Store for PostgresStore {
    fn load(&self) -> BoxFuture<'static, Result<Snapshot, StoreError>> {
        load(self.pool.clone()).boxed()
    }

    fn apply(&self, change: Change) -> BoxFuture<'static, Result<Applied, StoreError>> {
        match change {
            Change::RecordAccess { access, drafts } => {
                let (reply, answer) = oneshot::channel();
                let queued_at = std::time::Instant::now();
                let sent = self.accesses.send(accesses::AccessJob { access, drafts, reply, queued_at });
                async move {
                    sent.map_err(|_| StoreError::Closed)?;
                    answer.await.map_err(|_| StoreError::Closed)?
                }
                .boxed()
            }
            Change::Expire(expiry) => {
                let pool = self.pool.clone();
                async move {
                    let mut client = pool.get().await.map_err(pool_error)?;
                    Ok(Applied::Expired(retention::expire(&mut client, &expiry).await?))
                }
                .boxed()
            }
            other => writes::apply(self.pool.clone(), other).boxed(),
        }
    }

    fn accesses_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<AccessEvent>, StoreError>> {
        let pool = self.pool.clone();
        async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT record FROM cpis_accesses WHERE nhs_number = $1 ORDER BY accessed_at, id",
                    &[&(nhs_number.as_u64() as i64)],
                )
                .await
                .map_err(db_error)?;
            rows.iter().map(|row| Ok(StoredAccess::from_stored(row.get::<_, &[u8]>(0)).view()?.to_event())).collect()
        }
        .boxed()
    }

    fn plan_history_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<PlanEvent>, StoreError>> {
        let pool = self.pool.clone();
        async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT record FROM cpis_plan_history WHERE nhs_number = $1 ORDER BY at, id",
                    &[&(nhs_number.as_u64() as i64)],
                )
                .await
                .map_err(db_error)?;
            rows.iter().map(|row| PlanEvent::decode(row.get(0))).collect()
        }
        .boxed()
    }

    fn notifications_of(&self, nhs_number: NhsNumber) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        let pool = self.pool.clone();
        async move {
            let client = pool.get().await.map_err(pool_error)?;
            // Through the person's accesses (by person) and each one's notifications (by access).
            let rows = client
                .query(
                    "SELECT n.sequence, n.draft, n.access, n.traceparent FROM cpis_accesses a
                     JOIN cpis_notifications n ON n.access_id = a.id
                     WHERE a.nhs_number = $1 ORDER BY n.la_ods_code, n.sequence",
                    &[&(nhs_number.as_u64() as i64)],
                )
                .await
                .map_err(db_error)?;
            rows.iter().map(|row| notification(row.get(0), row.get(1), row.get(2), row.get(3))).collect()
        }
        .boxed()
    }

    fn notifications_after(
        &self,
        la_ods_code: &str,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        let (pool, la) = (self.pool.clone(), la_ods_code.to_owned());
        async move {
            let client = pool.get().await.map_err(pool_error)?;
            let statement = client
                .prepare_cached(
                    "SELECT sequence, draft, access, traceparent FROM cpis_notifications
                     WHERE la_ods_code = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
                )
                .await
                .map_err(db_error)?;
            // Sequences are BIGINT: past i64::MAX there is none (`as` would wrap to -1 and list them all).
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = client.query(&statement, &[&la, &after, &limit]).await.map_err(db_error)?;
            rows.iter().map(|row| notification(row.get(0), row.get(1), row.get(2), row.get(3))).collect()
        }
        .boxed()
    }

    fn feed(&self) -> Option<Arc<dyn Feed>> {
        Some(Arc::clone(&self.feed) as Arc<dyn Feed>)
    }

    fn access_log(&self) -> Option<Arc<dyn crate::store::log::AccessLog>> {
        Some(Arc::clone(&self.log) as Arc<dyn crate::store::log::AccessLog>)
    }
}
