//! `cpis-relay audit proof`: fetches the access log's latest checkpoint, an
//! inclusion proof or a consistency proof from a relay (auditor role),
//! checks it here with the verifier key and prints it as JSON (hashes in
//! hexadecimal), so that a third party can check it again.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliError, ClientArgs, exit};
use crate::{
    proto::{self, ConsistencyProofRequest, InclusionProofRequest, LatestCheckpointRequest, audit_client::AuditClient},
    transparency::{
        Checkpoint, Hash, VerifierKey,
        hash::{leaf_hash, to_hex},
        leaf::{AccessKind, LeafFields},
        proof::{verify_consistency, verify_inclusion},
    },
};

#[derive(Debug, Args)]
pub struct ProofArgs {
    #[command(subcommand)]
    pub command: ProofCommand,
    /// The verifier key you were given (`name+id+key`, or a file holding it);
    /// without it the relay's own is used, which proves nothing against a dishonest relay.
    #[arg(long, env = "CPIS_LOG_VERIFIER_KEY", global = true)]
    pub verifier_key: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum ProofCommand {
    /// The latest signed checkpoint, and the latest one the relay's witnesses cosigned.
    Checkpoint {
        /// A witness's public key (or a file holding it) to check the witnessed checkpoint's cosignatures with; repeatable.
        #[arg(long = "witness-key", env = "CPIS_WITNESS_KEYS", value_delimiter = ',')]
        witness_keys: Vec<String>,
    },
    /// The proof that one access (its `access_id` in `audit NHS_NUMBER`) is in the log.
    Inclusion { access_id: String },
    /// The proof that the log of OLD accesses is a prefix of the log of NEW (default: the latest checkpoint).
    Consistency {
        old_size: u64,
        new_size: Option<u64>,
        /// The root hash (hexadecimal) of the checkpoint of OLD you kept: the proof is then checked against it.
        #[arg(long)]
        old_root: Option<String>,
    },
}

fn hashes(list: &[Vec<u8>], field: &str) -> Result<Vec<Hash>, CliError> {
    list.iter()
        .map(|bytes| {
            Hash::try_from(bytes.as_slice())
                .map_err(|_| CliError::Failed(format!("the relay sent a {field} hash of {} bytes", bytes.len())))
        })
        .collect()
}

/// Verifies the signed note of a checkpoint the relay sent, with the
/// verifier key given or else (with a warning) the relay's own.
pub(super) fn checked_checkpoint(
    sent: Option<&proto::SignedCheckpoint>,
    given: Option<&VerifierKey>,
) -> Result<(Checkpoint, VerifierKey), CliError> {
    let sent = sent.ok_or_else(|| CliError::Failed("the relay sent no checkpoint".into()))?;
    let verifier = match given {
        Some(key) => key.clone(),
        None => {
            eprintln!(
                "warning: checking with the relay's own verifier key; pass --verifier-key to check against yours"
            );
            VerifierKey::parse(&sent.verifier_key)
                .map_err(|error| CliError::Failed(format!("the relay's verifier key: {error}")))?
        }
    };
    let checkpoint = Checkpoint::verify(&sent.note, &verifier)
        .map_err(|error| CliError::Failed(format!("the checkpoint does not verify: {error}")))?;
    Ok((checkpoint, verifier))
}

fn checkpoint_json(checkpoint: &Checkpoint, note: &str, verifier: &VerifierKey) -> serde_json::Value {
    json!({
        "tree_size": checkpoint.size,
        "root_hash": to_hex(&checkpoint.root),
        "time": checkpoint.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "note": note,
        "verifier_key": verifier.to_string(),
    })
}

/// The witnessed checkpoint the relay sent (null if none), checked with the
/// verifier key and with each witness key given: `cosigned_by` names those whose
/// cosignature verifies. Its `note` is what `audit verify --trusted-checkpoint` takes.
fn witnessed_json(note: &str, verifier: &VerifierKey, witness_keys: &[String]) -> Result<serde_json::Value, CliError> {
    if note.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    let checkpoint = Checkpoint::verify(note, verifier)
        .map_err(|error| CliError::Failed(format!("the witnessed checkpoint does not verify: {error}")))?;
    let keys = super::audit_trusted::witness_keys(witness_keys)?;
    let cosigned = crate::transparency::cosignature::verify_cosignatures(note, &keys)
        .map_err(|error| CliError::Failed(format!("the witnessed checkpoint: {error}")))?;
    let mut value = checkpoint_json(&checkpoint, note, verifier);
    value["cosigned_by"] = cosigned.into_iter().map(|cosigned| cosigned.witness).collect();
    Ok(value)
}

/// The fields a proven leaf holds, or why its bytes are not a leaf.
pub(super) fn decoded_leaf(leaf: &[u8], position: u64) -> Result<LeafFields<'_>, CliError> {
    LeafFields::decode(leaf).map_err(|error| CliError::Failed(format!("position {position}: {error}")))
}

/// The proven leaf's fields, once they are of the access `asked` for (a
/// relay could otherwise prove another access and have it shown as this one).
fn proven_access(leaf: &[u8], position: u64, asked: u128) -> Result<LeafFields<'_>, CliError> {
    let fields = decoded_leaf(leaf, position)?;
    if fields.id != asked {
        return Err(CliError::Failed(format!(
            "the proof is of another access: asked for {}, the proven leaf is access {}",
            uuid::Uuid::from_u128(asked),
            uuid::Uuid::from_u128(fields.id)
        )));
    }
    Ok(fields)
}

/// An access as its leaf holds it: what a verifier shows is what was proven.
pub(super) fn leaf_access_json(fields: &LeafFields<'_>) -> serde_json::Value {
    let accessed_at = chrono::DateTime::from_timestamp_micros(fields.at_micros)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default();
    let nhs_number = crate::nhs::NhsNumber::from_u64(fields.nhs_number)
        .map_or_else(|_| fields.nhs_number.to_string(), |number| number.to_string());
    json!({
        "access_id": uuid::Uuid::from_u128(fields.id).to_string(),
        "kind": fields.kind.describe(),
        "accessed_at": accessed_at,
        "accessed_at_micros": fields.at_micros,
        "nhs_number": nhs_number,
        "organisation_ods_code": fields.organisation_ods_code,
        "organisation_name": fields.organisation_name,
        "care_setting": fields.care_setting,
        "accessor": { "user_id": fields.user_id, "name": fields.name, "role_code": fields.role_code },
        "scheduled": fields.kind == AccessKind::Scheduled,
        "request_id": fields.request_id,
    })
}

pub(super) async fn run(args: ProofArgs) -> Result<u8, CliError> {
    let given = match &args.verifier_key {
        Some(text) => Some(super::audit_trusted::verifier_key(text)?),
        None => None,
    };
    let (channel, _) = args.client.channel("auditor").await?;
    let mut client = AuditClient::new(channel);
    let output = match args.command {
        ProofCommand::Checkpoint { witness_keys } => {
            let sent = client.latest_checkpoint(LatestCheckpointRequest {}).await?.into_inner();
            let (checkpoint, verifier) = checked_checkpoint(Some(&sent), given.as_ref())?;
            let witnessed = witnessed_json(&sent.witnessed_note, &verifier, &witness_keys)?;
            json!({
                "checkpoint": checkpoint_json(&checkpoint, &sent.note, &verifier),
                "witnessed": witnessed,
                "verified": true,
            })
        }
        ProofCommand::Inclusion { access_id } => {
            let asked = uuid::Uuid::parse_str(access_id.trim())
                .map_err(|_| CliError::Config("access_id: must be an access id (a UUID) from `audit`".into()))?;
            let sent =
                client.inclusion_proof(InclusionProofRequest { access_id: access_id.clone() }).await?.into_inner();
            let (checkpoint, verifier) = checked_checkpoint(sent.checkpoint.as_ref(), given.as_ref())?;
            let path = hashes(&sent.audit_path, "audit path")?;
            let leaf = leaf_hash(&sent.leaf);
            verify_inclusion(sent.leaf_index, checkpoint.size, &leaf, &path, &checkpoint.root)
                .map_err(|error| CliError::Failed(format!("the inclusion proof does not verify: {error}")))?;
            // What is shown is what the proven leaf holds, and it must be the access asked for.
            let fields = proven_access(&sent.leaf, sent.leaf_index, asked.as_u128())?;
            let note = sent.checkpoint.as_ref().map(|sent| sent.note.as_str()).unwrap_or_default();
            json!({
                "access_id": access_id,
                "access": leaf_access_json(&fields),
                "leaf_index": sent.leaf_index,
                "leaf": to_hex(&sent.leaf),
                "leaf_hash": to_hex(&leaf),
                "audit_path": path.iter().map(|hash| to_hex(hash)).collect::<Vec<_>>(),
                "checkpoint": checkpoint_json(&checkpoint, note, &verifier),
                "verified": true,
            })
        }
        ProofCommand::Consistency { old_size, new_size, old_root } => {
            let old_root = match old_root {
                Some(text) => Some(
                    crate::transparency::hash::from_hex(text.trim())
                        .ok_or_else(|| CliError::Config("old_root: must be 64 hexadecimal digits".into()))?,
                ),
                None => (old_size == 0).then(crate::transparency::hash::empty_root),
            };
            let latest = client.latest_checkpoint(LatestCheckpointRequest {}).await?.into_inner();
            let (new_checkpoint, verifier) = checked_checkpoint(Some(&latest), given.as_ref())?;
            let new_size = new_size.unwrap_or(new_checkpoint.size);
            let sent = client.consistency_proof(ConsistencyProofRequest { old_size, new_size }).await?.into_inner();
            let proof = hashes(&sent.hashes, "consistency")?;
            // Checked when both roots are known: the old one kept by the caller, the new one just verified.
            let verified = if new_size == new_checkpoint.size {
                match old_root {
                    Some(old_root) => {
                        verify_consistency(old_size, new_size, &old_root, &new_checkpoint.root, &proof).map_err(
                            |error| CliError::Failed(format!("the consistency proof does not verify: {error}")),
                        )?;
                        true
                    }
                    None => false,
                }
            } else {
                false
            };
            json!({
                "old_size": sent.old_size,
                "new_size": sent.new_size,
                "hashes": proof.iter().map(|hash| to_hex(hash)).collect::<Vec<_>>(),
                "new_checkpoint": checkpoint_json(&new_checkpoint, &latest.note, &verifier),
                "verified": verified,
            })
        }
    };
    println!("{}", serde_json::to_string_pretty(&output).unwrap_or_default());
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_of_another_access_than_the_one_asked_for_is_refused() {
        let access = crate::model::AccessEvent {
            id: 7,
            accessed_at: "2026-06-01T09:00:00Z".parse().unwrap(),
            nhs_number: crate::nhs::NhsNumber::parse("9990000018").unwrap(),
            organisation_ods_code: "RR8".into(),
            organisation_name: "Test Hospital".into(),
            care_setting: crate::model::CareSetting::EmergencyDepartment,
            accessor: crate::model::Accessor { user_id: "u".into(), name: "Dr U".into(), role_code: "R8000".into() },
            request_id: "r".into(),
            scheduled: false,
        };
        let leaf = crate::transparency::leaf::encode_access(&access, AccessKind::Unscheduled).unwrap();
        let shown = leaf_access_json(&proven_access(&leaf, 3, 7).unwrap());
        assert_eq!(
            (shown["accessor"]["user_id"].as_str(), shown["nhs_number"].as_str()),
            (Some("u"), Some("9990000018"))
        );
        let refused = proven_access(&leaf, 3, 8).expect_err("another access");
        assert!(refused.to_string().contains("the proof is of another access"), "{refused}");
        assert!(proven_access(&leaf[..10], 3, 7).is_err(), "not a leaf");
    }
}
