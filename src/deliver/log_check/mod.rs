//! An authority checking its own notifications against the relay's
//! tamper-evident access log. Beside delivery, the agent keeps the latest
//! checkpoint of the log it trusts (signed with the relay's log key and, if
//! witness keys are configured, cosigned by a quorum of them), and every
//! `interval`:
//! 1. fetches the relay's latest checkpoint (`Audit.LatestCheckpoint`: the
//!    witnessed one when witnesses are configured), checks its signatures,
//!    and trusts it only once a consistency proof (`Audit.ConsistencyProof`)
//!    shows it extends the one trusted before;
//! 2. asks for the inclusion proof of each notification it delivered and has
//!    not confirmed yet (`Audit.NotificationProofs`, in the trusted tree),
//!    and checks that the proven leaf is that notification's access, with
//!    the fields the notification reported, at a place the trusted root covers.
//!
//! A problem is a checkpoint that does not verify, a log cut back or forked,
//! a notification the relay no longer holds, an access altered or missing
//! from its place, or one not covered by a trusted checkpoint within
//! `confirm_within`. Each is logged at error, counted
//! (`cpis_deliver_log_problems_total{kind}`), shown by `/healthz` and kept
//! as evidence (the notes and proofs, in `STATE_DIR/evidence/`). Without a
//! configured log key the agent pins the first key the relay shows, and says so.
//!
//! Delivery never waits for this check: a relay whose store keeps no access
//! log is logged once and checked again later.

mod problems;
pub mod state;
pub mod verdict;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::json;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::{call, error_chain, metrics::Status, retry};
use crate::{
    client,
    proto::{
        self, ConsistencyProofRequest, LatestCheckpointRequest, NotificationProofsRequest, audit_client::AuditClient,
    },
    relay::MAX_NOTIFICATION_PROOFS,
    tls::PemText,
    transparency::{
        Checkpoint, Hash, VerifierKey,
        cosignature::{CosignerKey, verify_witnessed},
    },
};
pub use problems::ProblemKind;
use problems::init_metrics;
use state::{Pending, Saved, StateDir};
use verdict::{Advance, Verdict};

/// How the agent checks the log.
#[derive(Clone, Debug)]
pub struct LogCheckOptions {
    pub state_dir: PathBuf,
    /// The relay's log verifier key; `None`: pinned from the relay on first use.
    pub verifier: Option<VerifierKey>,
    /// Witnesses whose cosignatures make a checkpoint trusted; none: the log's signature alone.
    pub witnesses: Vec<CosignerKey>,
    pub quorum: usize,
    pub interval: Duration,
    /// How long a delivered notification may wait for a trusted checkpoint covering its access.
    pub confirm_within: Duration,
}

/// The check: a cheap handle shared by the delivery loop (which records
/// what it delivered) and the checking task.
#[derive(Clone)]
pub(crate) struct LogCheck {
    shared: Arc<Shared>,
}

struct Shared {
    options: LogCheckOptions,
    status: Status,
    /// Never held across an await.
    inner: Mutex<Inner>,
}

struct Inner {
    state: StateDir,
    verifier: Option<VerifierKey>,
    /// The trusted checkpoint and its note.
    trusted: Option<(Checkpoint, String)>,
    pending: BTreeMap<u64, Pending>,
    /// Late notifications still unconfirmed, by sequence: a standing problem until confirmed.
    late: std::collections::BTreeSet<u64>,
    /// Problems that stand until the agent is restarted (evidence kept).
    standing: Vec<(ProblemKind, String)>,
}

/// Why a round stopped early.
enum RoundEnd {
    /// The connection failed or the relay could not answer: try the next relay.
    Unreachable(String),
    /// The relay keeps no access log (or is behind the trusted checkpoint): later.
    NotNow(String),
}

impl LogCheck {
    /// Opens the state directory. A configured key that differs from the
    /// one the state was checked with is refused, naming both: the state
    /// directory of another log (or a rotated key) must be moved aside.
    pub(crate) fn open(options: LogCheckOptions, status: Status) -> Result<Self, String> {
        let (state, saved, pending) = StateDir::open(&options.state_dir)?;
        let saved_key = match &saved.verifier_key {
            Some(text) => Some(VerifierKey::parse(text).map_err(|error| format!("the saved log key: {error}"))?),
            None => None,
        };
        let verifier = match (&options.verifier, saved_key) {
            (Some(configured), Some(saved)) if *configured != saved => {
                return Err(format!(
                    "log_verifier_key: {configured} is not the key {saved} this agent checked the log with; \
                     move {} aside to start checking another log",
                    options.state_dir.display()
                ));
            }
            (Some(configured), _) => Some(configured.clone()),
            (None, saved) => saved,
        };
        let trusted = match (&saved.trusted_note, &verifier) {
            (Some(note), Some(verifier)) => {
                let checkpoint = Checkpoint::verify(note, verifier)
                    .map_err(|error| format!("the saved trusted checkpoint does not verify: {error}"))?;
                Some((checkpoint, note.clone()))
            }
            _ => None,
        };
        init_metrics();
        let late = pending.values().filter(|entry| entry.late).map(|entry| entry.sequence).collect();
        let inner = Inner { state, verifier, trusted, pending, late, standing: Vec::new() };
        let check = Self { shared: Arc::new(Shared { options, status, inner: Mutex::new(inner) }) };
        check.publish(&check.inner());
        Ok(check)
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a delivered notification, before its acknowledgement, so its
    /// access is checked. A notification naming no access (from a relay
    /// before access ids) is not checked.
    pub(crate) fn delivered(&self, notification: &proto::AccessNotification) {
        let Some(fields) = verdict::notified_fields(notification) else {
            tracing::debug!(sequence = notification.sequence, "notification names no access; not checked");
            return;
        };
        let Ok(access_id) = uuid::Uuid::parse_str(&notification.access_id).map(|id| id.as_u128()) else { return };
        let entry = Pending {
            sequence: notification.sequence,
            access_id,
            fields,
            delivered_at_ms: chrono::Utc::now().timestamp_millis(),
            late: false,
        };
        let mut inner = self.inner();
        if let Err(error) = inner.state.append(&entry) {
            tracing::error!(sequence = entry.sequence, %error, "cannot record a delivered notification for the log check");
        }
        inner.pending.entry(entry.sequence).or_insert(entry);
    }

    /// Checks every `interval` until `stopping`, against the relays in turn.
    pub(crate) async fn run(self, servers: Vec<String>, pem: PemText, mut stopping: watch::Receiver<bool>) {
        let mut next_server = 0;
        let mut audit: Option<AuditClient<Channel>> = None;
        let mut said_not_now = None;
        loop {
            if !retry::wait(self.shared.options.interval, &mut stopping).await {
                return;
            }
            let server = &servers[next_server % servers.len()];
            if audit.is_none() {
                match client::connect(server, &pem, None).await {
                    Ok(channel) => audit = Some(AuditClient::new(channel)),
                    Err(error) => {
                        tracing::debug!(%server, error = %error_chain(&error), "log check: cannot reach the relay");
                        next_server += 1;
                        continue;
                    }
                }
            }
            let Some(client) = audit.as_mut() else { continue };
            match self.round(client).await {
                Ok(()) => said_not_now = None,
                Err(RoundEnd::Unreachable(reason)) => {
                    tracing::debug!(%server, %reason, "log check: the relay did not answer; trying the next");
                    audit = None;
                    next_server += 1;
                }
                Err(RoundEnd::NotNow(reason)) => {
                    if said_not_now.as_ref() != Some(&reason) {
                        tracing::warn!(%server, %reason, "log check: not checking now");
                        said_not_now = Some(reason);
                    }
                }
            }
        }
    }

    /// One round: the checkpoint, then the proofs, then the state saved.
    async fn round(&self, audit: &mut AuditClient<Channel>) -> Result<(), RoundEnd> {
        let latest = call(audit.latest_checkpoint(LatestCheckpointRequest {})).await.map_err(round_end)?.into_inner();
        self.advance(audit, &latest).await?;
        self.prove(audit).await?;
        let mut inner = self.inner();
        let saved = Saved {
            verifier_key: inner.verifier.as_ref().map(ToString::to_string),
            trusted_note: inner.trusted.as_ref().map(|(_, note)| note.clone()),
            pending: inner.pending.values().cloned().collect(),
        };
        if let Err(error) = inner.state.save(&saved) {
            tracing::error!(%error, "log check: cannot save its state");
        }
        self.publish(&inner);
        drop(inner);
        Ok(())
    }

    /// Step 1: trusts the relay's latest (witnessed) checkpoint once it is
    /// proved to extend the trusted one.
    async fn advance(
        &self,
        audit: &mut AuditClient<Channel>,
        latest: &proto::SignedCheckpoint,
    ) -> Result<(), RoundEnd> {
        let verifier = {
            let mut inner = self.inner();
            match &inner.verifier {
                Some(verifier) => verifier.clone(),
                None => {
                    let pinned = VerifierKey::parse(&latest.verifier_key)
                        .map_err(|error| RoundEnd::NotNow(format!("the relay shows no usable log key: {error}")))?;
                    tracing::warn!(
                        key = %pinned,
                        "log check: pinned the relay's log key on first use; configure log_verifier_key to check it"
                    );
                    inner.verifier = Some(pinned.clone());
                    pinned
                }
            }
        };
        let options = &self.shared.options;
        let note = if options.witnesses.is_empty() { &latest.note } else { &latest.witnessed_note };
        if note.is_empty() {
            return Ok(());
        }
        let checked = if options.witnesses.is_empty() {
            Checkpoint::verify(note, &verifier).map_err(|error| error.to_string())
        } else {
            verify_witnessed(note, &verifier, &options.witnesses, options.quorum).map(|(checkpoint, _)| checkpoint)
        };
        let candidate = match checked {
            Ok(candidate) => candidate,
            Err(reason) => {
                let evidence = json!({ "checkpoint": note, "reason": reason });
                self.problem(
                    ProblemKind::BadCheckpoint,
                    None,
                    &format!("a checkpoint does not verify: {reason}"),
                    evidence,
                );
                return Ok(());
            }
        };
        let trusted_now = self.inner().trusted.clone();
        let Some((trusted, trusted_note)) = trusted_now else {
            tracing::info!(size = candidate.size, "log check: trusting the relay's first checkpoint");
            self.inner().trusted = Some((candidate, note.clone()));
            return Ok(());
        };
        let consistency = if candidate.size > trusted.size {
            let request = ConsistencyProofRequest { old_size: trusted.size, new_size: candidate.size };
            let proof = call(audit.consistency_proof(request)).await.map_err(round_end)?.into_inner();
            proof.hashes.iter().filter_map(|hash| Hash::try_from(hash.as_slice()).ok()).collect()
        } else {
            Vec::new()
        };
        let evidence = || {
            json!({
                "trusted_checkpoint": trusted_note,
                "new_checkpoint": note,
                "consistency_proof": consistency.iter().map(|hash| STANDARD.encode(hash)).collect::<Vec<_>>(),
            })
        };
        match verdict::advance(&trusted, &candidate, &consistency) {
            Advance::Same => {}
            Advance::Extends => self.inner().trusted = Some((candidate, note.clone())),
            Advance::Rollback => {
                let reason = format!(
                    "the relay's checkpoint holds {} accesses, fewer than the {} of one trusted before",
                    candidate.size, trusted.size
                );
                self.problem(ProblemKind::Rollback, None, &reason, evidence());
            }
            Advance::Fork(reason) => self.problem(ProblemKind::Fork, None, &reason, evidence()),
        }
        Ok(())
    }

    /// Step 2: the inclusion of each unconfirmed notification's access in the trusted tree.
    async fn prove(&self, audit: &mut AuditClient<Channel>) -> Result<(), RoundEnd> {
        let (trusted, trusted_note, waiting) = {
            let inner = self.inner();
            let Some((trusted, note)) = inner.trusted.clone() else { return Ok(()) };
            let waiting: Vec<Pending> = inner.pending.values().cloned().collect();
            (trusted, note, waiting)
        };
        let now = chrono::Utc::now().timestamp_millis();
        let within = self.shared.options.confirm_within.as_millis() as i64;
        for batch in waiting.chunks(MAX_NOTIFICATION_PROOFS) {
            let sequences = batch.iter().map(|entry| entry.sequence).collect();
            let request = NotificationProofsRequest { sequences, tree_size: trusted.size };
            let answer = call(audit.notification_proofs(request)).await.map_err(round_end)?.into_inner();
            let mut late = Vec::new();
            for (entry, proof) in batch.iter().zip(&answer.proofs) {
                let evidence = || {
                    json!({
                        "sequence": entry.sequence,
                        "access_id": uuid::Uuid::from_u128(entry.access_id).to_string(),
                        "trusted_checkpoint": trusted_note,
                        "leaf_index": proof.leaf_index,
                        "leaf": STANDARD.encode(&proof.leaf),
                        "audit_path": proof.audit_path.iter().map(|hash| STANDARD.encode(hash)).collect::<Vec<_>>(),
                        "status": proof.status,
                    })
                };
                match verdict::check_proof(entry.access_id, &entry.fields, proof, &trusted) {
                    Verdict::Confirmed => self.confirmed(entry, now),
                    Verdict::NotYet if now - entry.delivered_at_ms > within && !entry.late => late.push(entry.sequence),
                    Verdict::NotYet => {}
                    Verdict::Missing => {
                        self.inner().pending.remove(&entry.sequence);
                        let reason = "the relay no longer holds a notification this agent delivered";
                        self.problem(ProblemKind::Missing, Some(entry.sequence), reason, evidence());
                    }
                    Verdict::Altered(reason) => {
                        self.inner().pending.remove(&entry.sequence);
                        self.problem(ProblemKind::Altered, Some(entry.sequence), &reason, evidence());
                    }
                }
            }
            if !late.is_empty() {
                self.late(&late, &trusted_note);
            }
        }
        Ok(())
    }

    fn confirmed(&self, entry: &Pending, now: i64) {
        let mut inner = self.inner();
        inner.pending.remove(&entry.sequence);
        inner.late.remove(&entry.sequence);
        metrics::counter!("cpis_deliver_log_confirmed_total").increment(1);
        self.shared.status.log_progress_changed(|progress| progress.confirmed += 1);
        let waited = (now - entry.delivered_at_ms).max(0) as f64 / 1000.0;
        metrics::histogram!("cpis_deliver_log_confirm_seconds").record(waited);
    }

    /// Notifications not covered by a trusted checkpoint within the bound:
    /// one evidence file for them all, a standing problem until each is confirmed.
    fn late(&self, sequences: &[u64], trusted_note: &str) {
        let within = self.shared.options.confirm_within.as_secs();
        let reason = format!(
            "{} delivered notification(s) not in a trusted checkpoint of the access log within {within} s",
            sequences.len()
        );
        let evidence = json!({ "sequences": sequences, "trusted_checkpoint": trusted_note });
        self.problem(ProblemKind::Late, sequences.first().copied(), &reason, evidence);
        let mut inner = self.inner();
        for sequence in sequences {
            if let Some(entry) = inner.pending.get_mut(sequence) {
                entry.late = true;
            }
            inner.late.insert(*sequence);
        }
    }

    /// Logs, counts, keeps the evidence of, and shows one problem. A
    /// problem of the whole log (no sequence) is reported once while one of
    /// its kind stands: a relay that goes on serving a forked log, or a
    /// quorum that is never met, would otherwise leave evidence every round.
    fn problem(&self, kind: ProblemKind, sequence: Option<u64>, reason: &str, mut evidence: serde_json::Value) {
        if sequence.is_none() && self.inner().standing.iter().any(|(standing, _)| *standing == kind) {
            tracing::debug!(kind = kind.as_str(), %reason, "log check: the same problem again");
            return;
        }
        let now = chrono::Utc::now();
        evidence["kind"] = json!(kind.as_str());
        evidence["reason"] = json!(reason);
        evidence["found_at"] = json!(now.to_rfc3339());
        let name = format!(
            "{}-{}-{}.json",
            now.format("%Y%m%dT%H%M%S%.6fZ"),
            kind.as_str(),
            sequence.map_or_else(|| "log".to_owned(), |sequence| sequence.to_string())
        );
        let mut inner = self.inner();
        let kept = match inner.state.keep_evidence(&name, &evidence) {
            Ok(path) => path.display().to_string(),
            Err(error) => format!("(the evidence could not be written: {error})"),
        };
        tracing::error!(kind = kind.as_str(), sequence, %reason, evidence = %kept, "the relay's access log failed a check");
        metrics::counter!("cpis_deliver_log_problems_total", "kind" => kind.as_str()).increment(1);
        self.shared.status.log_progress_changed(|progress| progress.problems += 1);
        if kind != ProblemKind::Late {
            inner.standing.push((kind, format!("{}: {reason} (evidence: {kept})", kind.as_str())));
        }
        self.publish(&inner);
    }

    /// Brings the gauges and `/healthz` up to date.
    fn publish(&self, inner: &Inner) {
        let now = chrono::Utc::now().timestamp_millis();
        let oldest =
            inner.pending.values().map(|entry| entry.delivered_at_ms).min().map_or(0, |at| (now - at).max(0) / 1000);
        metrics::gauge!("cpis_deliver_log_trusted_size")
            .set(inner.trusted.as_ref().map_or(0.0, |(checkpoint, _)| checkpoint.size as f64));
        metrics::gauge!("cpis_deliver_log_unconfirmed").set(inner.pending.len() as f64);
        metrics::gauge!("cpis_deliver_log_oldest_unconfirmed_seconds").set(oldest as f64);
        let problems = inner.standing.len() + inner.late.len();
        metrics::gauge!("cpis_deliver_log_problems").set(problems as f64);
        let summary = match (inner.standing.first(), inner.late.first()) {
            (Some((_, first)), _) => {
                Some(format!("the access log failed {} check(s); first: {first}", inner.standing.len()))
            }
            (None, Some(sequence)) => Some(format!(
                "{} delivered notification(s) (the first: sequence {sequence}) not confirmed in the access log within {} s",
                inner.late.len(),
                self.shared.options.confirm_within.as_secs()
            )),
            (None, None) => None,
        };
        self.shared.status.set_log_problem(summary);
        let trusted_size = inner.trusted.as_ref().map_or(0, |(checkpoint, _)| checkpoint.size);
        let unconfirmed = inner.pending.len() as u64;
        self.shared.status.log_progress_changed(|progress| {
            progress.trusted_size = trusted_size;
            progress.unconfirmed = unconfirmed;
        });
    }
}

/// A failed call: the relay keeps no log, is behind, or cannot be reached.
fn round_end(status: tonic::Status) -> RoundEnd {
    match status.code() {
        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => RoundEnd::NotNow(status.message().to_owned()),
        _ => RoundEnd::Unreachable(status.to_string()),
    }
}
