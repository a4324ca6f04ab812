//! What the browser view's pages read besides a search: a local authority's
//! unacknowledged notifications (its inbox) and every authority's
//! notification positions (the ops overview). Reads only: acknowledging is
//! [`Relay::ack`], live updates are [`Relay::subscribe`], so the browser
//! follows the same cursor and the same role rules as `Notifications`.

use chrono::{DateTime, Utc};

use super::Relay;
use crate::{
    auth::{Action, Identity, Role, authorize},
    error::Result,
    model::Notification,
};

/// Notifications read from the store per page of an inbox.
const PAGE_SIZE: usize = 256;

/// A local authority's unacknowledged notifications.
#[derive(Clone, Debug)]
pub struct Inbox {
    /// The oldest `limit` unacknowledged notifications, newest first.
    pub notifications: Vec<Notification>,
    /// Everything up to here is acknowledged (the `Notifications.Ack` cursor).
    pub acked_through: u64,
    /// The last sequence committed for this authority.
    pub last_sequence: u64,
    /// Unacknowledged notifications, counted in sequence numbers as
    /// `cpis_notification_backlog` is (gaps make it an upper bound).
    pub backlog: u64,
    /// When the oldest unacknowledged access happened.
    pub oldest_unacked_at: Option<DateTime<Utc>>,
    /// More are unacknowledged than `notifications` holds.
    pub truncated: bool,
    /// The relay's clock when this was read (ages are measured from it).
    pub read_at: DateTime<Utc>,
}

/// One authority's notification positions, for the ops overview.
#[derive(Clone, Debug)]
pub struct AuthorityBacklog {
    pub la_ods_code: String,
    pub backlog: u64,
    pub subscribers: usize,
    pub oldest_unacked_at: Option<DateTime<Utc>>,
}

impl Relay {
    /// The caller's (a local authority's) unacknowledged notifications: the
    /// oldest `limit` of them, shown newest first, as `Notifications.Subscribe`
    /// would deliver them after the acknowledged position.
    pub async fn inbox(&self, identity: &Identity, limit: usize) -> Result<Inbox> {
        authorize(identity, Action::Subscribe)?;
        let la_ods_code = identity.ods_code.as_str();
        let (last_sequence, acked_through) = self.positions_of(la_ods_code);
        let mut notifications = Vec::new();
        let mut cursor = acked_through;
        let mut truncated = false;
        while cursor < last_sequence {
            let want = (limit + 1 - notifications.len()).min(PAGE_SIZE);
            let page = self.shared.store.notifications_after(la_ods_code, cursor, want).await?;
            let Some(last) = page.last() else { break };
            cursor = last.sequence;
            notifications.extend(page);
            if notifications.len() > limit {
                notifications.truncate(limit);
                truncated = true;
                break;
            }
        }
        let oldest_unacked_at = notifications.first().map(|oldest| oldest.access.accessed_at);
        notifications.reverse();
        Ok(Inbox {
            notifications,
            acked_through,
            last_sequence,
            backlog: last_sequence.saturating_sub(acked_through),
            oldest_unacked_at,
            truncated,
            read_at: self.shared.clock.now(),
        })
    }

    /// Each authority's backlog, from memory (positions, and the oldest
    /// unacknowledged access as the gauge refresh last read it): never a
    /// store read, whoever asks how often. An auditor sees every authority,
    /// a local authority its own; health roles see none (an authority's
    /// backlog is not a clinician's business).
    pub(crate) fn backlogs(&self, identity: &Identity) -> Vec<AuthorityBacklog> {
        let shown = |la_ods_code: &str| match identity.role {
            Role::Auditor => true,
            Role::SocialCare => la_ods_code == identity.ods_code,
            Role::UnscheduledCare | Role::ScheduledCare => false,
        };
        self.shared
            .hub
            .positions()
            .into_iter()
            .filter(|position| shown(&position.la_ods_code))
            .map(|position| {
                let backlog = position.last_sequence.saturating_sub(position.acked_through);
                AuthorityBacklog {
                    la_ods_code: position.la_ods_code,
                    backlog,
                    subscribers: position.subscribers,
                    oldest_unacked_at: if backlog > 0 { position.oldest_unacked_at } else { None },
                }
            })
            .collect()
    }

    /// The relay's clock, for ages shown next to what it read.
    pub fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    fn positions_of(&self, la_ods_code: &str) -> (u64, u64) {
        self.shared
            .hub
            .positions()
            .into_iter()
            .find(|position| position.la_ods_code == la_ods_code)
            .map_or((0, 0), |position| (position.last_sequence, position.acked_through))
    }
}
