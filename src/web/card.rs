//! The clinician's card: a search by NHS number (POSTed, never in the URL)
//! answered with exactly what `Lookup.Search` returns, laid out for a busy
//! emergency department: the flag first and unmistakable, the owning
//! authority's phone numbers as telephone links, then the person's basic
//! details and the previous accesses. It is [`Relay::search`] itself: the
//! same validation messages, notification, audit and rate limit; scheduled
//! care is silent because the certificate says so.
//!
//! Each rendered form carries its own request id, so a reload or a second
//! click of the same form is that search's retry (one notification), and
//! the card says truthfully what became of the notification: stored, held
//! while the store fails, refused (phone the authority), or not sent again.
//!
//! [`Relay::search`]: crate::relay::Relay::search

use axum::{
    Form,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Viewer, Web, WebError, layout, viewer::CSRF_FIELD};
use crate::{
    auth::Role,
    error::Error,
    model::CareSetting,
    relay::{NotificationState, SearchOutcome, SearchQuery},
};

/// The form field carrying the rendered form's request id.
const REQUEST_ID_FIELD: &str = "request_id";

/// The search's request id from the form's: `browser:` and the UUID the
/// form was rendered with; anything else (an old or altered form) is none,
/// so that send is a search of its own.
fn request_id(sent: &str) -> String {
    uuid::Uuid::parse_str(sent.trim()).map(|id| format!("browser:{}", id.hyphenated())).unwrap_or_default()
}

const FLAGGED_TITLE: &str = "Child protection information is held";
const NOT_FLAGGED_TITLE: &str = "No child protection information";

/// The search form as posted.
#[derive(Debug, Default, Deserialize)]
pub struct SearchForm {
    #[serde(default)]
    nhs_number: String,
    #[serde(default)]
    care_setting: String,
    #[serde(default)]
    csrf: String,
    /// The rendered form's own id: the same form sent twice is one search.
    #[serde(default)]
    request_id: String,
}

/// The care settings a role searches from, the usual one first.
fn settings_of(role: Role) -> Vec<CareSetting> {
    CareSetting::of_kind(role == Role::ScheduledCare).collect()
}

/// GET /card: the empty search form.
pub async fn form(viewer: Viewer) -> Result<Response, WebError> {
    crate::auth::authorize(&viewer.identity, crate::auth::Action::Search)?;
    Ok(card_page(&viewer, "", None, None, None).into_response())
}

/// POST /card: the search.
pub async fn search(
    State(web): State<Web>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(sent): Form<SearchForm>,
) -> Result<Response, WebError> {
    viewer.check_form(&web, &headers, Some(&sent.csrf))?;
    let _permit = web.edge.admit_search(crate::edge::Door::Browser)?;
    let query = SearchQuery {
        nhs_number: sent.nhs_number.clone(),
        accessor: viewer.accessor(),
        care_setting: CareSetting::from_name(&sent.care_setting),
        // The rendered form's id: sending the same form again (a reload) is a retry.
        request_id: request_id(&sent.request_id),
        scheduled: false,
    };
    match web.relay.search(&viewer.identity, query).await {
        Ok(outcome) => {
            let shown = crate::nhs::NhsNumber::parse(&sent.nhs_number)
                .map(layout::nhs_number)
                .unwrap_or_else(|_| sent.nhs_number.clone());
            let title = if outcome.flagged() { FLAGGED_TITLE } else { NOT_FLAGGED_TITLE };
            let result = result(&viewer, &shown, &outcome);
            Ok(card_page(&viewer, "", None, Some(&sent.care_setting), Some((title, result))).into_response())
        }
        Err(Error::InvalidArgument { field, description }) => {
            let message = match field.as_str() {
                "nhs_number" => format!("NHS number {description}"),
                "accessor.user_id" | "accessor.name" | "accessor.role_code" | "accessor" => format!(
                    "{field}: {description}. Your certificate names no user: use a personal certificate or a bearer token."
                ),
                _ => format!("{field}: {description}"),
            };
            let page = card_page(&viewer, &sent.nhs_number, Some((&field, &message)), Some(&sent.care_setting), None);
            Ok((axum::http::StatusCode::BAD_REQUEST, page).into_response())
        }
        Err(error) => Err(error.into()),
    }
}

fn card_page(
    viewer: &Viewer,
    typed: &str,
    error: Option<(&str, &str)>,
    chosen_setting: Option<&str>,
    result: Option<(&str, Markup)>,
) -> Markup {
    let answered = result.is_some();
    let (result_title, result) = result.unwrap_or(("Search by NHS number", html! {}));
    let settings = settings_of(viewer.identity.role);
    let chosen = chosen_setting
        .and_then(CareSetting::from_name)
        .filter(|setting| settings.contains(setting))
        .unwrap_or(settings[0]);
    let number_error = error.filter(|(field, _)| *field == "nhs_number").map(|(_, message)| message);
    let title = if error.is_some() { "Error: Search by NHS number" } else { result_title };
    layout::page(
        title,
        Some(viewer),
        html! {
            @if let Some((field, message)) = error {
                div class="error-summary" role="alert" tabindex="-1" aria-labelledby="error-summary-title" {
                    h2 id="error-summary-title" { "There is a problem" }
                    ul { li { a href={ "#" (if field == "nhs_number" { "nhs_number" } else { "care_setting" }) } { (message) } } }
                }
            }
            (result)
            form class="search" method="post" action="/card" autocomplete="off" novalidate {
                input type="hidden" name=(CSRF_FIELD) value=(viewer.csrf);
                input type="hidden" name=(REQUEST_ID_FIELD) value=(uuid::Uuid::new_v4().hyphenated().to_string());
                @if answered {
                    h2 { label for="nhs_number" { "Search again by NHS number" } }
                } @else {
                    h1 { label for="nhs_number" { "Search by NHS number" } }
                }
                div class={ "field" @if number_error.is_some() { " field-error" } } {
                    p class="hint" id="nhs_number-hint" { "10 digits, for example 999 000 0018. Spaces and dashes are fine." }
                    @if let Some(message) = number_error {
                        p class="error-message" id="nhs_number-error" { span class="visually-hidden" { "Error: " } (message) }
                    }
                    input id="nhs_number" name="nhs_number" type="text" inputmode="numeric" spellcheck="false"
                        class="input-nhs" value=(typed) autofocus[!answered]
                        aria-describedby={ "nhs_number-hint" @if number_error.is_some() { " nhs_number-error" } }
                        aria-invalid=(if number_error.is_some() { "true" } else { "false" });
                }
                div class="field" {
                    label for="care_setting" { "Where you are seeing them" }
                    select id="care_setting" name="care_setting" {
                        @for setting in &settings {
                            option value=(setting.name()) selected[*setting == chosen] { (setting.display_name()) }
                        }
                    }
                }
                button class="button" type="submit" { "Search" }
            }
        },
    )
}

/// What became of the notification, as it is: never "notified" unless stored.
fn notification_note(state: NotificationState) -> Markup {
    match state {
        NotificationState::Stored => {
            html! { p class="note" { "The local authority has been notified of this access." } }
        }
        NotificationState::Held => html! {
            p class="note" id="notification-held" {
                "The local authority will be notified of this access: the relay has kept the notification and sends it as soon as its store recovers."
            }
        },
        NotificationState::Refused => html! {
            p class="warning" id="notification-refused" role="alert" {
                strong { "The local authority could not be notified of this access" }
                " (the relay's store is failing). Phone the local authority on the numbers below to tell them."
            }
        },
        NotificationState::Repeat => html! {
            p class="note" id="notification-repeat" {
                "This repeats a search already sent from this page: the local authority is not notified again."
            }
        },
        NotificationState::None => html! {},
    }
}

/// What the search found, flag first.
fn result(viewer: &Viewer, nhs_number: &str, outcome: &SearchOutcome) -> Markup {
    let scheduled = viewer.identity.role == Role::ScheduledCare;
    html! {
        section class="result" aria-labelledby="result-title" {
            @if outcome.flagged() {
                div class="flag" id="cpis-flag" {
                    h1 id="result-title" { span class="flag-mark" aria-hidden="true" { "!" } (FLAGGED_TITLE) }
                    p { "NHS number " strong { (nhs_number) } " is on " (outcome.plans.len()) " plan" @if outcome.plans.len() != 1 { "s" } ". The owning local authority's contact details are below." }
                    @if scheduled {
                        p class="note" { "Scheduled care: this search is audited but the local authority is not notified." }
                    } @else {
                        (notification_note(outcome.notification))
                    }
                }
                @for shown in &outcome.plans {
                    div class="plan" {
                        h2 { (layout::plan_name(shown.plan.plan_type)) }
                        dl class="summary" {
                            div { dt { "Start date" } dd { (layout::date(shown.plan.start_date)) } }
                            @if let Some(end) = shown.plan.end_date { div { dt { "End date" } dd { (layout::date(end)) } } }
                            @if let Some(edd) = shown.plan.expected_delivery_date { div { dt { "Expected delivery" } dd { (layout::date(edd)) } } }
                            @if let Some(authority) = &shown.authority {
                                div { dt { "Local authority" } dd { (authority.name) " (" (authority.ods_code) ")" } }
                                div { dt { "Office hours" } dd { (layout::phone(&authority.office_hours_phone)) } }
                                div { dt { "Out of hours (emergency)" } dd { (layout::phone(&authority.emergency_phone)) } }
                            } @else {
                                div { dt { "Local authority" } dd { (shown.plan.la_ods_code) } }
                            }
                        }
                    }
                }
                @if let Some(person) = &outcome.person {
                    h2 { "Person" }
                    dl class="summary" {
                        div { dt { "Name" } dd { (person.given_name) " " (person.family_name) } }
                        div { dt { "Date of birth" } dd { (layout::date(person.date_of_birth)) } }
                        div { dt { "NHS number" } dd { (nhs_number) } }
                        div { dt { "Address" } dd {
                            @for line in &person.address.lines { (line) br; }
                            (person.address.postcode)
                        } }
                    }
                }
                h2 { "Previous unscheduled care accesses" }
                @if outcome.previous_accesses.is_empty() {
                    p { "None recorded." }
                } @else {
                    table class="table" {
                        caption class="visually-hidden" { "Previous accesses, newest first" }
                        thead { tr { th scope="col" { "When" } th scope="col" { "Organisation" } th scope="col" { "Setting" } th scope="col" { "By" } } }
                        tbody {
                            @for access in &outcome.previous_accesses {
                                tr {
                                    td { time datetime=(layout::instant_iso(access.accessed_at)) { (layout::instant(access.accessed_at)) } }
                                    td { (&*access.who.organisation_name) " (" (&*access.who.organisation_ods_code) ")" }
                                    td { (access.care_setting.display_name()) }
                                    td { (&*access.who.name) }
                                }
                            }
                        }
                    }
                }
            } @else {
                div class="no-flag" {
                    h1 id="result-title" { (NOT_FLAGGED_TITLE) }
                    p { "No current plan is held for NHS number " strong { (nhs_number) } ". This does not mean there are no concerns: follow your safeguarding procedures." }
                }
            }
        }
    }
}
