//! The auditor's access log: who looked at a person, when and from where,
//! scheduled (silent) reads marked, and the same log as CSV. Both read
//! [`Relay::access_log`], which checks the auditor role, validates the NHS
//! number and audits the read itself; the NHS number is POSTed, never put in
//! a URL or a file name.
//!
//! [`Relay::access_log`]: crate::relay::Relay::access_log

use axum::{
    Form,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Viewer, Web, WebError, layout, viewer::CSRF_FIELD};
use crate::{
    auth::{Action, authorize},
    error::Error,
    model::AccessEvent,
};

#[derive(Debug, Default, Deserialize)]
pub struct LogForm {
    #[serde(default)]
    nhs_number: String,
    #[serde(default)]
    csrf: String,
}

/// GET /audit: the empty form.
pub async fn form(viewer: Viewer) -> Result<Response, WebError> {
    authorize(&viewer.identity, Action::ReadAccessLog)?;
    Ok(audit_page(&viewer, "", None, html! {}).into_response())
}

/// POST /audit: the log of one person.
pub async fn log(
    State(web): State<Web>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(sent): Form<LogForm>,
) -> Result<Response, WebError> {
    viewer.check_form(&web, &headers, Some(&sent.csrf))?;
    match web.relay.access_log(&viewer.identity, &sent.nhs_number).await {
        Ok(accesses) => {
            let shown = crate::nhs::NhsNumber::parse(&sent.nhs_number).map(layout::nhs_number).unwrap_or_default();
            Ok(audit_page(&viewer, &shown, None, table(&viewer, &shown, &accesses)).into_response())
        }
        Err(Error::InvalidArgument { description, .. }) => {
            let message = format!("NHS number {description}");
            let page = audit_page(&viewer, &sent.nhs_number, Some(&message), html! {});
            Ok((StatusCode::BAD_REQUEST, page).into_response())
        }
        Err(error) => Err(error.into()),
    }
}

/// POST /audit/access-log.csv: the same log as a CSV download.
pub async fn csv(
    State(web): State<Web>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(sent): Form<LogForm>,
) -> Result<Response, WebError> {
    viewer.check_form(&web, &headers, Some(&sent.csrf))?;
    let accesses = web.relay.access_log(&viewer.identity, &sent.nhs_number).await?;
    let body = to_csv(&accesses).map_err(|error| WebError::BadForm(format!("cannot write the CSV: {error}")))?;
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"access-log.csv\""));
    Ok(response)
}

/// The columns of the CSV, one access a row, oldest first.
pub const CSV_HEADER: [&str; 10] = [
    "accessed_at",
    "nhs_number",
    "organisation_ods_code",
    "organisation_name",
    "care_setting",
    "user_id",
    "user_name",
    "role_code",
    "scheduled",
    "request_id",
];

fn to_csv(accesses: &[AccessEvent]) -> Result<String, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_HEADER)?;
    for access in accesses {
        writer.write_record([
            layout::instant_iso(access.accessed_at),
            format!("{:010}", access.nhs_number.as_u64()),
            cell(&access.organisation_ods_code),
            cell(&access.organisation_name),
            layout::care_setting_name(access.care_setting).to_owned(),
            cell(&access.accessor.user_id),
            cell(&access.accessor.name),
            cell(&access.accessor.role_code),
            access.scheduled.to_string(),
            cell(&access.request_id),
        ])?;
    }
    let bytes = writer.into_inner().map_err(|error| error.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A text cell a spreadsheet will not run as a formula (OWASP's CSV injection advice).
fn cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text.to_owned() }
}

fn audit_page(viewer: &Viewer, typed: &str, error: Option<&str>, result: Markup) -> Markup {
    let title = if error.is_some() { "Error: Access log" } else { "Access log" };
    layout::page(
        title,
        Some(viewer),
        html! {
            @if let Some(message) = error {
                div class="error-summary" role="alert" tabindex="-1" aria-labelledby="error-summary-title" {
                    h2 id="error-summary-title" { "There is a problem" }
                    ul { li { a href="#nhs_number" { (message) } } }
                }
            }
            form class="search" method="post" action="/audit" autocomplete="off" novalidate {
                input type="hidden" name=(CSRF_FIELD) value=(viewer.csrf);
                h1 { label for="nhs_number" { "Access log: who looked at a person" } }
                div class={ "field" @if error.is_some() { " field-error" } } {
                    p class="hint" id="nhs_number-hint" { "The person's NHS number. Your reading of the log is itself recorded." }
                    @if let Some(message) = error {
                        p class="error-message" id="nhs_number-error" { span class="visually-hidden" { "Error: " } (message) }
                    }
                    input id="nhs_number" name="nhs_number" type="text" inputmode="numeric" spellcheck="false" class="input-nhs"
                        value=(typed) aria-describedby={ "nhs_number-hint" @if error.is_some() { " nhs_number-error" } }
                        aria-invalid=(if error.is_some() { "true" } else { "false" });
                }
                button class="button" type="submit" { "Show the log" }
            }
            (result)
        },
    )
}

fn table(viewer: &Viewer, nhs_number: &str, accesses: &[AccessEvent]) -> Markup {
    html! {
        section aria-labelledby="log-title" {
            h2 id="log-title" { "Accesses of NHS number " (nhs_number) }
            p { (accesses.len()) " access" @if accesses.len() != 1 { "es" } " retained, oldest first. Scheduled reads are silent: the local authority was not notified of them." }
            @if !accesses.is_empty() {
                table class="table" {
                    caption class="visually-hidden" { "Accesses, oldest first" }
                    thead { tr {
                        th scope="col" { "When" } th scope="col" { "Organisation" } th scope="col" { "Setting" }
                        th scope="col" { "User" } th scope="col" { "Kind" }
                    } }
                    tbody {
                        @for access in accesses {
                            tr {
                                td { time datetime=(layout::instant_iso(access.accessed_at)) { (layout::instant(access.accessed_at)) } }
                                td { (access.organisation_name) " (" (access.organisation_ods_code) ")" }
                                td { (layout::care_setting_name(access.care_setting)) }
                                td { (access.accessor.name) br; span class="secondary-text" { "user " (access.accessor.user_id) ", role " (access.accessor.role_code) } }
                                td { @if access.scheduled { span class="tag tag-grey" { "Scheduled (silent)" } } @else { span class="tag" { "Unscheduled (notified)" } } }
                            }
                        }
                    }
                }
            }
            form method="post" action="/audit/access-log.csv" {
                input type="hidden" name=(CSRF_FIELD) value=(viewer.csrf);
                input type="hidden" name="nhs_number" value=(nhs_number);
                button class="button secondary" type="submit" { "Download as CSV" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_that_a_spreadsheet_would_run_is_quoted() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("-1"), "'-1");
        assert_eq!(cell("Dr A"), "Dr A");
    }
}
