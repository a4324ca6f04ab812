//! Offline verification of an embedded store (`cpis-relay store check`):
//! redb's own integrity check, then every record decodes and every plan
//! expiry entry points at a plan. Never run on a store a relay has open.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata};

use super::{
    StoreError,
    embedded::{
        ACCESS_TIMES, ACCESSES, AUTHORITIES, CURSORS, FILE_NAME, NOTIFICATIONS, PLAN_EXPIRY, PLANS, decode, io,
    },
};
use crate::{
    model::{AccessEvent, LocalAuthority, Notification},
    nhs::NhsNumber,
    stored::StoredPlan,
};

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
    for entry in plans.iter().map_err(io)? {
        let (key, value) = entry.map_err(io)?;
        let (la, nhs, kind) = key.value();
        let nhs_number = NhsNumber::from_u64(nhs).map_err(|error| StoreError::Corrupt(format!("plans: {error}")))?;
        let plan_type = super::embedded::plan_type_of(kind)?;
        let plan = StoredPlan::from_stored(la.into(), nhs_number, plan_type, value.value())?.decode()?;
        if plan.la_ods_code != la {
            return Err(StoreError::Corrupt("plans: a record is filed under another authority".into()));
        }
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
    tables.push(("accesses", decode_all::<_, AccessEvent>(&accesses, "accesses")?));
    let times = read.open_table(ACCESS_TIMES).map_err(io)?;
    for entry in times.iter().map_err(io)? {
        let (key, nhs) = entry.map_err(io)?;
        let (at, id) = key.value();
        if accesses.get((nhs.value(), at, id)).map_err(io)?.is_none() {
            return Err(StoreError::Corrupt("access_times: an entry points at no access".into()));
        }
    }
    let time_count = times.len().map_err(io)?;
    if time_count != accesses.len().map_err(io)? {
        return Err(StoreError::Corrupt("access_times: does not list every access".into()));
    }
    tables.push(("access_times", time_count));
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
