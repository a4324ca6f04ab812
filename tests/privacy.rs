//! Privacy in code (issue 11): the store directory and its files are
//! private whatever the umask, `Debug` of personal data is redacted, text
//! logs and the CLI escape control characters.

mod common;

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
