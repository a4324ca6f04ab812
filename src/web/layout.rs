//! The page shell every page shares (skip link, header naming the viewer,
//! navigation to the pages of their role, main landmark), the start page, and
//! the formatting of values as people read them (dates, ages, care
//! settings, plan types, telephone links). Markup comes from maud, which
//! escapes every interpolated value.

use axum::response::IntoResponse;
use chrono::{DateTime, NaiveDate, Utc};
use maud::{DOCTYPE, Markup, html};

use super::{Viewer, WebError, assets};
use crate::{auth::Role, model::PlanType};

/// The service's name, as the header shows it.
pub(crate) const SERVICE_NAME: &str = "Child Protection Information Sharing";

/// A whole page. `viewer` is `None` on pages shown before anyone is known.
pub fn page(title: &str, viewer: Option<&Viewer>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en-GB" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " – " (SERVICE_NAME) }
                link rel="stylesheet" href=(assets::STYLESHEET_PATH);
                script src=(assets::SCRIPT_PATH) defer {}
            }
            body {
                a class="skip-link" href="#main" { "Skip to main content" }
                header class="site-header" {
                    div class="width" {
                        a class="service-name" href="/" { span class="logo" aria-hidden="true" { "CP-IS" } " " (SERVICE_NAME) }
                        @if let Some(viewer) = viewer {
                            p class="who" {
                                @if let Some(user) = &viewer.user { (user.name) " · " }
                                (viewer.identity.organisation_name) " (" (viewer.identity.ods_code) ")"
                            }
                        }
                    }
                    @if let Some(viewer) = viewer {
                        nav class="site-nav" aria-label="Pages" {
                            ul class="width" {
                                @for (path, label) in pages_for(viewer.identity.role) {
                                    li { a href=(path) { (label) } }
                                }
                            }
                        }
                    }
                }
                main id="main" class="width" tabindex="-1" { (content) }
                footer class="site-footer" {
                    p class="width" { "Synthetic data only in development. Every search of a flagged person is notified to the owning local authority and audited." }
                }
            }
        }
    }
}

/// The pages of a role, in the navigation's order.
pub(crate) fn pages_for(role: Role) -> &'static [(&'static str, &'static str)] {
    match role {
        Role::UnscheduledCare | Role::ScheduledCare => &[("/card", "Search"), ("/ops", "Service status")],
        Role::SocialCare => &[("/inbox", "Access notifications"), ("/ops", "Service status")],
        Role::Auditor => &[("/audit", "Access log"), ("/ops", "Service status")],
    }
}

/// The start page: who the relay takes the viewer to be, and their pages.
pub async fn home(viewer: Result<Viewer, WebError>) -> axum::response::Response {
    let viewer = match viewer {
        Ok(viewer) => viewer,
        Err(error) => return error.into_response(),
    };
    let identity = &viewer.identity;
    page(
        "Start",
        Some(&viewer),
        html! {
            h1 { (SERVICE_NAME) }
            p class="lede" { "You are signed in by your certificate." }
            dl class="summary" {
                div { dt { "Organisation" } dd { (identity.organisation_name) " (" (identity.ods_code) ")" } }
                div { dt { "Role" } dd { (role_name(identity.role)) } }
                div { dt { "User" } dd {
                    @if let Some(user) = &viewer.user { (user.name) " (user " (user.user_id) ", role code " (user.role_code) ")" }
                    @else { "Not named by your certificate." }
                } }
            }
            h2 { "Your pages" }
            ul class="link-list" {
                @for (path, label) in pages_for(identity.role) { li { a href=(path) { (label) } } }
            }
        },
    )
    .into_response()
}

pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::UnscheduledCare => "Unscheduled care",
        Role::ScheduledCare => "Scheduled care",
        Role::SocialCare => "Local authority children's social care",
        Role::Auditor => "Information governance (auditor)",
    }
}

pub(crate) fn plan_name(plan_type: PlanType) -> &'static str {
    match plan_type {
        PlanType::ChildProtection => "Child protection plan",
        PlanType::LookedAfter => "Looked after child",
        PlanType::UnbornChildProtection => "Unborn child protection plan",
    }
}

/// An NHS number as people read it: 999 684 2177.
pub fn nhs_number(number: crate::nhs::NhsNumber) -> String {
    let digits = format!("{:010}", number.as_u64());
    format!("{} {} {}", &digits[..3], &digits[3..6], &digits[6..])
}

/// A date as the NHS writes it: 5 December 2026.
pub fn date(date: NaiveDate) -> String {
    date.format("%-d %B %Y").to_string()
}

/// An instant, to the minute, in UTC (said so).
pub(crate) fn instant(at: DateTime<Utc>) -> String {
    at.format("%-d %b %Y %H:%M UTC").to_string()
}

/// The machine-readable form for `<time datetime>`.
pub(crate) fn instant_iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// How long ago, in words.
pub fn age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let plural = |count: i64, unit: &str| format!("{count} {unit}{}", if count == 1 { "" } else { "s" });
    match seconds {
        0..60 => plural(seconds, "second"),
        60..3600 => plural(seconds / 60, "minute"),
        3600..86_400 => plural(seconds / 3600, "hour"),
        _ => plural(seconds / 86_400, "day"),
    }
}

/// A telephone link: the number as written, dialled by its digits (and a leading +).
pub fn phone(number: &str) -> Markup {
    let dialled: String = number
        .chars()
        .enumerate()
        .filter(|(at, c)| c.is_ascii_digit() || (*at == 0 && *c == '+'))
        .map(|(_, c)| c)
        .collect();
    html! {
        @if dialled.is_empty() { (number) } @else { a class="tel" href={ "tel:" (dialled) } { (number) } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_links_dial_digits_and_escape_the_text() {
        assert_eq!(phone("020 7527 8000").into_string(), r#"<a class="tel" href="tel:02075278000">020 7527 8000</a>"#);
        assert_eq!(phone("+44 (0)20 <b>").into_string(), r#"<a class="tel" href="tel:+44020">+44 (0)20 &lt;b&gt;</a>"#);
        assert_eq!(phone("none").into_string(), "none");
    }

    #[test]
    fn ages_read_as_words() {
        assert_eq!(age(1), "1 second");
        assert_eq!(age(125), "2 minutes");
        assert_eq!(age(7200), "2 hours");
        assert_eq!(age(-5), "0 seconds");
    }
}
