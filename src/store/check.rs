//! Offline verification of an embedded store (`cpis-relay store check`):
//! every record is read (the engine checks each block's checksum as it
//! reads it) and decoded, every plan-expiry entry points at a plan with that
//! last visible day, every plan change is indexed by time (for retention),
//! every access and auditor's read has a log position
//! whose entry names it (the log gapless, with no entry naming nothing),
//! every notification is filed under its authority and sequence, and no
//! authority is acknowledged beyond its last notification. Whether the
//! records match the log's signed tree is `cpis-relay audit verify`.
//! Never run on a store a relay has open.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::{
    StoreError,
    embedded::{ACTIVITY_DIR, PLANS_DIR, Spaces, decode, io, keys},
};
use crate::{
    model::{AccessEvent, AuditRead, LocalAuthority, Notification, days},
    plan_history::PlanEvent,
    stored::{self, StoredPlan},
};

/// Per-keyspace counts of an offline check.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub path: PathBuf,
    /// Every cross-reference holds.
    pub integrity_ok: bool,
    pub tables: Vec<(&'static str, u64)>,
    /// What did not hold, if anything.
    pub problems: Vec<String>,
}

/// Verifies a store that no relay has open.
pub fn check(data_dir: &Path) -> Result<CheckReport, StoreError> {
    if !data_dir.join(PLANS_DIR).exists() || !data_dir.join(ACTIVITY_DIR).exists() {
        return Err(StoreError::Io(format!("{}: no store here", data_dir.display())));
    }
    let spaces = Spaces::open(data_dir, super::embedded::DEFAULT_CACHE_BYTES)?;
    let mut report = CheckReport { path: data_dir.to_owned(), ..CheckReport::default() };
    let mut problem = |text: String| report.problems.push(text);

    let mut authorities = 0;
    for entry in spaces.authorities.iter() {
        let (_, value) = entry.into_inner().map_err(io)?;
        decode::<LocalAuthority>(&value, "authorities")?;
        authorities += 1;
    }
    let mut until_of: HashMap<Vec<u8>, Option<i32>> = HashMap::new();
    for entry in spaces.plans.iter() {
        let (key, value) = entry.into_inner().map_err(io)?;
        let (la, nhs, plan_type) = keys::parse_plan(&key)?;
        let plan = StoredPlan::from_stored(la.into(), nhs, plan_type, &value)?.decode()?;
        if plan.la_ods_code != la {
            problem(format!("plans: a record of {} is filed under {la}", plan.la_ods_code));
        }
        until_of.insert(key.to_vec(), stored::visible_until_of(&value)?.map(days::to_number));
    }
    let mut expiring = 0;
    for entry in spaces.plan_expiry.iter() {
        let key = entry.key().map_err(io)?;
        let plan_key = keys::plan_of_expiry(&key)?;
        let day = keys::expiry_day(&key)?;
        match until_of.get(plan_key) {
            Some(Some(until)) if *until == day => expiring += 1,
            _ => problem("plan_expiry: an entry points at no plan with that last visible day".into()),
        }
    }
    if expiring != until_of.values().filter(|until| until.is_some()).count() {
        problem("plan_expiry: does not list every plan that ends".into());
    }

    let mut plan_changes = 0u64;
    for entry in spaces.plan_history.iter() {
        let (key, value) = entry.into_inner().map_err(io)?;
        let event = PlanEvent::decode(&value)?;
        let at = event.at.timestamp_micros();
        if key.as_ref() != keys::plan_change(event.nhs_number, at, event.id) {
            problem("plan_history: a record is filed under another key".into());
        }
        if !spaces
            .plan_history_times
            .contains_key(keys::plan_change_time(event.nhs_number, at, event.id))
            .map_err(io)?
        {
            problem("plan_history_times: a plan change is missing (retention would never remove it)".into());
        }
        plan_changes += 1;
    }
    let timed = spaces.plan_history_times.len().map_err(io)? as u64;
    if timed != plan_changes {
        problem(format!("plan_history_times: {timed} entries for {plan_changes} plan changes"));
    }

    let mut accesses = 0u64;
    for entry in spaces.accesses.iter() {
        let (key, value) = entry.into_inner().map_err(io)?;
        let access: AccessEvent = decode(&value, "accesses")?;
        let at = access.accessed_at.timestamp_micros();
        if key.as_ref() != keys::access(access.nhs_number, access.scheduled, at, access.id) {
            problem("accesses: a record is filed under another key".into());
        }
        if let Some(missing) = super::embedded::logged(&spaces, &key, access.id)?.map(|outside| outside.describe()) {
            problem(format!("accesses: {missing}"));
        }
        accesses += 1;
    }
    let mut audit_reads = 0u64;
    for entry in spaces.audit_reads.iter() {
        let (key, value) = entry.into_inner().map_err(io)?;
        let read: AuditRead = decode(&value, "audit_reads")?;
        if key.as_ref() != keys::audit_read(read.nhs_number, read.read_at.timestamp_micros(), read.id) {
            problem("audit_reads: a record is filed under another key".into());
        }
        if let Some(missing) = super::embedded::logged(&spaces, &key, read.id)?.map(|outside| outside.describe()) {
            problem(format!("audit_reads: {missing}"));
        }
        audit_reads += 1;
    }
    let bounds = super::embedded::log_bounds(&spaces)?;
    let mut log_entries = 0u64;
    for (expected, entry) in (bounds.retained_from..).zip(spaces.log.iter()) {
        let position = keys::position_of_key(&entry.key().map_err(io)?, "log")?;
        if position != expected {
            problem(format!("log: position {expected} is missing (the next is {position})"));
            break;
        }
        log_entries += 1;
    }
    if log_entries != accesses + audit_reads {
        problem(format!("log: {log_entries} entries for {accesses} accesses and {audit_reads} auditors' reads"));
    }
    let log_ids = spaces.log_ids.len().map_err(io)? as u64;
    if log_ids != log_entries {
        problem(format!("log_ids: {log_ids} entries for {log_entries} log positions"));
    }
    let mut notifications = 0;
    for entry in spaces.notifications.iter() {
        let (key, value) = entry.into_inner().map_err(io)?;
        let notification: Notification = decode(&value, "notifications")?;
        if key.as_ref() != keys::notification(&notification.draft.la_ods_code, notification.sequence) {
            problem("notifications: a record is filed under another key".into());
        }
        notifications += 1;
    }
    let cursors = spaces.positions()?;
    for cursor in &cursors {
        if cursor.acked_through > cursor.last_sequence {
            problem(format!(
                "cursors: acknowledged through {} beyond the last notification {}",
                cursor.acked_through, cursor.last_sequence
            ));
        }
    }

    report.integrity_ok = report.problems.is_empty();
    report.tables = vec![
        ("authorities", authorities),
        ("plans", until_of.len() as u64),
        ("plan_expiry", expiring as u64),
        ("plan_history", plan_changes),
        ("accesses", accesses),
        ("audit_reads", audit_reads),
        ("log", log_entries),
        ("notifications", notifications),
        ("cursors", cursors.len() as u64),
    ];
    Ok(report)
}
