//! Flagged searches on PostgreSQL: the searches waiting when a statement
//! ends share the next one, and each resolves when it has committed. A batch
//! is one statement (one round trip, one WAL flush), run outside any explicit
//! transaction, so it commits as it ends; its parts, in the order their
//! locks are taken:
//! 1. each search's request is claimed in `cpis_requests` (a unique key),
//!    in key order; if another node made the same request within 24 hours,
//!    the search is that request's retry, is not stored and notifies no one;
//!    an access already stored under its id (a held search retried after the
//!    answer to its commit was lost) is answered with what it stored;
//! 2. the `cpis_log` row is updated: the new accesses take the next
//!    positions of the access log. Its lock is held to commit, so positions
//!    are gapless and in commit order across every node: the other nodes
//!    follow accesses by position, and the access log's tree takes its
//!    leaves in that order;
//! 3. each authority's `cpis_cursors` row numbers its notifications, locked
//!    in ODS code order and only after the log row: sequences are committed in
//!    order (a subscriber never skips one) and batches never deadlock;
//! 4. the accesses and notifications are inserted, and the other nodes are
//!    woken with the authorities' new positions (and this node's id: a
//!    node ignores the hints of its own commits).
//!
//! A batch costs this node one round trip: the statement is prepared once
//! per pooled connection (`prepare_cached`), the pool hands a connection
//! out without a query (`RecyclingMethod::Fast`), and the batch's positions
//! are recorded as this node's own ([`super::own`]), so following the log
//! never reads them back.
//!
//! No search waits longer than the write timeout for its answer, counting
//! the time it queued behind a batch still in flight: a search whose time is
//! up before a writer reaches it is answered with an error unsent (the relay
//! holds it), and a batch gets only the time its oldest search has left.
//! A batch the database refuses for one record's sake (SQLSTATE classes 22,
//! 23, 54: [`StoreError::Rejected`]) is split in halves until that record is
//! alone, so one bad record never fails the searches batched with it.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use futures::{FutureExt, future::BoxFuture};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{connect::Abandon, db_error, own::OwnPositions, pool_error};
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
    /// When the search handed it over: its answer is due a write timeout later.
    pub queued_at: Instant,
}

/// Who writes: this node process (`cpis_accesses.written_by`), and where it
/// records the positions its batches took.
#[derive(Clone)]
pub(super) struct Writer {
    pub node: i64,
    pub own: Arc<OwnPositions>,
}

/// Starts the writer; it ends when every sender is dropped. `timeout` bounds
/// a transaction: past it the batch fails (and its searches are held and
/// retried by the relay, which the access ids make safe), and the connections
/// opened before it started are abandoned: one of them holds the batch, and
/// after a partition it would answer only when TCP next retransmits.
pub(super) fn spawn_writer(
    pool: Pool,
    timeout: Duration,
    writer: Writer,
    abandon: Abandon,
) -> mpsc::UnboundedSender<AccessJob> {
    let (sender, jobs) = mpsc::unbounded_channel::<AccessJob>();
    let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
    // Two writers: one gathers and sends its batch while the other waits for its
    // commit. Each authority's cursor row still orders their commits.
    for _ in 0..WRITERS {
        let (pool, jobs, abandon, writer) = (pool.clone(), Arc::clone(&jobs), abandon.clone(), writer.clone());
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
                // Searches whose time ran out while they queued are answered unsent
                // (the relay holds them), so none waits past the write timeout.
                let (batch, late): (Vec<AccessJob>, Vec<AccessJob>) =
                    batch.into_iter().partition(|job| job.queued_at.elapsed() < timeout);
                for job in late {
                    let _ = job.reply.send(Err(StoreError::Io(format!(
                        "no PostgreSQL writer was free within {} ms; not sent",
                        timeout.as_millis()
                    ))));
                }
                let Some(oldest) = batch.iter().map(|job| job.queued_at).min() else { continue };
                batch_sizes.record(batch.len() as f64);
                let started = Instant::now();
                let due = tokio::time::Instant::from_std(oldest + timeout);
                let result = match tokio::time::timeout_at(due, commit_isolating(&pool, &batch, &writer)).await {
                    Ok(result) => result,
                    Err(_) => Err({
                        abandon.opened_before(started);
                        StoreError::Io(format!(
                            "PostgreSQL did not commit a batch of searches within {} ms",
                            timeout.as_millis()
                        ))
                    }),
                };
                match result {
                    Ok(answers) => {
                        for (job, answer) in batch.into_iter().zip(answers) {
                            let _ = job.reply.send(answer);
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

/// One batch of searches. Parameters: the searches' columns (1-9), whether
/// each claims its request (10: a copy of a key earlier in the batch does
/// not), the request window in seconds (11), and the notification drafts:
/// their access (12), authority (13), encoding (14) and trace context (16,
/// NULL when untraced); and this node (15).
///
/// Rows out: `kind` 0, a notification numbered now (access, authority,
/// sequence); 1, a notification stored before for an access of the batch
/// (with its draft, access and trace context); 2, an access stored now (id, position);
/// 3, an access of the batch stored before (id).
const RECORD: &str = "
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
                         $7::boolean[], $8::text[], $9::bytea[], $10::boolean[])
        WITH ORDINALITY AS i(id, nhs_number, accessed_at, organisation_ods_code, user_id, care_setting,
                             scheduled, request_id, record, claims, ord)
),
claimed AS (
    INSERT INTO cpis_requests AS r
        (organisation_ods_code, user_id, nhs_number, care_setting, request_id, made_at, access_id)
    SELECT organisation_ods_code, user_id, nhs_number, care_setting, request_id, accessed_at, id
        FROM input WHERE claims ORDER BY ord
    ON CONFLICT (organisation_ods_code, user_id, nhs_number, care_setting, request_id)
    DO UPDATE SET made_at = EXCLUDED.made_at, access_id = EXCLUDED.access_id
        WHERE r.made_at <= EXCLUDED.made_at - make_interval(secs => $11::float8)
    RETURNING access_id
),
fresh AS (
    SELECT input.*, row_number() OVER (ORDER BY ord) - 1 AS n
        FROM input WHERE id IN (SELECT access_id FROM claimed)
),
log AS (
    UPDATE cpis_log SET size = size + (SELECT count(*) FROM fresh) WHERE id = 1
    RETURNING size - (SELECT count(*) FROM fresh) AS base
),
stored AS (
    INSERT INTO cpis_accesses (id, nhs_number, accessed_at, organisation_ods_code, user_id, care_setting,
                               scheduled, request_id, record, position, written_by)
    SELECT f.id, f.nhs_number, f.accessed_at, f.organisation_ods_code, f.user_id, f.care_setting,
           f.scheduled, f.request_id, f.record, log.base + f.n, $15::bigint
        FROM fresh f CROSS JOIN log
    RETURNING id, position
),
drafts AS (
    SELECT d.access_id, d.la_ods_code, d.draft, d.traceparent, f.accessed_at, f.record,
           row_number() OVER (PARTITION BY d.la_ods_code ORDER BY f.ord, d.dk) AS k
        FROM unnest($12::uuid[], $13::text[], $14::bytea[], $16::text[])
            WITH ORDINALITY AS d(access_id, la_ods_code, draft, traceparent, dk)
        JOIN fresh f ON f.id = d.access_id
),
counts AS (
    SELECT la_ods_code, count(*) AS added FROM drafts GROUP BY la_ods_code
),
numbered AS (
    INSERT INTO cpis_cursors AS c (la_ods_code, last_sequence)
    SELECT counts.la_ods_code, counts.added FROM counts CROSS JOIN log ORDER BY counts.la_ods_code
    ON CONFLICT (la_ods_code) DO UPDATE SET last_sequence = c.last_sequence + EXCLUDED.last_sequence
    RETURNING la_ods_code, last_sequence
),
notified AS (
    INSERT INTO cpis_notifications (la_ods_code, sequence, access_id, accessed_at, draft, access, traceparent)
    SELECT d.la_ods_code, numbered.last_sequence - counts.added + d.k, d.access_id, d.accessed_at, d.draft, d.record,
           d.traceparent
        FROM drafts d JOIN counts USING (la_ods_code) JOIN numbered USING (la_ods_code)
    RETURNING access_id, la_ods_code, sequence
),
unclaimed AS (
    SELECT id FROM input WHERE id NOT IN (SELECT access_id FROM claimed)
),
woken AS (
    SELECT pg_notify('cpis_relay', CASE WHEN length(payload) > 7000 THEN 'n' ELSE payload END)
    FROM (SELECT 'n ' || coalesce(string_agg(la_ods_code || '=' || last_sequence, ',' ORDER BY la_ods_code), '')
                 || ' @' || $15::bigint AS payload FROM numbered) AS hint
    WHERE EXISTS (SELECT 1 FROM stored)
)
SELECT 0 AS kind, access_id, la_ods_code, sequence, NULL::bytea AS draft, NULL::bytea AS access,
       NULL::text AS traceparent FROM notified
UNION ALL
SELECT 1, n.access_id, n.la_ods_code, n.sequence, n.draft, n.access, n.traceparent
    FROM cpis_notifications n WHERE n.access_id IN (SELECT id FROM unclaimed)
UNION ALL
SELECT 2, id, NULL, position, NULL, NULL, NULL FROM stored
UNION ALL
SELECT 3, a.id, NULL, a.position, NULL, NULL, NULL FROM cpis_accesses a WHERE a.id IN (SELECT id FROM unclaimed)
UNION ALL
SELECT 4, NULL, NULL, NULL, NULL, NULL, NULL FROM woken";

/// Commits a batch; if the database refuses it for a record's sake, commits
/// each half on its own, down to the refused record alone, which alone gets
/// the error. `Err` only when the store itself failed.
fn commit_isolating<'a>(
    pool: &'a Pool,
    batch: &'a [AccessJob],
    writer: &'a Writer,
) -> BoxFuture<'a, Result<Vec<Result<Applied, StoreError>>, StoreError>> {
    async move {
        match commit(pool, batch, writer).await {
            Ok(answers) => Ok(answers.into_iter().map(Ok).collect()),
            Err(error) if error.is_about_the_record() && batch.len() > 1 => {
                let (first, second) = batch.split_at(batch.len() / 2);
                let mut answers = commit_isolating(pool, first, writer).await?;
                answers.extend(commit_isolating(pool, second, writer).await?);
                Ok(answers)
            }
            Err(error) if error.is_about_the_record() => {
                tracing::warn!(%error, "PostgreSQL refused one search's record; the relay holds it and sets it aside if it keeps failing");
                Ok(vec![Err(error)])
            }
            Err(error) => Err(error),
        }
    }
    .boxed()
}

fn care_setting_code(access: &AccessEvent) -> &'static str {
    super::care_setting_text(access.care_setting)
}

async fn commit(pool: &Pool, batch: &[AccessJob], writer: &Writer) -> Result<Vec<Applied>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    // Prepared once per connection: the batch is then one round trip.
    let statement = client.prepare_cached(RECORD).await.map_err(db_error)?;

    // Requests in key order (the order their rows are locked); a key twice in
    // one batch claims once, and its copy is that request's retry.
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_cached_key(|index| request_sort_key(&batch[*index].access));
    let mut claims = Vec::with_capacity(order.len());
    for (at, index) in order.iter().enumerate() {
        let repeats =
            at > 0 && request_sort_key(&batch[order[at - 1]].access) == request_sort_key(&batch[*index].access);
        claims.push(!repeats);
    }
    let access = |index: &usize| &batch[*index].access;
    let mut records = Vec::with_capacity(order.len());
    for index in &order {
        records.push(StoredAccess::encode(access(index))?);
    }
    let ids: Vec<Uuid> = order.iter().map(|i| Uuid::from_u128(access(i).id)).collect();
    let people: Vec<i64> = order.iter().map(|i| access(i).nhs_number.as_u64() as i64).collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = order.iter().map(|i| access(i).accessed_at).collect();
    let organisations: Vec<&str> = order.iter().map(|i| access(i).organisation_ods_code.as_str()).collect();
    let users: Vec<&str> = order.iter().map(|i| access(i).accessor.user_id.as_str()).collect();
    let settings: Vec<&str> = order.iter().map(|i| care_setting_code(access(i))).collect();
    let scheduled: Vec<bool> = order.iter().map(|i| access(i).scheduled).collect();
    let requests: Vec<&str> = order.iter().map(|i| access(i).request_id.as_str()).collect();
    let bytes: Vec<&[u8]> = records.iter().map(StoredAccess::bytes).collect();
    // The window the relay applies in memory too: one constant, not a second copy in SQL.
    let window_seconds = crate::accesses::REQUEST_ID_WINDOW.num_seconds() as f64;
    let (mut draft_accesses, mut draft_authorities, mut drafts) = (Vec::new(), Vec::new(), Vec::new());
    let mut traceparents: Vec<Option<&str>> = Vec::new();
    for index in &order {
        for draft in &batch[*index].drafts {
            draft_accesses.push(Uuid::from_u128(access(index).id));
            draft_authorities.push(draft.la_ods_code.as_str());
            traceparents.push(draft.traceparent.as_deref());
            drafts.push(
                postcard::to_allocvec(draft)
                    .map_err(|error| StoreError::Corrupt(format!("encoding a notification: {error}")))?,
            );
        }
    }
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 16] = [
        &ids,
        &people,
        &times,
        &organisations,
        &users,
        &settings,
        &scheduled,
        &requests,
        &bytes,
        &claims,
        &window_seconds,
        &draft_accesses,
        &draft_authorities,
        &drafts,
        &writer.node,
        &traceparents,
    ];
    let rows = client.query(&statement, &parameters).await.map_err(db_error)?;
    // Committed: the positions taken now are one run, this node's own.
    let mut taken = rows.iter().filter(|row| row.get::<_, i32>(0) == 2).map(|row| row.get::<_, i64>(3) as u64);
    if let Some(first) = taken.next() {
        let (low, high) = taken.fold((first, first), |(low, high), at| (low.min(at), high.max(at)));
        writer.own.record(low, high + 1);
    }

    // Each search's answer from the rows.
    let (mut stored_now, mut stored_before): (HashSet<u128>, HashSet<u128>) = Default::default();
    let mut sequences: HashMap<(u128, &str), u64> = HashMap::new();
    let mut earlier: HashMap<u128, Vec<Notification>> = HashMap::new();
    let mut owned_authorities: Vec<(u128, String, u64)> = Vec::new();
    for row in &rows {
        let kind: i32 = row.get(0);
        let id = row.get::<_, Option<Uuid>>(1).map(|id| id.as_u128());
        match (kind, id) {
            (0, Some(id)) => owned_authorities.push((id, row.get(2), row.get::<_, i64>(3) as u64)),
            (1, Some(id)) => {
                let notification = super::notification(row.get(3), row.get(4), row.get(5), row.get(6))?;
                earlier.entry(id).or_default().push(notification);
            }
            (2, Some(id)) => {
                stored_now.insert(id);
            }
            (3, Some(id)) => {
                stored_before.insert(id);
            }
            _ => {}
        }
    }
    for (id, la, sequence) in &owned_authorities {
        sequences.insert((*id, la.as_str()), *sequence);
    }
    let mut answers = Vec::with_capacity(batch.len());
    for job in batch {
        let id = job.access.id;
        if let Some(mut notifications) = earlier.remove(&id) {
            notifications.sort_by(|a, b| a.draft.la_ods_code.cmp(&b.draft.la_ods_code));
            answers.push(Applied::Notified(notifications));
        } else if stored_now.contains(&id) {
            let mut notifications = Vec::with_capacity(job.drafts.len());
            for draft in &job.drafts {
                let sequence = *sequences
                    .get(&(id, draft.la_ods_code.as_str()))
                    .ok_or_else(|| StoreError::Corrupt("a stored access's notification was not numbered".into()))?;
                notifications.push(Notification { sequence, draft: draft.clone(), access: job.access.clone() });
            }
            answers.push(Applied::Notified(notifications));
        } else if stored_before.contains(&id) {
            // Stored before with no notification: a scheduled read.
            answers.push(Applied::Notified(Vec::new()));
        } else {
            answers.push(Applied::Repeated);
        }
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
