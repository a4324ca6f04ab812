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
    let authorities = read.open_table(AUTHORITIES).map_err(io)?;
    for entry in authorities.iter().map_err(io)? {
        decode::<LocalAuthority>(entry.map_err(io)?.1.value(), "authorities")?;
    }
    tables.push(("authorities", authorities.len().map_err(io)?));
    let plans = read.open_table(PLANS).map_err(io)?;
    for entry in plans.iter().map_err(io)? {
        decode::<Plan>(entry.map_err(io)?.1.value(), "plans")?;
    }
    tables.push(("plans", plans.len().map_err(io)?));
    let plan_expiry = read.open_table(PLAN_EXPIRY).map_err(io)?;
    for entry in plan_expiry.iter().map_err(io)? {
        let (key, _) = entry.map_err(io)?;
        let (_, la, nhs, kind) = key.value();
        if plans.get((la, nhs, kind)).map_err(io)?.is_none() {
            return Err(StoreError::Corrupt("plan_expiry: an entry points at no plan".into()));
        }
    }
    tables.push(("plan_expiry", plan_expiry.len().map_err(io)?));
    let accesses = read.open_table(ACCESSES).map_err(io)?;
    for entry in accesses.iter().map_err(io)? {
        decode::<AccessEvent>(entry.map_err(io)?.1.value(), "accesses")?;
    }
    tables.push(("accesses", accesses.len().map_err(io)?));
    let notifications = read.open_table(NOTIFICATIONS).map_err(io)?;
    for entry in notifications.iter().map_err(io)? {
        decode::<Notification>(entry.map_err(io)?.1.value(), "notifications")?;
    }
    tables.push(("notifications", notifications.len().map_err(io)?));
    let cursors = read.open_table(CURSORS).map_err(io)?;
    tables.push(("cursors", cursors.len().map_err(io)?));
    Ok(CheckReport { path, integrity_ok, tables })
}
