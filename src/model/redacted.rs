//! Redacted `Debug` of the domain types that hold personal data: names, NHS
//! numbers (shown as `NhsNumber`'s own redacted form), dates of birth,
//! addresses, user ids and names, local ids and request ids never reach a log
//! line or a panic message. Ids, types, organisations and the dates of plans
//! and accesses are shown.

use super::*;

impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Address").field("lines", &self.lines.len()).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("nhs_number", &self.nhs_number)
            .field("la_ods_code", &self.la_ods_code)
            .field("plan_type", &self.plan_type)
            .field("start_date", &self.start_date)
            .field("end_date", &self.end_date)
            .field("expected_delivery_date", &self.expected_delivery_date)
            .field("team_code", &self.team_code)
            .field("loaded_at", &self.loaded_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Accessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accessor").field("role_code", &self.role_code).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AccessorView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessorView").field("role_code", &self.role_code).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AuditRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditRead")
            .field("id", &self.id)
            .field("read_at", &self.read_at)
            .field("nhs_number", &self.nhs_number)
            .field("organisation_ods_code", &self.organisation_ods_code)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AccessEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessEvent")
            .field("id", &self.id)
            .field("accessed_at", &self.accessed_at)
            .field("nhs_number", &self.nhs_number)
            .field("organisation_ods_code", &self.organisation_ods_code)
            .field("care_setting", &self.care_setting)
            .field("accessor", &self.accessor)
            .field("scheduled", &self.scheduled)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AccessView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessView")
            .field("id", &self.id)
            .field("accessed_at", &self.accessed_at)
            .field("nhs_number", &self.nhs_number)
            .field("organisation_ods_code", &self.organisation_ods_code)
            .field("care_setting", &self.care_setting)
            .field("accessor", &self.accessor)
            .field("scheduled", &self.scheduled)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestKey")
            .field("organisation_ods_code", &self.organisation_ods_code)
            .field("nhs_number", &self.nhs_number)
            .field("care_setting", &self.care_setting)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for NotificationDraft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationDraft")
            .field("la_ods_code", &self.la_ods_code)
            .field("notification_id", &self.notification_id)
            .field("plan_type", &self.plan_type)
            .field("team_code", &self.team_code)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_plans_accesses_and_notifications_carries_no_personal_data() {
        let nhs_number = NhsNumber::parse("9990000018").unwrap();
        let mut plan = test_plan(nhs_number, PlanType::ChildProtection);
        plan.given_name = "Zebedee".into();
        plan.family_name = "Quixotic".into();
        plan.local_id = "CASE-31337".into();
        plan.date_of_birth = NaiveDate::from_ymd_opt(2013, 7, 19).unwrap();
        plan.address.postcode = "QQ9 9QQ".into();
        plan.address.lines = vec!["7 Xylophone Mews".into()];
        let accessor = Accessor {
            user_id: "smartcard-77881".into(),
            name: "Dr Wilhelmina Ostrogoth".into(),
            role_code: "R0260".into(),
        };
        let access = AccessEvent {
            id: 7,
            accessed_at: Utc::now(),
            nhs_number,
            organisation_ods_code: "RR8".into(),
            organisation_name: "Leeds".into(),
            care_setting: CareSetting::EmergencyDepartment,
            accessor: accessor.clone(),
            request_id: "req-5551212".into(),
            scheduled: false,
        };
        let draft = NotificationDraft {
            la_ods_code: "706".into(),
            notification_id: "n-1".into(),
            local_id: "CASE-31337".into(),
            plan_type: PlanType::ChildProtection,
            team_code: "T1".into(),
            traceparent: None,
        };
        let notification = Notification { sequence: 1, draft: draft.clone(), access: access.clone() };
        let text =
            format!("{plan:?} {plan:#?} {accessor:?} {access:?} {:?} {draft:?} {notification:?}", access.request_key());
        for personal in [
            "9990000018",
            "Zebedee",
            "Quixotic",
            "CASE-31337",
            "2013-07-19",
            "QQ9 9QQ",
            "Xylophone",
            "smartcard-77881",
            "Wilhelmina",
            "req-5551212",
        ] {
            assert!(!text.contains(personal), "{personal} in {text}");
        }
        assert!(text.contains("RR8") && text.contains("706") && text.contains("ChildProtection"), "{text}");
    }

    #[test]
    fn debug_of_an_address_shows_no_line_and_no_postcode() {
        let address =
            Address { lines: vec!["7 Xylophone Mews".into(), "Quillington".into()], postcode: "QQ9 9QQ".into() };
        for text in [format!("{address:?}"), format!("{address:#?}"), format!("{:?}", Some(&address))] {
            for personal in ["Xylophone", "Quillington", "QQ9", "9QQ"] {
                assert!(!text.contains(personal), "{personal} in {text}");
            }
            assert!(text.contains("Address") && text.contains('2'), "the number of lines is shown: {text}");
        }
    }
}
