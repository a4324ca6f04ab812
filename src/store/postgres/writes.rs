//! Every write but a flagged search: plan changes, each a transaction (which
//! also takes the next plan feed version, in commit order, and wakes the
//! other nodes), and acknowledgements and auditors' reads, each one
//! statement. Searches are `super::accesses`' and retention `super::retention`'s,
//! dispatched by the store before this module. No lock a search batch takes
//! (the `cpis_log` row, an authority's cursor row) is held across a round
//! trip to this node.

use std::collections::HashMap;

use deadpool_postgres::{Pool, Transaction};
use tokio_postgres::Row;

use super::{db_error, feed, pool_error};
use crate::{
    model::{LocalAuthority, PlanType},
    nhs::NhsNumber,
    plan_history::{PlanEvent, PlanEventKind},
    store::{Applied, Change, StoreError},
    stored::StoredPlan,
};

/// Plans per INSERT statement of a large upload.
const PLANS_PER_STATEMENT: usize = 5_000;

/// The first key of the per-authority plan-write locks (`pg_advisory_xact_lock(int, int)`,
/// a key space apart from the migrations' single-key lock): "CPIS" in ASCII.
const AUTHORITY_LOCK: i32 = 0x4350_4953;

pub(super) async fn apply(pool: Pool, change: Change) -> Result<Applied, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    match &change {
        Change::UpsertPlans { .. } | Change::ReplacePlans { .. } | Change::DeletePlans { .. } => {
            // Plan changes lock only plan rows, their authority's lock and
            // the feed row, none of which a search batch takes.
            let transaction = client.transaction().await.map_err(db_error)?;
            let applied = plan_change(&transaction, &change).await?;
            transaction.commit().await.map_err(db_error)?;
            Ok(applied)
        }
        Change::Ack { la_ods_code, through } => {
            // One statement: the cursor row, which numbers this authority's
            // notifications in every search batch, is never held across a round trip.
            let through = *through as i64;
            client
                .execute(
                    "WITH acked AS (UPDATE cpis_cursors SET acked_through = GREATEST(acked_through, LEAST($2, last_sequence))
                                    WHERE la_ods_code = $1 RETURNING 1)
                     SELECT pg_notify($3, $4) FROM (SELECT count(*) FROM acked) AS done",
                    &[la_ods_code, &through, &feed::CHANNEL, &format!("a {la_ods_code}={through}")],
                )
                .await
                .map_err(db_error)?;
            Ok(Applied::Committed)
        }
        Change::Expire(_) => Err(StoreError::Corrupt("retention is written by the store's retention".into())),
        Change::RecordAccess { .. } => Err(StoreError::Corrupt("searches are written by the access writer".into())),
        Change::RecordAudit(read) => {
            // The next log position under the log row's lock, like a batch of
            // searches, in one autocommit statement: the lock every search
            // needs is released as the statement commits, whatever becomes of
            // this node's connection afterwards.
            let record = postcard::to_allocvec(read).map_err(|error| StoreError::Corrupt(error.to_string()))?;
            client
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
            Ok(Applied::Committed)
        }
    }
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

pub(super) fn nhs_number_of(value: i64) -> Result<NhsNumber, StoreError> {
    NhsNumber::from_u64(value as u64).map_err(|error| StoreError::Corrupt(format!("cpis_plans: {error}")))
}

pub(super) fn plan_type_of(code: &str) -> Result<PlanType, StoreError> {
    PlanType::parse(code).ok_or_else(|| StoreError::Corrupt(format!("cpis_plans: plan type {code:?}")))
}

/// Rows of `nhs_number, plan_type, record`, by plan.
fn held_plans(rows: &[Row]) -> Result<HashMap<(NhsNumber, PlanType), Vec<u8>>, StoreError> {
    rows.iter()
        .map(|row| Ok(((nhs_number_of(row.get(0))?, plan_type_of(row.get(1))?), row.get::<_, Vec<u8>>(2))))
        .collect()
}

/// Writes plan history events in the current transaction.
pub(super) async fn insert_events(transaction: &Transaction<'_>, events: &[PlanEvent]) -> Result<(), StoreError> {
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
