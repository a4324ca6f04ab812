//! Client certificate identity: arbitrary DER gives an identity or a
//! refusal, never a panic; an identity has a valid ODS code and no control
//! characters.
#![no_main]

use cpis_relay::auth::{Identity, is_ods_code};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(identity) = Identity::from_certificate(data) {
        assert!(is_ods_code(&identity.ods_code), "{:?}", identity.ods_code);
        assert!(!identity.organisation_name.is_empty());
        assert!(!identity.organisation_name.chars().any(char::is_control));
    }
});
