//! Who is calling and what they may do. Identity comes only from the verified
//! client certificate (CN = ODS code, O = organisation name, OU = role) and is
//! parsed once per connection; every role check of the relay is in
//! [`authorize`]. Nothing here reads a request body.
//!
//! - [`token`]: the user from a bearer JWT (JWKS, issuer, audience, expiry),
//!   which the FHIR door and the browser view accept;
//! - [`care_setting`]: a search's care setting when the door carries none,
//!   from the token or the organisation's configuration.

pub mod care_setting;
pub mod token;

use std::fmt;

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Emergency departments, out-of-hours GPs, walk-in centres, ... : search, and every search notifies.
    UnscheduledCare,
    /// GP practices, health visitors, school nurses: search silently (audited, never notified).
    ScheduledCare,
    /// A local authority's children's social care: its own plans and notifications.
    SocialCare,
    /// Information governance: reads access logs.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 4] = [Self::UnscheduledCare, Self::ScheduledCare, Self::SocialCare, Self::Auditor];

    /// The certificate OU naming this role.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnscheduledCare => "unscheduled-care",
            Self::ScheduledCare => "scheduled-care",
            Self::SocialCare => "social-care",
            Self::Auditor => "auditor",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The organisation behind a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub ods_code: String,
    pub organisation_name: String,
    pub role: Role,
}

impl Identity {
    /// Reads the identity from a DER client certificate that TLS has already
    /// verified against the relay's CA. Strict and exact: each of CN, O and OU
    /// must appear once (in whatever string encoding: a second one in another
    /// encoding is refused, not skipped), values are taken as written (never
    /// trimmed), none may hold a control character, and the ODS code must match
    /// [`is_ods_code`] before it becomes a store key, a log field or a label.
    pub fn from_certificate(der: &[u8]) -> Result<Self, String> {
        let (_, certificate) =
            X509Certificate::from_der(der).map_err(|error| format!("client certificate cannot be parsed: {error}"))?;
        let subject = certificate.subject();
        let single = |values: Vec<&x509_parser::x509::AttributeTypeAndValue>, what: &str| -> Result<String, String> {
            let value = match values.as_slice() {
                [value] => value.as_str().map_err(|_| format!("client certificate {what} is not a string"))?,
                [] => return Err(format!("client certificate subject has no {what}")),
                _ => return Err(format!("client certificate subject has more than one {what}")),
            };
            if value.is_empty() || value.chars().any(char::is_control) {
                return Err(format!("client certificate {what} is empty or holds a control character"));
            }
            Ok(value.to_owned())
        };
        let ods_code = single(subject.iter_common_name().collect(), "CN (ODS code)")?;
        if !is_ods_code(&ods_code) {
            return Err(format!(
                "client certificate CN is not an ODS code (3 to 10 capital letters and digits): {:?}",
                ods_code.escape_debug().to_string()
            ));
        }
        let organisation_name = single(subject.iter_organization().collect(), "O (organisation name)")?;
        let role_text = single(subject.iter_organizational_unit().collect(), "OU (role)")?;
        let role = Role::parse(&role_text).ok_or_else(|| {
            format!("client certificate OU {role_text:?} is not a role (unscheduled-care, scheduled-care, social-care, auditor)")
        })?;
        Ok(Self { ods_code, organisation_name, role })
    }
}

/// The user a personal certificate names besides its organisation (the
/// browser view's smartcard-like identity): UID = user id, name (2.5.4.41)
/// = the person's name, title (2.5.4.12) = their role code. An organisation's
/// certificate has none of them (`Ok(None)`); one with some but not all, or
/// with any twice, empty or holding a control character, names no user (`Err`).
pub(crate) fn user_from_certificate(der: &[u8]) -> Result<Option<crate::model::Accessor>, String> {
    use x509_parser::oid_registry::{OID_USERID, OID_X509_NAME, OID_X509_TITLE};
    let (_, certificate) =
        X509Certificate::from_der(der).map_err(|error| format!("client certificate cannot be parsed: {error}"))?;
    let subject = certificate.subject();
    let attribute = |oid, what: &str| -> Result<Option<String>, String> {
        let values: Vec<_> = subject.iter_by_oid(oid).collect();
        match values.as_slice() {
            [] => Ok(None),
            [value] => {
                let text = value.as_str().map_err(|_| format!("client certificate {what} is not a string"))?;
                if text.trim().is_empty() || text.chars().any(char::is_control) {
                    return Err(format!("client certificate {what} is empty or holds a control character"));
                }
                Ok(Some(text.to_owned()))
            }
            _ => Err(format!("client certificate subject has more than one {what}")),
        }
    };
    let (user_id_oid, name_oid, title_oid) = (OID_USERID, OID_X509_NAME, OID_X509_TITLE);
    let user_id = attribute(&user_id_oid, "UID (user id)")?;
    let name = attribute(&name_oid, "name (the user's name)")?;
    let role_code = attribute(&title_oid, "title (the user's role code)")?;
    match (user_id, name, role_code) {
        (None, None, None) => Ok(None),
        (Some(user_id), Some(name), Some(role_code)) => Ok(Some(crate::model::Accessor { user_id, name, role_code })),
        _ => Err("client certificate names a user only in part: UID, name and title go together".into()),
    }
}

/// An organisation code as NHS ODS issues them: 3 to 10 capital letters and
/// digits (trusts `RR8`, local authorities `706`, GP practices `Y02345`).
pub fn is_ods_code(text: &str) -> bool {
    (3..=10).contains(&text.len()) && text.bytes().all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit())
}

/// Everything a caller can ask of the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Search,
    UploadPlans,
    DeletePlans,
    ExportPlans,
    Subscribe,
    Ack,
    ReadAccessLog,
    /// The access log's checkpoints and consistency proofs: hashes and sizes, no personal data.
    ReadLogCheckpoints,
    /// Inclusion proofs of the accesses behind the caller's own notifications.
    ProveNotifications,
}

impl Action {
    pub const ALL: [Action; 9] = [
        Self::Search,
        Self::UploadPlans,
        Self::DeletePlans,
        Self::ExportPlans,
        Self::Subscribe,
        Self::Ack,
        Self::ReadAccessLog,
        Self::ReadLogCheckpoints,
        Self::ProveNotifications,
    ];

    /// The roles allowed to take this action.
    pub(crate) fn allowed_roles(self) -> &'static [Role] {
        match self {
            Self::Search => &[Role::UnscheduledCare, Role::ScheduledCare],
            Self::UploadPlans
            | Self::DeletePlans
            | Self::ExportPlans
            | Self::Subscribe
            | Self::Ack
            | Self::ProveNotifications => &[Role::SocialCare],
            Self::ReadAccessLog => &[Role::Auditor],
            Self::ReadLogCheckpoints => &[Role::SocialCare, Role::Auditor],
        }
    }
}

/// The role matrix. Local authority ownership is implied: every social-care
/// action is scoped to the caller's own ODS code by the domain code, which
/// takes the LA from the identity and never from the request.
pub(crate) fn authorize(identity: &Identity, action: Action) -> Result<()> {
    let allowed = action.allowed_roles();
    if allowed.contains(&identity.role) {
        return Ok(());
    }
    metrics::counter!("cpis_auth_denied_total", "reason" => "wrong_role").increment(1);
    let allowed: Vec<&str> = allowed.iter().map(|role| role.as_str()).collect();
    Err(Error::PermissionDenied(format!(
        "{action:?} needs the {} role; this certificate's role is {}",
        allowed.join(" or "),
        identity.role
    )))
}

/// Whether a search is scheduled care, which is silent (recorded for audit,
/// never notified nor listed among previous accesses). The certificate
/// decides: a scheduled-care organisation's searches are always scheduled.
/// A caller asking for a scheduled access (`asked_scheduled`, the FHIR door's
/// `IsUnscheduledAccessEvent: false`) with an unscheduled-care certificate is
/// refused: emergency departments always notify.
pub(crate) fn search_is_scheduled(identity: &Identity, asked_scheduled: bool) -> Result<bool> {
    match identity.role {
        Role::ScheduledCare => Ok(true),
        Role::UnscheduledCare if asked_scheduled => {
            metrics::counter!("cpis_auth_denied_total", "reason" => "wrong_role").increment(1);
            Err(Error::PermissionDenied(
                "a scheduled (silent) access needs a scheduled-care certificate; unscheduled care always notifies"
                    .into(),
            ))
        }
        _ => Ok(false),
    }
}

/// Checks that a social-care caller names its own local authority.
pub(crate) fn authorize_local_authority(identity: &Identity, ods_code: &str) -> Result<()> {
    if identity.ods_code == ods_code {
        return Ok(());
    }
    metrics::counter!("cpis_auth_denied_total", "reason" => "other_local_authority").increment(1);
    Err(Error::PermissionDenied(format!(
        "this certificate is for local authority {}; it cannot act for {ods_code:?}",
        identity.ods_code
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_has_exactly_one_role() {
        let health = Identity { ods_code: "RR8".into(), organisation_name: "T".into(), role: Role::UnscheduledCare };
        let la = Identity { role: Role::SocialCare, ..health.clone() };
        let auditor = Identity { role: Role::Auditor, ..health.clone() };
        let scheduled = Identity { role: Role::ScheduledCare, ..health.clone() };
        for action in Action::ALL {
            let allowed: Vec<Role> = [&health, &scheduled, &la, &auditor]
                .into_iter()
                .filter(|identity| authorize(identity, action).is_ok())
                .map(|identity| identity.role)
                .collect();
            assert_eq!(allowed, action.allowed_roles(), "{action:?}");
        }
    }

    fn certificate(name: rcgen::DistinguishedName) -> Vec<u8> {
        let authority = crate::certs::Authority::generate("test CA").unwrap();
        let pair = authority.issue_client_named(name).unwrap();
        rustls::pki_types::pem::PemObject::from_pem_slice(pair.cert_pem.as_bytes())
            .map(|der: rustls::pki_types::CertificateDer| der.to_vec())
            .unwrap()
    }

    fn subject(cn: &str, o: &str, ou: &str) -> rcgen::DistinguishedName {
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, cn);
        name.push(rcgen::DnType::OrganizationName, o);
        name.push(rcgen::DnType::OrganizationalUnitName, ou);
        name
    }

    #[test]
    fn a_well_formed_subject_is_an_identity() {
        let identity = Identity::from_certificate(&certificate(subject("RR8", "LEEDS", "unscheduled-care"))).unwrap();
        assert_eq!(
            identity,
            Identity { ods_code: "RR8".into(), organisation_name: "LEEDS".into(), role: Role::UnscheduledCare }
        );
    }

    #[test]
    fn a_second_ou_in_another_string_encoding_is_refused_not_skipped() {
        let mut name = subject("X26", "NHS ENGLAND", "unscheduled-care");
        // The same attribute type (OU, 2.5.4.11) again, as a BMPString.
        let bmp = rcgen::string::BmpString::try_from("auditor").unwrap();
        name.push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 11]), rcgen::DnValue::BmpString(bmp));
        let refused = Identity::from_certificate(&certificate(name)).unwrap_err();
        assert!(refused.contains("more than one OU"), "{refused}");
    }

    #[test]
    fn values_are_taken_as_written_and_control_characters_refused() {
        for (cn, o) in
            [("RR8\n", "LEEDS"), (" RR8", "LEEDS"), ("RR8", "LEEDS\nERROR forged"), ("rr8", "LEEDS"), ("R8", "LEEDS")]
        {
            assert!(
                Identity::from_certificate(&certificate(subject(cn, o, "unscheduled-care"))).is_err(),
                "{cn:?} / {o:?} is refused"
            );
        }
    }

    #[test]
    fn a_personal_certificate_names_its_user_and_an_organisations_none() {
        let mut name = subject("RR8", "LEEDS", "unscheduled-care");
        assert_eq!(user_from_certificate(&certificate(name.clone())).unwrap(), None);
        name.push(rcgen::DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 1]), "555021935107");
        name.push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 41]), "Dr Ada Example");
        let partial = user_from_certificate(&certificate(name.clone())).unwrap_err();
        assert!(partial.contains("only in part"), "{partial}");
        name.push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 12]), "R8000");
        let user = user_from_certificate(&certificate(name)).unwrap().unwrap();
        assert_eq!(
            (user.user_id.as_str(), user.name.as_str(), user.role_code.as_str()),
            ("555021935107", "Dr Ada Example", "R8000")
        );
    }

    #[test]
    fn scheduled_care_is_always_silent_and_unscheduled_care_never() {
        let health = Identity { ods_code: "RR8".into(), organisation_name: "T".into(), role: Role::UnscheduledCare };
        let gp = Identity { role: Role::ScheduledCare, ..health.clone() };
        assert!(!search_is_scheduled(&health, false).unwrap());
        assert!(matches!(search_is_scheduled(&health, true), Err(Error::PermissionDenied(_))));
        assert!(search_is_scheduled(&gp, false).unwrap());
        assert!(search_is_scheduled(&gp, true).unwrap());
    }
}
