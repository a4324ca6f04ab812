//! The delivered form of an access notification: one JSON document (the
//! body of a webhook and the content of an outbox file) and an optional XML
//! rendering of the same fields. Both are built once per notification so
//! that every sink, every retry and every signature sees the same bytes.
//!
//! The JSON shape (a stable contract for receivers; new fields may be added,
//! none removed or renamed):
//!
//! ```json
//! {
//!   "sequence": 42,
//!   "notification_id": "0b6f…",
//!   "accessed_at": "2026-06-01T09:00:00.000Z",
//!   "nhs_number": "9990000018",
//!   "local_id": "L-123",
//!   "plan_type": "CHILD_PROTECTION",
//!   "team_code": "TEAM-A",
//!   "organisation_ods_code": "RR8",
//!   "organisation_name": "Leeds Teaching Hospitals NHS Trust",
//!   "care_setting": "EMERGENCY_DEPARTMENT",
//!   "accessor": {"user_id": "u123", "name": "Dr A Example", "role_code": "R8000"}
//! }
//! ```
//!
//! `plan_type` and `care_setting` are the `cpis.v1` enum names; an unknown
//! value is `UNKNOWN`. `accessed_at` is RFC 3339 in UTC with milliseconds.
//! This module holds personal data and must never log it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::proto;

/// The documented JSON shape of one notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationBody {
    pub sequence: u64,
    pub notification_id: String,
    pub accessed_at: String,
    pub nhs_number: String,
    pub local_id: String,
    pub plan_type: String,
    pub team_code: String,
    pub organisation_ods_code: String,
    pub organisation_name: String,
    pub care_setting: String,
    pub accessor: AccessorBody,
}

/// Who searched.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessorBody {
    pub user_id: String,
    pub name: String,
    pub role_code: String,
}

impl NotificationBody {
    pub(crate) fn from_wire(notification: &proto::AccessNotification) -> Self {
        let accessor = notification.accessor.clone().unwrap_or_default();
        Self {
            sequence: notification.sequence,
            notification_id: notification.notification_id.clone(),
            accessed_at: timestamp_text(notification.accessed_at.as_ref()),
            nhs_number: notification.nhs_number.clone(),
            local_id: notification.local_id.clone(),
            plan_type: proto::PlanType::try_from(notification.plan_type)
                .map(|kind| kind.as_str_name())
                .unwrap_or("UNKNOWN")
                .to_owned(),
            team_code: notification.team_code.clone(),
            organisation_ods_code: notification.organisation_ods_code.clone(),
            organisation_name: notification.organisation_name.clone(),
            care_setting: proto::CareSetting::try_from(notification.care_setting)
                .map(|setting| setting.as_str_name())
                .unwrap_or("UNKNOWN")
                .to_owned(),
            accessor: AccessorBody { user_id: accessor.user_id, name: accessor.name, role_code: accessor.role_code },
        }
    }

    /// The CP-IS style XML rendering of the same fields (see [`Delivery::xml`]).
    pub(crate) fn to_xml(&self) -> String {
        let field = |name: &str, value: &str| format!("  <{name}>{}</{name}>\n", escape_xml(value));
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        xml.push_str("<AccessNotification xmlns=\"urn:cpis-relay:access-notification:1\">\n");
        xml.push_str(&field("Sequence", &self.sequence.to_string()));
        xml.push_str(&field("NotificationId", &self.notification_id));
        xml.push_str(&field("AccessedAt", &self.accessed_at));
        xml.push_str(&field("NhsNumber", &self.nhs_number));
        xml.push_str(&field("LocalId", &self.local_id));
        xml.push_str(&field("PlanType", &self.plan_type));
        xml.push_str(&field("TeamCode", &self.team_code));
        xml.push_str(&field("OrganisationOdsCode", &self.organisation_ods_code));
        xml.push_str(&field("OrganisationName", &self.organisation_name));
        xml.push_str(&field("CareSetting", &self.care_setting));
        xml.push_str("  <Accessor>\n");
        for line in [
            field("UserId", &self.accessor.user_id),
            field("Name", &self.accessor.name),
            field("RoleCode", &self.accessor.role_code),
        ] {
            xml.push_str("  ");
            xml.push_str(&line);
        }
        xml.push_str("  </Accessor>\n</AccessNotification>\n");
        xml
    }
}

/// One notification ready for the sinks.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub sequence: u64,
    pub notification_id: String,
    /// When the search happened, for the oldest-undelivered gauge.
    pub accessed_at: Option<std::time::SystemTime>,
    pub body: NotificationBody,
    /// The JSON bytes every sink delivers and every signature covers.
    pub json: Bytes,
    /// The W3C trace context of the search, when it was traced (never in the body).
    pub traceparent: Option<String>,
}

impl Delivery {
    pub(crate) fn from_wire(notification: &proto::AccessNotification) -> Self {
        let body = NotificationBody::from_wire(notification);
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(&body).map(Bytes::from).unwrap_or_default();
        let accessed_at = notification.accessed_at.as_ref().and_then(|at| {
            let since_epoch = std::time::Duration::new(u64::try_from(at.seconds).ok()?, at.nanos.max(0) as u32);
            std::time::UNIX_EPOCH.checked_add(since_epoch)
        });
        Self {
            sequence: notification.sequence,
            notification_id: notification.notification_id.clone(),
            accessed_at,
            body,
            json,
            traceparent: notification.traceparent.as_deref().and_then(crate::traces::checked_traceparent),
        }
    }

    /// The XML rendering, for outboxes of systems that expect XML messages.
    pub fn xml(&self) -> String {
        self.body.to_xml()
    }
}

fn timestamp_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|at| chrono::DateTime::from_timestamp(at.seconds, at.nanos.max(0) as u32))
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn escape_xml(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all are dropped rather than making the file unreadable.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification() -> proto::AccessNotification {
        proto::AccessNotification {
            sequence: 7,
            notification_id: "n-7".into(),
            accessed_at: Some(prost_types::Timestamp { seconds: 1_780_304_400, nanos: 5_000_000 }),
            nhs_number: "9990000018".into(),
            local_id: "L<1>&".into(),
            plan_type: proto::PlanType::ChildProtection as i32,
            team_code: "TEAM-A".into(),
            organisation_ods_code: "RR8".into(),
            organisation_name: "Leeds \"Teaching\"".into(),
            care_setting: 99,
            accessor: Some(proto::Accessor { user_id: "u1".into(), name: "Dr O'Test".into(), role_code: "".into() }),
            traceparent: None,
            access_id: String::new(),
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let delivery = Delivery::from_wire(&notification());
        let value: serde_json::Value = serde_json::from_slice(&delivery.json).unwrap();
        assert_eq!(value["sequence"], 7);
        assert_eq!(value["accessed_at"], "2026-06-01T09:00:00.005Z");
        assert_eq!(value["plan_type"], "CHILD_PROTECTION");
        assert_eq!(value["care_setting"], "UNKNOWN");
        assert_eq!(value["accessor"]["name"], "Dr O'Test");
        assert!(delivery.accessed_at.is_some());
    }

    #[test]
    fn xml_escapes_text() {
        let xml = Delivery::from_wire(&notification()).xml();
        assert!(xml.contains("<LocalId>L&lt;1&gt;&amp;</LocalId>"), "{xml}");
        assert!(xml.contains("<OrganisationName>Leeds &quot;Teaching&quot;</OrganisationName>"), "{xml}");
        assert!(xml.contains("<Name>Dr O&apos;Test</Name>"), "{xml}");
    }
}
