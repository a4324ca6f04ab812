//! Auditors' questions to the tamper-evident access log: the latest signed
//! checkpoint, the inclusion proof of one access, the consistency proof
//! between two tree sizes, and how the accesses an auditor was shown stand
//! against the signed log; and, for a local authority checking its own
//! notifications, the proofs that their accesses are in the log. Records
//! are for auditors only; checkpoints and consistency proofs (hashes and
//! sizes) for local authorities too; a notification's proof for its own
//! authority only. The keeper (`crate::access_log`) does the work on the
//! blocking pool.

use super::Relay;
use crate::{
    access_log::{Inclusion, LogKeeper, SignedCheckpoint},
    auth::{Action, Identity, authorize},
    error::{Error, Result},
    model::AccessEvent,
    store::{StoreError, log::LogEntry},
    transparency::{Checkpoint, Hash, proof::verify_inclusion, tree::TreeError},
};

/// How the accesses an auditor was shown stand against the signed access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStatus {
    /// The checkpoint the proofs were checked against; its signature verified
    /// with the relay's own key, `verifier`.
    pub checkpoint: Checkpoint,
    pub verifier: String,
    /// Accesses whose inclusion proof verifies, for the record as shown.
    pub verified: usize,
    /// Accesses not in the log yet: held while the store was failing.
    pub not_logged: usize,
    /// Accesses the store keeps with no log position although they are not
    /// held: outside the log, which no checkpoint covers (a sign of tampering).
    pub outside: usize,
    /// Log positions of accesses shown otherwise than the signed log holds them.
    pub differing: Vec<u64>,
}

impl LogStatus {
    pub fn all_verified(&self) -> bool {
        self.not_logged == 0 && self.outside == 0 && self.differing.is_empty()
    }
}

impl Relay {
    fn keeper_for(&self, identity: &Identity, action: Action) -> Result<&LogKeeper> {
        authorize(identity, action)?;
        self.shared
            .log_keeper
            .as_ref()
            .ok_or_else(|| Error::FailedPrecondition("this relay's store keeps no access log yet".into()))
    }

    /// The latest signed checkpoint (signed now if the log grew since the last).
    pub async fn latest_checkpoint(&self, identity: &Identity) -> Result<SignedCheckpoint> {
        let keeper = self.keeper_for(identity, Action::ReadLogCheckpoints)?;
        Ok(keeper.run(|keeper| keeper.checkpoint()).await?)
    }

    /// The inclusion proof of the access (or auditor's read) `access_id` (a UUID).
    pub async fn inclusion_proof(&self, identity: &Identity, access_id: &str) -> Result<Inclusion> {
        let keeper = self.keeper_for(identity, Action::ReadAccessLog)?;
        let id = uuid::Uuid::parse_str(access_id.trim())
            .map_err(|_| Error::invalid("access_id", "must be an access id (a UUID) from Audit.AccessLog"))?
            .as_u128();
        keeper
            .run(move |keeper| keeper.inclusion(id))
            .await?
            .ok_or_else(|| Error::invalid("access_id", "no retained access has this id"))
    }

    /// The consistency proof from `old` leaves to `new` (0: the latest
    /// checkpoint's size); returns the sizes proved and the proof.
    pub async fn consistency_proof(&self, identity: &Identity, old: u64, new: u64) -> Result<(u64, u64, Vec<Hash>)> {
        let keeper = self.keeper_for(identity, Action::ReadLogCheckpoints)?;
        let new = if new == 0 { keeper.run(|keeper| keeper.checkpoint()).await?.checkpoint.size } else { new };
        if old > new {
            return Err(Error::invalid("old_size", format!("must not be larger than new_size ({new})")));
        }
        let proof = keeper.run(move |keeper| Ok(keeper.consistency(old, new))).await?;
        match proof {
            Ok(proof) => Ok((old, new, proof)),
            Err(TreeError::Store(error)) => Err(error.into()),
            Err(TreeError::SizeOutOfRange { tree_size, .. }) => {
                Err(Error::invalid("new_size", format!("the log holds {tree_size} accesses in its tree")))
            }
            Err(other) => Err(Error::invalid("old_size", other.to_string())),
        }
    }

    /// Checks `accesses` (as [`Relay::access_log`] returned them) against the
    /// latest signed checkpoint: each one's position, its leaf hash computed
    /// from the record as shown, and its inclusion proof. `None` when the
    /// store keeps no access log. This is the relay checking itself: proof
    /// that does not rest on the relay is `cpis-relay sar` or `audit proof`
    /// checked with the verifier key the auditor was given.
    pub async fn log_status(&self, identity: &Identity, accesses: &[AccessEvent]) -> Result<Option<LogStatus>> {
        authorize(identity, Action::ReadAccessLog)?;
        let Some(keeper) = self.shared.log_keeper.clone() else { return Ok(None) };
        // Only a search held while the store fails may be "not logged yet"; a
        // stored record with no position is kept outside the log.
        let mut people: Vec<_> = accesses.iter().map(|access| access.nhs_number).collect();
        people.sort_unstable();
        people.dedup();
        let held_ids: std::collections::HashSet<u128> = people
            .into_iter()
            .flat_map(|person| self.shared.hub.held_accesses_of(person))
            .map(|access| access.id)
            .collect();
        let accesses = accesses.to_vec();
        let status = keeper
            .run(move |keeper| {
                let log = keeper.log();
                let ids: Vec<u128> = accesses.iter().map(|access| access.id).collect();
                let held = log.positions_of(&ids)?;
                let (mut shown, mut not_logged, mut outside) = (Vec::new(), 0, 0);
                for access in accesses {
                    match held.get(&access.id).copied() {
                        Some(position) => shown.push((position, LogEntry::Search(access).leaf_hash()?)),
                        None if held_ids.contains(&access.id) => not_logged += 1,
                        None => outside += 1,
                    }
                }
                let positions: Vec<u64> = shown.iter().map(|(position, _)| *position).collect();
                let (signed, proofs) = keeper.proofs(&positions)?;
                let checkpoint = Checkpoint::verify(&signed.note, keeper.verifier()).map_err(|error| {
                    StoreError::Corrupt(format!("access log: the latest checkpoint does not verify: {error}"))
                })?;
                let (mut verified, mut differing) = (0, Vec::new());
                for ((position, leaf), proof) in shown.iter().zip(&proofs) {
                    match verify_inclusion(*position, checkpoint.size, leaf, proof, &checkpoint.root) {
                        Ok(()) => verified += 1,
                        Err(_) => differing.push(*position),
                    }
                }
                Ok(LogStatus {
                    checkpoint,
                    verifier: keeper.verifier().to_string(),
                    verified,
                    not_logged,
                    outside,
                    differing,
                })
            })
            .await?;
        Ok(Some(status))
    }
}

/// Sequences one [`Relay::notification_proofs`] call may ask about.
pub const MAX_NOTIFICATION_PROOFS: usize = 1_000;

/// What the log proves about the access behind one of an authority's notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationProof {
    /// At `position`; `leaf` is the access's encoding, `proof` its audit path.
    Included { access_id: u128, position: u64, leaf: Vec<u8>, proof: Vec<Hash> },
    /// The access has no log position below the tree size asked about yet.
    NotYetCovered { access_id: u128 },
    /// No notification of the caller's authority with this sequence is held.
    NotHeld,
}

impl Relay {
    /// For a local authority checking its own notifications: the proof, for
    /// each of `sequences` (its own notifications' sequences), that the
    /// access behind it is in the log of `tree_size` leaves (0: the latest
    /// checkpoint's). Returns the tree size and one answer per sequence, in
    /// order. Another authority's sequence is answered [`NotificationProof::NotHeld`]:
    /// the authority comes from the certificate, never from the request.
    pub async fn notification_proofs(
        &self,
        identity: &Identity,
        sequences: &[u64],
        tree_size: u64,
    ) -> Result<(u64, Vec<(u64, NotificationProof)>)> {
        let keeper = self.keeper_for(identity, Action::ProveNotifications)?.clone();
        if sequences.len() > MAX_NOTIFICATION_PROOFS {
            return Err(Error::invalid("sequences", format!("at most {MAX_NOTIFICATION_PROOFS} at once")));
        }
        let mut sorted = sequences.to_vec();
        sorted.sort_unstable();
        if sorted.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(Error::invalid("sequences", "each sequence at most once"));
        }
        let size = match tree_size {
            0 => keeper.run(|keeper| keeper.checkpoint()).await?.checkpoint.size,
            size => {
                let held = keeper.tree_size();
                if size > held {
                    return Err(Error::invalid("tree_size", format!("the log holds {held} accesses in its tree")));
                }
                size
            }
        };
        let held = self.held_notifications(&identity.ods_code, &sorted).await?;
        let answers = keeper
            .run(move |keeper| {
                let ids: Vec<u128> = held.values().map(|notification| notification.access.id).collect();
                let positions = keeper.log().positions_of(&ids)?;
                let covered: Vec<(u64, u64)> = held
                    .iter()
                    .filter_map(|(sequence, notification)| {
                        let position = *positions.get(&notification.access.id)?;
                        (position < size).then_some((*sequence, position))
                    })
                    .collect();
                let wanted: Vec<u64> = covered.iter().map(|(_, position)| *position).collect();
                let mut proofs = keeper.inclusion_proofs_in(&wanted, size).map_err(|error| match error {
                    TreeError::Store(error) => error,
                    other => StoreError::Corrupt(format!("access log: {other}")),
                })?;
                let mut included = std::collections::HashMap::with_capacity(covered.len());
                for ((sequence, position), proof) in covered.into_iter().zip(proofs.drain(..)) {
                    included.insert(sequence, (position, proof));
                }
                let mut answers = std::collections::HashMap::with_capacity(held.len());
                for (sequence, notification) in held {
                    let access_id = notification.access.id;
                    let answer = match included.remove(&sequence) {
                        Some((position, proof)) => {
                            let leaf =
                                LogEntry::Search(notification.access).leaf_fields().encode().map_err(|error| {
                                    StoreError::Corrupt(format!("access log: a held access cannot be encoded: {error}"))
                                })?;
                            NotificationProof::Included { access_id, position, leaf, proof }
                        }
                        None => NotificationProof::NotYetCovered { access_id },
                    };
                    answers.insert(sequence, answer);
                }
                Ok(answers)
            })
            .await?;
        let mut answers = answers;
        let ordered = sequences
            .iter()
            .map(|sequence| (*sequence, answers.remove(sequence).unwrap_or(NotificationProof::NotHeld)))
            .collect();
        Ok((size, ordered))
    }

    /// The held notifications of authority `la_ods_code` among `sorted`
    /// sequences: one read of the store per run of sequences close together.
    async fn held_notifications(
        &self,
        la_ods_code: &str,
        sorted: &[u64],
    ) -> Result<std::collections::HashMap<u64, crate::model::Notification>> {
        let mut held = std::collections::HashMap::with_capacity(sorted.len());
        let mut rest = sorted;
        while let Some(&first) = rest.first() {
            // A run: sequences within MAX_NOTIFICATION_PROOFS of its first, read as one page.
            let run = rest.iter().take_while(|sequence| **sequence - first < MAX_NOTIFICATION_PROOFS as u64).count();
            let last = rest[run - 1];
            let page = self
                .shared
                .store
                .notifications_after(la_ods_code, first.saturating_sub(1), (last - first + 1) as usize)
                .await?;
            let wanted = &rest[..run];
            for notification in page {
                if notification.sequence <= last && wanted.binary_search(&notification.sequence).is_ok() {
                    held.insert(notification.sequence, notification);
                }
            }
            rest = &rest[run..];
        }
        Ok(held)
    }
}
