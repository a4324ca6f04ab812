//! Redacted `Debug` of the wire messages that carry personal data (build.rs
//! skips prost's derived `Debug` for them): NHS numbers, names, dates of
//! birth, addresses, user ids and names, local ids, request ids, file-supplied
//! rejection messages never reach a log line or a panic message. Types,
//! dates of plans, organisations, sequences and ids are shown. Messages that
//! only contain these (responses, reports, upload messages) keep prost's
//! derived `Debug`, which shows them through these.

use std::fmt;

use super::{
    AccessLogRequest, AccessNotification, Accessor, Address, CareSetting, DeleteRequest, InclusionProofResponse,
    LoggedAccess, Person, PlanRecord, PlanType, Rejection, SearchRequest, SubjectAccessReport, SubjectAccessRequest,
};

// The leaf of an access is its encoding (NHS number, names): shown by length only.
impl fmt::Debug for InclusionProofResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InclusionProofResponse")
            .field("leaf_index", &self.leaf_index)
            .field("leaf", &self.leaf.len())
            .field("audit_path", &self.audit_path.len())
            .field("checkpoint", &self.checkpoint)
            .finish()
    }
}

impl fmt::Debug for SubjectAccessRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectAccessRequest").finish_non_exhaustive()
    }
}

impl fmt::Debug for SubjectAccessReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectAccessReport")
            .field("plans", &self.plans.len())
            .field("accesses", &self.accesses.len())
            .field("notifications", &self.notifications.len())
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for LoggedAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggedAccess")
            .field("access", &self.access)
            .field("kind", &self.kind)
            .field("leaf_index", &self.leaf_index)
            .finish_non_exhaustive()
    }
}

fn plan_type(value: i32) -> &'static str {
    PlanType::try_from(value).map_or("UNKNOWN", |kind| kind.as_str_name())
}

fn care_setting(value: i32) -> &'static str {
    CareSetting::try_from(value).map_or("UNKNOWN", |setting| setting.as_str_name())
}

impl fmt::Debug for AccessLogRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLogRequest").finish_non_exhaustive()
    }
}

impl fmt::Debug for Accessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accessor").field("role_code", &self.role_code).finish_non_exhaustive()
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Address").field("lines", &self.lines.len()).finish_non_exhaustive()
    }
}

impl fmt::Debug for PlanRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlanRecord")
            .field("type", &plan_type(self.r#type))
            .field("start_date", &self.start_date)
            .field("end_date", &self.end_date)
            .field("expected_delivery_date", &self.expected_delivery_date)
            .field("team_code", &self.team_code)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SearchRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchRequest")
            .field("accessor", &self.accessor)
            .field("care_setting", &care_setting(self.care_setting))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Person {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Person").finish_non_exhaustive()
    }
}

impl fmt::Debug for AccessNotification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessNotification")
            .field("sequence", &self.sequence)
            .field("notification_id", &self.notification_id)
            .field("accessed_at", &self.accessed_at)
            .field("plan_type", &plan_type(self.plan_type))
            .field("team_code", &self.team_code)
            .field("organisation_ods_code", &self.organisation_ods_code)
            .field("care_setting", &care_setting(self.care_setting))
            .field("accessor", &self.accessor)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejection").field("index", &self.index).field("reason", &self.reason).finish_non_exhaustive()
    }
}

impl fmt::Debug for DeleteRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeleteRequest").field("type", &plan_type(self.r#type)).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn debug_of_wire_messages_carries_no_personal_data() {
        let nhs_number = "9990000018".to_owned();
        let accessor = Accessor {
            user_id: "smartcard-77881".into(),
            name: "Dr Wilhelmina Ostrogoth".into(),
            role_code: "R0260".into(),
        };
        let address = Address { lines: vec!["7 Xylophone Mews".into()], postcode: "QQ9 9QQ".into() };
        let record = PlanRecord {
            nhs_number: nhs_number.clone(),
            local_id: "CASE-31337".into(),
            given_name: "Zebedee".into(),
            family_name: "Quixotic".into(),
            date_of_birth: "2013-07-19".into(),
            address: Some(address.clone()),
            r#type: PlanType::ChildProtection as i32,
            start_date: "2024-01-02".into(),
            ..Default::default()
        };
        let person = Person {
            nhs_number: nhs_number.clone(),
            given_name: "Zebedee".into(),
            family_name: "Quixotic".into(),
            date_of_birth: "2013-07-19".into(),
            address: Some(address.clone()),
        };
        let messages: Vec<Box<dyn std::fmt::Debug>> = vec![
            Box::new(AccessLogRequest { nhs_number: nhs_number.clone() }),
            Box::new(SearchRequest {
                nhs_number: nhs_number.clone(),
                accessor: Some(accessor.clone()),
                care_setting: CareSetting::EmergencyDepartment as i32,
                request_id: "req-5551212".into(),
            }),
            Box::new(SearchResponse { flagged: true, person: Some(person), ..Default::default() }),
            Box::new(UploadMessage { body: Some(upload_message::Body::Record(record)) }),
            Box::new(AccessNotification {
                nhs_number: nhs_number.clone(),
                local_id: "CASE-31337".into(),
                accessor: Some(accessor),
                organisation_ods_code: "RR8".into(),
                ..Default::default()
            }),
            Box::new(UploadReport {
                rejections: vec![Rejection {
                    index: 3,
                    nhs_number: nhs_number.clone(),
                    reason: "INVALID_NHS_NUMBER".into(),
                    message: "Zebedee Quixotic".into(),
                }],
                ..Default::default()
            }),
            Box::new(DeleteRequest { nhs_number, r#type: 0 }),
        ];
        let text = format!("{messages:?} {messages:#?}");
        for personal in [
            "9990000018",
            "Zebedee",
            "Quixotic",
            "2013-07-19",
            "Xylophone",
            "QQ9 9QQ",
            "smartcard-77881",
            "Wilhelmina",
            "req-5551212",
            "CASE-31337",
        ] {
            assert!(!text.contains(personal), "{personal} in {text}");
        }
        assert!(text.contains("CHILD_PROTECTION") && text.contains("RR8") && text.contains("R0260"), "{text}");
    }
}
