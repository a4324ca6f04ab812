//! Every write but a flagged search, each its own transaction: plan changes
//! (which also take the next plan feed version, in commit order, and wake
//! the other nodes), acknowledgements and retention.

use deadpool_postgres::{Pool, Transaction};

use super::{db_error, feed, pool_error};
use crate::{
    model::LocalAuthority,
    store::{Applied, Change, Expiry, ExpiryCounts, StoreError},
    stored::StoredPlan,
};

/// Plans per INSERT statement of a large upload.
const PLANS_PER_STATEMENT: usize = 5_000;

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
        // The relay records auditors' reads only in a store that keeps an access log.
        Change::RecordAudit(_) => {
            return Err(StoreError::Corrupt("this store keeps no access log for auditors' reads".into()));
        }
    };
    transaction.commit().await.map_err(db_error)?;
    Ok(applied)
}

/// A plan change under the next feed version. The feed row stays locked to
/// commit, so plan writers on every node commit one at a time, in version order.
async fn plan_change(transaction: &Transaction<'_>, change: &Change) -> Result<Applied, StoreError> {
    let version: i64 = transaction
        .query_one("UPDATE cpis_plan_feed SET version = version + 1 WHERE id = 1 RETURNING version", &[])
        .await
        .map_err(db_error)?
        .get(0);
    let la_ods_code = match change {
        Change::UpsertPlans { authority, plans } => {
            put_authority(transaction, authority).await?;
            insert_plans(transaction, plans, true).await?;
            &authority.ods_code
        }
        Change::ReplacePlans { authority, plans } => {
            put_authority(transaction, authority).await?;
            transaction
                .execute("DELETE FROM cpis_plans WHERE la_ods_code = $1", &[&authority.ods_code])
                .await
                .map_err(db_error)?;
            insert_plans(transaction, plans, false).await?;
            &authority.ods_code
        }
        Change::DeletePlans { la_ods_code, nhs_number, plan_type } => {
            let plan_type = plan_type.map(|kind| kind.code());
            transaction
                .execute(
                    "DELETE FROM cpis_plans WHERE la_ods_code = $1 AND nhs_number = $2
                     AND ($3::text IS NULL OR plan_type = $3)",
                    &[la_ods_code, &(nhs_number.as_u64() as i64), &plan_type],
                )
                .await
                .map_err(db_error)?;
            la_ods_code
        }
        _ => return Err(StoreError::Corrupt("not a plan change".into())),
    };
    let (kind, record) = feed::encode(change)?;
    transaction
        .execute(
            "INSERT INTO cpis_plan_changes (version, la_ods_code, kind, change) VALUES ($1, $2, $3, $4)",
            &[&version, la_ods_code, &kind, &record],
        )
        .await
        .map_err(db_error)?;
    transaction.execute("SELECT pg_notify($1, 'p')", &[&feed::CHANNEL]).await.map_err(db_error)?;
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

async fn expire(transaction: &Transaction<'_>, expiry: &Expiry) -> Result<ExpiryCounts, StoreError> {
    let plans = transaction
        .execute("DELETE FROM cpis_plans WHERE visible_until < $1", &[&expiry.today])
        .await
        .map_err(db_error)?;
    let notifications = transaction
        .execute(
            "DELETE FROM cpis_notifications n USING cpis_cursors c
             WHERE n.la_ods_code = c.la_ods_code AND n.sequence <= c.acked_through AND n.accessed_at < $1",
            &[&expiry.acked_notifications_before],
        )
        .await
        .map_err(db_error)?;
    let accesses = transaction
        .execute("DELETE FROM cpis_accesses WHERE accessed_at < $1", &[&expiry.accesses_before])
        .await
        .map_err(db_error)?;
    transaction
        .execute("DELETE FROM cpis_requests WHERE made_at < $1", &[&expiry.accesses_before])
        .await
        .map_err(db_error)?;
    transaction
        .execute(&format!("DELETE FROM cpis_plan_changes WHERE committed_at < now() - interval '{FEED_KEPT}'"), &[])
        .await
        .map_err(db_error)?;
    Ok(ExpiryCounts { plans, notifications, accesses })
}
