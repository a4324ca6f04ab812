//! Files a picker reads: the outbox sink and the dead-letter directory.
//!
//! Every file is written whole or not at all: to a temporary name starting
//! with `.` in the same directory, fsynced, renamed to its final name, and
//! the directory fsynced, so a reader that skips names starting with `.`
//! never sees part of a file, and a file that is visible survives a crash.
//! Final names are `{sequence:020}-{notification_id}.json` (and `.xml`), so
//! sorting names sorts by sequence. Redelivery after a crash rewrites the
//! same name with the same content. Files hold personal data: outbox files
//! are created `0640` (owner and group: give the picker the agent's group),
//! dead letters `0600`, both further limited by the umask; this module logs
//! names, never content.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::watch;

use super::{
    Outcome,
    metrics::{self, SinkKind},
    payload::Delivery,
    retry::{self, Backoff},
};

/// The final name of a notification's file with `extension`.
pub fn file_name(delivery: &Delivery, extension: &str) -> String {
    let id: String = delivery
        .notification_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    format!("{:020}-{id}.{extension}", delivery.sequence)
}

/// Whether a directory entry is a temporary file a picker must skip.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
}

/// Mode of outbox files: the picker may run as another user of the agent's group.
pub(crate) const OUTBOX_MODE: u32 = 0o640;
/// Mode of dead letters, for a person to read.
pub(crate) const DEAD_LETTER_MODE: u32 = 0o600;

/// Writes `content` to `dir/name` atomically and durably (see the module
/// doc), creating it with `mode` on Unix. Blocking.
pub(crate) fn write_atomically(dir: &Path, name: &str, content: &[u8], mode: u32) -> std::io::Result<PathBuf> {
    let temporary = dir.join(format!(".{name}.tmp"));
    let final_path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&temporary)?;
    let written = file.write_all(content).and_then(|()| file.sync_all());
    drop(file);
    if let Err(error) = written.and_then(|()| std::fs::rename(&temporary, &final_path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    // The rename is durable only once the directory is.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(final_path)
}

/// Creates `dir` if needed and checks that files can be created in it.
pub(crate) fn prepare_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Named for this process: agents of several authorities may share a directory and start together.
    let probe = format!(".cpis-relay-deliver-probe-{}", std::process::id());
    let probe = write_atomically(dir, &probe, b"", DEAD_LETTER_MODE)?;
    std::fs::remove_file(probe)
}

async fn write_blocking(dir: PathBuf, files: Vec<(String, Vec<u8>)>, mode: u32) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        for (name, content) in files {
            write_atomically(&dir, &name, &content, mode)?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The outbox sink: one JSON file per notification, and optionally XML.
#[derive(Clone, Debug)]
pub struct OutboxSink {
    pub dir: PathBuf,
    pub xml: bool,
    pub backoff: Backoff,
}

impl OutboxSink {
    /// Writes the notification's files, retrying I/O errors (a full disk, a
    /// lost mount) with backoff until they succeed or shutdown is asked for.
    /// The XML file, when enabled, is written before the JSON one.
    pub async fn deliver(&self, delivery: &Delivery, shutdown: &mut watch::Receiver<bool>) -> Outcome {
        let mut files = Vec::new();
        if self.xml {
            files.push((file_name(delivery, "xml"), delivery.xml().into_bytes()));
        }
        files.push((file_name(delivery, "json"), delivery.json.to_vec()));
        let mut attempt = 0;
        loop {
            attempt += 1;
            match write_blocking(self.dir.clone(), files.clone(), OUTBOX_MODE).await {
                Ok(()) => {
                    metrics::delivered(SinkKind::Outbox);
                    tracing::debug!(sequence = delivery.sequence, "written to the outbox");
                    return Outcome::Delivered;
                }
                Err(error) => {
                    metrics::retried(SinkKind::Outbox);
                    let delay = self.backoff.delay(attempt);
                    tracing::warn!(
                        sequence = delivery.sequence,
                        dir = %self.dir.display(),
                        %error,
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        "cannot write to the outbox; retrying"
                    );
                    if !retry::wait(delay, shutdown).await {
                        return Outcome::Interrupted;
                    }
                }
            }
        }
    }
}

/// Why a notification was parked.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Rejection {
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// The start of the receiver's answer (at most 1 KiB, lossy UTF-8).
    pub response_excerpt: String,
    pub reason: String,
    pub attempts: u32,
}

#[derive(serde::Serialize)]
struct DeadLetter<'a> {
    sink: &'static str,
    destination: &'a str,
    dead_lettered_at: String,
    #[serde(flatten)]
    rejection: &'a Rejection,
    notification: &'a super::payload::NotificationBody,
}

/// The dead-letter directory: notifications a receiver refused, parked for a
/// person to look at; never silently dropped.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    pub dir: PathBuf,
    pub backoff: Backoff,
}

impl DeadLetters {
    /// Parks `delivery` with why. Retries I/O errors until written: a
    /// notification is acknowledged only once it is somewhere durable. Returns
    /// false if shutdown came first.
    pub async fn park(
        &self,
        sink: SinkKind,
        destination: &str,
        delivery: &Delivery,
        rejection: &Rejection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let letter = DeadLetter {
            sink: sink.as_str(),
            destination,
            dead_lettered_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            rejection,
            notification: &delivery.body,
        };
        let content = serde_json::to_vec_pretty(&letter).unwrap_or_default();
        let name = file_name(delivery, "json");
        let mut attempt = 0;
        loop {
            attempt += 1;
            match write_blocking(self.dir.clone(), vec![(name.clone(), content.clone())], DEAD_LETTER_MODE).await {
                Ok(()) => {
                    metrics::dead_lettered(sink);
                    tracing::warn!(
                        sequence = delivery.sequence,
                        notification_id = %delivery.notification_id,
                        sink = sink.as_str(),
                        status = rejection.status,
                        reason = %rejection.reason,
                        file = %self.dir.join(&name).display(),
                        "receiver refused a notification; parked in the dead-letter directory"
                    );
                    return true;
                }
                Err(error) => {
                    let delay = self.backoff.delay(attempt).max(Duration::from_millis(10));
                    tracing::error!(
                        sequence = delivery.sequence,
                        dir = %self.dir.display(),
                        %error,
                        "cannot write to the dead-letter directory; retrying"
                    );
                    if !retry::wait(delay, shutdown).await {
                        return false;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_sequence_and_cannot_leave_the_directory() {
        let delivery = |sequence, id: &str| Delivery {
            sequence,
            notification_id: id.into(),
            accessed_at: None,
            body: serde_json::from_value(serde_json::json!({
                "sequence": sequence, "notification_id": id, "accessed_at": "", "nhs_number": "",
                "local_id": "", "plan_type": "", "team_code": "", "organisation_ods_code": "",
                "organisation_name": "", "care_setting": "", "accessor": {"user_id": "", "name": "", "role_code": ""}
            }))
            .unwrap(),
            json: bytes::Bytes::new(),
            traceparent: None,
        };
        let (nine, ten) = (file_name(&delivery(9, "b"), "json"), file_name(&delivery(10, "a"), "json"));
        assert!(nine < ten, "{nine} {ten}");
        assert_eq!(file_name(&delivery(1, "../x/y"), "xml"), "00000000000000000001-___x_y.xml");
        assert!(!is_temporary(&nine));
    }

    #[test]
    fn atomic_write_leaves_only_the_final_file() {
        let dir = tempfile::tempdir().unwrap();
        prepare_dir(dir.path()).unwrap();
        write_atomically(dir.path(), "a.json", b"{}", OUTBOX_MODE).unwrap();
        write_atomically(dir.path(), "a.json", b"{\"again\":1}", OUTBOX_MODE).unwrap();
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["a.json"]);
        assert_eq!(std::fs::read(dir.path().join("a.json")).unwrap(), b"{\"again\":1}");
    }
}
