//! Where a FHIR search's care setting comes from. The CP-IS API carries
//! none, and the certificate's role says only scheduled or unscheduled: an
//! out-of-hours GP, an ambulance service and a maternity unit are all
//! unscheduled care. So the setting is the bearer token's claim
//! (`fhir_care_setting_claim`, default `care_setting`) or else the one
//! configured for the caller's organisation (`fhir_care_settings`,
//! `ODS=SETTING`); a search whose setting is neither is refused, never
//! guessed. Settings are read by [`CareSetting::parse`], the one
//! vocabulary's. This module never decides whether a setting suits a search
//! (scheduled or not): the domain does.

use std::collections::BTreeMap;

use crate::{error::Error, model::CareSetting};

/// Default name of the token claim naming the care setting.
pub(crate) const DEFAULT_CLAIM: &str = "care_setting";

/// The care setting sources the door is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CareSettings {
    /// The bearer token claim naming the care setting (optional in a token).
    pub claim: String,
    /// Each organisation's setting by ODS code, for tokens without the claim.
    pub by_organisation: BTreeMap<String, CareSetting>,
}

impl Default for CareSettings {
    fn default() -> Self {
        Self { claim: DEFAULT_CLAIM.into(), by_organisation: BTreeMap::new() }
    }
}

impl CareSettings {
    /// The setting of a search by `ods_code` whose token claimed `claimed`:
    /// the claim, else the organisation's, else refused.
    pub fn resolve(&self, claimed: Option<CareSetting>, ods_code: &str) -> Result<CareSetting, Error> {
        claimed.or_else(|| self.by_organisation.get(ods_code).copied()).ok_or_else(|| {
            Error::PermissionDenied(format!(
                "the care setting of this search is unknown: the bearer token has no {} claim and organisation {ods_code} has no care setting configured (fhir_care_settings)",
                self.claim
            ))
        })
    }
}

/// One `ODS=SETTING` entry of `fhir_care_settings`.
pub(crate) fn parse_entry(entry: &str) -> Result<(String, CareSetting), String> {
    let (ods_code, setting) = entry.split_once('=').ok_or_else(|| format!("{entry:?} is not ODS_CODE=CARE_SETTING"))?;
    let ods_code = ods_code.trim();
    if ods_code.is_empty() || !ods_code.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("{entry:?}: {ods_code:?} is not an ODS code"));
    }
    Ok((ods_code.to_ascii_uppercase(), CareSetting::parse(setting).map_err(|reason| format!("{entry:?}: {reason}"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_an_ods_code_and_a_setting() {
        assert_eq!(parse_entry("rx9=AMBULANCE_SERVICE"), Ok(("RX9".into(), CareSetting::AmbulanceService)));
        assert!(parse_entry("RX9").is_err());
        assert!(parse_entry("R X9=AMBULANCE_SERVICE").is_err());
    }

    #[test]
    fn the_claim_wins_then_the_organisation_and_otherwise_the_search_is_refused() {
        let settings = CareSettings {
            by_organisation: BTreeMap::from([("RR8".into(), CareSetting::EmergencyDepartment)]),
            ..CareSettings::default()
        };
        assert_eq!(settings.resolve(None, "RR8").unwrap(), CareSetting::EmergencyDepartment);
        assert_eq!(settings.resolve(Some(CareSetting::MaternityUnit), "RR8").unwrap(), CareSetting::MaternityUnit);
        assert!(matches!(settings.resolve(None, "RX9"), Err(Error::PermissionDenied(_))));
    }
}
