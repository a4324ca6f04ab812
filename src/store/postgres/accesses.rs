//! Flagged searches on PostgreSQL: the searches waiting when a transaction
//! ends share the next one (one WAL flush for the batch), and each resolves
//! when that transaction has committed.
//!
//! In the transaction, for each search:
//! - an access already stored under its id (a held search retried after the
//!   answer to its commit was lost) is not stored again: its stored
//!   notifications are the answer;
//! - its request is claimed in `cpis_requests` (a unique key); if another
//!   node made the same request within 24 hours, the search is that
//!   request's retry and notifies no one;
//! - otherwise its access and notifications are inserted. Each authority's
//!   sequences come from its `cpis_cursors` row, whose lock is held to
//!   commit: the next transaction numbering for that authority waits, so
//!   sequences are committed in order and a subscriber never skips one.
//!   Rows are locked in a fixed order (by ODS code, by request key), so
//!   batches on several nodes never deadlock.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{db_error, feed, pool_error};
use crate::{
    model::{AccessEvent, Notification, NotificationDraft},
    store::{Applied, StoreError},
    stored::StoredAccess,
};

/// Most searches in one transaction.
const MAX_BATCH: usize = 512;

/// Transactions of searches in flight at once per node.
const WRITERS: usize = 2;

pub(super) struct AccessJob {
    pub access: AccessEvent,
    pub drafts: Vec<NotificationDraft>,
    pub reply: oneshot::Sender<Result<Applied, StoreError>>,
}

/// Starts the writer; it ends when every sender is dropped. `timeout` bounds
/// a transaction: past it the batch fails (and its searches are held and
/// retried by the relay, which the access ids make safe).
pub(super) fn spawn_writer(pool: Pool, timeout: Duration) -> mpsc::UnboundedSender<AccessJob> {
    let (sender, jobs) = mpsc::unbounded_channel::<AccessJob>();
    let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
    // Two writers: one gathers and sends its batch while the other waits for its
    // commit. Each authority's cursor row still orders their commits.
    for _ in 0..WRITERS {
        let (pool, jobs) = (pool.clone(), Arc::clone(&jobs));
        tokio::spawn(async move {
            let batch_sizes = metrics::histogram!("cpis_store_batch_size");
            loop {
                let batch = {
                    let mut jobs = jobs.lock().await;
                    let Some(first) = jobs.recv().await else { return };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match jobs.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    batch
                };
                batch_sizes.record(batch.len() as f64);
                let result = match tokio::time::timeout(timeout, commit(&pool, &batch)).await {
                    Ok(result) => result,
                    Err(_) => Err(StoreError::Io(format!(
                        "PostgreSQL did not commit a batch of searches within {} ms",
                        timeout.as_millis()
                    ))),
                };
                match result {
                    Ok(answers) => {
                        for (job, answer) in batch.into_iter().zip(answers) {
                            let _ = job.reply.send(Ok(answer));
                        }
                    }
                    Err(error) => {
                        for job in batch {
                            let _ = job.reply.send(Err(error.clone()));
                        }
                    }
                }
            }
        });
    }
    sender
}

const CLAIM: &str = "INSERT INTO cpis_requests AS r
        (organisation_ods_code, user_id, nhs_number, care_setting, request_id, made_at, access_id)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::timestamptz[], $7::uuid[])
    ON CONFLICT (organisation_ods_code, user_id, nhs_number, care_setting, request_id)
    DO UPDATE SET made_at = EXCLUDED.made_at, access_id = EXCLUDED.access_id
        WHERE r.made_at <= EXCLUDED.made_at - make_interval(secs => $8::float8)
    RETURNING access_id";

const INSERT_ACCESSES: &str = "INSERT INTO cpis_accesses
        (id, nhs_number, accessed_at, organisation_ods_code, user_id, care_setting, scheduled, request_id, record)
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
                         $7::boolean[], $8::text[], $9::bytea[])";

const NUMBER: &str = "INSERT INTO cpis_cursors AS c (la_ods_code, last_sequence)
    SELECT * FROM unnest($1::text[], $2::bigint[])
    ON CONFLICT (la_ods_code) DO UPDATE SET last_sequence = c.last_sequence + EXCLUDED.last_sequence
    RETURNING la_ods_code, last_sequence";

const INSERT_NOTIFICATIONS: &str = "INSERT INTO cpis_notifications
        (la_ods_code, sequence, access_id, accessed_at, draft, access)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::timestamptz[], $5::bytea[], $6::bytea[])";

fn care_setting_code(access: &AccessEvent) -> &'static str {
    super::care_setting_text(access.care_setting)
}

async fn commit(pool: &Pool, batch: &[AccessJob]) -> Result<Vec<Applied>, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let transaction = client.transaction().await.map_err(db_error)?;
    // Prepared once per connection: each statement below is one round trip.
    let (claim, insert_accesses, number, insert_notifications, wake) = tokio::try_join!(
        transaction.prepare_cached(CLAIM),
        transaction.prepare_cached(INSERT_ACCESSES),
        transaction.prepare_cached(NUMBER),
        transaction.prepare_cached(INSERT_NOTIFICATIONS),
        transaction.prepare_cached("SELECT pg_notify($1, $2)"),
    )
    .map_err(db_error)?;

    // Claim every request, in key order; a key twice in one batch is a retry.
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_cached_key(|index| request_sort_key(&batch[*index].access));
    order.dedup_by_key(|index| request_sort_key(&batch[*index].access));
    let access = |index: &usize| &batch[*index].access;
    let organisations: Vec<&str> = order.iter().map(|i| access(i).organisation_ods_code.as_str()).collect();
    let users: Vec<&str> = order.iter().map(|i| access(i).accessor.user_id.as_str()).collect();
    let people: Vec<i64> = order.iter().map(|i| access(i).nhs_number.as_u64() as i64).collect();
    let settings: Vec<&str> = order.iter().map(|i| care_setting_code(access(i))).collect();
    let requests: Vec<&str> = order.iter().map(|i| access(i).request_id.as_str()).collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = order.iter().map(|i| access(i).accessed_at).collect();
    let claim_ids: Vec<Uuid> = order.iter().map(|i| Uuid::from_u128(access(i).id)).collect();
    // The window the relay applies in memory too: one constant, not a second copy in SQL.
    let window_seconds = crate::history::REQUEST_ID_WINDOW.num_seconds() as f64;
    let claimed: HashSet<u128> = transaction
        .query(&claim, &[&organisations, &users, &people, &settings, &requests, &times, &claim_ids, &window_seconds])
        .await
        .map_err(db_error)?
        .iter()
        .map(|row| row.get::<_, Uuid>(0).as_u128())
        .collect();

    // Not claimed: a retry of a request made within 24 hours (on any node), or a held
    // search whose first commit did happen, which is answered with what it stored.
    let unclaimed: Vec<Uuid> = batch
        .iter()
        .filter(|job| !claimed.contains(&job.access.id))
        .map(|job| Uuid::from_u128(job.access.id))
        .collect();
    let mut earlier: HashMap<u128, Vec<Notification>> = HashMap::new();
    if !unclaimed.is_empty() {
        let rows = transaction
            .query(
                "SELECT access_id, sequence, draft, access FROM cpis_notifications
                 WHERE access_id = ANY($1) ORDER BY la_ods_code",
                &[&unclaimed],
            )
            .await
            .map_err(db_error)?;
        for row in rows {
            let notification = super::notification(row.get(1), row.get(2), row.get(3))?;
            earlier.entry(row.get::<_, Uuid>(0).as_u128()).or_default().push(notification);
        }
    }
    let fresh: Vec<&AccessJob> = batch.iter().filter(|job| claimed.contains(&job.access.id)).collect();

    // Their accesses.
    let mut records = Vec::with_capacity(fresh.len());
    for job in &fresh {
        records.push(StoredAccess::encode(&job.access)?);
    }
    if !fresh.is_empty() {
        let ids: Vec<Uuid> = fresh.iter().map(|job| Uuid::from_u128(job.access.id)).collect();
        let people: Vec<i64> = fresh.iter().map(|job| job.access.nhs_number.as_u64() as i64).collect();
        let times: Vec<chrono::DateTime<chrono::Utc>> = fresh.iter().map(|job| job.access.accessed_at).collect();
        let organisations: Vec<&str> = fresh.iter().map(|job| job.access.organisation_ods_code.as_str()).collect();
        let users: Vec<&str> = fresh.iter().map(|job| job.access.accessor.user_id.as_str()).collect();
        let settings: Vec<&str> = fresh.iter().map(|job| care_setting_code(&job.access)).collect();
        let scheduled: Vec<bool> = fresh.iter().map(|job| job.access.scheduled).collect();
        let requests: Vec<&str> = fresh.iter().map(|job| job.access.request_id.as_str()).collect();
        let bytes: Vec<&[u8]> = records.iter().map(StoredAccess::bytes).collect();
        transaction
            .execute(
                &insert_accesses,
                &[&ids, &people, &times, &organisations, &users, &settings, &scheduled, &requests, &bytes],
            )
            .await
            .map_err(db_error)?;
    }

    // Sequences: each authority's count, its row locked in ODS code order.
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for job in &fresh {
        for draft in &job.drafts {
            *counts.entry(draft.la_ods_code.as_str()).or_default() += 1;
        }
    }
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut positions = Vec::new();
    if !counts.is_empty() {
        let authorities: Vec<&str> = counts.keys().copied().collect();
        let added: Vec<i64> = counts.values().copied().collect();
        let rows = transaction.query(&number, &[&authorities, &added]).await.map_err(db_error)?;
        for row in rows {
            let (la, last): (String, i64) = (row.get(0), row.get(1));
            next.insert(la.clone(), (last - counts[la.as_str()] + 1) as u64);
            positions.push((la, last as u64));
        }
    }

    // The notifications, numbered in batch order.
    let mut answers = Vec::with_capacity(batch.len());
    let mut notified: HashMap<u128, Vec<Notification>> = HashMap::new();
    let (mut las, mut sequences, mut access_ids, mut times, mut drafts, mut accesses) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (job, record) in fresh.iter().zip(&records) {
        let mut mine = Vec::with_capacity(job.drafts.len());
        for draft in &job.drafts {
            let sequence = next.get_mut(&draft.la_ods_code).expect("counted above");
            mine.push(Notification { sequence: *sequence, draft: draft.clone(), access: job.access.clone() });
            las.push(draft.la_ods_code.as_str());
            sequences.push(*sequence as i64);
            access_ids.push(Uuid::from_u128(job.access.id));
            times.push(job.access.accessed_at);
            drafts.push(
                postcard::to_allocvec(draft)
                    .map_err(|error| StoreError::Corrupt(format!("encoding a notification: {error}")))?,
            );
            accesses.push(record.bytes());
            *sequence += 1;
        }
        notified.insert(job.access.id, mine);
    }
    if !las.is_empty() {
        // Pipelined: both in one round trip.
        let payload = feed::notified_payload(&positions);
        let rows: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&las, &sequences, &access_ids, &times, &drafts, &accesses];
        let hint: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&feed::CHANNEL, &payload];
        tokio::try_join!(transaction.execute(&insert_notifications, &rows), transaction.execute(&wake, &hint))
            .map_err(db_error)?;
    }
    transaction.commit().await.map_err(db_error)?;

    for job in batch {
        let id = job.access.id;
        let notifications = notified.remove(&id).or_else(|| earlier.remove(&id)).unwrap_or_default();
        answers.push(Applied::Notified(notifications));
    }
    Ok(answers)
}

fn request_sort_key(access: &AccessEvent) -> (String, String, u64, &'static str, String) {
    (
        access.organisation_ods_code.clone(),
        access.accessor.user_id.clone(),
        access.nhs_number.as_u64(),
        care_setting_code(access),
        access.request_id.clone(),
    )
}
