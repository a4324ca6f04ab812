//! The pure half of an authority's check of the relay's access log: what a
//! notification says about its access (a digest of the fields a leaf holds),
//! whether a new checkpoint extends the trusted one, and whether a proof
//! shows the notification's own access in the trusted tree. No I/O here, so
//! each verdict is tested on its own.

use sha2::{Digest, Sha256};

use crate::{
    proto::{self, NotificationProofStatus},
    transparency::{
        AccessKind, Checkpoint, Hash,
        leaf::LeafFields,
        proof::{verify_consistency, verify_inclusion},
    },
};

/// A digest of the fields of an access that both its notification and its
/// log leaf hold (everything but the request id, which only the leaf has).
/// The agent keeps this instead of the fields: no personal data at rest.
pub(crate) type FieldsDigest = [u8; 32];

fn digest_of(mut fields: LeafFields<'_>) -> Option<FieldsDigest> {
    fields.request_id = "";
    let encoded = fields.encode().ok()?;
    Some(Sha256::digest(encoded).into())
}

/// The digest of the access a notification reports, as an unscheduled
/// access's leaf would encode it; `None` for a notification too malformed to
/// name an access (no time, an NHS number that is not digits).
pub(crate) fn notified_fields(notification: &proto::AccessNotification) -> Option<FieldsDigest> {
    let at = notification.accessed_at.as_ref()?;
    let at_micros = at.seconds.checked_mul(1_000_000)?.checked_add(i64::from(at.nanos / 1_000))?;
    let accessor = notification.accessor.clone().unwrap_or_default();
    let care_setting = proto::CareSetting::try_from(notification.care_setting).ok()?.as_str_name();
    digest_of(LeafFields {
        kind: AccessKind::Unscheduled,
        id: uuid::Uuid::parse_str(&notification.access_id).ok()?.as_u128(),
        at_micros,
        nhs_number: notification.nhs_number.parse().ok()?,
        organisation_ods_code: &notification.organisation_ods_code,
        organisation_name: &notification.organisation_name,
        care_setting,
        user_id: &accessor.user_id,
        name: &accessor.name,
        role_code: &accessor.role_code,
        request_id: "",
    })
}

/// How a checkpoint the relay serves stands against the one trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    /// The same tree: nothing to do.
    Same,
    /// A larger tree, proved to extend the trusted one: trust it now.
    Extends,
    /// Smaller than a tree already seen: the log was cut back.
    Rollback,
    /// Not an extension of the trusted tree (same size, another root; or the
    /// consistency proof fails).
    Fork(String),
}

/// Whether `candidate` extends `trusted` by `consistency` (the proof from
/// the trusted size to the candidate's; ignored unless it is larger).
pub fn advance(trusted: &Checkpoint, candidate: &Checkpoint, consistency: &[Hash]) -> Advance {
    use std::cmp::Ordering;
    match candidate.size.cmp(&trusted.size) {
        Ordering::Less => Advance::Rollback,
        Ordering::Equal if candidate.root == trusted.root => Advance::Same,
        Ordering::Equal => Advance::Fork(format!("two roots for the tree of {} accesses", trusted.size)),
        Ordering::Greater => {
            match verify_consistency(trusted.size, candidate.size, &trusted.root, &candidate.root, consistency) {
                Ok(()) => Advance::Extends,
                Err(error) => Advance::Fork(format!(
                    "the tree of {} accesses does not extend the trusted one of {}: {error}",
                    candidate.size, trusted.size
                )),
            }
        }
    }
}

/// What a proof says about one delivered notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Its access is in the trusted tree, as the notification described it.
    Confirmed,
    /// Not in the trusted tree yet: ask again with a later checkpoint.
    NotYet,
    /// The relay holds no such notification any more.
    Missing,
    /// The log holds another access, or other fields, at its place, or the
    /// proof does not lead to the trusted root.
    Altered(String),
}

/// Checks `proof` (the relay's answer for the notification of
/// `access_id` and `fields`) against the trusted tree `trusted`.
pub(crate) fn check_proof(
    access_id: u128,
    fields: &FieldsDigest,
    proof: &proto::NotificationProof,
    trusted: &Checkpoint,
) -> Verdict {
    let named = uuid::Uuid::parse_str(&proof.access_id).map(|id| id.as_u128()).ok();
    match NotificationProofStatus::try_from(proof.status) {
        Ok(NotificationProofStatus::NotHeld) => return Verdict::Missing,
        Ok(NotificationProofStatus::NotYetCovered) if named == Some(access_id) => return Verdict::NotYet,
        Ok(NotificationProofStatus::Included) if named == Some(access_id) => {}
        Ok(_) if named != Some(access_id) => {
            return Verdict::Altered(format!(
                "the relay names access {} for this notification, which reported access {}",
                proof.access_id,
                uuid::Uuid::from_u128(access_id)
            ));
        }
        _ => return Verdict::Altered(format!("the relay's answer has status {}", proof.status)),
    }
    let leaf = match LeafFields::decode(&proof.leaf) {
        Ok(leaf) => leaf,
        Err(error) => return Verdict::Altered(format!("the proven leaf: {error}")),
    };
    if leaf.id != access_id {
        return Verdict::Altered(format!("the proven leaf is access {}", uuid::Uuid::from_u128(leaf.id)));
    }
    if digest_of(leaf).as_ref() != Some(fields) {
        return Verdict::Altered("the log holds this access with other fields than the notification reported".into());
    }
    let path: Result<Vec<Hash>, _> = proof.audit_path.iter().map(|hash| Hash::try_from(hash.as_slice())).collect();
    let Ok(path) = path else { return Verdict::Altered("a hash of the audit path is not 32 bytes".into()) };
    let leaf_hash = crate::transparency::hash::leaf_hash(&proof.leaf);
    match verify_inclusion(proof.leaf_index, trusted.size, &leaf_hash, &path, &trusted.root) {
        Ok(()) => Verdict::Confirmed,
        Err(error) => Verdict::Altered(format!(
            "position {} is not proved in the trusted tree of {} accesses: {error}",
            proof.leaf_index, trusted.size
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transparency::{MemoryHashStore, MerkleLog, hash::leaf_hash, tree::ProofPlan};

    fn notification(id: u128, user: &str) -> proto::AccessNotification {
        proto::AccessNotification {
            sequence: 1,
            access_id: uuid::Uuid::from_u128(id).to_string(),
            accessed_at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 123_456_000 }),
            nhs_number: "9990000018".into(),
            organisation_ods_code: "RR8".into(),
            organisation_name: "LEEDS TEACHING HOSPITALS".into(),
            care_setting: proto::CareSetting::EmergencyDepartment as i32,
            accessor: Some(proto::Accessor { user_id: user.into(), name: "Dr A".into(), role_code: "R0260".into() }),
            ..Default::default()
        }
    }

    fn leaf(id: u128, user: &str, request_id: &str) -> Vec<u8> {
        LeafFields {
            kind: AccessKind::Unscheduled,
            id,
            at_micros: 1_700_000_000_123_456,
            nhs_number: 9_990_000_018,
            organisation_ods_code: "RR8",
            organisation_name: "LEEDS TEACHING HOSPITALS",
            care_setting: "EMERGENCY_DEPARTMENT",
            user_id: user,
            name: "Dr A",
            role_code: "R0260",
            request_id,
        }
        .encode()
        .unwrap()
    }

    /// A tree of `leaves`, its checkpoint, and the proof of `index`'s inclusion.
    fn tree(leaves: &[Vec<u8>], index: u64) -> (Checkpoint, Vec<Vec<u8>>) {
        let mut log = MerkleLog::open(MemoryHashStore::default()).unwrap();
        let hashes: Vec<Hash> = leaves.iter().map(|leaf| leaf_hash(leaf)).collect();
        log.append(&hashes).unwrap();
        let mut plan = ProofPlan::default();
        plan.add_inclusion::<std::convert::Infallible>(index, log.size()).unwrap();
        let proof = plan.read(log.store()).unwrap().pop().unwrap();
        let checkpoint =
            Checkpoint { origin: "test".into(), size: log.size(), root: log.root(), time: chrono::Utc::now() };
        (checkpoint, proof.iter().map(|hash| hash.to_vec()).collect())
    }

    fn included(id: u128, index: u64, leaf: Vec<u8>, path: Vec<Vec<u8>>) -> proto::NotificationProof {
        proto::NotificationProof {
            sequence: 1,
            status: NotificationProofStatus::Included as i32,
            access_id: uuid::Uuid::from_u128(id).to_string(),
            leaf_index: index,
            leaf,
            audit_path: path,
        }
    }

    #[test]
    fn the_notifications_own_access_in_the_trusted_tree_is_confirmed() {
        let fields = notified_fields(&notification(7, "u1")).unwrap();
        let leaves = vec![leaf(1, "x", "r0"), leaf(7, "u1", "req-7"), leaf(9, "y", "r2")];
        let (checkpoint, path) = tree(&leaves, 1);
        let proof = included(7, 1, leaves[1].clone(), path.clone());
        assert_eq!(check_proof(7, &fields, &proof, &checkpoint), Verdict::Confirmed);

        // The same place holding the access with another accessor.
        let other_fields = notified_fields(&notification(7, "u2")).unwrap();
        assert!(matches!(check_proof(7, &other_fields, &proof, &checkpoint), Verdict::Altered(_)));
        // Another access proved in its place.
        let (_, first_path) = tree(&leaves, 0);
        let swapped = included(7, 0, leaves[0].clone(), first_path);
        assert!(matches!(check_proof(7, &fields, &swapped, &checkpoint), Verdict::Altered(_)));
        // The right leaf with a path that leads elsewhere.
        let mut wrong_path = proof.clone();
        wrong_path.audit_path[0][0] ^= 1;
        assert!(matches!(check_proof(7, &fields, &wrong_path, &checkpoint), Verdict::Altered(_)));
    }

    #[test]
    fn not_yet_covered_and_not_held_are_told_apart_from_an_answer_about_another_access() {
        let fields = notified_fields(&notification(7, "u1")).unwrap();
        let (checkpoint, _) = tree(&[leaf(1, "x", "r")], 0);
        let answer = |status: NotificationProofStatus, id: u128| proto::NotificationProof {
            status: status as i32,
            access_id: if id == 0 { String::new() } else { uuid::Uuid::from_u128(id).to_string() },
            ..Default::default()
        };
        assert_eq!(
            check_proof(7, &fields, &answer(NotificationProofStatus::NotYetCovered, 7), &checkpoint),
            Verdict::NotYet
        );
        assert_eq!(
            check_proof(7, &fields, &answer(NotificationProofStatus::NotHeld, 0), &checkpoint),
            Verdict::Missing
        );
        assert!(matches!(
            check_proof(7, &fields, &answer(NotificationProofStatus::NotYetCovered, 8), &checkpoint),
            Verdict::Altered(_)
        ));
    }

    #[test]
    fn a_checkpoint_advances_only_by_a_proved_extension() {
        let leaves: Vec<Vec<u8>> = (0..7).map(|i| leaf(i, "u", "r")).collect();
        let mut log = MerkleLog::open(MemoryHashStore::default()).unwrap();
        let hashes: Vec<Hash> = leaves.iter().map(|leaf| leaf_hash(leaf)).collect();
        log.append(&hashes[..3]).unwrap();
        let at = |log: &MerkleLog<MemoryHashStore>| Checkpoint {
            origin: "test".into(),
            size: log.size(),
            root: log.root(),
            time: chrono::Utc::now(),
        };
        let old = at(&log);
        log.append(&hashes[3..]).unwrap();
        let new = at(&log);
        let proof = log.consistency_proof(3, 7).unwrap();
        assert_eq!(advance(&old, &new, &proof), Advance::Extends);
        assert_eq!(advance(&new, &new, &[]), Advance::Same);
        assert_eq!(advance(&new, &old, &[]), Advance::Rollback);
        let forked = Checkpoint { root: [0; 32], ..new.clone() };
        assert!(matches!(advance(&new, &forked, &[]), Advance::Fork(_)));
        assert!(matches!(advance(&old, &forked, &proof), Advance::Fork(_)));
    }
}
