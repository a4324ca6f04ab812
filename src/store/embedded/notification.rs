//! A notification's stored form in the `notifications` keyspace: the
//! postcard encoding of [`Notification`], then, only when the search was
//! traced, a trailer holding its W3C `traceparent` (one tag byte, one length
//! byte, the text). Records written before traces existed have no trailer and
//! decode as untraced; postcard ignores bytes after the value, so an older
//! relay still reads records with one.

use super::{StoreError, encode};
use crate::model::Notification;

/// Tag of the `traceparent` trailer.
const TRACEPARENT_TAG: u8 = 1;

pub(super) fn encode_notification(notification: &Notification) -> Result<Vec<u8>, StoreError> {
    let mut bytes = encode(notification)?;
    if let Some(traceparent) = &notification.draft.traceparent
        && let Ok(len) = u8::try_from(traceparent.len())
    {
        bytes.extend_from_slice(&[TRACEPARENT_TAG, len]);
        bytes.extend_from_slice(traceparent.as_bytes());
    }
    Ok(bytes)
}

pub(super) fn decode_notification(bytes: &[u8]) -> Result<Notification, StoreError> {
    let (mut notification, rest): (Notification, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|error| StoreError::Corrupt(format!("notifications: {error}")))?;
    if let [TRACEPARENT_TAG, len, text @ ..] = rest
        && text.len() == usize::from(*len)
    {
        notification.draft.traceparent = std::str::from_utf8(text).ok().and_then(crate::traces::checked_traceparent);
    }
    Ok(notification)
}
