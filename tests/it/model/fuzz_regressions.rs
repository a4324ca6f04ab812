//! Fuzzing's regression tests (issue 11): every input `cargo fuzz` found
//! crashing a parser (see fuzz/README.md) is kept here as a test, and the
//! committed seeds of the stored-record target are checked to be what the
//! store writes. `CPIS_WRITE_FUZZ_SEEDS=fuzz/seeds/stored_decode cargo test
//! --test fuzz_regressions` rewrites those seeds.

use std::path::Path;

use cpis_relay::{
    model::{AccessEvent, Accessor, Address, CareSetting, Plan, PlanType},
    nhs::NhsNumber,
    stored::{StoredAccess, StoredPlan},
};

fn nhs_number() -> NhsNumber {
    NhsNumber::parse("9990000018").unwrap()
}

fn plan() -> Plan {
    Plan {
        nhs_number: nhs_number(),
        la_ods_code: "706".into(),
        local_id: "L-1".into(),
        given_name: "Sam".into(),
        family_name: "Testchild".into(),
        date_of_birth: "2016-04-05".parse().unwrap(),
        address: Address { lines: vec!["1 Test Street".into()], postcode: "ZZ1 1ZZ".into() },
        plan_type: PlanType::UnbornChildProtection,
        start_date: "2026-01-10".parse().unwrap(),
        end_date: Some("2026-03-01".parse().unwrap()),
        expected_delivery_date: Some("2026-09-01".parse().unwrap()),
        team_code: "TEAM-A".into(),
        loaded_at: chrono::DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap(),
    }
}

fn access() -> AccessEvent {
    AccessEvent {
        id: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        accessed_at: chrono::DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap(),
        nhs_number: nhs_number(),
        organisation_ods_code: "RR8".into(),
        organisation_name: "Leeds Teaching Hospitals".into(),
        care_setting: CareSetting::EmergencyDepartment,
        accessor: Accessor { user_id: "u-1".into(), name: "Dr Test".into(), role_code: "R8000".into() },
        request_id: "req-1".into(),
        scheduled: false,
    }
}

#[test]
fn the_stored_decode_seeds_are_what_the_store_writes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/stored_decode");
    let plan_bytes = StoredPlan::encode(&plan(), "706".into()).unwrap().bytes().to_vec();
    // A stored access is the postcard encoding of the event.
    let access_bytes = postcard::to_allocvec(&access()).unwrap();
    assert_eq!(StoredAccess::from_stored(&access_bytes), StoredAccess::encode(&access()).unwrap());
    if let Some(out) = std::env::var_os("CPIS_WRITE_FUZZ_SEEDS") {
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(Path::new(&out).join("plan.bin"), &plan_bytes).unwrap();
        std::fs::write(Path::new(&out).join("access.bin"), &access_bytes).unwrap();
    }
    let committed = std::fs::read(dir.join("plan.bin")).unwrap();
    assert_eq!(committed, plan_bytes);
    let stored = StoredPlan::from_stored("706".into(), nhs_number(), PlanType::UnbornChildProtection, &committed);
    assert_eq!(stored.unwrap().decode().unwrap(), plan());
    let committed = std::fs::read(dir.join("access.bin")).unwrap();
    assert_eq!(StoredAccess::from_stored(&committed).view().unwrap().to_event(), access());
}
