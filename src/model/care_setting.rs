//! The one vocabulary of care settings: every name a setting goes by, in one
//! place, so that no door, tool or store keeps a list of its own.
//!
//! | what | example | used by |
//! |---|---|---|
//! | [`name`](CareSetting::name) | `EmergencyDepartment` | the browser's search form; the name PostgreSQL keeps ([`stored_name`](CareSetting::stored_name)) |
//! | [`contract_name`](CareSetting::contract_name) | `EMERGENCY_DEPARTMENT` | the `cpis.v1.CareSetting` value name: bearer token claims, `fhir_care_settings`, the CLI |
//! | [`display_name`](CareSetting::display_name) | `Emergency department` | people: the browser view, the FHIR AuditEvent site, reports |
//! | [`wire_code`](CareSetting::wire_code) | `1` | the `cpis.v1.CareSetting` number (`wire` converts with it) |
//! | [`stored_code`](CareSetting::stored_code) | `0` | embedded records and keys |
//!
//! [`parse`](CareSetting::parse) reads a contract name as people type it.
//! Stored codes and names are fixed for good, whatever the order or the Rust
//! names of the variants (a test pins them): reordering or renaming a variant
//! can never change the meaning of a stored record or of a PostgreSQL request
//! key. A new setting takes a new code.

use serde::{Deserialize, Serialize};

/// Where a search is made from. Stored by its [`stored_code`](Self::stored_code)
/// (embedded records) and [`stored_name`](Self::stored_name) (PostgreSQL
/// columns and request keys), never by the variant's place or Rust name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum CareSetting {
    EmergencyDepartment,
    OutOfHoursGp,
    WalkInCentre,
    MinorInjuriesUnit,
    PaediatricWard,
    AmbulanceService,
    MaternityUnit,
    // Scheduled care: searches are silent.
    GeneralPractice,
    HealthVisiting,
    SchoolNursing,
}

impl CareSetting {
    /// Every setting, unscheduled first, each kind's usual one first.
    pub const ALL: [CareSetting; 10] = [
        Self::EmergencyDepartment,
        Self::OutOfHoursGp,
        Self::WalkInCentre,
        Self::MinorInjuriesUnit,
        Self::PaediatricWard,
        Self::AmbulanceService,
        Self::MaternityUnit,
        Self::GeneralPractice,
        Self::HealthVisiting,
        Self::SchoolNursing,
    ];

    /// Whether this is a scheduled care setting (general practice, health
    /// visiting, school nursing), whose searches are silent.
    pub(crate) fn is_scheduled(self) -> bool {
        matches!(self, Self::GeneralPractice | Self::HealthVisiting | Self::SchoolNursing)
    }

    /// The scheduled (or the unscheduled) settings, in [`ALL`](Self::ALL)'s order.
    pub(crate) fn of_kind(scheduled: bool) -> impl Iterator<Item = CareSetting> {
        Self::ALL.into_iter().filter(move |setting| setting.is_scheduled() == scheduled)
    }

    /// The setting's name (`EmergencyDepartment`): the browser form's value,
    /// and the name PostgreSQL keeps ([`stored_name`](Self::stored_name)).
    pub const fn name(self) -> &'static str {
        match self {
            Self::EmergencyDepartment => "EmergencyDepartment",
            Self::OutOfHoursGp => "OutOfHoursGp",
            Self::WalkInCentre => "WalkInCentre",
            Self::MinorInjuriesUnit => "MinorInjuriesUnit",
            Self::PaediatricWard => "PaediatricWard",
            Self::AmbulanceService => "AmbulanceService",
            Self::MaternityUnit => "MaternityUnit",
            Self::GeneralPractice => "GeneralPractice",
            Self::HealthVisiting => "HealthVisiting",
            Self::SchoolNursing => "SchoolNursing",
        }
    }

    /// The setting of a [`name`](Self::name), exactly.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|setting| setting.name() == name)
    }

    /// The setting as people read it ("Emergency department"): the browser
    /// view and the FHIR door's AuditEvent site show the same words.
    pub(crate) fn display_name(self) -> &'static str {
        match self {
            Self::EmergencyDepartment => "Emergency department",
            Self::OutOfHoursGp => "Out-of-hours GP",
            Self::WalkInCentre => "Walk-in centre",
            Self::MinorInjuriesUnit => "Minor injuries unit",
            Self::PaediatricWard => "Paediatric ward",
            Self::AmbulanceService => "Ambulance service",
            Self::MaternityUnit => "Maternity unit",
            Self::GeneralPractice => "General practice",
            Self::HealthVisiting => "Health visiting",
            Self::SchoolNursing => "School nursing",
        }
    }

    /// The setting's name in the contract (`EMERGENCY_DEPARTMENT`): the value
    /// name of `cpis.v1.CareSetting` (a test in `wire` keeps them equal),
    /// read from a bearer token's claim and from `fhir_care_settings`.
    pub(crate) fn contract_name(self) -> &'static str {
        match self {
            Self::EmergencyDepartment => "EMERGENCY_DEPARTMENT",
            Self::OutOfHoursGp => "OUT_OF_HOURS_GP",
            Self::WalkInCentre => "WALK_IN_CENTRE",
            Self::MinorInjuriesUnit => "MINOR_INJURIES_UNIT",
            Self::PaediatricWard => "PAEDIATRIC_WARD",
            Self::AmbulanceService => "AMBULANCE_SERVICE",
            Self::MaternityUnit => "MATERNITY_UNIT",
            Self::GeneralPractice => "GENERAL_PRACTICE",
            Self::HealthVisiting => "HEALTH_VISITING",
            Self::SchoolNursing => "SCHOOL_NURSING",
        }
    }

    /// The setting of a [`contract_name`](Self::contract_name), exactly.
    pub(crate) fn from_contract_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|setting| setting.contract_name() == name)
    }

    /// A setting by its contract name as people type it: any case, with `-`
    /// for `_` (`out-of-hours-gp`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let name = text.trim().to_ascii_uppercase().replace('-', "_");
        Self::from_contract_name(&name).ok_or_else(|| {
            format!("{text:?} is not a care setting (EMERGENCY_DEPARTMENT, OUT_OF_HOURS_GP, AMBULANCE_SERVICE, ...)")
        })
    }

    /// The number of the setting's `cpis.v1.CareSetting` value (0 is
    /// UNSPECIFIED, no setting); a test in `wire` keeps them equal.
    pub(crate) const fn wire_code(self) -> i32 {
        match self {
            Self::EmergencyDepartment => 1,
            Self::OutOfHoursGp => 2,
            Self::WalkInCentre => 3,
            Self::MinorInjuriesUnit => 4,
            Self::PaediatricWard => 5,
            Self::AmbulanceService => 6,
            Self::MaternityUnit => 7,
            Self::GeneralPractice => 8,
            Self::HealthVisiting => 9,
            Self::SchoolNursing => 10,
        }
    }

    /// The setting of a wire number; `None` for UNSPECIFIED and numbers the contract does not have.
    pub(crate) fn from_wire_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|setting| setting.wire_code() == code)
    }

    /// The code embedded records keep: fixed for good (new settings take new codes).
    pub(crate) const fn stored_code(self) -> u8 {
        match self {
            Self::EmergencyDepartment => 0,
            Self::OutOfHoursGp => 1,
            Self::WalkInCentre => 2,
            Self::MinorInjuriesUnit => 3,
            Self::PaediatricWard => 4,
            Self::AmbulanceService => 5,
            Self::MaternityUnit => 6,
            Self::GeneralPractice => 7,
            Self::HealthVisiting => 8,
            Self::SchoolNursing => 9,
        }
    }

    /// The setting of a stored code.
    pub(crate) fn from_stored_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|setting| setting.stored_code() == code)
    }

    /// The name PostgreSQL keeps (a column of accesses and of request keys):
    /// the setting's [`name`](Self::name), fixed for good.
    pub(crate) const fn stored_name(self) -> &'static str {
        self.name()
    }
}

impl From<CareSetting> for u8 {
    fn from(setting: CareSetting) -> u8 {
        setting.stored_code()
    }
}

impl TryFrom<u8> for CareSetting {
    type Error = String;

    fn try_from(code: u8) -> Result<Self, String> {
        Self::from_stored_code(code).ok_or_else(|| format!("care setting code {code} is unknown"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What stores already hold: each setting's code (embedded records, the
    /// place the derived encoding gave each variant before the codes were
    /// explicit) and name (PostgreSQL). Never change a row of this table.
    const STORED: [(CareSetting, u8, &str); 10] = [
        (CareSetting::EmergencyDepartment, 0, "EmergencyDepartment"),
        (CareSetting::OutOfHoursGp, 1, "OutOfHoursGp"),
        (CareSetting::WalkInCentre, 2, "WalkInCentre"),
        (CareSetting::MinorInjuriesUnit, 3, "MinorInjuriesUnit"),
        (CareSetting::PaediatricWard, 4, "PaediatricWard"),
        (CareSetting::AmbulanceService, 5, "AmbulanceService"),
        (CareSetting::MaternityUnit, 6, "MaternityUnit"),
        (CareSetting::GeneralPractice, 7, "GeneralPractice"),
        (CareSetting::HealthVisiting, 8, "HealthVisiting"),
        (CareSetting::SchoolNursing, 9, "SchoolNursing"),
    ];

    #[test]
    fn stored_codes_and_names_are_what_stores_already_hold() {
        for (setting, code, name) in STORED {
            assert_eq!(setting.stored_code(), code, "{setting:?}");
            assert_eq!(postcard::to_allocvec(&setting).unwrap(), vec![code], "{setting:?}");
            assert_eq!(postcard::from_bytes::<CareSetting>(&[code]).unwrap(), setting);
            assert_eq!(setting.stored_name(), name, "{setting:?}");
        }
        assert_eq!(STORED.len(), CareSetting::ALL.len(), "a new setting takes a new row (and a new code)");
    }

    #[test]
    fn an_unknown_code_is_an_error_not_another_setting() {
        assert!(postcard::from_bytes::<CareSetting>(&[10]).is_err());
        assert_eq!(CareSetting::from_wire_code(0), None, "UNSPECIFIED is no setting");
        assert_eq!(CareSetting::from_wire_code(11), None);
    }

    #[test]
    fn every_name_reads_back_as_its_setting() {
        for setting in CareSetting::ALL {
            assert_eq!(CareSetting::from_name(setting.name()), Some(setting));
            assert_eq!(CareSetting::from_contract_name(setting.contract_name()), Some(setting));
            assert_eq!(CareSetting::parse(setting.contract_name()), Ok(setting));
            assert_eq!(CareSetting::from_wire_code(setting.wire_code()), Some(setting));
        }
        assert_eq!(CareSetting::parse("ambulance-service"), Ok(CareSetting::AmbulanceService));
        assert!(CareSetting::parse("CARE_SETTING_UNSPECIFIED").is_err());
        assert!(CareSetting::parse("ward").is_err());
    }

    #[test]
    fn the_kinds_split_all_settings_usual_one_first() {
        let scheduled: Vec<_> = CareSetting::of_kind(true).collect();
        assert_eq!(scheduled, [CareSetting::GeneralPractice, CareSetting::HealthVisiting, CareSetting::SchoolNursing]);
        let unscheduled: Vec<_> = CareSetting::of_kind(false).collect();
        assert_eq!(unscheduled.len(), 7);
        assert_eq!(unscheduled[0], CareSetting::EmergencyDepartment);
    }
}
