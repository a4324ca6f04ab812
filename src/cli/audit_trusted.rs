//! `audit verify --trusted-checkpoint`: the checkpoint a store must extend,
//! taken from outside the store (a file, or a witness's latest) and checked
//! with keys from the arguments only: the log's verifier key and a quorum
//! of the `--witness-key`s.

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::{CliError, audit::VerifyArgs};
use crate::transparency::{
    Checkpoint, VerifierKey,
    cosignature::{CosignerKey, key_text, verify_witnessed},
};

/// The witness keys given, each the key itself or a file holding it.
pub(super) fn witness_keys(given: &[String]) -> Result<Vec<CosignerKey>, CliError> {
    given
        .iter()
        .map(|given| {
            let text = key_text(given, "witness_key").map_err(CliError::Config)?;
            CosignerKey::parse(&text).map_err(|error| CliError::Config(format!("witness_key: {error}")))
        })
        .collect()
}

/// The trusted checkpoint and the witnesses that cosigned it, if one was asked for.
pub async fn trusted_checkpoint(
    args: &VerifyArgs,
    verifier: &VerifierKey,
) -> Result<Option<(Checkpoint, Vec<String>)>, CliError> {
    let keys = witness_keys(&args.witness_keys)?;
    let quorum = args.witness_quorum.unwrap_or(keys.len());
    if quorum > keys.len() {
        return Err(CliError::Config(format!(
            "witness_quorum: {quorum} is more than the {} witness keys given",
            keys.len()
        )));
    }
    let Some(source) = &args.trusted_checkpoint else {
        if !keys.is_empty() {
            return Err(CliError::Config(
                "trusted_checkpoint: witness keys check a trusted checkpoint: give one (a file or a witness URL)"
                    .into(),
            ));
        }
        return Ok(None);
    };
    let note = if source.starts_with("http://") || source.starts_with("https://") {
        let url = format!(
            "{}/checkpoint?origin={}",
            source.trim_end_matches('/'),
            utf8_percent_encode(verifier.name(), NON_ALPHANUMERIC)
        );
        let ca = match &args.witness_ca {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|error| CliError::Config(format!("witness_ca: {}: {error}", path.display())))?,
            ),
            None => None,
        };
        match crate::access_log::witnessing::fetch(&url, ca.as_deref()).await {
            Ok((200, body)) => body,
            Ok((status, body)) => {
                return Err(CliError::Unavailable(format!("trusted_checkpoint: {url}: {status}: {}", body.trim())));
            }
            Err(error) => return Err(CliError::Unavailable(format!("trusted_checkpoint: {url}: {error}"))),
        }
    } else {
        std::fs::read_to_string(source)
            .map_err(|error| CliError::Config(format!("trusted_checkpoint: {source}: {error}")))?
    };
    let (checkpoint, witnesses) = verify_witnessed(&note, verifier, &keys, quorum)
        .map_err(|reason| CliError::Data(format!("trusted_checkpoint: {reason}")))?;
    Ok(Some((checkpoint, witnesses)))
}
