//! Stored records read back from the store: arbitrary bytes as a stored plan
//! (header, then postcard) or a stored access decode or are reported
//! corrupt, never panic.
#![no_main]

use cpis_relay::{
    model::PlanType,
    nhs::NhsNumber,
    stored::{StoredAccess, StoredPlan, visible_until_of},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let nhs_number = NhsNumber::parse("9990000018").expect("a valid number");
    let _ = visible_until_of(data);
    for plan_type in PlanType::ALL {
        if let Ok(stored) = StoredPlan::from_stored("706".into(), nhs_number, plan_type, data) {
            let _ = stored.visible_until();
            let _ = stored.is_visible_on(chrono::NaiveDate::MIN);
            let _ = stored.is_visible_on(chrono::NaiveDate::MAX);
            if let Ok(plan) = stored.decode() {
                assert_eq!(plan.nhs_number, nhs_number);
                assert_eq!(plan.plan_type, plan_type);
                let _ = plan.visible_until();
                let _ = format!("{plan:?}");
            }
        }
    }
    let access = StoredAccess::from_stored(data);
    if let Ok(view) = access.view() {
        let event = view.to_event();
        let _ = format!("{view:?} {event:?}");
        let _ = StoredAccess::encode(&event);
    }
});
