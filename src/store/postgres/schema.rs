//! The PostgreSQL schema, as versioned migrations embedded in the binary.
//! They are applied at start inside one transaction holding an advisory
//! lock, so several nodes starting together apply each once; a node refuses
//! a database whose schema is newer than it knows.
//!
//! Portable SQL only (no extensions): the same statements run on managed
//! PostgreSQL services and on PostgreSQL-compatible distributed engines.
//! Personal data is kept in `record` columns in the relay's stored form;
//! the columns beside them are what audit queries and retention select on.

use tokio_postgres::Client;

use super::db_error;
use crate::store::StoreError;

/// `pg_advisory_xact_lock` key of migrations ("cpis" in ASCII).
const MIGRATION_LOCK: i64 = 0x6370_6973;

/// Every migration, in order; a version is never edited once released.
const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2), (3, V3), (4, V4), (5, V5), (6, V6)];

/// The newest schema this build knows.
pub const SCHEMA_VERSION: i32 = 6;

const V1: &str = "
CREATE TABLE cpis_authorities (
    ods_code text PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE cpis_plans (
    la_ods_code text NOT NULL,
    nhs_number bigint NOT NULL,
    plan_type text NOT NULL,
    visible_until date,
    record bytea NOT NULL,
    PRIMARY KEY (la_ods_code, nhs_number, plan_type)
);
CREATE INDEX cpis_plans_by_person ON cpis_plans (nhs_number);
CREATE INDEX cpis_plans_by_last_day ON cpis_plans (visible_until) WHERE visible_until IS NOT NULL;
-- The plan feed: one row whose lock serialises plan writers, so versions
-- are assigned in commit order.
CREATE TABLE cpis_plan_feed (
    id smallint PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO cpis_plan_feed (id, version) VALUES (1, 0);
CREATE TABLE cpis_plan_changes (
    version bigint PRIMARY KEY,
    committed_at timestamptz NOT NULL DEFAULT now(),
    la_ods_code text NOT NULL,
    kind text NOT NULL,
    change bytea NOT NULL
);
-- Per authority: the last sequence assigned (its row lock orders commits)
-- and the acknowledged position.
CREATE TABLE cpis_cursors (
    la_ods_code text PRIMARY KEY,
    last_sequence bigint NOT NULL DEFAULT 0,
    acked_through bigint NOT NULL DEFAULT 0
);
CREATE TABLE cpis_accesses (
    id uuid PRIMARY KEY,
    nhs_number bigint NOT NULL,
    accessed_at timestamptz NOT NULL,
    organisation_ods_code text NOT NULL,
    user_id text NOT NULL,
    care_setting text NOT NULL,
    scheduled boolean NOT NULL,
    request_id text NOT NULL,
    record bytea NOT NULL
);
CREATE INDEX cpis_accesses_by_person ON cpis_accesses (nhs_number, accessed_at DESC, id DESC);
CREATE INDEX cpis_accesses_by_time ON cpis_accesses (accessed_at);
CREATE TABLE cpis_requests (
    organisation_ods_code text NOT NULL,
    user_id text NOT NULL,
    nhs_number bigint NOT NULL,
    care_setting text NOT NULL,
    request_id text NOT NULL,
    made_at timestamptz NOT NULL,
    access_id uuid NOT NULL,
    PRIMARY KEY (organisation_ods_code, user_id, nhs_number, care_setting, request_id)
);
CREATE INDEX cpis_requests_by_time ON cpis_requests (made_at);
CREATE TABLE cpis_notifications (
    la_ods_code text NOT NULL,
    sequence bigint NOT NULL,
    access_id uuid NOT NULL,
    accessed_at timestamptz NOT NULL,
    draft bytea NOT NULL,
    access bytea NOT NULL,
    PRIMARY KEY (la_ods_code, sequence)
);
CREATE INDEX cpis_notifications_by_access ON cpis_notifications (access_id);
";

/// Access positions: every stored access takes the next position of one
/// log, under the lock of the `cpis_log` row held to commit, so positions are
/// gapless and in commit order across every node. Other nodes follow
/// accesses by position (their recent accesses in memory), and the access
/// log's tree takes its leaves in this order. Accesses stored before this
/// version take positions in time order.
const V2: &str = "
CREATE TABLE cpis_log (
    id smallint PRIMARY KEY CHECK (id = 1),
    size bigint NOT NULL
);
ALTER TABLE cpis_accesses ADD COLUMN position bigint;
-- Which node process wrote the access (random per process): a node skips its own when it follows the log.
ALTER TABLE cpis_accesses ADD COLUMN written_by bigint NOT NULL DEFAULT 0;
UPDATE cpis_accesses AS a SET position = numbered.position
    FROM (SELECT id, row_number() OVER (ORDER BY accessed_at, id) - 1 AS position FROM cpis_accesses) AS numbered
    WHERE a.id = numbered.id;
INSERT INTO cpis_log (id, size) VALUES (1, (SELECT count(*) FROM cpis_accesses));
ALTER TABLE cpis_accesses ALTER COLUMN position SET NOT NULL;
CREATE UNIQUE INDEX cpis_accesses_by_position ON cpis_accesses (position);
";

/// Version 3, the access log (issue 20): auditors' reads as accesses of the
/// log (positions from the same `cpis_log` row, never listed to clinicians),
/// the tree's hashes and the signed notes the log keeper writes, and the
/// tree's size and the first position retention kept, on the log's row.
const V3: &str = "
CREATE TABLE cpis_audit_reads (
    id uuid PRIMARY KEY,
    nhs_number bigint NOT NULL,
    read_at timestamptz NOT NULL,
    organisation_ods_code text NOT NULL,
    record bytea NOT NULL,
    position bigint NOT NULL
);
CREATE UNIQUE INDEX cpis_audit_reads_by_position ON cpis_audit_reads (position);
CREATE INDEX cpis_audit_reads_by_person ON cpis_audit_reads (nhs_number, position);
CREATE TABLE cpis_log_tree (
    position bigint PRIMARY KEY,
    hash bytea NOT NULL
);
CREATE TABLE cpis_log_notes (
    sequence bigserial PRIMARY KEY,
    kind smallint NOT NULL,
    note text NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE cpis_log ADD COLUMN tree_size bigint NOT NULL DEFAULT 0;
ALTER TABLE cpis_log ADD COLUMN retained_from bigint NOT NULL DEFAULT 0;
";

/// Version 4, the plans' history of changes (see `crate::plan_history`):
/// one row per change, written in the plan change's transaction, read by
/// person for a subject access request and removed by time with accesses.
const V4: &str = "
CREATE TABLE cpis_plan_history (
    id uuid PRIMARY KEY,
    nhs_number bigint NOT NULL,
    at timestamptz NOT NULL,
    record bytea NOT NULL
);
CREATE INDEX cpis_plan_history_by_person ON cpis_plan_history (nhs_number, at, id);
CREATE INDEX cpis_plan_history_by_time ON cpis_plan_history (at);
";

/// Version 5, traces (issue 31): the W3C `traceparent` of a traced search's
/// commit, beside each of its notifications, so that delivery continues the
/// trace. NULL for untraced searches and for every row written before.
const V5: &str = "
ALTER TABLE cpis_notifications ADD COLUMN traceparent text;
";

/// Version 6, a leaner search (issue 29): two indexes no search needs go.
/// `cpis_accesses_by_time`: no query reads accesses by time (retention
/// removes a prefix of the log by position, audits read by person or
/// position). `cpis_requests_by_time`: retention removes a request key with
/// its search's access, by the key (see `retention`), not by time. A flagged
/// search now adds six index entries, not eight: its request's key, its
/// access's id, person and position, and each notification's authority and
/// sequence, and access. Dropping an index is a catalogue change: instant on
/// a database of any size.
const V6: &str = "
DROP INDEX IF EXISTS cpis_accesses_by_time;
DROP INDEX IF EXISTS cpis_requests_by_time;
";

/// Brings the schema up to [`SCHEMA_VERSION`]; refuses a newer one.
pub(super) async fn migrate(client: &mut Client) -> Result<i32, StoreError> {
    let transaction = client.transaction().await.map_err(db_error)?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db_error)?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS cpis_schema_migrations (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(db_error)?;
    let row = transaction.query_one("SELECT max(version) FROM cpis_schema_migrations", &[]).await.map_err(db_error)?;
    let current: i32 = row.get::<_, Option<i32>>(0).unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(StoreError::Io(format!(
            "the database's schema is version {current}, newer than this relay knows ({SCHEMA_VERSION}); \
             run a relay at least as new as the one that migrated it"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        transaction.batch_execute(sql).await.map_err(db_error)?;
        transaction
            .execute("INSERT INTO cpis_schema_migrations (version) VALUES ($1)", &[version])
            .await
            .map_err(db_error)?;
        tracing::info!(version, "applied a schema migration");
    }
    transaction.commit().await.map_err(db_error)?;
    Ok(SCHEMA_VERSION)
}
