//! Domain answers as FHIR R4 JSON in the shapes of the CP-IS API examples
//! (`shared/reference/cpis-fhir/`), made valid R4 where the examples are not.
//! One function per resource; no rule of the domain is applied here, only
//! the mapping. Resource ids are stable: derived from what the resource is
//! about, so the same plan or user has the same id in every answer.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{
    accesses::RecentAccess,
    model::{Address, Plan, PlanType},
    relay::{SearchOutcome, ShownPlan},
};

pub(crate) const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
pub(crate) const SDS_USER_SYSTEM: &str = "https://fhir.nhs.uk/Id/sds-user-id";
pub(crate) const JOB_ROLE_SYSTEM: &str = "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode";
pub(crate) const SNOMED: &str = "http://snomed.info/sct";
/// The relay's extension carrying a UCPI plan's expected delivery date on its CareTeam (a `valueDate`).
pub const EXPECTED_DELIVERY_EXTENSION: &str =
    "https://cpis-relay.invalid/fhir/StructureDefinition/Extension-CPIS-ExpectedDeliveryDate";

/// The plan type's code in the England-ChildProtectionPlan value set.
pub(crate) fn plan_category(plan_type: PlanType) -> (&'static str, &'static str) {
    match plan_type {
        PlanType::ChildProtection => ("342191000000101", "Subject to child protection plan"),
        PlanType::LookedAfter => ("764841000000100", "Looked after child"),
        PlanType::UnbornChildProtection => ("818901000000100", "Unborn child subject to child protection plan"),
    }
}

/// A stable id (UUID-shaped) for what `parts` name.
fn stable_id(kind: &str, parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    for part in parts {
        hasher.update([0]);
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

fn date(value: NaiveDate) -> String {
    value.format("%Y-%m-%d").to_string()
}

fn instant(value: DateTime<Utc>) -> String {
    value.to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// "Given FAMILY", as the examples show a person.
fn display_name(given: &str, family: &str) -> String {
    let family = family.to_uppercase();
    [given.trim(), family.trim()].iter().filter(|part| !part.is_empty()).copied().collect::<Vec<_>>().join(" ")
}

/// A searchset Bundle: `matches` counted in `total`, `includes` after them.
pub fn searchset(self_url: &str, matches: Vec<(String, Value)>, includes: Vec<(String, Value)>) -> Value {
    let total = matches.len();
    let entry = |mode: &'static str| move |(full_url, resource): (String, Value)| json!({ "fullUrl": full_url, "resource": resource, "search": { "mode": mode } });
    let entries: Vec<Value> =
        matches.into_iter().map(entry("match")).chain(includes.into_iter().map(entry("include"))).collect();
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": { "lastUpdated": instant(Utc::now()) },
        "type": "searchset",
        "total": total,
        "link": [{ "relation": "self", "url": self_url }],
    });
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    bundle
}

/// One CareTeam per visible plan, and the person as an included Patient.
pub(crate) fn care_team_bundle(base: &str, self_url: &str, outcome: &SearchOutcome) -> Value {
    let Some(person) = outcome.person.as_deref() else {
        return searchset(self_url, Vec::new(), Vec::new());
    };
    let nhs_number = person.nhs_number.to_string();
    let subject_display = display_name(&person.given_name, &person.family_name);
    let matches = outcome
        .plans
        .iter()
        .map(|shown| {
            let resource = care_team(shown, &nhs_number, &subject_display);
            (format!("{base}/CareTeam/{}", resource["id"].as_str().unwrap_or_default()), resource)
        })
        .collect();
    let includes = vec![(format!("{base}/Patient/{nhs_number}"), patient(person))];
    searchset(self_url, matches, includes)
}

fn care_team(shown: &ShownPlan, nhs_number: &str, subject_display: &str) -> Value {
    let plan = &shown.plan;
    let (code, display) = plan_category(plan.plan_type);
    let id = stable_id("CareTeam", &[nhs_number, &plan.la_ods_code, plan.plan_type.code()]);
    let authority_name = shown.authority.as_ref().map(|authority| authority.name.as_str()).unwrap_or_default();
    let mut period = json!({ "start": date(plan.start_date) });
    if let Some(end) = plan.end_date {
        period["end"] = Value::String(date(end));
    }
    let mut resource = json!({
        "resourceType": "CareTeam",
        "id": id,
        "category": [{ "coding": [{ "system": SNOMED, "code": code, "display": display }] }],
        "name": if authority_name.is_empty() { plan.la_ods_code.as_str() } else { authority_name },
        "subject": {
            "reference": format!("Patient/{nhs_number}"),
            "identifier": { "system": NHS_NUMBER_SYSTEM, "value": nhs_number },
            "display": subject_display,
        },
        "period": period,
    });
    let mut organisation = json!({ "identifier": { "system": ODS_SYSTEM, "value": plan.la_ods_code } });
    if !authority_name.is_empty() {
        organisation["display"] = Value::String(authority_name.to_owned());
    }
    resource["managingOrganization"] = json!([organisation]);
    if let Some(authority) = shown.authority.as_deref() {
        let telecom: Vec<Value> = [(&authority.office_hours_phone, "work"), (&authority.emergency_phone, "mobile")]
            .into_iter()
            .filter(|(number, _)| !number.trim().is_empty())
            .map(|(number, usage)| json!({ "system": "phone", "value": number.trim(), "use": usage }))
            .collect();
        if !telecom.is_empty() {
            resource["telecom"] = Value::Array(telecom);
        }
    }
    if let Some(delivery) = plan.expected_delivery_date {
        let delivery = date(delivery);
        resource["extension"] = json!([{ "url": EXPECTED_DELIVERY_EXTENSION, "valueDate": delivery }]);
        resource["note"] = json!([{ "text": format!("Expected delivery date: {delivery}") }]);
    }
    resource
}

/// The person's basic details, as the gRPC search shows them.
pub fn patient(person: &Plan) -> Value {
    let nhs_number = person.nhs_number.to_string();
    let mut name = json!({ "use": "official" });
    if !person.family_name.trim().is_empty() {
        name["family"] = Value::String(person.family_name.trim().to_owned());
    }
    if !person.given_name.trim().is_empty() {
        name["given"] = json!(person.given_name.split_whitespace().collect::<Vec<_>>());
    }
    let mut resource = json!({
        "resourceType": "Patient",
        "id": nhs_number,
        "identifier": [{ "system": NHS_NUMBER_SYSTEM, "value": nhs_number }],
        "name": [name],
        "birthDate": date(person.date_of_birth),
    });
    if let Some(address) = address(&person.address) {
        resource["address"] = json!([address]);
    }
    resource
}

fn address(address: &Address) -> Option<Value> {
    let lines: Vec<&str> = address.lines.iter().map(|line| line.trim()).filter(|line| !line.is_empty()).collect();
    let postcode = address.postcode.trim();
    if lines.is_empty() && postcode.is_empty() {
        return None;
    }
    let mut value = json!({ "use": "home" });
    if !lines.is_empty() {
        value["line"] = json!(lines);
    }
    if !postcode.is_empty() {
        value["postalCode"] = Value::String(postcode.to_owned());
    }
    Some(value)
}

/// One AuditEvent per listed previous access, each pointing at an included
/// PractitionerRole (one per user and organisation, however many accesses).
pub(crate) fn audit_event_bundle(base: &str, self_url: &str, nhs_number: &str, accesses: &[RecentAccess]) -> Value {
    let mut matches = Vec::with_capacity(accesses.len());
    let mut includes: Vec<(String, Value)> = Vec::new();
    for access in accesses {
        let role = practitioner_role(access);
        let role_id = role["id"].as_str().unwrap_or_default().to_owned();
        let event = audit_event(access, nhs_number, &role_id);
        matches.push((format!("{base}/AuditEvent/{}", event["id"].as_str().unwrap_or_default()), event));
        let role_url = format!("{base}/PractitionerRole/{role_id}");
        if !includes.iter().any(|(url, _)| *url == role_url) {
            includes.push((role_url, role));
        }
    }
    searchset(self_url, matches, includes)
}

fn audit_event(access: &RecentAccess, nhs_number: &str, role_id: &str) -> Value {
    let role_reference = format!("PractitionerRole/{role_id}");
    let role_class = |code: &str, display: &str| json!({ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": code, "display": display }] });
    json!({
        "resourceType": "AuditEvent",
        "id": uuid::Uuid::from_u128(access.id()).to_string(),
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle",
            "code": "access",
            "display": "Access/View Record Lifecycle Event",
        },
        "action": "R",
        "recorded": instant(access.accessed_at),
        "agent": [
            {
                "type": role_class("PAT", "patient"),
                "who": { "identifier": { "system": NHS_NUMBER_SYSTEM, "value": nhs_number } },
                "requestor": false,
            },
            {
                "type": role_class("ASSIGNED", "assigned entity"),
                "who": { "reference": role_reference },
                "requestor": true,
            },
        ],
        "source": {
            "site": access.care_setting.display_name(),
            "observer": { "reference": role_reference },
        },
    })
}

fn practitioner_role(access: &RecentAccess) -> Value {
    let accessor = &*access.who;
    let id = stable_id(
        "PractitionerRole",
        &[&accessor.organisation_ods_code, &accessor.user_id, &accessor.role_code, &accessor.name],
    );
    let mut organisation = json!({ "identifier": { "system": ODS_SYSTEM, "value": &*accessor.organisation_ods_code } });
    if !accessor.organisation_name.is_empty() {
        organisation["display"] = Value::String(accessor.organisation_name.to_string());
    }
    let mut resource = json!({
        "resourceType": "PractitionerRole",
        "id": id,
        "practitioner": {
            "identifier": { "system": SDS_USER_SYSTEM, "value": &*accessor.user_id },
            "display": &*accessor.name,
        },
        "organization": organisation,
    });
    if !accessor.role_code.is_empty() {
        resource["code"] = json!([{ "coding": [{ "system": JOB_ROLE_SYSTEM, "code": &*accessor.role_code }] }]);
    }
    resource
}

/// The CapabilityStatement of exactly what this door serves.
pub(crate) fn capability_statement(base: &str) -> Value {
    let patient_parameter = |definition: &str| {
        json!([{
            "name": "patient",
            "definition": definition,
            "type": "reference",
            "documentation": format!(
                "Only as patient:identifier={NHS_NUMBER_SYSTEM}|{{NHS number}}; any other parameter is refused (400 PRECONDITION_FAILED)."
            ),
        }])
    };
    json!({
        "resourceType": "CapabilityStatement",
        "id": "cpis-relay",
        "name": "CPISRelayFHIRServer",
        "title": "cpis-relay: CP-IS FHIR R4 API",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "cpis-relay",
        "description": "The CP-IS FHIR R4 API searches (CareTeam and AuditEvent by NHS number) over the relay's mutual TLS. The organisation is the client certificate's; the user is the bearer token's.",
        "kind": "instance",
        "software": { "name": "cpis-relay", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "cpis-relay FHIR door", "url": base },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "service": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth" }] }],
                "description": "Mutual TLS: the client certificate names the organisation (CN = ODS code, OU = role). Authorization: Bearer <JWT> names the user. Headers: TraceID (echoed), IsUnscheduledAccessEvent (absent means true).",
            },
            "resource": [
                {
                    "type": "CareTeam",
                    "profile": "http://hl7.org/fhir/StructureDefinition/CareTeam",
                    "interaction": [{ "code": "search-type" }],
                    "searchInclude": ["CareTeam:patient"],
                    "searchParam": patient_parameter("http://hl7.org/fhir/SearchParameter/clinical-patient"),
                },
                {
                    "type": "AuditEvent",
                    "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
                    "interaction": [{ "code": "search-type" }],
                    "searchInclude": ["AuditEvent:agent"],
                    "searchParam": patient_parameter("http://hl7.org/fhir/SearchParameter/AuditEvent-patient"),
                },
            ],
        }],
    })
}
