//! What a witness remembers and decides: for each log it knows, the latest
//! checkpoint it cosigned (the log's signed note with its own cosignature),
//! and the C2SP tlog-witness checks an `add-checkpoint` request must pass
//! before it is cosigned. The check and the durable write of the new state
//! happen under one lock, so two requests can never roll the state back; the
//! state is written to a file by rename after an fsync, and its directory is
//! synced, before the cosignature is returned. A request that shows the log
//! forked (a signed checkpoint of a size already cosigned with another root,
//! or a signed checkpoint whose consistency proof fails) is kept as evidence
//! in `STATE_DIR/evidence/`. Blocking: the server calls it on the blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::transparency::{
    Checkpoint, Hash, VerifierKey,
    checkpoint::CheckpointError,
    cosignature::{AddCheckpoint, Cosigner},
    proof::verify_consistency,
};

/// Why a witness cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("configuration {key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: the stored checkpoint does not verify with the log's key: {reason}", path.display())]
    BadState { path: PathBuf, reason: String },
}

/// The answer to an `add-checkpoint` request, as the spec sets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200: the cosignature lines.
    Cosigned(String),
    /// 400, with why.
    BadRequest(String),
    /// 403: no signature of a trusted key verifies.
    Forbidden,
    /// 404: the origin is not a log this witness knows.
    UnknownLog,
    /// 409: the old size is not the size last cosigned (given), or the same size with another root.
    Conflict(u64),
    /// 422: the consistency proof does not verify.
    Inconsistent(String),
    /// 500: the state could not be written; nothing was cosigned.
    Failed,
}

struct Latest {
    size: u64,
    root: Hash,
    /// The log's signed note with this witness's cosignature.
    note: String,
}

struct KnownLog {
    key: VerifierKey,
    path: PathBuf,
    latest: Option<Latest>,
}

/// One witness: its key, the logs it knows and what it cosigned of each.
pub struct Witness {
    cosigner: Cosigner,
    dir: PathBuf,
    /// By origin. One lock over every log: a check and its write are one step.
    logs: Mutex<HashMap<String, KnownLog>>,
}

/// The state file of the log named `origin`.
fn state_file(dir: &Path, origin: &str) -> PathBuf {
    let digest = Sha256::digest(origin.as_bytes());
    let stem: String = digest[..16].iter().map(|byte| format!("{byte:02x}")).collect();
    dir.join(format!("{stem}.checkpoint"))
}

impl Witness {
    /// Opens the state in `dir` (created if missing) for the logs `keys`
    /// (each log's origin is its key's name). Blocks.
    pub fn open(cosigner: Cosigner, dir: &Path, keys: Vec<VerifierKey>) -> Result<Self, WitnessError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| WitnessError::Io { path, source }
        };
        std::fs::create_dir_all(dir.join("evidence")).map_err(|error| WitnessError::Config {
            key: "state_dir",
            reason: format!("{}: {error}", dir.display()),
        })?;
        let mut logs = HashMap::new();
        for key in keys {
            let path = state_file(dir, key.name());
            let latest = match std::fs::read_to_string(&path) {
                Ok(note) => {
                    let checkpoint = Checkpoint::verify(&note, &key)
                        .map_err(|error| WitnessError::BadState { path: path.clone(), reason: error.to_string() })?;
                    Some(Latest { size: checkpoint.size, root: checkpoint.root, note })
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                Err(error) => return Err(io(&path)(error)),
            };
            logs.insert(key.name().to_owned(), KnownLog { key, path, latest });
        }
        Ok(Self { cosigner, dir: dir.to_owned(), logs: Mutex::new(logs) })
    }

    pub fn cosigner(&self) -> &Cosigner {
        &self.cosigner
    }

    /// The latest checkpoint cosigned for `origin`, with the cosignature.
    pub fn latest(&self, origin: &str) -> Option<String> {
        let logs = self.logs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        logs.get(origin)?.latest.as_ref().map(|latest| latest.note.clone())
    }

    /// Checks an `add-checkpoint` request body and cosigns at `now` (POSIX seconds). Blocks.
    pub fn add_checkpoint(&self, body: &str, now: u64) -> Answer {
        let request = match AddCheckpoint::parse(body) {
            Ok(request) => request,
            Err(error) => return Answer::BadRequest(error.to_string()),
        };
        let origin = request.note.split('\n').next().unwrap_or_default();
        let mut logs = self.logs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(log) = logs.get_mut(origin) else { return Answer::UnknownLog };
        let checkpoint = match Checkpoint::verify(&request.note, &log.key) {
            Ok(checkpoint) => checkpoint,
            Err(CheckpointError::NotSigned(_) | CheckpointError::BadSignature(_)) => return Answer::Forbidden,
            Err(error) => return Answer::BadRequest(error.to_string()),
        };
        if request.old_size > checkpoint.size {
            return Answer::BadRequest(format!(
                "the old size {} is larger than the checkpoint's {}",
                request.old_size, checkpoint.size
            ));
        }
        let (cosigned_size, cosigned_root) =
            log.latest.as_ref().map_or((0, None), |latest| (latest.size, Some(latest.root)));
        if request.old_size != cosigned_size {
            return Answer::Conflict(cosigned_size);
        }
        if checkpoint.size == cosigned_size {
            if let Some(root) = cosigned_root
                && root != checkpoint.root
            {
                self.keep_evidence(log, body, "a signed checkpoint of the size last cosigned with another root", now);
                return Answer::Conflict(cosigned_size);
            }
        } else if let Err(error) = verify_consistency(
            request.old_size,
            checkpoint.size,
            &cosigned_root.unwrap_or_default(),
            &checkpoint.root,
            &request.proof,
        ) {
            self.keep_evidence(log, body, &format!("the consistency proof does not verify: {error}"), now);
            return Answer::Inconsistent(error.to_string());
        }
        let line = self.cosigner.cosign(&checkpoint.text(), now);
        let note = crate::transparency::cosignature::add_signature_lines(
            &strip_to_log_signature(&request.note, &log.key),
            &line,
        );
        let dir = log.path.parent().unwrap_or(Path::new("."));
        let name = log.path.file_name().and_then(|name| name.to_str()).unwrap_or("state.checkpoint");
        if let Err(error) = crate::deliver::files::write_atomically(dir, name, note.as_bytes(), 0o644) {
            tracing::error!(%error, path = %log.path.display(), "cannot write the witness's state; nothing cosigned");
            return Answer::Failed;
        }
        tracing::info!(origin, size = checkpoint.size, "checkpoint cosigned");
        log.latest = Some(Latest { size: checkpoint.size, root: checkpoint.root, note });
        Answer::Cosigned(line)
    }

    /// Writes the refused request and the checkpoint last cosigned, both
    /// signed by the log, to `evidence/`: together they show the fork.
    fn keep_evidence(&self, log: &KnownLog, body: &str, reason: &str, now: u64) {
        let previous = log.latest.as_ref().map_or("(none)\n", |latest| latest.note.as_str());
        let text = format!(
            "reason: {reason}\nlog: {}\n\n--- the checkpoint this witness cosigned last ---\n{previous}\n--- the refused add-checkpoint request ---\n{body}",
            log.key
        );
        let stem = log.path.file_stem().and_then(|stem| stem.to_str()).unwrap_or("log");
        let name = format!("{stem}-{now}-{}.txt", uuid::Uuid::new_v4().simple());
        match crate::deliver::files::write_atomically(&self.dir.join("evidence"), &name, text.as_bytes(), 0o644) {
            Ok(path) => tracing::error!(%reason, evidence = %path.display(), "refused a checkpoint that forks the log"),
            Err(error) => {
                tracing::error!(%reason, %error, "refused a checkpoint that forks the log; the evidence could not be written")
            }
        }
    }
}

/// The note with only the log's own signature lines (other cosignatures are not ours to keep).
fn strip_to_log_signature(note: &str, key: &VerifierKey) -> String {
    let Some(split) = note.rfind("\n\n") else { return note.to_owned() };
    let prefix = format!("\u{2014} {} ", key.name());
    let mut kept = note[..split + 2].to_owned();
    for line in note[split + 2..].split_inclusive('\n') {
        if line.starts_with(&prefix) {
            kept.push_str(line);
        }
    }
    kept
}
