//! `cpis-relay subscribe --verify`: once the notifications asked for are
//! printed, proves that each one's access is in the relay's access log, as
//! the delivery agent's log check does (the same checks,
//! [`crate::deliver::log_check::verdict`]), in one checkpoint checked with
//! the keys given: the log's `--verifier-key` and a quorum of
//! `--witness-key`s (then the witnessed checkpoint). An access not covered
//! yet is asked about again, once a second, for up to `--verify-within`.

use std::time::Duration;

use tonic::transport::Channel;

use super::{CliError, exit};
use crate::{
    deliver::log_check::verdict::{self, Verdict},
    proto::{self, LatestCheckpointRequest, NotificationProofsRequest, audit_client::AuditClient},
    relay::MAX_NOTIFICATION_PROOFS,
    transparency::{Checkpoint, VerifierKey, cosignature::verify_witnessed},
};

/// The keys and patience of `--verify`.
pub(super) struct VerifyOptions {
    pub verifier: VerifierKey,
    pub witnesses: Vec<crate::transparency::cosignature::CosignerKey>,
    pub quorum: usize,
    pub within: Duration,
}

/// Proves `received` in the log; prints one line per notification on
/// stderr and returns the exit status: 0 when every access is proved, 1 if
/// any is altered, missing or still not covered.
pub(super) async fn verify_received(
    channel: Channel,
    received: &[proto::AccessNotification],
    options: &VerifyOptions,
) -> Result<u8, CliError> {
    let mut audit = AuditClient::new(channel);
    let mut waiting: Vec<&proto::AccessNotification> = received.iter().collect();
    let mut failed = 0;
    let deadline = tokio::time::Instant::now() + options.within;
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    loop {
        every_second.tick().await;
        let checkpoint = trusted_checkpoint(&mut audit, options).await?;
        let mut not_yet = Vec::new();
        for batch in waiting.chunks(MAX_NOTIFICATION_PROOFS) {
            let sequences = batch.iter().map(|notification| notification.sequence).collect();
            let request = NotificationProofsRequest { sequences, tree_size: checkpoint.as_ref().map_or(0, |c| c.size) };
            let answers = audit.notification_proofs(request).await?.into_inner();
            for (notification, proof) in batch.iter().zip(&answers.proofs) {
                let verdict = match (&checkpoint, verdict::notified_fields(notification)) {
                    (None, _) => Verdict::NotYet,
                    (_, None) => Verdict::Altered("the notification names no access".into()),
                    (Some(checkpoint), Some(fields)) => {
                        let id = uuid::Uuid::parse_str(&notification.access_id).map_or(0, |id| id.as_u128());
                        verdict::check_proof(id, &fields, proof, checkpoint)
                    }
                };
                let sequence = notification.sequence;
                match verdict {
                    Verdict::Confirmed => {
                        eprintln!("sequence {sequence}: access {} is in the log", notification.access_id);
                    }
                    Verdict::NotYet => not_yet.push(*notification),
                    Verdict::Missing => {
                        failed += 1;
                        eprintln!("sequence {sequence}: FAILED: the relay no longer holds this notification");
                    }
                    Verdict::Altered(reason) => {
                        failed += 1;
                        eprintln!("sequence {sequence}: FAILED: {reason}");
                    }
                }
            }
        }
        waiting = not_yet;
        if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    for notification in &waiting {
        eprintln!(
            "sequence {}: FAILED: access {} not in a checkpoint{} within {} s",
            notification.sequence,
            notification.access_id,
            if options.witnesses.is_empty() { "" } else { " the witnesses cosigned" },
            options.within.as_secs()
        );
    }
    let failed = failed + waiting.len();
    eprintln!("verified {} of {} notifications' accesses in the log", received.len() - failed, received.len());
    Ok(if failed == 0 { exit::OK } else { exit::FAILURE })
}

/// The relay's latest checkpoint checked with the keys given (the witnessed
/// one, with witness keys); `None` while no checkpoint is witnessed.
async fn trusted_checkpoint(
    audit: &mut AuditClient<Channel>,
    options: &VerifyOptions,
) -> Result<Option<Checkpoint>, CliError> {
    let latest = audit.latest_checkpoint(LatestCheckpointRequest {}).await?.into_inner();
    if options.witnesses.is_empty() {
        return Checkpoint::verify(&latest.note, &options.verifier)
            .map(Some)
            .map_err(|error| CliError::Failed(format!("the relay's checkpoint does not verify: {error}")));
    }
    if latest.witnessed_note.is_empty() {
        return Ok(None);
    }
    verify_witnessed(&latest.witnessed_note, &options.verifier, &options.witnesses, options.quorum)
        .map(|(checkpoint, _)| Some(checkpoint))
        .map_err(|reason| CliError::Failed(format!("the witnessed checkpoint: {reason}")))
}
