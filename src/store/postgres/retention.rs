//! Retention on PostgreSQL: plans past their visibility window, plan history,
//! acknowledged notifications, a prefix of the access log with the request
//! keys of its searches, and the plan feed past their keeping periods, each
//! removed in statements of at most `Expiry::limit` rows that commit on their
//! own.
//!
//! What it must not do: hold a lock a search batch needs (the `cpis_log` row,
//! a request key, a cursor row) across a round trip to this node, or for an
//! unbounded delete. A node cut off between two statements leaves nothing
//! locked; one cut off during a statement holds the rows only while the
//! server runs it.

use deadpool_postgres::Object;

use super::{
    db_error,
    writes::{insert_events, nhs_number_of, plan_type_of},
};
use crate::{
    plan_history::{PlanEvent, PlanEventKind},
    store::{Expiry, ExpiryCounts, StoreError},
};

/// How long the plan feed is kept: a node behind by more reloads everything.
const FEED_KEPT: &str = "7 days";

/// One chunk of retention: at most `expiry.limit` rows of each counted kind.
/// Request keys and the plan feed, which the caller does not count, are
/// removed here in chunks of the same size until none is left.
pub(super) async fn expire(client: &mut Object, expiry: &Expiry) -> Result<ExpiryCounts, StoreError> {
    let limit = i64::try_from(expiry.limit).unwrap_or(i64::MAX);
    let plans = expire_plans(client, expiry, limit).await?;
    let plan_changes = client
        .execute(
            "DELETE FROM cpis_plan_history WHERE id = ANY(ARRAY(
                 SELECT id FROM cpis_plan_history WHERE at < $1 ORDER BY at LIMIT $2))",
            &[&expiry.accesses_before, &limit],
        )
        .await
        .map_err(db_error)?;
    // Reading the cursors does not lock them: searches number notifications meanwhile.
    let notifications = client
        .execute(
            "DELETE FROM cpis_notifications WHERE (la_ods_code, sequence) IN (
                 SELECT n.la_ods_code, n.sequence FROM cpis_notifications n JOIN cpis_cursors c USING (la_ods_code)
                 WHERE n.sequence <= c.acked_through AND n.accessed_at < $1 LIMIT $2)",
            &[&expiry.acked_notifications_before, &limit],
        )
        .await
        .map_err(db_error)?;
    let accesses = expire_log_prefix(client, expiry, limit).await?;
    let feed = format!(
        "DELETE FROM cpis_plan_changes WHERE version = ANY(ARRAY(
             SELECT version FROM cpis_plan_changes WHERE committed_at < now() - interval '{FEED_KEPT}' LIMIT $1))"
    );
    while client.execute(&feed, &[&limit]).await.map_err(db_error)? >= limit as u64 {}
    Ok(ExpiryCounts { plans, plan_changes, notifications, accesses })
}

/// Plans no longer visible, with their "expired" history events, in one
/// transaction: it locks only plan rows, which searches never take.
async fn expire_plans(client: &mut Object, expiry: &Expiry, limit: i64) -> Result<u64, StoreError> {
    let transaction = client.transaction().await.map_err(db_error)?;
    let expired = transaction
        .query(
            "DELETE FROM cpis_plans WHERE (la_ods_code, nhs_number, plan_type) IN (
                 SELECT la_ods_code, nhs_number, plan_type FROM cpis_plans WHERE visible_until < $1 LIMIT $2)
             RETURNING la_ods_code, nhs_number, plan_type",
            &[&expiry.today, &limit],
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
    insert_events(&transaction, &events).await?;
    transaction.commit().await.map_err(db_error)?;
    Ok(events.len() as u64)
}

/// Accesses and auditors' reads as a prefix of the access log (see
/// `crate::store::log`), in one statement: from the first retained position,
/// in position order, up to the first one still kept or not yet in the tree,
/// at most `limit` positions. `retained_from` moves only from the value the
/// statement read (a compare-and-set: two nodes' retention passes remove
/// each position once), and the rows go only if it moved. The `cpis_log` row
/// is locked from that update to the statement's commit, never longer.
///
/// Each removed search's request key goes with it, in the same statement
/// (so none outlives its access: no index by time is needed to find them),
/// unless a later search has claimed the key since (24 hours on), whose
/// access it then names and with which it goes. A search's claim locks its
/// key's row before the `cpis_log` row and this statement the other way
/// round, but they can meet only on a key claimed again a whole retention
/// period after its first search; PostgreSQL then ends one of the two
/// (either retries: the search is held, the pass runs again).
async fn expire_log_prefix(client: &Object, expiry: &Expiry, limit: i64) -> Result<u64, StoreError> {
    let below = i64::try_from(expiry.log_positions_below).unwrap_or(i64::MAX);
    let row = client
        .query_one(
            "WITH window_ AS (
                 SELECT retained_from AS first, LEAST(size, $1::bigint, retained_from + $2::bigint) AS below
                 FROM cpis_log WHERE id = 1),
             kept AS (
                 SELECT min(k.position) AS position FROM window_, LATERAL (
                     SELECT position FROM cpis_accesses
                     WHERE position >= window_.first AND position < window_.below AND accessed_at >= $3
                     UNION ALL
                     SELECT position FROM cpis_audit_reads
                     WHERE position >= window_.first AND position < window_.below AND read_at >= $3) AS k),
             bound AS (SELECT first, COALESCE(kept.position, below) AS boundary FROM window_, kept),
             moved AS (
                 UPDATE cpis_log SET retained_from = bound.boundary FROM bound
                 WHERE id = 1 AND retained_from = bound.first AND bound.boundary > bound.first
                 RETURNING bound.first, bound.boundary),
             searches AS (
                 DELETE FROM cpis_accesses USING moved
                 WHERE position >= moved.first AND position < moved.boundary
                 RETURNING id, organisation_ods_code, user_id, nhs_number, care_setting, request_id),
             requests AS (
                 DELETE FROM cpis_requests r USING searches s
                 WHERE r.organisation_ods_code = s.organisation_ods_code AND r.user_id = s.user_id
                   AND r.nhs_number = s.nhs_number AND r.care_setting = s.care_setting
                   AND r.request_id = s.request_id AND r.access_id = s.id
                 RETURNING 1),
             reads AS (
                 DELETE FROM cpis_audit_reads USING moved
                 WHERE position >= moved.first AND position < moved.boundary RETURNING 1)
             -- `requests` runs to completion though nothing reads it, as every data-modifying CTE does.
             SELECT (SELECT count(*) FROM searches) + (SELECT count(*) FROM reads)",
            &[&below, &limit, &expiry.accesses_before],
        )
        .await
        .map_err(db_error)?;
    Ok(row.get::<_, i64>(0) as u64)
}
