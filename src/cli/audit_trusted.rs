//! `audit verify --trusted-checkpoint`: the checkpoint a store must extend,
//! taken from outside the store (a file, or a witness's latest) and checked
//! with keys from the arguments only: the log's verifier key and a quorum
//! of the `--witness-key`s. The keys' parsing is shared with `audit proof`
//! and `sar`, which import it from here (never from `audit`, which
//! dispatches to them).

use clap::Args;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::CliError;
use crate::transparency::{
    Checkpoint, VerifierKey,
    cosignature::{CosignerKey, key_text, verify_witnessed},
};

/// What `audit verify` trusts from outside the store: a checkpoint the store must extend, and the witnesses' keys.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// A witness's public key (`name+id+base64(0x04||key)`), or a file holding one; repeat for each witness.
    #[arg(long = "witness-key", env = "CPIS_WITNESS_KEYS", value_delimiter = ',')]
    pub witness_keys: Vec<String>,
    /// How many of the witness keys must have cosigned the trusted checkpoint [default: all of them]
    #[arg(long, env = "CPIS_WITNESS_QUORUM")]
    pub witness_quorum: Option<usize>,
    /// A checkpoint held outside the store that the store must extend: a file holding a cosigned
    /// checkpoint note, or a witness's URL to fetch its latest one from (GET URL/checkpoint).
    #[arg(long, env = "CPIS_TRUSTED_CHECKPOINT")]
    pub trusted_checkpoint: Option<String>,
    /// CA certificates (PEM) an https:// witness is checked against instead of the system's roots.
    #[arg(long, env = "CPIS_WITNESS_CA")]
    pub witness_ca: Option<std::path::PathBuf>,
}

/// The verifier key from `--verifier-key`: the key itself, or a file holding it.
pub(super) fn verifier_key(given: &str) -> Result<VerifierKey, CliError> {
    let text = key_text(given, "verifier_key").map_err(CliError::Config)?;
    VerifierKey::parse(&text).map_err(|error| CliError::Config(format!("verifier_key: {error}")))
}

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
pub(super) async fn trusted_checkpoint(
    args: &TrustArgs,
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
