//! Offline verification of an embedded store (`cpis-relay store check`):
//! redb's own integrity check, then every record decodes and every plan
//! expiry entry points at a plan. Never run on a store a relay has open.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata};

use super::{
    StoreError,
    embedded::{ACCESSES, AUTHORITIES, CURSORS, FILE_NAME, NOTIFICATIONS, PLAN_EXPIRY, PLANS, decode, io},
};
use crate::model::{AccessEvent, LocalAuthority, Notification, Plan};

/// Per-table counts of an offline check.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub path: PathBuf,
    pub integrity_ok: bool,
    pub tables: Vec<(&'static str, u64)>,
}

/// Verifies a store that no relay has open.
pub fn check(data_dir: &Path) -> Result<CheckReport, StoreError> {
    let path = data_dir.join(FILE_NAME);
    if !path.exists() {
        return Err(StoreError::Io(format!("{}: no store here", path.display())));
    }
    let mut database = Database::open(&path).map_err(|error| StoreError::Io(format!("{}: {error}", path.display())))?;
    let integrity_ok = database.check_integrity().map_err(io)?;
    let read = database.begin_read().map_err(io)?;
    let mut tables = Vec::new();
    tables.push((
        "authorities",
        decode_all::<_, LocalAuthority>(&read.open_table(AUTHORITIES).map_err(io)?, "authorities")?,
    ));
    let plans = read.open_table(PLANS).map_err(io)?;
    tables.push(("plans", decode_all::<_, Plan>(&plans, "plans")?));
    let plan_expiry = read.open_table(PLAN_EXPIRY).map_err(io)?;
    for entry in plan_expiry.iter().map_err(io)? {
        let (key, _) = entry.map_err(io)?;
        let (_, la, nhs, kind) = key.value();
        if plans.get((la, nhs, kind)).map_err(io)?.is_none() {
            return Err(StoreError::Corrupt("plan_expiry: an entry points at no plan".into()));
        }
    }
    tables.push(("plan_expiry", plan_expiry.len().map_err(io)?));
    tables.push(("accesses", decode_all::<_, AccessEvent>(&read.open_table(ACCESSES).map_err(io)?, "accesses")?));
    let notifications = read.open_table(NOTIFICATIONS).map_err(io)?;
    tables.push(("notifications", decode_all::<_, Notification>(&notifications, "notifications")?));
    tables.push(("cursors", read.open_table(CURSORS).map_err(io)?.len().map_err(io)?));
    Ok(CheckReport { path, integrity_ok, tables })
}

/// Decodes every value of a table as `T`; the number of rows.
fn decode_all<K: redb::Key + 'static, T: serde::de::DeserializeOwned>(
    table: &redb::ReadOnlyTable<K, &'static [u8]>,
    name: &str,
) -> Result<u64, StoreError> {
    for entry in table.iter().map_err(io)? {
        decode::<T>(entry.map_err(io)?.1.value(), name)?;
    }
    table.len().map_err(io)
}
