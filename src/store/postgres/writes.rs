//! Every write but a flagged search, each its own transaction: plan changes
//! (which also take the next plan feed version, in commit order, and wake
//! the other nodes), acknowledgements and retention.

use std::collections::HashMap;

use deadpool_postgres::{Pool, Transaction};
use tokio_postgres::Row;

use super::{db_error, feed, pool_error};
use crate::{
    model::{LocalAuthority, PlanType},
    nhs::NhsNumber,
    plan_history::{PlanEvent, PlanEventKind},
    store::{Applied, Change, Expiry, ExpiryCounts, StoreError},
    stored::StoredPlan,
};

/// Plans per INSERT statement of a large upload.
const PLANS_PER_STATEMENT: usize = 5_000;

/// The first key of the per-authority plan-write locks (`pg_advisory_xact_lock(int, int)`,
/// a key space apart from the migrations' single-key lock): "CPIS" in ASCII.
const AUTHORITY_LOCK: i32 = 0x4350_4953;

/// How long the plan feed is kept: a node behind by more reloads everything.
const FEED_KEPT: &str = "7 days";

pub(super) async fn apply(pool: Pool, change: Change) -> Result<Applied, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let transaction = client.transaction().await.map_err(db_error)?;
    let applied = match &change {
        Change::UpsertPlans { .. } | Change::ReplacePlans { .. } | Change::DeletePlans { .. } => {
            plan_change(&transaction, &change).await?
        }
        Change::Ack { la_ods_code, through } => {
            let through = *through as i64;
            transaction
                .execute(
                    "UPDATE cpis_cursors SET acked_through = GREATEST(acked_through, LEAST($2, last_sequence))
                     WHERE la_ods_code = $1",
                    &[la_ods_code, &through],
                )
                .await
                .map_err(db_error)?;
            transaction
                .execute("SELECT pg_notify($1, $2)", &[&feed::CHANNEL, &format!("a {la_ods_code}={through}")])
                .await
                .map_err(db_error)?;
            Applied::Committed
        }
        Change::Expire(expiry) => Applied::Expired(expire(&transaction, expiry).await?),
        Change::RecordAccess { .. } => {
            return Err(StoreError::Corrupt("searches are written by the access writer".into()));
        }
        Change::RecordAudit(read) => {
            // The next log position, under the log row's lock like a batch of searches.
            let record = postcard::to_allocvec(read).map_err(|error| StoreError::Corrupt(error.to_string()))?;
            transaction
                .execute(
                    "WITH next AS (UPDATE cpis_log SET size = size + 1 WHERE id = 1 RETURNING size - 1 AS position)
                     INSERT INTO cpis_audit_reads (id, nhs_number, read_at, organisation_ods_code, record, position)
                     SELECT $1, $2, $3, $4, $5, position FROM next",
                    &[
                        &uuid::Uuid::from_u128(read.id),
                        &(read.nhs_number.as_u64() as i64),
                        &read.read_at,
                        &read.organisation_ods_code,
                        &record,
                    ],
                )
                .await
                .map_err(db_error)?;
            Applied::Committed
        }
    };
    transaction.commit().await.map_err(db_error)?;
    Ok(applied)
}

/// A plan change under the next feed version. Plan writers of one authority
/// take that authority's lock first and hold it to commit, so each sees the
/// plans the one before it committed (a delete after a refresh deletes what
/// the refresh wrote). The feed row is taken last, once the change is
/// written, and held to commit: versions follow commit order on every node,
/// and writers of different authorities wait for each other only for the
/// last statements and the commit, not for a whole upload (which, with a
/// database 100 ms away, took seconds).
async fn plan_change(transaction: &Transaction<'_>, change: &Change) -> Result<Applied, StoreError> {
    let la = match change {
        Change::UpsertPlans { authority, .. } | Change::ReplacePlans { authority, .. } => &authority.ods_code,
        Change::DeletePlans { la_ods_code, .. } => la_ods_code,
        _ => return Err(StoreError::Corrupt("not a plan change".into())),
    };
    transaction
        .execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&AUTHORITY_LOCK, la])
        .await
        .map_err(db_error)?;
    let la_ods_code = match change {
        Change::UpsertPlans { authority, plans, at } => {
            put_authority(transaction, authority).await?;
            let people: Vec<i64> = plans.iter().map(|plan| plan.nhs_number().as_u64() as i64).collect();
            let rows = transaction
                .query(
                    "SELECT nhs_number, plan_type, record FROM cpis_plans
                     WHERE la_ods_code = $1 AND nhs_number = ANY($2)",
                    &[&authority.ods_code, &people],
                )
                .await
                .map_err(db_error)?;
            let held = held_plans(&rows)?;
            let events = plans
                .iter()
                .map(|plan| PlanEvent::of_write(held.get(&plan_key(plan)).map(Vec::as_slice), plan, *at))
                .filter_map(Result::transpose)
                .collect::<Result<Vec<_>, _>>()?;
            insert_plans(transaction, plans, true).await?;
            insert_events(transaction, &events).await?;
            &authority.ods_code
        }
        Change::ReplacePlans { authority, plans, at } => {
            put_authority(transaction, authority).await?;
            let rows = transaction
                .query(
                    "DELETE FROM cpis_plans WHERE la_ods_code = $1 RETURNING nhs_number, plan_type, record",
                    &[&authority.ods_code],
                )
                .await
                .map_err(db_error)?;
            let mut held = held_plans(&rows)?;
            let mut events = Vec::new();
            for plan in plans.iter() {
                events.extend(PlanEvent::of_write(held.remove(&plan_key(plan)).as_deref(), plan, *at)?);
            }
            for (nhs_number, plan_type) in held.into_keys() {
                let kind = PlanEventKind::Withdrawn;
                events.push(PlanEvent::removal(*at, &authority.ods_code, nhs_number, plan_type, kind));
            }
            insert_plans(transaction, plans, false).await?;
            insert_events(transaction, &events).await?;
            &authority.ods_code
        }
        Change::DeletePlans { la_ods_code, nhs_number, plan_type, at } => {
            let code = plan_type.map(|kind| kind.code());
            let rows = transaction
                .query(
                    "DELETE FROM cpis_plans WHERE la_ods_code = $1 AND nhs_number = $2
                     AND ($3::text IS NULL OR plan_type = $3) RETURNING plan_type",
                    &[la_ods_code, &(nhs_number.as_u64() as i64), &code],
                )
                .await
                .map_err(db_error)?;
            let events = rows
                .iter()
                .map(|row| {
                    let plan_type = plan_type_of(row.get(0))?;
                    Ok(PlanEvent::removal(*at, la_ods_code, *nhs_number, plan_type, PlanEventKind::Deleted))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            insert_events(transaction, &events).await?;
            la_ods_code
        }
        _ => return Err(StoreError::Corrupt("not a plan change".into())),
    };
    let (kind, record) = feed::encode(change)?;
    // One statement under the feed row's lock, then the commit.
    let version: i64 = transaction
        .query_one(
            "WITH next AS (UPDATE cpis_plan_feed SET version = version + 1 WHERE id = 1 RETURNING version),
             logged AS (INSERT INTO cpis_plan_changes (version, la_ods_code, kind, change)
                        SELECT version, $1, $2, $3 FROM next RETURNING version)
             SELECT version, pg_notify($4, 'p') FROM logged",
            &[la_ods_code, &kind, &record, &feed::CHANNEL],
        )
        .await
        .map_err(db_error)?
        .get(0);
    Ok(Applied::PlanVersion(version as u64))
}

async fn put_authority(transaction: &Transaction<'_>, authority: &LocalAuthority) -> Result<(), StoreError> {
    let record = postcard::to_allocvec(authority)
        .map_err(|error| StoreError::Corrupt(format!("encoding an authority: {error}")))?;
    transaction
        .execute(
            "INSERT INTO cpis_authorities (ods_code, record) VALUES ($1, $2)
             ON CONFLICT (ods_code) DO UPDATE SET record = EXCLUDED.record",
            &[&authority.ods_code, &record],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}

async fn insert_plans(transaction: &Transaction<'_>, plans: &[StoredPlan], upsert: bool) -> Result<(), StoreError> {
    let statement = if upsert {
        "INSERT INTO cpis_plans (la_ods_code, nhs_number, plan_type, visible_until, record)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::date[], $5::bytea[])
         ON CONFLICT (la_ods_code, nhs_number, plan_type)
         DO UPDATE SET visible_until = EXCLUDED.visible_until, record = EXCLUDED.record"
    } else {
        "INSERT INTO cpis_plans (la_ods_code, nhs_number, plan_type, visible_until, record)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::date[], $5::bytea[])"
    };
    let statement = transaction.prepare_cached(statement).await.map_err(db_error)?;
    for chunk in plans.chunks(PLANS_PER_STATEMENT) {
        let las: Vec<&str> = chunk.iter().map(StoredPlan::la_ods_code).collect();
        let people: Vec<i64> = chunk.iter().map(|plan| plan.nhs_number().as_u64() as i64).collect();
        let kinds: Vec<&str> = chunk.iter().map(|plan| plan.plan_type().code()).collect();
        let last_days: Vec<Option<chrono::NaiveDate>> = chunk.iter().map(StoredPlan::visible_until).collect();
        let records: Vec<&[u8]> = chunk.iter().map(StoredPlan::bytes).collect();
        transaction.execute(&statement, &[&las, &people, &kinds, &last_days, &records]).await.map_err(db_error)?;
    }
    Ok(())
}

/// A plan as the history keys it within one authority.
fn plan_key(plan: &StoredPlan) -> (NhsNumber, PlanType) {
    (plan.nhs_number(), plan.plan_type())
}

fn nhs_number_of(value: i64) -> Result<NhsNumber, StoreError> {
    NhsNumber::from_u64(value as u64).map_err(|error| StoreError::Corrupt(format!("cpis_plans: {error}")))
}

fn plan_type_of(code: &str) -> Result<PlanType, StoreError> {
    PlanType::parse(code).ok_or_else(|| StoreError::Corrupt(format!("cpis_plans: plan type {code:?}")))
}

/// Rows of `nhs_number, plan_type, record`, by plan.
fn held_plans(rows: &[Row]) -> Result<HashMap<(NhsNumber, PlanType), Vec<u8>>, StoreError> {
    rows.iter()
        .map(|row| Ok(((nhs_number_of(row.get(0))?, plan_type_of(row.get(1))?), row.get::<_, Vec<u8>>(2))))
        .collect()
}

/// Writes plan history events in the current transaction.
async fn insert_events(transaction: &Transaction<'_>, events: &[PlanEvent]) -> Result<(), StoreError> {
    let statement = transaction
        .prepare_cached(
            "INSERT INTO cpis_plan_history (id, nhs_number, at, record)
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::bytea[])",
        )
        .await
        .map_err(db_error)?;
    for chunk in events.chunks(PLANS_PER_STATEMENT) {
        let ids: Vec<uuid::Uuid> = chunk.iter().map(|event| uuid::Uuid::from_u128(event.id)).collect();
        let people: Vec<i64> = chunk.iter().map(|event| event.nhs_number.as_u64() as i64).collect();
        let times: Vec<chrono::DateTime<chrono::Utc>> = chunk.iter().map(|event| event.at).collect();
        let records = chunk.iter().map(PlanEvent::encode).collect::<Result<Vec<_>, _>>()?;
        transaction.execute(&statement, &[&ids, &people, &times, &records]).await.map_err(db_error)?;
    }
    Ok(())
}

async fn expire(transaction: &Transaction<'_>, expiry: &Expiry) -> Result<ExpiryCounts, StoreError> {
    let expired = transaction
        .query(
            "DELETE FROM cpis_plans WHERE visible_until < $1 RETURNING la_ods_code, nhs_number, plan_type",
            &[&expiry.today],
        )
        .await
        .map_err(db_error)?;
    let events = expired
        .iter()
        .map(|row| {
            let (nhs_number, plan_type) = (nhs_number_of(row.get(1))?, plan_type_of(row.get(2))?);
            Ok(PlanEvent::removal(expiry.now, row.get(0), nhs_number, plan_type, PlanEventKind::Expired))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let plan_changes = transaction
        .execute("DELETE FROM cpis_plan_history WHERE at < $1", &[&expiry.accesses_before])
        .await
        .map_err(db_error)?;
    insert_events(transaction, &events).await?;
    let plans = events.len() as u64;
    let notifications = transaction
        .execute(
            "DELETE FROM cpis_notifications n USING cpis_cursors c
             WHERE n.la_ods_code = c.la_ods_code AND n.sequence <= c.acked_through AND n.accessed_at < $1",
            &[&expiry.acked_notifications_before],
        )
        .await
        .map_err(db_error)?;
    let accesses = expire_log_prefix(transaction, expiry).await?;
    transaction
        .execute("DELETE FROM cpis_requests WHERE made_at < $1", &[&expiry.accesses_before])
        .await
        .map_err(db_error)?;
    transaction
        .execute(&format!("DELETE FROM cpis_plan_changes WHERE committed_at < now() - interval '{FEED_KEPT}'"), &[])
        .await
        .map_err(db_error)?;
    Ok(ExpiryCounts { plans, plan_changes, notifications, accesses })
}

/// Accesses and auditors' reads as a prefix of the access log (see
/// `crate::store::log`): from the first retained position, in position
/// order, up to the first one still kept or not yet in the tree, at most
/// `expiry.limit` positions a call; records the new first retained position.
async fn expire_log_prefix(transaction: &Transaction<'_>, expiry: &Expiry) -> Result<u64, StoreError> {
    let log = transaction
        .query_one("SELECT size, retained_from FROM cpis_log WHERE id = 1 FOR UPDATE", &[])
        .await
        .map_err(db_error)?;
    let (size, from): (i64, i64) = (log.get(0), log.get(1));
    let below = (expiry.log_positions_below.min(size as u64) as i64).min(from.saturating_add(expiry.limit as i64));
    if below <= from {
        return Ok(0);
    }
    // The first position in the window still within its keeping period.
    let kept = transaction
        .query_one(
            "SELECT min(position) FROM (
                 SELECT position FROM cpis_accesses WHERE position >= $1 AND position < $2 AND accessed_at >= $3
                 UNION ALL
                 SELECT position FROM cpis_audit_reads WHERE position >= $1 AND position < $2 AND read_at >= $3
             ) AS kept",
            &[&from, &below, &expiry.accesses_before],
        )
        .await
        .map_err(db_error)?;
    let boundary = kept.get::<_, Option<i64>>(0).unwrap_or(below);
    if boundary <= from {
        return Ok(0);
    }
    let mut removed = 0;
    for table in ["cpis_accesses", "cpis_audit_reads"] {
        removed += transaction
            .execute(&format!("DELETE FROM {table} WHERE position >= $1 AND position < $2"), &[&from, &boundary])
            .await
            .map_err(db_error)?;
    }
    transaction.execute("UPDATE cpis_log SET retained_from = $1 WHERE id = 1", &[&boundary]).await.map_err(db_error)?;
    Ok(removed)
}
