//! The `cpis.v1` wire messages to the domain's input types (what a caller
//! sent, not yet validated), and domain values to wire messages: the one
//! conversion the gRPC door, the CLI clients, record files and the tools
//! share. One function per message; no logic beyond the mapping, no door's
//! concerns (identity, admission, `Status`).

use chrono::{DateTime, NaiveDate, Utc};

use crate::{
    accesses::RecentAccess,
    error::{Error, Result},
    model::{AccessEvent, Accessor, Address, CareSetting, LocalAuthority, Notification, Plan, PlanType},
    proto,
    relay::{
        SearchOutcome, SearchQuery, SentPlanRecord, SentPlanType, SentUploadHeader, UploadMode, UploadOutcome,
        UploadStatus,
    },
};

/// A wire search as the domain's query; only what the wire alone can get
/// wrong (an enum value it does not know) is refused here.
pub fn search_query(request: proto::SearchRequest) -> Result<SearchQuery> {
    Ok(SearchQuery {
        nhs_number: request.nhs_number,
        accessor: request.accessor.map(|accessor| Accessor {
            user_id: accessor.user_id,
            name: accessor.name,
            role_code: accessor.role_code,
        }),
        care_setting: care_setting_from_wire(request.care_setting)?,
        request_id: request.request_id,
        // The certificate's role says whether a gRPC search is scheduled.
        scheduled: false,
    })
}

/// `None` for UNSPECIFIED.
pub(crate) fn care_setting_from_wire(value: i32) -> Result<Option<CareSetting>> {
    if value == proto::CareSetting::Unspecified as i32 {
        return Ok(None);
    }
    match CareSetting::from_wire_code(value) {
        Some(setting) => Ok(Some(setting)),
        None => Err(Error::invalid("care_setting", format!("{value} is not a care setting"))),
    }
}

/// A wire plan type as sent: an unknown number is kept for the domain to refuse.
pub(crate) fn plan_type_from_wire(value: i32) -> SentPlanType {
    use proto::PlanType as Wire;
    match Wire::try_from(value) {
        Ok(Wire::Unspecified) => SentPlanType::Unspecified,
        Ok(Wire::ChildProtection) => SentPlanType::Known(PlanType::ChildProtection),
        Ok(Wire::LookedAfter) => SentPlanType::Known(PlanType::LookedAfter),
        Ok(Wire::UnbornChildProtection) => SentPlanType::Known(PlanType::UnbornChildProtection),
        Err(_) => SentPlanType::Unknown(value),
    }
}

/// The header of a wire upload as sent; a mode it does not name is `None`.
pub(crate) fn upload_header_from_wire(header: proto::UploadHeader) -> SentUploadHeader {
    let mode = match proto::UploadMode::try_from(header.mode) {
        Ok(proto::UploadMode::Incremental) => Some(UploadMode::Incremental),
        Ok(proto::UploadMode::FullRefresh) => Some(UploadMode::FullRefresh),
        _ => None,
    };
    SentUploadHeader {
        mode,
        file_id: header.file_id,
        local_authority: header.local_authority.map(|authority| LocalAuthority {
            ods_code: authority.ods_code,
            name: authority.name,
            office_hours_phone: authority.office_hours_phone,
            emergency_phone: authority.emergency_phone,
        }),
        allow_large_removal: header.allow_large_removal,
    }
}

/// A wire upload record as sent. Its text is moved, not copied (an upload can carry a million).
pub fn plan_record_from_wire(record: proto::PlanRecord) -> SentPlanRecord {
    SentPlanRecord {
        nhs_number: record.nhs_number,
        local_id: record.local_id,
        given_name: record.given_name,
        family_name: record.family_name,
        date_of_birth: record.date_of_birth,
        address: record.address.map(|address| Address { lines: address.lines, postcode: address.postcode }),
        plan_type: plan_type_from_wire(record.r#type),
        start_date: record.start_date,
        end_date: record.end_date,
        expected_delivery_date: record.expected_delivery_date,
        team_code: record.team_code,
    }
}

pub fn timestamp(instant: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: instant.timestamp(), nanos: instant.timestamp_subsec_nanos() as i32 }
}

fn date(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

fn optional_date(value: Option<NaiveDate>) -> String {
    value.map(date).unwrap_or_default()
}

pub fn plan_type(plan_type: PlanType) -> proto::PlanType {
    match plan_type {
        PlanType::ChildProtection => proto::PlanType::ChildProtection,
        PlanType::LookedAfter => proto::PlanType::LookedAfter,
        PlanType::UnbornChildProtection => proto::PlanType::UnbornChildProtection,
    }
}

fn address(address: &Address) -> proto::Address {
    proto::Address { lines: address.lines.clone(), postcode: address.postcode.clone() }
}

fn accessor(accessor: &Accessor) -> proto::Accessor {
    proto::Accessor {
        user_id: accessor.user_id.clone(),
        name: accessor.name.clone(),
        role_code: accessor.role_code.clone(),
    }
}

pub fn local_authority(authority: &LocalAuthority) -> proto::LocalAuthority {
    proto::LocalAuthority {
        ods_code: authority.ods_code.clone(),
        name: authority.name.clone(),
        office_hours_phone: authority.office_hours_phone.clone(),
        emergency_phone: authority.emergency_phone.clone(),
    }
}

/// Moves an access's text into the wire record: a search answers with up
/// to 25 of them, and none is needed afterwards.
pub(crate) fn access_record(access: AccessEvent) -> proto::AccessRecord {
    let care_setting = access.care_setting.wire_code();
    proto::AccessRecord {
        accessed_at: Some(timestamp(access.accessed_at)),
        organisation_ods_code: access.organisation_ods_code,
        organisation_name: access.organisation_name,
        care_setting,
        accessor: Some(proto::Accessor {
            user_id: access.accessor.user_id,
            name: access.accessor.name,
            role_code: access.accessor.role_code,
        }),
        scheduled: access.scheduled,
        access_id: uuid::Uuid::from_u128(access.id).to_string(),
    }
}

/// A previous access as a search lists it (never a scheduled one).
fn listed_access_record(access: &RecentAccess) -> proto::AccessRecord {
    let who = &*access.who;
    proto::AccessRecord {
        accessed_at: Some(timestamp(access.accessed_at)),
        organisation_ods_code: who.organisation_ods_code.to_string(),
        organisation_name: who.organisation_name.to_string(),
        care_setting: access.care_setting.wire_code(),
        accessor: Some(proto::Accessor {
            user_id: who.user_id.to_string(),
            name: who.name.to_string(),
            role_code: who.role_code.to_string(),
        }),
        scheduled: access.scheduled,
        access_id: String::new(),
    }
}

pub fn search_response(outcome: SearchOutcome) -> proto::SearchResponse {
    proto::SearchResponse {
        flagged: outcome.flagged(),
        person: outcome.person.as_deref().map(|plan| proto::Person {
            nhs_number: plan.nhs_number.to_string(),
            given_name: plan.given_name.clone(),
            family_name: plan.family_name.clone(),
            date_of_birth: date(plan.date_of_birth),
            address: Some(address(&plan.address)),
        }),
        plans: outcome
            .plans
            .iter()
            .map(|shown| proto::PlanSummary {
                r#type: plan_type(shown.plan.plan_type) as i32,
                start_date: date(shown.plan.start_date),
                end_date: optional_date(shown.plan.end_date),
                expected_delivery_date: optional_date(shown.plan.expected_delivery_date),
                local_authority: Some(shown.authority.as_deref().map(local_authority).unwrap_or_else(|| {
                    proto::LocalAuthority { ods_code: shown.plan.la_ods_code.clone(), ..Default::default() }
                })),
            })
            .collect(),
        previous_accesses: outcome.previous_accesses.iter().map(listed_access_record).collect(),
    }
}

pub(crate) fn plan_record(plan: &Plan) -> proto::PlanRecord {
    proto::PlanRecord {
        nhs_number: plan.nhs_number.to_string(),
        local_id: plan.local_id.clone(),
        given_name: plan.given_name.clone(),
        family_name: plan.family_name.clone(),
        date_of_birth: date(plan.date_of_birth),
        address: Some(address(&plan.address)),
        r#type: plan_type(plan.plan_type) as i32,
        start_date: date(plan.start_date),
        end_date: optional_date(plan.end_date),
        expected_delivery_date: optional_date(plan.expected_delivery_date),
        team_code: plan.team_code.clone(),
    }
}

pub fn notification(notification: &Notification) -> proto::AccessNotification {
    let access = &notification.access;
    proto::AccessNotification {
        sequence: notification.sequence,
        notification_id: notification.draft.notification_id.clone(),
        accessed_at: Some(timestamp(access.accessed_at)),
        nhs_number: access.nhs_number.to_string(),
        local_id: notification.draft.local_id.clone(),
        plan_type: plan_type(notification.draft.plan_type) as i32,
        team_code: notification.draft.team_code.clone(),
        organisation_ods_code: access.organisation_ods_code.clone(),
        organisation_name: access.organisation_name.clone(),
        care_setting: access.care_setting.wire_code(),
        accessor: Some(accessor(&access.accessor)),
        traceparent: notification.draft.traceparent.clone(),
        access_id: uuid::Uuid::from_u128(access.id).to_string(),
    }
}

pub(crate) fn upload_report(outcome: UploadOutcome) -> proto::UploadReport {
    proto::UploadReport {
        status: match outcome.status {
            UploadStatus::AllLoaded => proto::UploadStatus::AllLoaded,
            UploadStatus::Partial => proto::UploadStatus::Partial,
            UploadStatus::NoneLoaded => proto::UploadStatus::NoneLoaded,
        } as i32,
        loaded: outcome.loaded,
        rejected: outcome.rejected,
        rejections: outcome
            .rejections
            .into_iter()
            .map(|rejection| proto::Rejection {
                index: rejection.index,
                nhs_number: rejection.nhs_number,
                reason: rejection.reason.as_str().to_owned(),
                message: rejection.message,
            })
            .collect(),
        removed: outcome.removed,
        received: outcome.received,
        current_plans: outcome.current_plans,
        rejection_counts: outcome
            .rejection_counts
            .into_iter()
            .map(|(reason, count)| proto::RejectionCount { reason: reason.as_str().to_owned(), count })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_care_setting_has_the_contract_name_and_number_of_its_wire_value() {
        for setting in CareSetting::ALL {
            let wire = proto::CareSetting::try_from(setting.wire_code()).unwrap();
            assert_eq!(wire.as_str_name(), setting.contract_name());
            assert_eq!(care_setting_from_wire(wire as i32).unwrap(), Some(setting));
        }
        assert_eq!(care_setting_from_wire(proto::CareSetting::Unspecified as i32).unwrap(), None);
        assert!(care_setting_from_wire(11).is_err());
        for wire in 1..=10 {
            assert!(CareSetting::from_wire_code(wire).is_some(), "every contract value {wire} is a setting");
        }
    }
}
