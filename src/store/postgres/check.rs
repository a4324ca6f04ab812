//! `cpis-relay store check --store postgres://...`: the PostgreSQL store's
//! cross-references, verified in one read-only snapshot while relays run.
//! Every stored record is decoded and matched with the columns it is filed
//! under; each authority's notifications stay within its cursor and their
//! sequences have no gaps below it; every access has its request row; the
//! plan feed's head is its newest change.

use std::path::PathBuf;

use futures::StreamExt;

use super::{connect::Connector, db_error, nhs_number_of, notification, plan_type_of, pool_error};
use crate::{
    model::LocalAuthority,
    store::{StoreError, check::CheckReport},
    stored::{StoredAccess, StoredPlan},
};

/// Checks the database of `options`; its report names the URL, password redacted.
pub async fn check(options: &super::ConnectOptions) -> Result<CheckReport, StoreError> {
    let pool = Connector::new(options)?.pool(2, &Default::default())?;
    let mut client = pool.get().await.map_err(pool_error)?;
    let transaction = super::snapshot(&mut client).await?;
    let mut report = CheckReport { path: PathBuf::from(options.url.redacted()), ..CheckReport::default() };
    let mut problems = Vec::new();
    let no_params = std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>;

    let mut authorities = 0;
    for row in transaction.query("SELECT ods_code, record FROM cpis_authorities", &[]).await.map_err(db_error)? {
        let authority: LocalAuthority = postcard::from_bytes(row.get::<_, &[u8]>(1))
            .map_err(|error| StoreError::Corrupt(format!("authorities: {error}")))?;
        if authority.ods_code != row.get::<_, &str>(0) {
            problems.push(format!("authorities: {} is filed under {}", authority.ods_code, row.get::<_, &str>(0)));
        }
        authorities += 1;
    }

    let mut plans = 0;
    let rows = transaction
        .query_raw("SELECT la_ods_code, nhs_number, plan_type, visible_until, record FROM cpis_plans", no_params())
        .await
        .map_err(db_error)?;
    let mut rows = std::pin::pin!(rows);
    while let Some(row) = rows.next().await {
        let row = row.map_err(db_error)?;
        let la: &str = row.get(0);
        let stored =
            StoredPlan::from_stored(la.into(), nhs_number_of(row.get(1))?, plan_type_of(row.get(2))?, row.get(4))?;
        let plan = stored.decode()?;
        if plan.la_ods_code != la {
            problems.push(format!("plans: a record of {} is filed under {la}", plan.la_ods_code));
        }
        if stored.visible_until() != row.get::<_, Option<chrono::NaiveDate>>(3) {
            problems.push(format!("plans: a plan of {la} has a last visible day other than its record's"));
        }
        plans += 1;
    }

    let mut accesses = 0;
    let rows = transaction
        .query_raw(
            "SELECT a.id, a.nhs_number, a.accessed_at, a.request_id, a.record, r.access_id IS NOT NULL
             FROM cpis_accesses a LEFT JOIN cpis_requests r
               ON r.organisation_ods_code = a.organisation_ods_code AND r.user_id = a.user_id
              AND r.nhs_number = a.nhs_number AND r.care_setting = a.care_setting AND r.request_id = a.request_id",
            no_params(),
        )
        .await
        .map_err(db_error)?;
    let mut rows = std::pin::pin!(rows);
    while let Some(row) = rows.next().await {
        let row = row.map_err(db_error)?;
        let stored = StoredAccess::from_stored(row.get(4));
        let access = stored.view()?;
        let id: uuid::Uuid = row.get(0);
        if access.id != id.as_u128()
            || access.nhs_number.as_u64() as i64 != row.get::<_, i64>(1)
            || access.accessed_at != row.get::<_, chrono::DateTime<chrono::Utc>>(2)
            || access.request_id != row.get::<_, &str>(3)
        {
            problems.push(format!("accesses: {id} is filed under other columns than its record"));
        }
        if !row.get::<_, bool>(5) {
            problems.push(format!("accesses: {id} has no request row"));
        }
        accesses += 1;
    }

    let mut notifications = 0;
    let cursors = super::feed::read_cursors(&transaction).await?;
    for cursor in &cursors {
        let rows = transaction
            .query(
                "SELECT sequence, draft, access FROM cpis_notifications WHERE la_ods_code = $1 ORDER BY sequence",
                &[&cursor.la_ods_code],
            )
            .await
            .map_err(db_error)?;
        let mut previous: Option<u64> = None;
        for row in &rows {
            let notification = notification(row.get(0), row.get(1), row.get(2), None)?;
            if notification.sequence > cursor.last_sequence {
                problems.push(format!("notifications: {} has a sequence beyond its cursor", cursor.la_ods_code));
            }
            // Retention removes only acknowledged ones: above the acknowledged, none is missing.
            let expected = previous.map_or(cursor.acked_through + 1, |previous| previous + 1);
            if notification.sequence > expected && notification.sequence > cursor.acked_through + 1 {
                problems.push(format!(
                    "notifications: {} misses sequences {expected}..{}",
                    cursor.la_ods_code,
                    notification.sequence - 1
                ));
            }
            previous = Some(notification.sequence);
            notifications += 1;
        }
        if cursor.acked_through > cursor.last_sequence {
            problems.push(format!("cursors: {} is acknowledged beyond its last sequence", cursor.la_ods_code));
        }
    }
    let feed = transaction
        .query_one(
            "SELECT f.version, (SELECT max(version) FROM cpis_plan_changes) FROM cpis_plan_feed f WHERE f.id = 1",
            &[],
        )
        .await
        .map_err(db_error)?;
    let (head, newest): (i64, Option<i64>) = (feed.get(0), feed.get(1));
    if newest.is_some_and(|newest| newest != head) {
        problems.push(format!("plan feed: head {head} but newest change {newest:?}"));
    }
    transaction.commit().await.map_err(db_error)?;

    report.tables = vec![
        ("authorities", authorities),
        ("plans", plans),
        ("accesses", accesses),
        ("notifications", notifications),
        ("cursors", cursors.len() as u64),
        ("plan feed head", head as u64),
    ];
    report.integrity_ok = problems.is_empty();
    report.problems = problems;
    Ok(report)
}
