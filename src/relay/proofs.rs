//! Auditors' questions to the tamper-evident access log: the latest signed
//! checkpoint, the inclusion proof of one access, and the consistency proof
//! between two tree sizes. Auditor role only, like the access log itself;
//! the keeper (`crate::access_log`) does the work on the blocking pool.

use super::Relay;
use crate::{
    access_log::{Inclusion, LogKeeper, SignedCheckpoint},
    auth::{Action, Identity, authorize},
    error::{Error, Result},
    transparency::{Hash, tree::TreeError},
};

impl Relay {
    fn keeper_for(&self, identity: &Identity) -> Result<&LogKeeper> {
        authorize(identity, Action::ReadAccessLog)?;
        self.shared
            .log_keeper
            .as_ref()
            .ok_or_else(|| Error::FailedPrecondition("this relay's store keeps no access log yet".into()))
    }

    /// The latest signed checkpoint (signed now if the log grew since the last).
    pub async fn latest_checkpoint(&self, identity: &Identity) -> Result<SignedCheckpoint> {
        let keeper = self.keeper_for(identity)?;
        Ok(keeper.run(|keeper| keeper.checkpoint_if_due()).await?)
    }

    /// The inclusion proof of the access (or auditor's read) `access_id` (a UUID).
    pub async fn inclusion_proof(&self, identity: &Identity, access_id: &str) -> Result<Inclusion> {
        let keeper = self.keeper_for(identity)?;
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
        let keeper = self.keeper_for(identity)?;
        let new = if new == 0 { keeper.run(|keeper| keeper.checkpoint_if_due()).await?.checkpoint.size } else { new };
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
}
