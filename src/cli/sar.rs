//! `cpis-relay sar NHS_NUMBER --out DIR`: a subject access request, as an
//! auditor, through the relay (Audit.SubjectAccess). Checks the checkpoint's
//! signature and every access's inclusion proof here, then writes
//! `DIR/subject-access.json` (everything, with the proofs, for a program or a
//! third-party verifier) and `DIR/subject-access.html` (the same for a
//! person to read: one self-contained page, every value escaped, no scripts
//! or external assets). The directory is made private (0700, files 0600):
//! it holds the person's details.

use std::path::{Path, PathBuf};

use clap::Args;
use maud::{DOCTYPE, Markup, html};
use serde_json::{Value, json};

use super::{CliError, ClientArgs, clients, exit};
use crate::{
    proto::{self, SubjectAccessRequest, audit_client::AuditClient},
    transparency::{
        Checkpoint, Hash, VerifierKey,
        hash::{leaf_hash, to_hex},
        leaf::LeafFields,
        proof::verify_inclusion,
    },
};

pub(super) const JSON_FILE: &str = "subject-access.json";
pub(super) const HTML_FILE: &str = "subject-access.html";

#[derive(Debug, Args)]
pub struct SarArgs {
    /// The person's NHS number.
    pub nhs_number: String,
    /// Directory to write the report into (created, private).
    #[arg(long, env = "CPIS_SAR_OUT")]
    pub out: PathBuf,
    /// The verifier key you were given (`name+id+key`, or a file holding it);
    /// without it the relay's own is used, which proves nothing against a dishonest relay.
    #[arg(long, env = "CPIS_LOG_VERIFIER_KEY")]
    pub verifier_key: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn text_time(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|at| chrono::DateTime::from_timestamp(at.seconds, at.nanos.max(0) as u32))
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

fn kind_name(kind: i32) -> &'static str {
    match proto::AccessKind::try_from(kind) {
        Ok(proto::AccessKind::Unscheduled) => "unscheduled care search",
        Ok(proto::AccessKind::Scheduled) => "scheduled care search",
        Ok(proto::AccessKind::Audit) => "auditor's read",
        _ => "unknown",
    }
}

fn change_name(kind: i32) -> &'static str {
    match proto::PlanChangeKind::try_from(kind) {
        Ok(proto::PlanChangeKind::Loaded) => "loaded",
        Ok(proto::PlanChangeKind::Changed) => "changed (a new version)",
        Ok(proto::PlanChangeKind::Deleted) => "deleted by the local authority",
        Ok(proto::PlanChangeKind::Withdrawn) => "left out of the local authority's full refresh",
        Ok(proto::PlanChangeKind::Expired) => "removed by retention (its visible period was over)",
        _ => "unknown",
    }
}

fn plan_type_code(wire: i32) -> &'static str {
    match crate::wire::plan_type_from_wire(wire) {
        crate::relay::SentPlanType::Known(plan_type) => plan_type.code(),
        _ => "",
    }
}

/// Checks the report's proofs; the verified checkpoint and verifier key.
fn verify(
    report: &proto::SubjectAccessReport,
    given: Option<&VerifierKey>,
) -> Result<(Checkpoint, VerifierKey), CliError> {
    let (checkpoint, verifier) = super::audit_proof::checked_checkpoint(report.checkpoint.as_ref(), given)?;
    let person = crate::nhs::NhsNumber::parse(&report.nhs_number)
        .map_err(|_| CliError::Failed("the report names no valid NHS number".into()))?;
    for access in &report.accesses {
        let fields = super::audit_proof::decoded_leaf(&access.leaf, access.leaf_index)?;
        if fields.nhs_number != person.as_u64() {
            return Err(CliError::Failed(format!(
                "position {}: the proven leaf is of another person",
                access.leaf_index
            )));
        }
        let path = access
            .audit_path
            .iter()
            .map(|hash| Hash::try_from(hash.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CliError::Failed(format!("position {}: a malformed proof", access.leaf_index)))?;
        verify_inclusion(access.leaf_index, checkpoint.size, &leaf_hash(&access.leaf), &path, &checkpoint.root)
            .map_err(|error| {
                CliError::Failed(format!("position {}: the proof does not verify: {error}", access.leaf_index))
            })?;
    }
    Ok((checkpoint, verifier))
}

/// The report as JSON, with the proofs.
pub(super) fn report_json(
    report: &proto::SubjectAccessReport,
    checkpoint: &Checkpoint,
    verifier: &VerifierKey,
) -> Value {
    let plans: Vec<Value> = report
        .plans
        .iter()
        .map(|plan| {
            let record = plan.record.clone().unwrap_or_default();
            let authority = plan.local_authority.clone().unwrap_or_default();
            let file = crate::records_file::from_wire(&record, &authority.ods_code);
            json!({
                "local_authority": {
                    "ods_code": authority.ods_code,
                    "name": authority.name,
                    "office_hours_phone": authority.office_hours_phone,
                    "emergency_phone": authority.emergency_phone,
                },
                "record": serde_json::to_value(&file).unwrap_or_default(),
                "loaded_at": text_time(plan.loaded_at.as_ref()),
            })
        })
        .collect();
    let plan_history: Vec<Value> = report
        .plan_history
        .iter()
        .map(|change| {
            let record = change.record.as_ref().map(|record| {
                serde_json::to_value(crate::records_file::from_wire(record, &change.la_ods_code)).unwrap_or_default()
            });
            json!({
                "at": text_time(change.at.as_ref()),
                "kind": change_name(change.kind),
                "la_ods_code": change.la_ods_code,
                "plan_type": plan_type_code(change.plan_type),
                "record": record,
            })
        })
        .collect();
    let accesses: Vec<Value> = report
        .accesses
        .iter()
        .map(|logged| {
            // Shown from the proven leaf itself (checked in `verify`), not from the message beside it.
            let mut value = match LeafFields::decode(&logged.leaf) {
                Ok(fields) => super::audit_proof::leaf_access_json(&fields),
                Err(_) => json!({ "kind": kind_name(logged.kind) }),
            };
            value["leaf_index"] = json!(logged.leaf_index);
            value["leaf"] = json!(to_hex(&logged.leaf));
            value["leaf_hash"] = json!(to_hex(&leaf_hash(&logged.leaf)));
            value["audit_path"] = json!(logged.audit_path.iter().map(|hash| to_hex(hash)).collect::<Vec<_>>());
            value
        })
        .collect();
    let notifications: Vec<Value> = report
        .notifications
        .iter()
        .map(|subject| {
            let mut value = clients::notification_json(&subject.notification.clone().unwrap_or_default());
            value["acknowledged"] = json!(subject.acknowledged);
            value["la_ods_code"] = json!(subject.la_ods_code);
            value
        })
        .collect();
    json!({
        "nhs_number": report.nhs_number,
        "generated_at": text_time(report.generated_at.as_ref()),
        "plans": plans,
        "plan_history": plan_history,
        "accesses": accesses,
        "notifications": notifications,
        "checkpoint": {
            "tree_size": checkpoint.size,
            "root_hash": to_hex(&checkpoint.root),
            "time": checkpoint.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "note": report.checkpoint.as_ref().map(|sent| sent.note.clone()).unwrap_or_default(),
            "verifier_key": verifier.to_string(),
        },
        "verified": true,
    })
}

fn field<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    path.iter().try_fold(value, |value, key| value.get(key)).and_then(Value::as_str).unwrap_or("")
}

/// The report as one self-contained HTML page; maud escapes every value.
pub(super) fn report_html(report: &Value) -> Markup {
    let empty = Vec::new();
    let list = |key: &str| report.get(key).and_then(Value::as_array).unwrap_or(&empty).clone();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Subject access report" }
                style { "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;width:100%;margin-bottom:2em}th,td{border:1px solid #999;padding:.3em;text-align:left;vertical-align:top}code{word-break:break-all;font-size:.8em}" }
            }
            body {
                h1 { "Subject access report" }
                p { "NHS number " strong { (field(report, &["nhs_number"])) } ", made " (field(report, &["generated_at"])) "." }
                h2 { "Plans held" }
                table {
                    tr { th { "Local authority" } th { "Plan" } th { "Start" } th { "End" } th { "Name" } th { "Date of birth" } th { "Address" } th { "Loaded" } }
                    @for plan in list("plans") {
                        tr {
                            td { (field(&plan, &["local_authority", "name"])) " (" (field(&plan, &["local_authority", "ods_code"])) ")" }
                            td { (field(&plan, &["record", "plan_type"])) }
                            td { (field(&plan, &["record", "start_date"])) }
                            td { (field(&plan, &["record", "end_date"])) }
                            td { (field(&plan, &["record", "given_name"])) " " (field(&plan, &["record", "family_name"])) }
                            td { (field(&plan, &["record", "date_of_birth"])) }
                            td { (field(&plan, &["record", "address_line_1"])) " " (field(&plan, &["record", "postcode"])) }
                            td { (field(&plan, &["loaded_at"])) }
                        }
                    }
                }
                h2 { "History of the plans" }
                p { "Every change of these plans the relay still keeps (as long as it keeps accesses), oldest first. Loading the same plan again is not a change." }
                table {
                    tr { th { "When" } th { "What" } th { "Local authority" } th { "Plan" } th { "The version loaded" } }
                    @for change in list("plan_history") {
                        tr {
                            td { (field(&change, &["at"])) }
                            td { (field(&change, &["kind"])) }
                            td { (field(&change, &["la_ods_code"])) }
                            td { (field(&change, &["plan_type"])) }
                            td {
                                @if change.get("record").is_some_and(Value::is_object) {
                                    (field(&change, &["record", "given_name"])) " " (field(&change, &["record", "family_name"]))
                                    ", born " (field(&change, &["record", "date_of_birth"]))
                                    ", " (field(&change, &["record", "address_line_1"])) " " (field(&change, &["record", "postcode"]))
                                    "; plan from " (field(&change, &["record", "start_date"]))
                                    @if !field(&change, &["record", "end_date"]).is_empty() { " to " (field(&change, &["record", "end_date"])) }
                                    "; team " (field(&change, &["record", "team_code"]))
                                }
                            }
                        }
                    }
                }
                h2 { "Every access" }
                p { "Each access is in the relay's tamper-evident log at the position shown; the proof in the JSON file shows it is in the signed checkpoint below." }
                table {
                    tr { th { "When" } th { "What" } th { "Organisation" } th { "Care setting" } th { "Who" } th { "Log position" } }
                    @for access in list("accesses") {
                        tr {
                            td { (field(&access, &["accessed_at"])) }
                            td { (field(&access, &["kind"])) }
                            td { (field(&access, &["organisation_name"])) " (" (field(&access, &["organisation_ods_code"])) ")" }
                            td { (field(&access, &["care_setting"])) }
                            td { (field(&access, &["accessor", "name"])) " " (field(&access, &["accessor", "user_id"])) }
                            td { (access.get("leaf_index").and_then(Value::as_u64).unwrap_or_default()) }
                        }
                    }
                }
                h2 { "Notifications to local authorities" }
                table {
                    tr { th { "Sequence" } th { "Local authority" } th { "Access at" } th { "Organisation" } th { "Acknowledged" } }
                    @for notification in list("notifications") {
                        tr {
                            td { (notification.get("sequence").and_then(Value::as_u64).unwrap_or_default()) }
                            td { (field(&notification, &["la_ods_code"])) }
                            td { (field(&notification, &["accessed_at"])) }
                            td { (field(&notification, &["organisation_name"])) }
                            td { @if notification.get("acknowledged").and_then(Value::as_bool).unwrap_or(false) { "yes" } @else { "not yet" } }
                        }
                    }
                }
                h2 { "Signed checkpoint" }
                p { "Tree size " (report["checkpoint"]["tree_size"].as_u64().unwrap_or_default()) ", root " code { (field(report, &["checkpoint", "root_hash"])) } ", signed " (field(report, &["checkpoint", "time"])) "." }
                p { "Verifier key: " code { (field(report, &["checkpoint", "verifier_key"])) } }
                pre { code { (field(report, &["checkpoint", "note"])) } }
            }
        }
    }
}

/// Creates `dir` private (0700) and writes `name` in it (0600).
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CliError> {
    use std::{
        io::Write,
        os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    };
    let failed = |error: std::io::Error| CliError::Failed(format!("{}: {error}", dir.display()));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(failed)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
    let path = dir.join(name);
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.sync_all().map_err(failed)
}

pub(super) async fn run(args: SarArgs) -> Result<u8, CliError> {
    let given = match &args.verifier_key {
        Some(text) => Some(super::audit_trusted::verifier_key(text)?),
        None => None,
    };
    let (channel, _) = args.client.channel("auditor").await?;
    let report = AuditClient::new(channel)
        .subject_access(SubjectAccessRequest { nhs_number: args.nhs_number.clone() })
        .await?
        .into_inner();
    let (checkpoint, verifier) = verify(&report, given.as_ref())?;
    let json = report_json(&report, &checkpoint, &verifier);
    let text = serde_json::to_string_pretty(&json).map_err(|error| CliError::Failed(error.to_string()))?;
    write_private(&args.out, JSON_FILE, text.as_bytes())?;
    write_private(&args.out, HTML_FILE, report_html(&json).into_string().as_bytes())?;
    println!(
        "{}: {} plans, {} plan changes, {} accesses (every proof verified against the checkpoint of size {}), {} notifications",
        args.out.display(),
        report.plans.len(),
        report.plan_history.len(),
        report.accesses.len(),
        checkpoint.size,
        report.notifications.len()
    );
    Ok(exit::OK)
}
