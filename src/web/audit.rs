//! The auditor's access log: who looked at a person, when and from where,
//! scheduled (silent) reads marked, how those accesses stand against the
//! signed access log ([`Relay::log_status`]), and the same log as CSV. Both read
//! [`Relay::access_log`], which checks the auditor role, validates the NHS
//! number and audits the read itself; the NHS number is POSTed, never put in
//! a URL or a file name.
//!
//! [`Relay::access_log`]: crate::relay::Relay::access_log
//! [`Relay::log_status`]: crate::relay::Relay::log_status

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
    relay::LogStatus,
    transparency::hash::to_hex,
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
    match read_log(&web, &viewer, &sent.nhs_number).await {
        Ok(accesses) => {
            let shown = crate::nhs::NhsNumber::parse(&sent.nhs_number).map(layout::nhs_number).unwrap_or_default();
            let status = match web.relay.log_status(&viewer.identity, &accesses).await {
                Ok(status) => status.map(Ok),
                Err(error) => {
                    tracing::error!(%error, "cannot check the shown accesses against the access log");
                    Some(Err(()))
                }
            };
            let verified = verification(status.as_ref(), accesses.len());
            Ok(audit_page(&viewer, &shown, None, table(&viewer, &shown, &accesses, verified)).into_response())
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
    let accesses = read_log(&web, &viewer, &sent.nhs_number).await?;
    let body = to_csv(&accesses).map_err(|error| WebError::BadForm(format!("cannot write the CSV: {error}")))?;
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"access-log.csv\""));
    Ok(response)
}

/// The person's accesses, the read itself logged as this viewer's (their
/// certificate or token names the person at the browser).
async fn read_log(web: &Web, viewer: &Viewer, nhs_number: &str) -> Result<Vec<AccessEvent>, Error> {
    let user = viewer.user.as_deref().cloned();
    web.relay.access_log_by(&viewer.identity, nhs_number, user, "").await
}

/// The columns of the CSV, one access a row, oldest first.
pub(crate) const CSV_HEADER: [&str; 10] = [
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
            access.care_setting.display_name().to_owned(),
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

/// How the accesses shown stand against the signed access log; nothing
/// for a store that keeps no log. `Err` when the check itself failed.
fn verification(status: Option<&Result<LogStatus, ()>>, shown: usize) -> Markup {
    let plural = |count: usize| if count == 1 { "access" } else { "accesses" };
    match status {
        None => html! {},
        Some(Err(())) => html! {
            div class="log-status log-unverified" role="status" {
                h3 { "Not checked" }
                p { "The relay could not check these accesses against its signed access log just now. Try again, or run " code { "cpis-relay audit verify" } "." }
            }
        },
        Some(Ok(status)) => {
            let checkpoint = &status.checkpoint;
            let signed = html! {
                p class="secondary-text" {
                    "Checked against the checkpoint of " (checkpoint.size) " log entries signed at "
                    time datetime=(layout::instant_iso(checkpoint.time)) { (layout::instant(checkpoint.time)) }
                    " (root " span class="fingerprint" { (to_hex(&checkpoint.root)) } ", key " span class="fingerprint" { (status.verifier) } "). "
                    "This is the relay checking itself: for proof that does not rest on it, export with "
                    code { "cpis-relay sar" } " and check it with the verifier key you were given."
                }
            };
            if !status.differing.is_empty() || status.outside > 0 {
                html! {
                    div class="log-status log-unverified" role="alert" {
                        h3 { "Not verified: the stored log differs from the signed one" }
                        @if !status.differing.is_empty() {
                        p { (status.differing.len()) " " (plural(status.differing.len())) " shown here "
                            @if status.differing.len() == 1 { "is" } @else { "are" }
                            " not what the signed access log holds, at log position"
                            @if status.differing.len() != 1 { "s" } " "
                            (status.differing.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))
                            ". The stored history may have been altered: report this to the relay's operators, who run "
                            code { "cpis-relay audit verify" } "." }
                        }
                        @if status.outside > 0 {
                        p id="outside-log" { (status.outside) " " (plural(status.outside)) " shown here "
                            @if status.outside == 1 { "is" } @else { "are" }
                            " stored outside the signed access log (with no place in it), so nothing vouches for "
                            @if status.outside == 1 { "it" } @else { "them" }
                            ": report this to the relay's operators, who run " code { "cpis-relay audit verify" } "." }
                        }
                        (signed)
                    }
                }
            } else if shown == 0 {
                html! {}
            } else {
                html! {
                    div class={ "log-status" @if status.all_verified() { " log-verified" } } role="status" {
                        h3 { @if status.all_verified() { "Verified" } @else { "Partly verified" } }
                        @if status.all_verified() {
                            p { @if shown == 1 { "This access is" } @else { "Each of these " (shown) " accesses is" }
                                " in the signed access log exactly as shown here." }
                        } @else if status.verified > 0 {
                            p { (status.verified) " of the " (shown) " accesses shown "
                                @if status.verified == 1 { "is" } @else { "are" }
                                " in the signed access log exactly as shown here." }
                        }
                        @if status.not_logged > 0 {
                            p { (status.not_logged) " " (plural(status.not_logged)) " not in the log yet: held while the store was failing, and logged once it takes them." }
                        }
                        (signed)
                    }
                }
            }
        }
    }
}

fn table(viewer: &Viewer, nhs_number: &str, accesses: &[AccessEvent], verified: Markup) -> Markup {
    html! {
        section aria-labelledby="log-title" {
            h2 id="log-title" { "Accesses of NHS number " (nhs_number) }
            p { (accesses.len()) " access" @if accesses.len() != 1 { "es" } " retained, oldest first. Scheduled reads are silent: the local authority was not notified of them." }
            (verified)
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
                                td { (access.care_setting.display_name()) }
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

    fn status(verified: usize, not_logged: usize, differing: Vec<u64>) -> LogStatus {
        let checkpoint = crate::transparency::Checkpoint {
            origin: "relay.example/log".into(),
            size: 40,
            root: [7; 32],
            time: chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap(),
        };
        LogStatus {
            checkpoint,
            verifier: "relay.example/log+0a0b0c0d+AAAA".into(),
            verified,
            not_logged,
            outside: 0,
            differing,
        }
    }

    #[test]
    fn the_verification_status_says_verified_only_when_every_access_shown_is() {
        let one = verification(Some(&Ok(status(1, 0, vec![]))), 1).into_string();
        assert!(one.contains("This access is in the signed access log exactly as shown here."), "{one}");
        let all = verification(Some(&Ok(status(2, 0, vec![]))), 2).into_string();
        assert!(all.contains("log-verified") && all.contains("<h3>Verified</h3>"), "{all}");
        assert!(all.contains("Each of these 2 accesses is in the signed access log exactly as shown here."));
        assert!(all.contains("relay.example/log+0a0b0c0d+AAAA") && all.contains(&"07".repeat(32)));

        let held = verification(Some(&Ok(status(1, 1, vec![]))), 2).into_string();
        assert!(held.contains("Partly verified") && !held.contains("log-verified"), "{held}");
        assert!(held.contains("1 of the 2 accesses shown is in the signed access log"));
        assert!(held.contains("1 access not in the log yet"));

        let altered = verification(Some(&Ok(status(11, 0, vec![5, 9]))), 13).into_string();
        assert!(altered.contains("log-unverified") && altered.contains("role=\"alert\""), "{altered}");
        assert!(altered.contains("Not verified") && altered.contains("at log positions 5, 9"), "{altered}");

        // Stored with no log position, yet not held: outside the log, never "not logged yet".
        let outside = verification(Some(&Ok(LogStatus { outside: 1, ..status(1, 0, vec![]) })), 2).into_string();
        assert!(outside.contains("log-unverified") && outside.contains("id=\"outside-log\""), "{outside}");
        assert!(outside.contains("1 access shown here is stored outside the signed access log"), "{outside}");
        assert!(!outside.contains("not in the log yet"), "{outside}");

        let failed = verification(Some(&Err(())), 2).into_string();
        assert!(failed.contains("Not checked"), "{failed}");
        assert_eq!(verification(None, 2).into_string(), "");
    }

    #[test]
    fn a_cell_that_a_spreadsheet_would_run_is_quoted() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("-1"), "'-1");
        assert_eq!(cell("Dr A"), "Dr A");
    }
}
