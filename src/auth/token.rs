//! The FHIR door's user: a bearer JWT verified against the keys of a JWKS
//! file, with its issuer, audience and expiry checked, and the user's id,
//! name, role code and care setting read from claims whose names are settings. Also the
//! development signing key `certs init` writes and the tokens `cpis-relay
//! token` mints with it. Signatures use jsonwebtoken over ring (no aws-lc).
//! The organisation never comes from a token: only from the client certificate.

use std::path::Path;

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm},
};
use serde_json::{Map, Value, json};

use super::care_setting::{self, CareSettings};
use crate::model::{Accessor, CareSetting};

/// Defaults of [`TokenSettings`], as documented in docs/fhir.md.
pub const DEFAULT_ISSUER: &str = "cpis-relay-dev";
pub const DEFAULT_AUDIENCE: &str = "cpis-relay";
pub(crate) const DEFAULT_USER_ID_CLAIM: &str = "sub";
pub(crate) const DEFAULT_NAME_CLAIM: &str = "name";
pub(crate) const DEFAULT_ROLE_CODE_CLAIM: &str = "role_code";
/// File names of the development signing key and its JWKS in the certificates directory.
pub(crate) const DEV_SIGNING_KEY: &str = "fhir-token.key";
pub(crate) const DEV_JWKS: &str = "fhir-jwks.json";

/// What a token must say, and where it says who the user is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub user_id_claim: String,
    pub name_claim: String,
    /// Optional in a token: a user may have no role code.
    pub role_code_claim: String,
    /// The care setting's claim (optional in a token) and each organisation's setting.
    pub care_settings: CareSettings,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            user_id_claim: DEFAULT_USER_ID_CLAIM.into(),
            name_claim: DEFAULT_NAME_CLAIM.into(),
            role_code_claim: DEFAULT_ROLE_CODE_CLAIM.into(),
            care_settings: CareSettings::default(),
            leeway_secs: 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The JWKS file or signing key cannot be used (configuration).
    #[error("{0}")]
    Keys(String),
    /// The caller's token is refused; the message says why, never the token.
    #[error("{0}")]
    Refused(String),
}

/// Who a verified token names, and where they work if it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenUser {
    pub accessor: Accessor,
    /// The care setting claim, when the token carries one.
    pub care_setting: Option<CareSetting>,
}

struct VerifyingKey {
    key_id: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Verifies bearer tokens against a fixed set of public keys.
pub struct TokenVerifier {
    keys: Vec<VerifyingKey>,
    settings: TokenSettings,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TokenVerifier")
            .field("keys", &self.keys.len())
            .field("settings", &self.settings)
            .finish()
    }
}

impl TokenVerifier {
    /// Reads a JWKS file (`{"keys": [...]}`); only public signature keys (EC, RSA, OKP) are accepted.
    pub(crate) fn from_jwks_file(path: &Path, settings: TokenSettings) -> Result<Self, TokenError> {
        let text =
            std::fs::read_to_string(path).map_err(|error| TokenError::Keys(format!("{}: {error}", path.display())))?;
        Self::from_jwks(&text, settings).map_err(|error| TokenError::Keys(format!("{}: {error}", path.display())))
    }

    pub fn from_jwks(text: &str, settings: TokenSettings) -> Result<Self, TokenError> {
        let set: JwkSet =
            serde_json::from_str(text).map_err(|error| TokenError::Keys(format!("not a JWKS: {error}")))?;
        let keys = set.keys.iter().map(verifying_key).collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(TokenError::Keys("the JWKS holds no key".into()));
        }
        Ok(Self { keys, settings })
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// The user a token names, if its signature, issuer, audience and expiry hold.
    pub fn verify(&self, token: &str) -> Result<TokenUser, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| TokenError::Refused(format!("the bearer token is not a JWT: {}", refusal(&error))))?;
        let candidates: Vec<&VerifyingKey> = self
            .keys
            .iter()
            .filter(|key| key.algorithms.contains(&header.alg))
            .filter(|key| header.kid.is_none() || key.key_id == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::Refused(format!(
                "no configured key verifies a {:?} token{}",
                header.alg,
                header.kid.as_deref().map(|kid| format!(" with kid {kid:?}")).unwrap_or_default()
            )));
        }
        let settings = &self.settings;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = settings.leeway_secs;
        // A token not yet valid is refused too (jsonwebtoken leaves `nbf` unchecked by default).
        validation.validate_nbf = true;
        let mut last_error = None;
        for candidate in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &candidate.key, &validation) {
                Ok(data) => return self.user(&data.claims),
                Err(error) => last_error = Some(error),
            }
        }
        Err(TokenError::Refused(last_error.map(|error| refusal(&error)).unwrap_or_default()))
    }

    fn user(&self, claims: &Map<String, Value>) -> Result<TokenUser, TokenError> {
        let settings = &self.settings;
        let text = |name: &str| -> Option<String> {
            match claims.get(name) {
                Some(Value::String(text)) if !text.trim().is_empty() => Some(text.trim().to_owned()),
                Some(Value::Number(number)) => Some(number.to_string()),
                _ => None,
            }
        };
        let required = |name: &str, what: &str| {
            text(name).ok_or_else(|| TokenError::Refused(format!("the bearer token has no {name} claim ({what})")))
        };
        let claim = &settings.care_settings.claim;
        let care_setting = text(claim)
            .map(|value| {
                CareSetting::parse(&value)
                    .map_err(|reason| TokenError::Refused(format!("the bearer token's {claim} claim: {reason}")))
            })
            .transpose()?;
        Ok(TokenUser {
            accessor: Accessor {
                user_id: required(&settings.user_id_claim, "the user's id")?,
                name: required(&settings.name_claim, "the user's name")?,
                role_code: text(&settings.role_code_claim).unwrap_or_default(),
            },
            care_setting,
        })
    }
}

fn refusal(error: &jsonwebtoken::errors::Error) -> String {
    match error.kind() {
        ErrorKind::ExpiredSignature => "the bearer token has expired".into(),
        ErrorKind::ImmatureSignature => "the bearer token is not valid yet".into(),
        ErrorKind::InvalidSignature => "the bearer token's signature does not verify".into(),
        ErrorKind::InvalidIssuer => "the bearer token is from another issuer".into(),
        ErrorKind::InvalidAudience => "the bearer token is for another audience".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the bearer token has no {claim} claim"),
        ErrorKind::InvalidAlgorithm => "the bearer token's algorithm is not its key's".into(),
        other => format!("the bearer token cannot be verified ({other:?})"),
    }
}

fn verifying_key(jwk: &Jwk) -> Result<VerifyingKey, TokenError> {
    let key_id = jwk.common.key_id.clone();
    let name = key_id.as_deref().unwrap_or("(no kid)");
    let algorithms = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::OctetKey(_), _) => {
            return Err(TokenError::Keys(format!("key {name}: a shared secret (oct) key is not accepted")));
        }
        (_, Some(algorithm)) => vec![
            signature_algorithm(algorithm)
                .ok_or_else(|| TokenError::Keys(format!("key {name}: {algorithm:?} is not a signature algorithm")))?,
        ],
        (AlgorithmParameters::EllipticCurve(ec), None) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err(TokenError::Keys(format!("key {name}: curve {:?} is not supported", ec.curve))),
        },
        (AlgorithmParameters::RSA(_), None) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        (AlgorithmParameters::OctetKeyPair(_), None) => vec![Algorithm::EdDSA],
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|error| TokenError::Keys(format!("key {name}: {error}")))?;
    Ok(VerifyingKey { key_id, key, algorithms })
}

fn signature_algorithm(algorithm: KeyAlgorithm) -> Option<Algorithm> {
    Some(match algorithm {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A development signing key (ECDSA P-256, PKCS#8 PEM) and the JWKS of its public half.
pub fn generate_dev_key() -> Result<(String, String), TokenError> {
    let key = rcgen::KeyPair::generate().map_err(|error| TokenError::Keys(error.to_string()))?;
    let jwks = jwks_of(&key)?;
    Ok((key.serialize_pem(), jwks))
}

/// The JWKS of an ECDSA P-256 key pair's public half.
fn jwks_of(key: &rcgen::KeyPair) -> Result<String, TokenError> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let point = key.public_key_raw();
    // An uncompressed P-256 point: 0x04, then x and y of 32 bytes each.
    if point.len() != 65 || point[0] != 4 {
        return Err(TokenError::Keys("the signing key is not an ECDSA P-256 key".into()));
    }
    let jwk = json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        "use": "sig",
        "alg": "ES256",
        "kid": key_id(point),
    });
    Ok(serde_json::to_string_pretty(&json!({ "keys": [jwk] })).unwrap_or_default() + "\n")
}

/// A key id from the public key, so a minted token names the key that verifies it.
fn key_id(public_point: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(public_point);
    digest[..8].iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What a development token says.
#[derive(Clone, Debug)]
pub struct DevToken {
    pub issuer: String,
    pub audience: String,
    pub user_id: String,
    pub name: String,
    pub role_code: String,
    /// Written under the default claim name when given.
    pub care_setting: Option<CareSetting>,
    pub lifetime: std::time::Duration,
}

/// Signs a development token (ES256) with a key from [`generate_dev_key`],
/// under the default claim names.
pub fn mint(signing_key_pem: &str, token: &DevToken) -> Result<String, TokenError> {
    let key_pair =
        rcgen::KeyPair::from_pem(signing_key_pem).map_err(|error| TokenError::Keys(format!("signing key: {error}")))?;
    let key = EncodingKey::from_ec_pem(signing_key_pem.as_bytes())
        .map_err(|error| TokenError::Keys(format!("signing key: {error}")))?;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key_id(key_pair.public_key_raw()));
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({
        "iss": token.issuer,
        "aud": token.audience,
        "iat": now,
        "exp": now + token.lifetime.as_secs(),
        DEFAULT_USER_ID_CLAIM: token.user_id,
        DEFAULT_NAME_CLAIM: token.name,
    });
    if !token.role_code.is_empty() {
        claims[DEFAULT_ROLE_CODE_CLAIM] = Value::String(token.role_code.clone());
    }
    if let Some(setting) = token.care_setting {
        claims[care_setting::DEFAULT_CLAIM] = Value::String(setting.contract_name().into());
    }
    jsonwebtoken::encode(&header, &claims, &key).map_err(|error| TokenError::Keys(format!("signing: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_token() -> DevToken {
        DevToken {
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            user_id: "555012345678".into(),
            name: "Dr Test".into(),
            role_code: "R8000".into(),
            care_setting: Some(CareSetting::OutOfHoursGp),
            lifetime: std::time::Duration::from_secs(300),
        }
    }

    #[test]
    fn a_minted_token_verifies_against_its_jwks_and_names_the_user() {
        let (key, jwks) = generate_dev_key().unwrap();
        let verifier = TokenVerifier::from_jwks(&jwks, TokenSettings::default()).unwrap();
        let user = verifier.verify(&mint(&key, &dev_token()).unwrap()).unwrap();
        assert_eq!(
            user.accessor,
            Accessor { user_id: "555012345678".into(), name: "Dr Test".into(), role_code: "R8000".into() }
        );
        assert_eq!(user.care_setting, Some(CareSetting::OutOfHoursGp));
        let without = verifier.verify(&mint(&key, &DevToken { care_setting: None, ..dev_token() }).unwrap()).unwrap();
        assert_eq!(without.care_setting, None);
    }

    #[test]
    fn a_shared_secret_key_is_refused() {
        let jwks = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#;
        assert!(matches!(TokenVerifier::from_jwks(jwks, TokenSettings::default()), Err(TokenError::Keys(_))));
    }
}
