//! The NHS number: ten digits with a modulus-11 check digit. Owns parsing
//! (spaces and dashes accepted), validation and display; nothing else in the
//! crate inspects the digits.

use std::{fmt, str::FromStr};

/// A validated NHS number, stored as its ten digits in a `u64` so that index
/// keys are small and hash fast.
/// `Debug` is redacted (`NhsNumber(*******919)`, the last three digits
/// only): a `{:?}` in a log line or a panic message never carries the number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NhsNumber(u64);

/// The hasher of the hot maps keyed by NHS number (the index's people, their
/// recent accesses, the unusual-access windows): foldhash, several times
/// faster than the standard library's SipHash on a `u64`. SipHash's defence is
/// against keys chosen to collide (hash flooding); it is not needed here:
/// only a validated NHS number is ever a key (ten digits with a modulus 11
/// check digit: nine free digits, so a caller cannot pick arbitrary keys),
/// plans are keyed only by what authenticated local authorities upload, a
/// search of an unknown number inserts nothing, and foldhash is still seeded
/// at random per map, so which numbers collide cannot be worked out offline.
pub(crate) type FastHash = foldhash::fast::RandomState;

impl fmt::Debug for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NhsNumber(*******{:03})", self.0 % 1000)
    }
}

/// Why a string is not an NHS number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    #[error("is empty")]
    Empty,
    #[error("must be 10 digits (spaces or dashes between groups allowed)")]
    BadFormat,
    #[error("fails the modulus 11 check")]
    BadCheckDigit,
}

impl NhsNumber {
    /// The never-issued range used for test and synthetic data.
    pub const TEST_RANGE: std::ops::RangeInclusive<u64> = 9_990_000_000..=9_999_999_999;

    /// Parses `9434765919`, `943 476 5919` or `943-476-5919`.
    pub fn parse(text: &str) -> Result<Self, NhsNumberError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(NhsNumberError::Empty);
        }
        let mut digits = [0u8; 10];
        let mut count = 0;
        let mut previous_was_separator = true;
        for byte in text.bytes() {
            match byte {
                b'0'..=b'9' => {
                    if count == 10 {
                        return Err(NhsNumberError::BadFormat);
                    }
                    digits[count] = byte - b'0';
                    count += 1;
                    previous_was_separator = false;
                }
                // A single separator between digit groups, never leading or doubled.
                b' ' | b'-' if !previous_was_separator => previous_was_separator = true,
                _ => return Err(NhsNumberError::BadFormat),
            }
        }
        if count != 10 || previous_was_separator {
            return Err(NhsNumberError::BadFormat);
        }
        Self::from_digits(digits)
    }

    /// Builds an NHS number from its value, checking the check digit.
    pub fn from_u64(value: u64) -> Result<Self, NhsNumberError> {
        if value > 9_999_999_999 {
            return Err(NhsNumberError::BadFormat);
        }
        let mut digits = [0u8; 10];
        let mut rest = value;
        for digit in digits.iter_mut().rev() {
            *digit = (rest % 10) as u8;
            rest /= 10;
        }
        Self::from_digits(digits)
    }

    /// The check digit for nine leading digits, or `None` when no check
    /// digit exists (the remainder gives 10) and the nine digits are unusable.
    pub(crate) fn check_digit(first_nine: &[u8; 9]) -> Option<u8> {
        let sum: u32 = first_nine.iter().zip((2..=10u32).rev()).map(|(&digit, weight)| u32::from(digit) * weight).sum();
        match 11 - sum % 11 {
            11 => Some(0),
            10 => None,
            check => Some(check as u8),
        }
    }

    /// Completes nine leading digits (as a number below 1,000,000,000) into an
    /// NHS number, or `None` if they have no valid check digit.
    pub fn complete(first_nine: u64) -> Option<Self> {
        if first_nine > 999_999_999 {
            return None;
        }
        let mut digits = [0u8; 9];
        let mut rest = first_nine;
        for digit in digits.iter_mut().rev() {
            *digit = (rest % 10) as u8;
            rest /= 10;
        }
        let check = Self::check_digit(&digits)?;
        Some(Self(first_nine * 10 + u64::from(check)))
    }

    fn from_digits(digits: [u8; 10]) -> Result<Self, NhsNumberError> {
        let first_nine: [u8; 9] = digits[..9].try_into().map_err(|_| NhsNumberError::BadFormat)?;
        if Self::check_digit(&first_nine) != Some(digits[9]) {
            return Err(NhsNumberError::BadCheckDigit);
        }
        Ok(Self(digits.iter().fold(0u64, |acc, &digit| acc * 10 + u64::from(digit))))
    }

    /// The ten digits as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// True for the never-issued test range 999 000 0000 - 999 999 9999.
    pub fn is_test_number(self) -> bool {
        Self::TEST_RANGE.contains(&self.0)
    }
}

impl fmt::Display for NhsNumber {
    /// Ten digits without separators, as systems exchange it.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:010}", self.0)
    }
}

impl FromStr for NhsNumber {
    type Err = NhsNumberError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl serde::Serialize for NhsNumber {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for NhsNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u64::deserialize(deserializer)?;
        Self::from_u64(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_to_the_last_three_digits() {
        let number = NhsNumber::parse("9434765919").unwrap();
        assert_eq!(format!("{number:?}"), "NhsNumber(*******919)");
        assert_eq!(format!("{:?}", Some(number)), "Some(NhsNumber(*******919))");
        assert!(!format!("{number:#?}").contains("9434765919"));
    }

    #[test]
    fn accepts_the_documented_forms() {
        for text in ["9434765919", "943 476 5919", "943-476-5919", " 9434765919 "] {
            assert_eq!(NhsNumber::parse(text).map(|n| n.as_u64()), Ok(9_434_765_919), "{text}");
        }
        assert_eq!(NhsNumber::parse("943 476 5919").unwrap().to_string(), "9434765919");
    }

    #[test]
    fn rejects_bad_check_digits_and_formats() {
        assert_eq!(NhsNumber::parse("9434765918"), Err(NhsNumberError::BadCheckDigit));
        assert_eq!(NhsNumber::parse(""), Err(NhsNumberError::Empty));
        for text in
            ["943476591", "94347659190", "943  476 5919", "-9434765919", "9434765919-", "943.476.5919", "94347659l9"]
        {
            assert_eq!(NhsNumber::parse(text), Err(NhsNumberError::BadFormat), "{text}");
        }
    }

    #[test]
    fn remainder_of_one_gives_check_digit_ten_which_is_invalid() {
        // 000000001 * weights: only digit 9 has weight 2 -> sum 2 -> 11 - 2 = 9.
        assert_eq!(NhsNumber::check_digit(&[0, 0, 0, 0, 0, 0, 0, 0, 1]), Some(9));
        // Sum 1 mod 11 -> c = 10: no valid number exists for these nine digits.
        let nine = (0..=999_999_999u64).find(|n| NhsNumber::complete(*n).is_none()).unwrap();
        assert!(NhsNumber::complete(nine).is_none());
    }

    #[test]
    fn completed_numbers_round_trip_through_parse() {
        let mut made = 0;
        for first_nine in 999_000_000..999_000_200u64 {
            if let Some(number) = NhsNumber::complete(first_nine) {
                assert!(number.is_test_number());
                assert_eq!(NhsNumber::parse(&number.to_string()), Ok(number));
                made += 1;
            }
        }
        assert!(made > 150, "only {made} of 200 prefixes had a check digit");
    }
}
