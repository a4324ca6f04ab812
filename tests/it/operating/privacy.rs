//! Privacy in code (issue 11): the store directory and its files are
//! private whatever the umask, `Debug` of personal data is redacted, text
//! logs and the CLI escape control characters.

use std::os::unix::fs::PermissionsExt;

use cpis_relay::store::embedded::EmbeddedStore;

/// Every directory under `root` and its mode, then every file and its mode.
fn modes(root: &std::path::Path) -> Vec<(std::path::PathBuf, bool, u32)> {
    let mut found = vec![];
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        found.push((path.clone(), metadata.is_dir(), metadata.permissions().mode() & 0o777));
        if metadata.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
        }
    }
    found
}

#[tokio::test]
async fn store_directory_is_0700_and_its_files_0600_whatever_the_umask() {
    let parent = tempfile::tempdir().unwrap();
    // A data directory that exists, open to everyone (as under umask 022 or worse).
    let existing = parent.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
    // And one the store creates, with a missing parent.
    let created = parent.path().join("new").join("data");
    for dir in [&existing, &created] {
        let store = EmbeddedStore::open(dir).unwrap();
        drop(store);
        let found = modes(dir);
        assert!(found.iter().any(|(_, is_dir, _)| !is_dir), "the store wrote files in {}", dir.display());
        for (path, is_dir, mode) in found {
            let wanted = if is_dir { 0o700 } else { 0o600 };
            assert_eq!(mode, wanted, "{} is {mode:o}", path.display());
        }
    }
}

#[test]
fn debug_of_stored_forms_queries_and_rejections_carries_no_personal_data() {
    use cpis_relay::{
        model::{Accessor, Address, Plan, PlanType},
        nhs::NhsNumber,
        relay::{Rejection, RejectionReason, SearchQuery},
        stored::{StoredAccess, StoredPlan},
    };
    let nhs_number = NhsNumber::parse("9990000018").unwrap();
    let day = chrono::NaiveDate::from_ymd_opt(2013, 7, 19).unwrap();
    let plan = Plan {
        nhs_number,
        la_ods_code: "706".into(),
        local_id: "CASE-31337".into(),
        given_name: "Zebedee".into(),
        family_name: "Quixotic".into(),
        date_of_birth: day,
        address: Address { lines: vec!["7 Xylophone Mews".into()], postcode: "QQ9 9QQ".into() },
        plan_type: PlanType::ChildProtection,
        start_date: chrono::NaiveDate::from_ymd_opt(2024, 1, 2).unwrap(),
        end_date: None,
        expected_delivery_date: None,
        team_code: "T1".into(),
        loaded_at: chrono::Utc::now(),
    };
    let accessor = Accessor {
        user_id: "smartcard-77881".into(),
        name: "Dr Wilhelmina Ostrogoth".into(),
        role_code: "R0260".into(),
    };
    let access = cpis_relay::model::AccessEvent {
        id: 7,
        accessed_at: chrono::Utc::now(),
        nhs_number,
        organisation_ods_code: "RR8".into(),
        organisation_name: "Leeds".into(),
        care_setting: cpis_relay::model::CareSetting::EmergencyDepartment,
        accessor: accessor.clone(),
        request_id: "req-5551212".into(),
        scheduled: false,
    };
    let stored_plan = StoredPlan::encode(&plan, "706".into()).unwrap();
    let stored_access = StoredAccess::encode(&access).unwrap();
    let query = SearchQuery {
        nhs_number: "999 000 0018".into(),
        accessor: Some(accessor),
        care_setting: None,
        request_id: "req-5551212".into(),
        scheduled: false,
    };
    let rejection = Rejection {
        index: 3,
        nhs_number: "9990000018".into(),
        reason: RejectionReason::InvalidNhsNumber,
        message: "Zebedee Quixotic 2013-07-19".into(),
    };
    let text = format!("{stored_plan:?} {stored_access:?} {query:?} {rejection:#?}");
    for personal in [
        "9990000018",
        "999 000 0018",
        "Zebedee",
        "Quixotic",
        "2013-07-19",
        "Xylophone",
        "smartcard-77881",
        "Wilhelmina",
        "req-5551212",
        "CASE-31337",
    ] {
        assert!(!text.contains(personal), "{personal} in {text}");
    }
    // The bytes of the encodings are not printed either (names are in them).
    assert!(!text.contains("90, 101, 98"), "{text}");
}
