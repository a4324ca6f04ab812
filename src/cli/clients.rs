//! The small client verbs: `synth`, `search`, `subscribe`, `ack`, `export`,
//! `delete`, `audit`. Each is one call to the relay and a readable print of
//! the answer (JSON lines where a program reads it).

use std::{io::Write, path::PathBuf, sync::OnceLock};

use clap::{Args, ValueEnum, builder::PossibleValue};
use futures::StreamExt;
use serde_json::json;

use super::{CliError, ClientArgs, exit};
use crate::{
    model::CareSetting,
    proto::{
        self, AccessLogRequest, AckRequest, DeleteRequest, ExportRequest, SearchRequest, SubscribeRequest,
        audit_client::AuditClient, lookup_client::LookupClient, notifications_client::NotificationsClient,
        plans_client::PlansClient,
    },
    records_file::{self, Format},
    synth,
};

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// How many distinct people (at most 900,000: the size of the test range).
    #[arg(long, env = "CPIS_SYNTH_PEOPLE", default_value_t = 1000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=crate::synth::MAX_PEOPLE as u64))]
    pub people: usize,
    /// Output file: .csv, or .jsonl for JSON Lines.
    #[arg(long, env = "CPIS_SYNTH_OUT")]
    pub out: PathBuf,
    /// The same seed gives the same people.
    #[arg(long, env = "CPIS_SYNTH_SEED", default_value_t = 2026)]
    pub seed: u64,
}

pub(super) fn synth(args: SynthArgs) -> Result<u8, CliError> {
    let progress = indicatif::ProgressBar::new_spinner().with_message(format!("generating {} people", args.people));
    let records = synth::generate(args.people, args.seed, chrono::Utc::now().date_naive());
    progress.finish_and_clear();
    let rows: Vec<_> =
        records.iter().map(|record| records_file::from_wire(&record.record, &record.la_ods_code)).collect();
    let file = std::fs::File::create(&args.out)
        .map_err(|error| CliError::Config(format!("--out {}: {error}", args.out.display())))?;
    records_file::write(file, Format::of(&args.out), &rows)
        .map_err(|error| CliError::Failed(format!("{}: {error}", args.out.display())))?;
    let mut per_authority = std::collections::BTreeMap::<&str, usize>::new();
    for record in &records {
        *per_authority.entry(record.la_ods_code.as_str()).or_default() += 1;
    }
    println!("wrote {} plans of {} people to {}", records.len(), args.people, args.out.display());
    for (authority, count) in per_authority {
        println!("  local authority {authority}: {count} plans");
    }
    Ok(exit::OK)
}

/// A care setting as the command line names it: its contract name in lower
/// case with `-` (`out-of-hours-gp`), every setting of the one vocabulary.
#[derive(Clone, Copy, Debug)]
pub struct CareSettingArg(pub CareSetting);

/// Every setting, in the order `--help` lists them.
const CARE_SETTING_ARGS: [CareSettingArg; CareSetting::ALL.len()] = {
    let mut args = [CareSettingArg(CareSetting::EmergencyDepartment); CareSetting::ALL.len()];
    let mut index = 0;
    while index < args.len() {
        args[index] = CareSettingArg(CareSetting::ALL[index]);
        index += 1;
    }
    args
};

impl ValueEnum for CareSettingArg {
    fn value_variants<'a>() -> &'a [Self] {
        &CARE_SETTING_ARGS
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        static NAMES: OnceLock<Vec<String>> = OnceLock::new();
        let names = NAMES.get_or_init(|| {
            CareSetting::ALL
                .iter()
                .map(|setting| setting.contract_name().to_ascii_lowercase().replace('_', "-"))
                .collect()
        });
        let index = CareSetting::ALL.iter().position(|setting| *setting == self.0)?;
        names.get(index).map(|name| PossibleValue::new(name.as_str()))
    }
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The NHS number to look up (spaces or dashes allowed).
    pub nhs_number: String,
    /// The searching user's identifier (for example a smartcard UUID).
    #[arg(long, env = "CPIS_USER_ID")]
    pub user_id: String,
    /// The searching user's name.
    #[arg(long, env = "CPIS_USER_NAME")]
    pub user_name: String,
    #[arg(long, env = "CPIS_ROLE_CODE", default_value = "")]
    pub role_code: String,
    #[arg(long, env = "CPIS_CARE_SETTING", value_enum, default_value_t = CareSettingArg(CareSetting::EmergencyDepartment))]
    pub care_setting: CareSettingArg,
    /// Idempotency key: a retry with the same value notifies once.
    #[arg(long, env = "CPIS_REQUEST_ID", default_value = "")]
    pub request_id: String,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub(super) async fn search(args: SearchArgs) -> Result<u8, CliError> {
    let (channel, _) = args.client.channel("ed-rr8").await?;
    let request = SearchRequest {
        nhs_number: args.nhs_number,
        accessor: Some(proto::Accessor { user_id: args.user_id, name: args.user_name, role_code: args.role_code }),
        care_setting: args.care_setting.0.wire_code(),
        request_id: args.request_id,
    };
    let response = LookupClient::new(channel).search(request).await?.into_inner();
    if args.json {
        println!("{}", json_line(&search_json(&response)));
    } else {
        print!("{}", describe_search(&response));
    }
    Ok(exit::OK)
}

/// One line of JSON for a terminal: no control character raw (see
/// [`crate::text::escape_json_controls`]), the same value for a program.
fn json_line(value: &serde_json::Value) -> String {
    crate::text::escape_json_controls(&value.to_string()).into_owned()
}

fn timestamp_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|at| chrono::DateTime::from_timestamp(at.seconds, at.nanos.max(0) as u32))
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(E) -> &'static str) -> &'static str {
    E::try_from(value).map(name).unwrap_or("UNKNOWN")
}

fn plan_type_name(value: i32) -> &'static str {
    enum_name(value, |kind: proto::PlanType| kind.as_str_name())
}

fn care_setting_name(value: i32) -> &'static str {
    enum_name(value, |setting: proto::CareSetting| setting.as_str_name())
}

fn accessor_json(accessor: Option<&proto::Accessor>) -> serde_json::Value {
    let accessor = accessor.cloned().unwrap_or_default();
    json!({"user_id": accessor.user_id, "name": accessor.name, "role_code": accessor.role_code})
}

pub(super) fn access_json(access: &proto::AccessRecord) -> serde_json::Value {
    let mut value = json!({
        "accessed_at": timestamp_text(access.accessed_at.as_ref()),
        "organisation_ods_code": access.organisation_ods_code,
        "organisation_name": access.organisation_name,
        "care_setting": care_setting_name(access.care_setting),
        "accessor": accessor_json(access.accessor.as_ref()),
        "scheduled": access.scheduled,
    });
    // The audit log names each access (for `audit proof inclusion`); a search's list does not.
    if !access.access_id.is_empty() {
        value["access_id"] = json!(access.access_id);
    }
    value
}

pub(super) fn search_json(response: &proto::SearchResponse) -> serde_json::Value {
    let person = response.person.clone().unwrap_or_default();
    let address = person.address.clone().unwrap_or_default();
    json!({
        "flagged": response.flagged,
        "person": response.person.as_ref().map(|_| json!({
            "nhs_number": person.nhs_number,
            "given_name": person.given_name,
            "family_name": person.family_name,
            "date_of_birth": person.date_of_birth,
            "address": {"lines": address.lines, "postcode": address.postcode},
        })),
        "plans": response.plans.iter().map(|plan| {
            let authority = plan.local_authority.clone().unwrap_or_default();
            json!({
                "type": plan_type_name(plan.r#type),
                "start_date": plan.start_date,
                "end_date": plan.end_date,
                "expected_delivery_date": plan.expected_delivery_date,
                "local_authority": {
                    "ods_code": authority.ods_code,
                    "name": authority.name,
                    "office_hours_phone": authority.office_hours_phone,
                    "emergency_phone": authority.emergency_phone,
                },
            })
        }).collect::<Vec<_>>(),
        "previous_accesses": response.previous_accesses.iter().map(access_json).collect::<Vec<_>>(),
    })
}

/// What a clinician's screen would show.
pub(super) fn describe_search(response: &proto::SearchResponse) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let Some(person) = response.person.as_ref().filter(|_| response.flagged) else {
        return "not flagged: no child protection information held\n".to_owned();
    };
    // Every value is the relay's text: escaped, so none can drive the terminal.
    use crate::text::escape_control as e;
    let address = person.address.clone().unwrap_or_default();
    let _ = writeln!(
        text,
        "FLAGGED  {} {}  born {}  NHS {}",
        e(&person.given_name),
        e(&person.family_name),
        e(&person.date_of_birth),
        e(&person.nhs_number)
    );
    let _ = writeln!(text, "  address: {} {}", e(&address.lines.join(", ")), e(&address.postcode));
    for plan in &response.plans {
        let authority = plan.local_authority.clone().unwrap_or_default();
        let until = match (plan.end_date.as_str(), plan.expected_delivery_date.as_str()) {
            ("", "") => "current".to_owned(),
            ("", delivery) => format!("expected delivery {delivery}"),
            (end, _) => format!("ended {end}"),
        };
        let _ = writeln!(text, "  plan: {} from {} ({})", plan_type_name(plan.r#type), e(&plan.start_date), e(&until));
        let _ = writeln!(
            text,
            "        {} ({}): office hours {}, out of hours {}",
            e(&authority.name),
            e(&authority.ods_code),
            e(&authority.office_hours_phone),
            e(&authority.emergency_phone)
        );
    }
    if response.previous_accesses.is_empty() {
        let _ = writeln!(text, "  previous unscheduled care accesses: none");
    } else {
        let _ = writeln!(text, "  previous unscheduled care accesses ({}):", response.previous_accesses.len());
        for access in &response.previous_accesses {
            let accessor = access.accessor.clone().unwrap_or_default();
            let _ = writeln!(
                text,
                "    {}  {} ({}) {}  by {}",
                timestamp_text(access.accessed_at.as_ref()),
                e(&access.organisation_name),
                e(&access.organisation_ods_code),
                care_setting_name(access.care_setting),
                e(&accessor.name)
            );
        }
    }
    text
}

/// The documented JSON shape of a notification, the same as `deliver` sends
/// (see [`crate::deliver::payload`]).
pub(super) fn notification_json(notification: &proto::AccessNotification) -> serde_json::Value {
    serde_json::to_value(crate::deliver::payload::NotificationBody::from_wire(notification)).unwrap_or_default()
}

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// Start after this sequence number (default: after the last acknowledged).
    #[arg(long, env = "CPIS_AFTER")]
    pub after: Option<u64>,
    /// Acknowledge each notification once printed.
    #[arg(long)]
    pub ack: bool,
    /// Stop after this many notifications.
    #[arg(long)]
    pub count: Option<u64>,
    /// Then prove each one's access is in the relay's access log (needs --count and --verifier-key); exit 1 if any is not
    #[arg(long, requires_all = ["count", "verifier_key"])]
    pub verify: bool,
    /// The relay's access log verifier key (or a file holding it), as its operator gave it
    #[arg(long, env = "CPIS_LOG_VERIFIER_KEY")]
    pub verifier_key: Option<String>,
    /// With --verify: a witness key (or file); the witnessed checkpoint must be cosigned by the quorum of them
    #[arg(long = "witness-key", env = "CPIS_WITNESS_KEYS", value_delimiter = ',')]
    pub witness_keys: Vec<String>,
    /// With --verify: how many of the witness keys must have cosigned [default: all]
    #[arg(long)]
    pub witness_quorum: Option<usize>,
    /// With --verify: seconds to wait for a checkpoint covering every access [default: 30]
    #[arg(long, default_value_t = 30)]
    pub verify_within_secs: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub(super) async fn subscribe(args: SubscribeArgs) -> Result<u8, CliError> {
    let verify = if args.verify { Some(verify_options(&args)?) } else { None };
    let (channel, _) = args.client.channel("la-706").await?;
    let mut notifications = NotificationsClient::new(channel.clone());
    let mut kept = Vec::new();
    let mut stream = notifications.subscribe(SubscribeRequest { after_sequence: args.after }).await?.into_inner();
    let mut received = 0;
    let mut stdout = std::io::stdout();
    while args.count.is_none_or(|count| received < count) {
        let Some(notification) = stream.next().await else {
            eprintln!("cpis-relay: the relay ended the subscription (it is shutting down); resubscribe to continue");
            return Ok(exit::UNAVAILABLE);
        };
        let notification = notification?;
        let _ = writeln!(stdout, "{}", json_line(&notification_json(&notification)));
        let _ = stdout.flush();
        if args.ack {
            notifications.ack(AckRequest { sequence: notification.sequence }).await?;
        }
        received += 1;
        if verify.is_some() {
            kept.push(notification);
        }
    }
    match verify {
        Some(options) => super::subscribe_verify::verify_received(channel, &kept, &options).await,
        None => Ok(exit::OK),
    }
}

fn verify_options(args: &SubscribeArgs) -> Result<super::subscribe_verify::VerifyOptions, CliError> {
    let verifier = super::audit_trusted::verifier_key(args.verifier_key.as_deref().unwrap_or_default())?;
    let witnesses = super::audit_trusted::witness_keys(&args.witness_keys)?;
    let quorum = args.witness_quorum.unwrap_or(witnesses.len());
    if quorum > witnesses.len() || (quorum == 0 && !witnesses.is_empty()) {
        return Err(CliError::Config(format!(
            "witness_quorum: must be 1 to {} (the witness keys given)",
            witnesses.len()
        )));
    }
    Ok(super::subscribe_verify::VerifyOptions {
        verifier,
        witnesses,
        quorum,
        within: std::time::Duration::from_secs(args.verify_within_secs),
    })
}

#[derive(Debug, Args)]
pub struct AckArgs {
    /// Acknowledge every notification up to and including this sequence.
    pub sequence: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub(super) async fn ack(args: AckArgs) -> Result<u8, CliError> {
    let (channel, _) = args.client.channel("la-706").await?;
    let response = NotificationsClient::new(channel).ack(AckRequest { sequence: args.sequence }).await?.into_inner();
    println!("acknowledged through {}", response.acked_through);
    Ok(exit::OK)
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output file (.csv or .jsonl); standard output as CSV when absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub(super) async fn export(args: ExportArgs) -> Result<u8, CliError> {
    let (channel, identity) = args.client.channel("la-706").await?;
    let mut stream = PlansClient::new(channel).export(ExportRequest {}).await?.into_inner();
    let mut rows = Vec::new();
    while let Some(record) = stream.next().await {
        rows.push(records_file::from_wire(&record?, &identity.ods_code));
    }
    let written = match &args.out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .map_err(|error| CliError::Config(format!("--out {}: {error}", path.display())))?;
            records_file::write(file, Format::of(path), &rows)
        }
        None => write_export_to_stdout(std::io::stdout(), &rows),
    };
    written.map_err(|error| CliError::Failed(error.to_string()))?;
    eprintln!("exported {} plans of local authority {}", rows.len(), identity.ods_code);
    Ok(exit::OK)
}

/// Export on standard output (most often a terminal): CSV with every control
/// character in a value escaped, so no name can drive the terminal or start a
/// line. `--out FILE` keeps the values exactly as held.
fn write_export_to_stdout(out: impl Write, rows: &[records_file::FileRecord]) -> std::io::Result<()> {
    let escaped: Vec<_> = rows.iter().map(records_file::FileRecord::escaped).collect();
    records_file::write(out, Format::Csv, &escaped)
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub nhs_number: String,
    /// CPPI, LACI or UCPI; every plan of the person when absent.
    #[arg(long = "type")]
    pub plan_type: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub(super) async fn delete(args: DeleteArgs) -> Result<u8, CliError> {
    let plan_type = match args.plan_type.as_deref() {
        None => proto::PlanType::Unspecified,
        Some(text) => crate::wire::plan_type(
            crate::model::PlanType::parse(text)
                .ok_or_else(|| CliError::Config(format!("--type {text:?}: not CPPI, LACI or UCPI")))?,
        ),
    };
    let (channel, _) = args.client.channel("la-706").await?;
    let response = PlansClient::new(channel)
        .delete(DeleteRequest { nhs_number: args.nhs_number, r#type: plan_type as i32 })
        .await?
        .into_inner();
    println!("deleted {} plan(s)", response.deleted);
    Ok(exit::OK)
}

/// `audit NHS_NUMBER`: the person's accesses as JSON lines (see `super::audit`).
pub(super) async fn audit(nhs_number: String, client: ClientArgs) -> Result<u8, CliError> {
    let (channel, _) = client.channel("auditor").await?;
    let mut stream = AuditClient::new(channel).access_log(AccessLogRequest { nhs_number }).await?.into_inner();
    while let Some(access) = stream.next().await {
        println!("{}", json_line(&access_json(&access?)));
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod privacy_tests {
    use super::{describe_search, write_export_to_stdout};
    use crate::{proto, records_file};

    #[test]
    fn export_on_stdout_escapes_control_characters_in_every_value() {
        let evil = "Zeb\x1b]0;evil\x07\nforged,row\r\u{9b}2J";
        let mut record = records_file::from_wire(&proto::PlanRecord::default(), "706");
        record.given_name = evil.into();
        record.family_name = evil.into();
        record.address_line_1 = evil.into();
        record.local_id = evil.into();
        let mut out = Vec::new();
        write_export_to_stdout(&mut out, &[record]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.chars().any(|ch| ch.is_control() && ch != '\n'), "{text:?}");
        assert_eq!(text.lines().count(), 2, "the header and one row: {text:?}");
        assert!(text.contains("Zeb\\u{1b}]0;evil\\u{7}\\nforged,row\\r\\u{9b}2J"), "{text:?}");
    }

    #[test]
    fn search_output_escapes_control_characters_in_relay_text() {
        let evil = "Zeb\x1b]0;evil\x07\nFLAGGED forged\r";
        let response = proto::SearchResponse {
            flagged: true,
            person: Some(proto::Person {
                nhs_number: "9990000018".into(),
                given_name: evil.into(),
                family_name: evil.into(),
                date_of_birth: "2013-07-19".into(),
                address: Some(proto::Address { lines: vec![evil.into()], postcode: evil.into() }),
            }),
            plans: vec![],
            previous_accesses: vec![proto::AccessRecord {
                organisation_name: evil.into(),
                accessor: Some(proto::Accessor { name: evil.into(), ..Default::default() }),
                ..Default::default()
            }],
        };
        let text = describe_search(&response);
        assert!(!text.contains(['\x1b', '\x07', '\r']), "{text:?}");
        // The structure's own lines only: a person line, the address, the accesses' header and one access.
        assert_eq!(text.lines().count(), 4, "{text:?}");
        assert!(text.contains("Zeb\\u{1b}]0;evil\\u{7}\\nFLAGGED forged\\r"), "{text:?}");
    }
}
