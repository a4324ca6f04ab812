//! The PostgreSQL store's access log (see `crate::store::log`): searches are
//! `cpis_accesses` rows and auditors' reads `cpis_audit_reads` rows, both with
//! a `position` from the one `cpis_log` row (whose lock orders them, so
//! positions are gapless and in commit order across every node); the tree's
//! hashes are `cpis_log_tree`, its size and the first retained position
//! columns of `cpis_log`, and the signed notes `cpis_log_notes`.
//!
//! The [`AccessLog`] trait blocks (the keeper and `audit verify` run it on a
//! blocking thread), so each method runs its queries on the runtime the store
//! was opened on; never call it from an async task.
//!
//! Several nodes each run a keeper: the tree is appended only where its size
//! is still the one the keeper knows (a compare-and-set on `cpis_log`), so
//! one node's append wins and the others reopen the tree and continue.

use std::{
    ops::ControlFlow,
    sync::atomic::{AtomicU64, Ordering},
};

use deadpool_postgres::Pool;

use super::{db_error, pool_error};
use crate::{
    model::{AccessView, AuditRead},
    nhs::NhsNumber,
    store::{
        StoreError,
        log::{
            AccessLog, LeafProblem, LogBounds, LogEntry, NoteKind, OutsideRecord, StoredNote, TREE_MOVED, TreeStore,
        },
    },
    transparency::{Hash, HashStore, leaf::LeafFields, tree::stored_hash_count},
};

/// Records read per query while streaming the log.
const PAGE: i64 = 10_000;

pub(super) struct PostgresLog {
    pub pool: Pool,
    pub runtime: tokio::runtime::Handle,
}

fn decode_search(record: &[u8]) -> Result<crate::model::AccessEvent, StoreError> {
    crate::stored::StoredAccess::from_stored(record).view().map(|view| view.to_event())
}

fn decode_audit(record: &[u8]) -> Result<AuditRead, StoreError> {
    postcard::from_bytes(record).map_err(|error| StoreError::Corrupt(format!("cpis_audit_reads: {error}")))
}

/// The leaf hash of a row: kind 0 a search's stored access, 1 an auditor's read.
fn leaf_of(kind: i16, record: &[u8]) -> Result<Hash, LeafProblem> {
    let unreadable = |error: String| LeafProblem::Unreadable(error);
    let hash = if kind == 1 {
        let read = decode_audit(record).map_err(|error| unreadable(error.to_string()))?;
        LeafFields::of_audit(&read).leaf_hash()
    } else {
        let view: AccessView<'_> = postcard::from_bytes(record).map_err(|error| unreadable(error.to_string()))?;
        LeafFields::of_view(&view).leaf_hash()
    };
    hash.map_err(|error| unreadable(error.to_string()))
}

impl PostgresLog {
    fn block<T>(&self, work: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.runtime.block_on(work)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

impl AccessLog for PostgresLog {
    fn bounds(&self) -> Result<LogBounds, StoreError> {
        self.block(async {
            let row = self
                .client()
                .await?
                .query_one("SELECT size, retained_from FROM cpis_log WHERE id = 1", &[])
                .await
                .map_err(db_error)?;
            Ok(LogBounds { next_position: row.get::<_, i64>(0) as u64, retained_from: row.get::<_, i64>(1) as u64 })
        })
    }

    fn leaf_hashes(
        &self,
        from: u64,
        to: u64,
        visit: &mut dyn FnMut(u64, Result<Hash, LeafProblem>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let end = to.min(self.bounds()?.next_position);
        let mut expected = from;
        while expected < end {
            let rows = self.block(async {
                let client = self.client().await?;
                client
                    .query(
                        "SELECT position, 0::smallint, record FROM cpis_accesses WHERE position >= $1 AND position < $2
                         UNION ALL
                         SELECT position, 1::smallint, record FROM cpis_audit_reads WHERE position >= $1 AND position < $2
                         ORDER BY 1 LIMIT $3",
                        &[&(expected as i64), &(end as i64), &PAGE],
                    )
                    .await
                    .map_err(db_error)
            })?;
            let full = rows.len() as i64 == PAGE;
            for row in &rows {
                let position = row.get::<_, i64>(0) as u64;
                if position < expected {
                    // A second row at a position already visited: the first one counts.
                    continue;
                }
                while expected < position {
                    if visit(expected, Err(LeafProblem::Missing)).is_break() {
                        return Ok(());
                    }
                    expected += 1;
                }
                if visit(position, leaf_of(row.get(1), row.get(2))).is_break() {
                    return Ok(());
                }
                expected = position + 1;
            }
            if !full {
                while expected < end {
                    if visit(expected, Err(LeafProblem::Missing)).is_break() {
                        return Ok(());
                    }
                    expected += 1;
                }
            }
        }
        Ok(())
    }

    fn entry_at(&self, position: u64) -> Result<Option<LogEntry>, StoreError> {
        let row = self.block(async {
            self.client()
                .await?
                .query_opt(
                    "SELECT 0::smallint, record FROM cpis_accesses WHERE position = $1
                     UNION ALL SELECT 1::smallint, record FROM cpis_audit_reads WHERE position = $1 LIMIT 1",
                    &[&(position as i64)],
                )
                .await
                .map_err(db_error)
        })?;
        row.map(|row| {
            let (kind, record): (i16, &[u8]) = (row.get(0), row.get(1));
            if kind == 1 {
                decode_audit(record).map(LogEntry::Audit)
            } else {
                decode_search(record).map(LogEntry::Search)
            }
        })
        .transpose()
    }

    fn position_of(&self, id: u128) -> Result<Option<u64>, StoreError> {
        let id = uuid::Uuid::from_u128(id);
        let row = self.block(async {
            self.client()
                .await?
                .query_opt(
                    "SELECT position FROM cpis_accesses WHERE id = $1
                     UNION ALL SELECT position FROM cpis_audit_reads WHERE id = $1 LIMIT 1",
                    &[&id],
                )
                .await
                .map_err(db_error)
        })?;
        Ok(row.map(|row| row.get::<_, i64>(0) as u64))
    }

    fn positions_of(&self, ids: &[u128]) -> Result<std::collections::HashMap<u128, u64>, StoreError> {
        let mut found = std::collections::HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(PAGE as usize) {
            let wanted: Vec<uuid::Uuid> = chunk.iter().map(|id| uuid::Uuid::from_u128(*id)).collect();
            let rows = self.block(async {
                self.client()
                    .await?
                    .query(
                        "SELECT id, position FROM cpis_accesses WHERE id = ANY($1)
                         UNION ALL SELECT id, position FROM cpis_audit_reads WHERE id = ANY($1)",
                        &[&wanted],
                    )
                    .await
                    .map_err(db_error)
            })?;
            for row in &rows {
                found.entry(row.get::<_, uuid::Uuid>(0).as_u128()).or_insert(row.get::<_, i64>(1) as u64);
            }
        }
        Ok(found)
    }

    fn searches_of(&self, nhs_number: NhsNumber) -> Result<Vec<(u64, crate::model::AccessEvent)>, StoreError> {
        let rows = self.block(async {
            self.client()
                .await?
                .query(
                    "SELECT position, record FROM cpis_accesses
                     WHERE nhs_number = $1 AND position IS NOT NULL ORDER BY position",
                    &[&(nhs_number.as_u64() as i64)],
                )
                .await
                .map_err(db_error)
        })?;
        rows.iter().map(|row| Ok((row.get::<_, i64>(0) as u64, decode_search(row.get(1))?))).collect()
    }

    fn audit_reads_of(&self, nhs_number: NhsNumber) -> Result<Vec<(u64, AuditRead)>, StoreError> {
        let rows = self.block(async {
            self.client()
                .await?
                .query(
                    "SELECT position, record FROM cpis_audit_reads WHERE nhs_number = $1 ORDER BY position",
                    &[&(nhs_number.as_u64() as i64)],
                )
                .await
                .map_err(db_error)
        })?;
        rows.iter().map(|row| Ok((row.get::<_, i64>(0) as u64, decode_audit(row.get(1))?))).collect()
    }

    fn tree(&self) -> TreeStore {
        Box::new(PostgresTree { pool: self.pool.clone(), runtime: self.runtime.clone(), size: AtomicU64::new(UNKNOWN) })
    }

    fn add_note(&self, kind: NoteKind, text: &str) -> Result<(), StoreError> {
        self.block(async {
            self.client()
                .await?
                .execute("INSERT INTO cpis_log_notes (kind, note) VALUES ($1, $2)", &[&i16::from(kind.code()), &text])
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }

    /// Rows with no position, at a position outside what `cpis_log` holds,
    /// or sharing a position with another row (across both tables): one scan.
    fn records_outside(&self, limit: usize) -> Result<Vec<OutsideRecord>, StoreError> {
        let rows = self.block(async {
            self.client()
                .await?
                .query(
                    "WITH logged AS (
                         SELECT id, position FROM cpis_accesses UNION ALL SELECT id, position FROM cpis_audit_reads
                     ), counted AS (
                         SELECT id, position, count(*) OVER (PARTITION BY position) AS sharing FROM logged
                     )
                     SELECT c.id, c.position FROM counted c CROSS JOIN cpis_log l
                     WHERE l.id = 1 AND (c.position IS NULL OR c.position >= l.size OR c.position < l.retained_from
                                         OR (c.position IS NOT NULL AND c.sharing > 1))
                     ORDER BY c.position NULLS FIRST, c.id LIMIT $1",
                    &[&(limit as i64)],
                )
                .await
                .map_err(db_error)
        })?;
        Ok(rows
            .iter()
            .map(|row| {
                let id = row.get::<_, uuid::Uuid>(0).as_u128();
                match row.get::<_, Option<i64>>(1) {
                    None => OutsideRecord::NoPosition { id },
                    Some(position) => OutsideRecord::NotAt { id, position: position as u64 },
                }
            })
            .collect())
    }

    fn notes(&self) -> Result<Vec<StoredNote>, StoreError> {
        let rows = self.block(async {
            self.client()
                .await?
                .query("SELECT sequence, kind, note FROM cpis_log_notes ORDER BY sequence", &[])
                .await
                .map_err(db_error)
        })?;
        rows.iter()
            .map(|row| {
                let kind = NoteKind::from_code(row.get::<_, i16>(1) as u8)
                    .ok_or_else(|| StoreError::Corrupt("cpis_log_notes: unknown kind".into()))?;
                Ok(StoredNote { sequence: row.get::<_, i64>(0) as u64, kind, text: row.get(2) })
            })
            .collect()
    }

    fn remove_notes(&self, sequences: &[u64]) -> Result<u64, StoreError> {
        let sequences: Vec<i64> = sequences.iter().map(|sequence| *sequence as i64).collect();
        self.block(async {
            self.client()
                .await?
                .execute("DELETE FROM cpis_log_notes WHERE sequence = ANY($1)", &[&sequences])
                .await
                .map_err(db_error)
        })
    }
}

/// The tree's hashes in `cpis_log_tree` and its size on `cpis_log`.
struct PostgresTree {
    pool: Pool,
    runtime: tokio::runtime::Handle,
    /// The size this handle last read or wrote: an append only lands on it.
    size: AtomicU64,
}

const UNKNOWN: u64 = u64::MAX;

impl HashStore for PostgresTree {
    type Error = StoreError;

    fn tree_size(&self) -> Result<u64, StoreError> {
        self.runtime.block_on(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            let row = client.query_one("SELECT tree_size FROM cpis_log WHERE id = 1", &[]).await.map_err(db_error)?;
            let size = row.get::<_, i64>(0) as u64;
            self.size.store(size, Ordering::Release);
            Ok(size)
        })
    }

    fn hash_at(&self, position: u64) -> Result<Hash, StoreError> {
        self.runtime.block_on(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt("SELECT hash FROM cpis_log_tree WHERE position = $1", &[&(position as i64)])
                .await
                .map_err(db_error)?
                .ok_or_else(|| StoreError::Corrupt(format!("cpis_log_tree: no hash at {position}")))?;
            <[u8; 32]>::try_from(row.get::<_, &[u8]>(0))
                .map_err(|_| StoreError::Corrupt(format!("cpis_log_tree: hash {position}")))
        })
    }

    fn hashes_at(&self, positions: &[u64]) -> Result<Vec<Hash>, StoreError> {
        let wanted: Vec<i64> = positions.iter().map(|position| *position as i64).collect();
        let mut rows = Vec::new();
        for chunk in wanted.chunks(PAGE as usize) {
            rows.extend(self.runtime.block_on(async {
                let client = self.pool.get().await.map_err(pool_error)?;
                client
                    .query("SELECT position, hash FROM cpis_log_tree WHERE position = ANY($1)", &[&chunk])
                    .await
                    .map_err(db_error)
            })?);
        }
        let mut found: std::collections::HashMap<i64, Hash> = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let hash = <[u8; 32]>::try_from(row.get::<_, &[u8]>(1))
                .map_err(|_| StoreError::Corrupt("cpis_log_tree: a hash is not 32 bytes".into()))?;
            found.insert(row.get(0), hash);
        }
        wanted
            .iter()
            .map(|position| {
                found
                    .get(position)
                    .copied()
                    .ok_or_else(|| StoreError::Corrupt(format!("cpis_log_tree: no hash at {position}")))
            })
            .collect()
    }

    fn append(&mut self, hashes: &[Hash], tree_size: u64) -> Result<(), StoreError> {
        let old = match self.size.load(Ordering::Acquire) {
            UNKNOWN => self.tree_size()?,
            size => size,
        };
        let first = stored_hash_count(old) as i64;
        let positions: Vec<i64> = (0..hashes.len() as i64).map(|offset| first + offset).collect();
        let values: Vec<&[u8]> = hashes.iter().map(|hash| hash.as_slice()).collect();
        // One autocommit statement: the `cpis_log` row every search batch
        // locks is held only while it runs, never across a round trip to this
        // node (a node cut off mid-append would otherwise hold it until the
        // server gave up on the session). The hashes go in only if the size
        // moved from the one this keeper knows.
        let moved: bool = self.runtime.block_on(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one(
                    "WITH moved AS (UPDATE cpis_log SET tree_size = $2 WHERE id = 1 AND tree_size = $1 RETURNING 1),
                     stored AS (INSERT INTO cpis_log_tree (position, hash)
                                SELECT position, hash FROM unnest($3::bigint[], $4::bytea[]) AS new (position, hash)
                                WHERE EXISTS (SELECT 1 FROM moved))
                     SELECT EXISTS (SELECT 1 FROM moved)",
                    &[&(old as i64), &(tree_size as i64), &positions, &values],
                )
                .await
                .map_err(db_error)?;
            Ok::<_, StoreError>(row.get(0))
        })?;
        if !moved {
            return Err(StoreError::Io(TREE_MOVED.into()));
        }
        self.size.store(tree_size, Ordering::Release);
        Ok(())
    }
}
