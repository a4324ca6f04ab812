//! A small tmpfs mounted over a directory, for tests that need a real full
//! disk (ENOSPC from the kernel, not an injected error). Mounting needs root
//! (CI runs as root); without it [`Tmpfs::mount`] says why and returns `None`
//! so that the test skips, except under `CI=true`, where it fails. Unmounted
//! (lazily) when dropped.

use std::{
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
};

pub struct Tmpfs {
    path: PathBuf,
}

/// Skips (returns) a test that cannot run here, loudly; under CI it fails instead.
pub fn skip_or_fail(why: &str) {
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{why} (CI=true: this test must run, not skip)");
    }
    eprintln!("SKIPPED: {why}");
}

impl Tmpfs {
    /// Mounts a tmpfs of `megabytes` over `path` (created if missing).
    pub fn mount(path: &Path, megabytes: u32) -> Option<Self> {
        let uid = std::fs::metadata("/proc/self").map(|meta| meta.uid()).unwrap_or(u32::MAX);
        if uid != 0 {
            skip_or_fail("mounting a small tmpfs needs root (CI runs the tests as root)");
            return None;
        }
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m,mode=0700"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        if !status.success() {
            skip_or_fail(&format!("cannot mount a tmpfs on {} ({status}): no CAP_SYS_ADMIN here?", path.display()));
            return None;
        }
        Some(Self { path: path.to_owned() })
    }

    /// Grows (or shrinks) the filesystem in place; its files stay.
    pub fn resize(&self, megabytes: u32) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={megabytes}m"), "tmpfs"])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount {}: {status}", self.path.display());
    }

    /// Fills the filesystem with `name` until the kernel says it is full (ENOSPC).
    pub fn fill(&self, name: &str) -> u64 {
        let mut file = std::fs::File::create(self.path.join(name)).unwrap();
        let chunk = vec![0x5a_u8; 4096];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(error) if error.raw_os_error() == Some(28) => break,
                Err(error) => panic!("filling {}: {error}", self.path.display()),
            }
        }
        // The last bytes of a page that is partly used: the disk is then full to the byte.
        loop {
            match file.write(&chunk[..1]) {
                Ok(1) => written += 1,
                Ok(_) => break,
                Err(error) if error.raw_os_error() == Some(28) => break,
                Err(error) => panic!("filling {}: {error}", self.path.display()),
            }
        }
        file.sync_all().unwrap();
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
