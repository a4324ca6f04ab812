//! The codes stores keep for plan types and care settings: fixed for good,
//! whatever the order or the Rust names of the variants, so that reordering or
//! renaming them can never change the meaning of a stored record or of a
//! PostgreSQL request key. Embedded records (postcard) hold the one-byte code;
//! PostgreSQL columns hold the name. A new variant takes a new code.

use super::{CareSetting, PlanType};

impl PlanType {
    /// The code stores keep for this type (embedded records and keys): fixed for good.
    pub const fn stored_code(self) -> u8 {
        match self {
            Self::ChildProtection => 0,
            Self::LookedAfter => 1,
            Self::UnbornChildProtection => 2,
        }
    }

    /// The type of a stored code.
    pub fn from_stored_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|plan_type| plan_type.stored_code() == code)
    }
}

impl CareSetting {
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

    /// The code embedded records keep: fixed for good (new settings take new codes).
    pub const fn stored_code(self) -> u8 {
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
    pub fn from_stored_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|setting| setting.stored_code() == code)
    }

    /// The name PostgreSQL keeps (a column of accesses and of request keys): fixed for good.
    pub const fn stored_name(self) -> &'static str {
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
}

impl From<PlanType> for u8 {
    fn from(plan_type: PlanType) -> u8 {
        plan_type.stored_code()
    }
}

impl TryFrom<u8> for PlanType {
    type Error = String;

    fn try_from(code: u8) -> Result<Self, String> {
        Self::from_stored_code(code).ok_or_else(|| format!("plan type code {code} is unknown"))
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

    /// The codes are those the derived encoding wrote before they were made
    /// explicit (each variant's place): stores written then read the same now.
    #[test]
    fn stored_codes_are_what_stores_already_hold() {
        for (place, setting) in CareSetting::ALL.into_iter().enumerate() {
            assert_eq!(postcard::to_allocvec(&setting).unwrap(), vec![place as u8]);
            assert_eq!(postcard::from_bytes::<CareSetting>(&[place as u8]).unwrap(), setting);
        }
        for (place, plan_type) in PlanType::ALL.into_iter().enumerate() {
            assert_eq!(postcard::to_allocvec(&plan_type).unwrap(), vec![place as u8]);
        }
        let names: Vec<&str> = CareSetting::ALL.iter().map(|setting| setting.stored_name()).collect();
        assert_eq!(
            names,
            [
                "EmergencyDepartment",
                "OutOfHoursGp",
                "WalkInCentre",
                "MinorInjuriesUnit",
                "PaediatricWard",
                "AmbulanceService",
                "MaternityUnit",
                "GeneralPractice",
                "HealthVisiting",
                "SchoolNursing",
            ]
        );
    }

    #[test]
    fn an_unknown_code_is_an_error_not_another_setting() {
        assert!(postcard::from_bytes::<CareSetting>(&[10]).is_err());
        assert!(postcard::from_bytes::<PlanType>(&[3]).is_err());
    }
}
