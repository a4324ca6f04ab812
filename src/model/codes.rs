//! The codes stores keep for plan types (care settings keep theirs in
//! `care_setting`, with the rest of their vocabulary): fixed for good,
//! whatever the order or the Rust names of the variants, so that reordering or
//! renaming them can never change the meaning of a stored record or of a
//! PostgreSQL request key. Embedded records (postcard) hold the one-byte code;
//! PostgreSQL columns hold the name. A new variant takes a new code.

use super::PlanType;

impl PlanType {
    /// The code stores keep for this type (embedded records and keys): fixed for good.
    pub(crate) const fn stored_code(self) -> u8 {
        match self {
            Self::ChildProtection => 0,
            Self::LookedAfter => 1,
            Self::UnbornChildProtection => 2,
        }
    }

    /// The type of a stored code.
    pub(crate) fn from_stored_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|plan_type| plan_type.stored_code() == code)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are those the derived encoding wrote before they were made
    /// explicit (each variant's place): stores written then read the same now.
    #[test]
    fn stored_codes_are_what_stores_already_hold() {
        for (place, plan_type) in PlanType::ALL.into_iter().enumerate() {
            assert_eq!(postcard::to_allocvec(&plan_type).unwrap(), vec![place as u8]);
        }
    }

    #[test]
    fn an_unknown_code_is_an_error_not_another_type() {
        assert!(postcard::from_bytes::<PlanType>(&[3]).is_err());
    }
}
