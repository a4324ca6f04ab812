//! The changes the embedded store's writer applies inside one write
//! transaction: plan upserts and refreshes with their expiry entries,
//! deletes, a flagged search's notifications and access, acknowledgements,
//! and retention. Each returns what it did or fails the whole batch.

use std::collections::HashMap;

use redb::{ReadableTable, WriteTransaction};

use super::{
    ACCESS_TIMES, ACCESSES, AUTHORITIES, CURSORS, NOTIFICATIONS, PLAN_EXPIRY, PLANS, day_key, decode, encode, io,
    plan_type_of, type_key,
};
use crate::{
    model::{LocalAuthority, Notification, PlanType},
    store::{Applied, Change, Cursor, Expiry, ExpiryCounts, StoreError},
    stored,
};

pub(super) fn apply(
    transaction: &WriteTransaction,
    positions: &mut HashMap<String, Cursor>,
    change: Change,
) -> Result<Applied, StoreError> {
    match change {
        Change::UpsertPlans { authority, plans } => {
            put_authority(transaction, &authority)?;
            let mut table = transaction.open_table(PLANS).map_err(io)?;
            let mut expiry = transaction.open_table(PLAN_EXPIRY).map_err(io)?;
            for plan in plans.iter() {
                let key = (plan.la_ods_code(), plan.nhs_number().as_u64(), type_key(plan.plan_type()));
                // One traversal: the insert hands back the version it replaces.
                let replaced_until = match table.insert(key, plan.bytes()).map_err(io)? {
                    Some(previous) => stored::visible_until_of(previous.value())?,
                    None => None,
                };
                let until = plan.visible_until();
                if replaced_until != until {
                    if let Some(day) = replaced_until {
                        expiry.remove((day_key(day), key.0, key.1, key.2)).map_err(io)?;
                    }
                    if let Some(day) = until {
                        expiry.insert((day_key(day), key.0, key.1, key.2), ()).map_err(io)?;
                    }
                }
            }
            Ok(Applied::Done)
        }
        Change::ReplacePlans { authority, plans } => {
            // Remove only what the new set lacks; the rest is overwritten in place,
            // which is far cheaper than emptying the range and filling it again.
            // Both lists in key order (the relay sends plans sorted): one merge pass.
            let mut keep: Vec<(u64, u8)> =
                plans.iter().map(|plan| (plan.nhs_number().as_u64(), type_key(plan.plan_type()))).collect();
            if !keep.is_sorted() {
                keep.sort_unstable();
            }
            let la = authority.ods_code.as_str();
            let gone: Vec<(u64, u8)> = {
                let table = transaction.open_table(PLANS).map_err(io)?;
                let mut gone = Vec::new();
                let mut wanted = keep.iter().peekable();
                for entry in table.range((la, 0, 0)..=(la, u64::MAX, u8::MAX)).map_err(io)? {
                    let (key, _) = entry.map_err(io)?;
                    let (_, nhs, kind) = key.value();
                    while wanted.next_if(|&&next| next < (nhs, kind)).is_some() {}
                    if wanted.peek() != Some(&&(nhs, kind)) {
                        gone.push((nhs, kind));
                    }
                }
                gone
            };
            for (nhs, kind) in gone {
                delete_plans(transaction, la, Some(nhs), Some(plan_type_of(kind)?))?;
            }
            apply(transaction, positions, Change::UpsertPlans { authority, plans })
        }
        Change::DeletePlans { la_ods_code, nhs_number, plan_type } => {
            delete_plans(transaction, &la_ods_code, Some(nhs_number.as_u64()), plan_type)?;
            Ok(Applied::Done)
        }
        Change::RecordAccess { access, drafts } => {
            let mut notifications = transaction.open_table(NOTIFICATIONS).map_err(io)?;
            let mut cursors = transaction.open_table(CURSORS).map_err(io)?;
            let mut notified = Vec::with_capacity(drafts.len());
            for draft in drafts {
                let cursor = positions
                    .entry(draft.la_ods_code.clone())
                    .or_insert_with(|| Cursor { la_ods_code: draft.la_ods_code.clone(), ..Cursor::default() });
                cursor.last_sequence += 1;
                let notification = Notification { sequence: cursor.last_sequence, draft, access: access.clone() };
                let la = notification.draft.la_ods_code.as_str();
                notifications.insert((la, notification.sequence), encode(&notification)?.as_slice()).map_err(io)?;
                cursors.insert(la, (cursor.last_sequence, cursor.acked_through)).map_err(io)?;
                notified.push(notification);
            }
            let at = access.accessed_at.timestamp_micros();
            let nhs = access.nhs_number.as_u64();
            let mut accesses = transaction.open_table(ACCESSES).map_err(io)?;
            accesses.insert((nhs, at, access.id), encode(&access)?.as_slice()).map_err(io)?;
            let mut times = transaction.open_table(ACCESS_TIMES).map_err(io)?;
            times.insert((at, access.id), nhs).map_err(io)?;
            Ok(Applied::Notified(notified))
        }
        Change::Ack { la_ods_code, through } => {
            let cursor = positions
                .entry(la_ods_code.clone())
                .or_insert_with(|| Cursor { la_ods_code: la_ods_code.clone(), ..Cursor::default() });
            cursor.acked_through = cursor.acked_through.max(through.min(cursor.last_sequence));
            let mut cursors = transaction.open_table(CURSORS).map_err(io)?;
            cursors.insert(la_ods_code.as_str(), (cursor.last_sequence, cursor.acked_through)).map_err(io)?;
            Ok(Applied::Done)
        }
        Change::Expire(expiry) => Ok(Applied::Expired(expire(transaction, positions, expiry)?)),
    }
}

fn put_authority(transaction: &WriteTransaction, authority: &LocalAuthority) -> Result<(), StoreError> {
    let mut table = transaction.open_table(AUTHORITIES).map_err(io)?;
    table.insert(authority.ods_code.as_str(), encode(authority)?.as_slice()).map_err(io)?;
    Ok(())
}

/// Deletes an authority's plans: all, one person's, or one person's of one type.
fn delete_plans(
    transaction: &WriteTransaction,
    la: &str,
    nhs_number: Option<u64>,
    plan_type: Option<PlanType>,
) -> Result<u64, StoreError> {
    let mut table = transaction.open_table(PLANS).map_err(io)?;
    let mut expiry = transaction.open_table(PLAN_EXPIRY).map_err(io)?;
    let (low, high) = match (nhs_number, plan_type) {
        (Some(nhs), Some(kind)) => ((la, nhs, type_key(kind)), (la, nhs, type_key(kind))),
        (Some(nhs), None) => ((la, nhs, 0), (la, nhs, u8::MAX)),
        (None, _) => ((la, 0, 0), (la, u64::MAX, u8::MAX)),
    };
    let mut removed = 0;
    for entry in table.extract_from_if(low..=high, |_, _| true).map_err(io)? {
        let (key, value) = entry.map_err(io)?;
        let (la, nhs, kind) = key.value();
        if let Some(day) = stored::visible_until_of(value.value())? {
            expiry.remove((day_key(day), la, nhs, kind)).map_err(io)?;
        }
        removed += 1;
    }
    Ok(removed)
}

fn expire(
    transaction: &WriteTransaction,
    positions: &HashMap<String, Cursor>,
    expiry: Expiry,
) -> Result<ExpiryCounts, StoreError> {
    let mut counts = ExpiryCounts::default();
    {
        // Plans whose last visible day is before today.
        let mut expiring = transaction.open_table(PLAN_EXPIRY).map_err(io)?;
        let mut plans = transaction.open_table(PLANS).map_err(io)?;
        let low = (i32::MIN, "", 0u64, 0u8);
        let high = (day_key(expiry.today) - 1, "\u{10FFFF}", u64::MAX, u8::MAX);
        for entry in expiring.extract_from_if(low..=high, |_, _| true).map_err(io)? {
            let (key, _) = entry.map_err(io)?;
            let (_, la, nhs, kind) = key.value();
            if plans.remove((la, nhs, kind)).map_err(io)?.is_some() {
                counts.plans += 1;
            }
        }
    }
    {
        // Acknowledged notifications older than the cut-off, oldest first per authority.
        let mut notifications = transaction.open_table(NOTIFICATIONS).map_err(io)?;
        for cursor in positions.values() {
            let la = cursor.la_ods_code.as_str();
            let mut expired = Vec::new();
            for entry in notifications.range((la, 0)..=(la, cursor.acked_through)).map_err(io)? {
                let (key, value) = entry.map_err(io)?;
                let notification: Notification = decode(value.value(), "notifications")?;
                if notification.access.accessed_at >= expiry.acked_notifications_before {
                    break;
                }
                expired.push(key.value().1);
            }
            for sequence in expired {
                notifications.remove((la, sequence)).map_err(io)?;
                counts.notifications += 1;
            }
        }
    }
    {
        let mut times = transaction.open_table(ACCESS_TIMES).map_err(io)?;
        let mut accesses = transaction.open_table(ACCESSES).map_err(io)?;
        let cutoff = (expiry.accesses_before.timestamp_micros(), 0u128);
        for entry in times.extract_from_if((i64::MIN, 0u128)..cutoff, |_, _| true).map_err(io)? {
            let (key, nhs) = entry.map_err(io)?;
            let (at, id) = key.value();
            accesses.remove((nhs.value(), at, id)).map_err(io)?;
            counts.accesses += 1;
        }
    }
    Ok(counts)
}
