//! `cpis-relay token`: a development bearer token for the FHIR door, signed
//! with the development key `certs init` writes. Printed alone on stdout so
//! that `TOKEN=$(cpis-relay token ...)` works.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{CliError, exit};
use crate::{
    auth::token::{self, DevToken},
    certs,
};

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user's id (the `sub` claim), for example an SDS user id.
    #[arg(long, env = "CPIS_USER_ID")]
    pub user_id: String,
    /// The user's name (the `name` claim).
    #[arg(long, env = "CPIS_USER_NAME")]
    pub name: String,
    /// The user's job role code (the `role_code` claim), for example R8000.
    #[arg(long, env = "CPIS_ROLE_CODE", default_value = "")]
    pub role_code: String,
    /// The user's care setting (the `care_setting` claim), for example EMERGENCY_DEPARTMENT or OUT_OF_HOURS_GP; without it the relay needs one configured for the organisation (fhir_care_settings)
    #[arg(long, env = "CPIS_CARE_SETTING")]
    pub care_setting: Option<String>,
    /// The `iss` claim; the relay's `fhir_issuer` must match.
    #[arg(long, env = "CPIS_FHIR_ISSUER", default_value = token::DEFAULT_ISSUER)]
    pub issuer: String,
    /// The `aud` claim; the relay's `fhir_audience` must match.
    #[arg(long, env = "CPIS_FHIR_AUDIENCE", default_value = token::DEFAULT_AUDIENCE)]
    pub audience: String,
    /// Seconds until the token expires.
    #[arg(long, env = "CPIS_TOKEN_LIFETIME_SECS", default_value_t = 3600)]
    pub lifetime_secs: u64,
    /// Directory of development certificates holding fhir-token.key (created if missing).
    #[arg(long, env = "CPIS_CERTS_DIR", default_value = certs::DEV_DIR)]
    pub certs_dir: PathBuf,
    /// A signing key (PKCS#8 PEM, ECDSA P-256) other than the development one.
    #[arg(long, env = "CPIS_TOKEN_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
}

pub(super) fn run(args: TokenArgs) -> Result<u8, CliError> {
    let path = match &args.signing_key {
        Some(path) => path.clone(),
        None => {
            certs::ensure_dev(&args.certs_dir).map_err(|error| CliError::Failed(error.to_string()))?;
            certs::ensure_token_key(&args.certs_dir).map_err(|error| CliError::Failed(error.to_string()))?;
            args.certs_dir.join(token::DEV_SIGNING_KEY)
        }
    };
    let care_setting = args
        .care_setting
        .as_deref()
        .map(crate::model::CareSetting::parse)
        .transpose()
        .map_err(|reason| CliError::Config(format!("--care-setting: {reason}")))?;
    let key =
        std::fs::read_to_string(&path).map_err(|error| CliError::Config(format!("{}: {error}", path.display())))?;
    let minted = token::mint(
        &key,
        &DevToken {
            issuer: args.issuer,
            audience: args.audience,
            user_id: args.user_id,
            name: args.name,
            role_code: args.role_code,
            care_setting,
            lifetime: Duration::from_secs(args.lifetime_secs),
        },
    )
    .map_err(|error| CliError::Config(format!("{}: {error}", path.display())))?;
    println!("{minted}");
    Ok(exit::OK)
}
