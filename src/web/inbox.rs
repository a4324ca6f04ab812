//! The local authority's inbox: its unacknowledged access notifications,
//! newest first, filterable by team, with the backlog and the age of the
//! oldest; "acknowledge" moves the same cumulative cursor as
//! `Notifications.Ack` ([`Relay::ack`]); new notifications arrive without a
//! reload over server-sent events fed by [`Relay::follow_notifications`],
//! from a budget of open inboxes of its own: tabs left open never take the
//! subscriptions the authority's `deliver` agents need. Acknowledging is
//! cumulative; on a page filtered by team each button says how many other
//! teams' notifications it acknowledges too.
//!
//! The team filter is the only thing in a URL here: a team code, not personal data.
//!
//! [`Relay::ack`]: crate::relay::Relay::ack
//! [`Relay::follow_notifications`]: crate::relay::Relay::follow_notifications

use std::{convert::Infallible, time::Duration};

use axum::{
    Form,
    extract::{Query, State},
    http::{HeaderMap, header},
    response::{
        IntoResponse, Redirect, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::StreamExt;
use maud::{Markup, html};
use serde::Deserialize;

use super::{Viewer, Web, WebError, layout, viewer::CSRF_FIELD};
use crate::{auth, model::Notification, relay::Inbox};

/// Most notifications one inbox page shows (the oldest unacknowledged ones).
pub(crate) const INBOX_LIMIT: usize = 500;

#[derive(Debug, Default, Deserialize)]
pub struct TeamFilter {
    #[serde(default)]
    team: String,
    /// Where the live stream starts (the last sequence the page shows).
    #[serde(default)]
    after: Option<u64>,
    /// The live stream of a page filtered by team: how many other teams'
    /// unacknowledged notifications the page had (its buttons count on from there).
    #[serde(default)]
    others: usize,
}

impl TeamFilter {
    fn team(&self) -> Option<&str> {
        Some(self.team.trim()).filter(|team| !team.is_empty())
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct AckForm {
    #[serde(default)]
    sequence: String,
    #[serde(default)]
    team: String,
    #[serde(default)]
    csrf: String,
}

/// GET /inbox
pub async fn page(
    State(web): State<Web>,
    viewer: Viewer,
    Query(filter): Query<TeamFilter>,
) -> Result<Response, WebError> {
    let inbox = web.relay.inbox(&viewer.identity, INBOX_LIMIT).await?;
    Ok(render(&viewer, &inbox, filter.team()).into_response())
}

/// POST /inbox/ack: acknowledges through a sequence, then back to the inbox.
pub async fn ack(
    State(web): State<Web>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(sent): Form<AckForm>,
) -> Result<Response, WebError> {
    viewer.check_form(&web, &headers, Some(&sent.csrf))?;
    let sequence: u64 = sent
        .sequence
        .trim()
        .parse()
        .map_err(|_| WebError::BadForm("The notification to acknowledge is missing.".into()))?;
    web.relay.ack(&viewer.identity, sequence).await?;
    let team = sent.team.trim();
    let back =
        if team.is_empty() || !team.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_') {
            "/inbox".to_owned()
        } else {
            format!("/inbox?team={team}")
        };
    Ok(Redirect::to(&back).into_response())
}

/// GET /inbox/events: notifications after `after` (or the browser's
/// `Last-Event-ID` when it reconnects), each as the row the page would show.
pub async fn events(
    State(web): State<Web>,
    viewer: Viewer,
    headers: HeaderMap,
    Query(filter): Query<TeamFilter>,
) -> Result<Response, WebError> {
    auth::authorize(&viewer.identity, auth::Action::Subscribe)?;
    let resumed = headers.get("last-event-id").and_then(|value| value.to_str().ok()).and_then(|id| id.parse().ok());
    let after = resumed.or(filter.after);
    let stream = web.relay.follow_notifications(&viewer.identity, after, crate::relay::Follower::InboxView)?;
    let team = filter.team().map(str::to_owned);
    let mut others = filter.others;
    let events = stream.take_while(|item| std::future::ready(item.is_ok())).filter_map(move |item| {
        let event = item.ok().and_then(|notification| {
            if team.as_deref().is_some_and(|team| notification.draft.team_code != team) {
                // Not shown here, but the next button acknowledges it too.
                others += 1;
                return None;
            }
            let acknowledges = team.as_ref().map(|_| others);
            Some(Ok::<Event, Infallible>(
                Event::default()
                    .event("notification")
                    .id(notification.sequence.to_string())
                    .data(row(&viewer, &notification, team.as_deref(), acknowledges).into_string()),
            ))
        });
        std::future::ready(event)
    });
    let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(response)
}

fn render(viewer: &Viewer, inbox: &Inbox, team: Option<&str>) -> Markup {
    let mut teams: Vec<&str> =
        inbox.notifications.iter().map(|n| n.draft.team_code.as_str()).filter(|t| !t.is_empty()).collect();
    teams.sort_unstable();
    teams.dedup();
    let shown: Vec<&Notification> =
        inbox.notifications.iter().filter(|n| team.is_none_or(|team| n.draft.team_code == team)).collect();
    // Per shown notification, the other teams' unacknowledged ones before it
    // (the page holds every unacknowledged one before what it shows).
    let mut others: Vec<u64> = inbox
        .notifications
        .iter()
        .filter(|n| team.is_some_and(|team| n.draft.team_code != team))
        .map(|n| n.sequence)
        .collect();
    others.sort_unstable();
    let others_before = |sequence: u64| others.partition_point(|other| *other < sequence);
    let others_on_page = others.len();
    let newest_shown = inbox.notifications.first().map_or(inbox.acked_through, |n| n.sequence.max(inbox.acked_through));
    let live = match team {
        Some(team) => format!(
            "/inbox/events?after={newest_shown}&others={others_on_page}&team={}",
            percent_encoding::utf8_percent_encode(team, percent_encoding::NON_ALPHANUMERIC)
        ),
        None => format!("/inbox/events?after={newest_shown}"),
    };
    layout::page(
        "Access notifications",
        Some(viewer),
        html! {
            h1 { "Access notifications" }
            div class="stats" {
                p class="stat" { span class="stat-value" id="backlog" { (inbox.backlog) } " " span class="stat-label" { "unacknowledged" } }
                p class="stat" {
                    span class="stat-value" id="oldest" data-none=(inbox.oldest_unacked_at.is_none()) {
                        @match inbox.oldest_unacked_at {
                            Some(at) => { (layout::age((inbox.read_at - at).num_seconds())) }
                            None => { "none" }
                        }
                    }
                    " " span class="stat-label" { "oldest unacknowledged" }
                }
            }
            form class="filter" method="get" action="/inbox" {
                label for="team" { "Team" }
                select id="team" name="team" {
                    option value="" selected[team.is_none()] { "All teams" }
                    @for code in &teams { option value=(code) selected[team == Some(*code)] { (code) } }
                    @if let Some(team) = team { @if !teams.contains(&team) { option value=(team) selected { (team) } } }
                }
                button class="button secondary" type="submit" { "Show" }
            }
            p class="hint" {
                "Acknowledging is cumulative, as for case systems: it acknowledges that notification and every earlier one"
                @if team.is_some() { ", of every team" }
                "."
            }
            @if inbox.truncated { p class="warning" { "Showing the oldest " (inbox.notifications.len()) " unacknowledged notifications; acknowledge them to see newer ones." } }
            p id="live-status" class="visually-hidden" aria-live="polite" {}
            ol class="notifications" id="notifications" data-events=(live) {
                @for notification in &shown {
                    (row(viewer, notification, team, team.map(|_| others_before(notification.sequence))))
                }
            }
            @if shown.is_empty() { p id="empty" { "No unacknowledged notifications." } }
        },
    )
}

/// One notification, as listed and as sent live. On a page filtered by team,
/// `others` counts the other teams' unacknowledged notifications before it,
/// which its button acknowledges too (the cursor is cumulative), and says so.
fn row(viewer: &Viewer, notification: &Notification, team: Option<&str>, others: Option<usize>) -> Markup {
    let access = &notification.access;
    html! {
        li class="notification" id={ "n" (notification.sequence) } {
            h2 class="notification-title" {
                (layout::plan_name(notification.draft.plan_type)) ": NHS number " (layout::nhs_number(access.nhs_number))
            }
            dl class="summary compact" {
                div { dt { "When" } dd { time datetime=(layout::instant_iso(access.accessed_at)) { (layout::instant(access.accessed_at)) } } }
                div { dt { "Where" } dd { (access.organisation_name) " (" (access.organisation_ods_code) "), " (access.care_setting.display_name()) } }
                div { dt { "By" } dd { (access.accessor.name) " (role " (access.accessor.role_code) ", user " (access.accessor.user_id) ")" } }
                div { dt { "Your record" } dd { (notification.draft.local_id) " · team " (notification.draft.team_code) } }
                div { dt { "Notification" } dd { "#" (notification.sequence) } }
            }
            form method="post" action="/inbox/ack" {
                input type="hidden" name=(CSRF_FIELD) value=(viewer.csrf);
                input type="hidden" name="sequence" value=(notification.sequence);
                input type="hidden" name="team" value=(team.unwrap_or(""));
                button class="button" type="submit" {
                    "Acknowledge #" (notification.sequence) " and earlier"
                    @match others {
                        Some(0) | None => {}
                        Some(1) => { ", with 1 notification of other teams not shown here" }
                        Some(count) => { ", with " (count) " notifications of other teams not shown here" }
                    }
                }
            }
        }
    }
}
