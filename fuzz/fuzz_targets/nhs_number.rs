//! NHS number parsing: any text either parses or is refused, never panics;
//! what parses displays as ten digits that parse back to the same number,
//! and a number from `from_u64` agrees with parsing its digits.
#![no_main]

use cpis_relay::nhs::NhsNumber;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(number) = NhsNumber::parse(text)
    {
        let shown = number.to_string();
        assert_eq!(shown.len(), 10, "{shown}");
        assert_eq!(NhsNumber::parse(&shown), Ok(number));
        assert_eq!(NhsNumber::from_u64(number.as_u64()), Ok(number));
        assert!(!format!("{number:?}").contains(&shown), "Debug is redacted");
    }
    if let Some(bytes) = data.first_chunk::<8>() {
        let value = u64::from_le_bytes(*bytes);
        match NhsNumber::from_u64(value) {
            Ok(number) => assert_eq!(NhsNumber::parse(&format!("{value:010}")), Ok(number)),
            Err(_) => assert!(value > 9_999_999_999 || NhsNumber::parse(&format!("{value:010}")).is_err()),
        }
    }
});
