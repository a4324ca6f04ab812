//! Development PKI: a CA, a server certificate for localhost and client
//! identities for each role, made with rcgen, personal certificates (and
//! PKCS#12 files for browsers) for the browser view's development users, and
//! the FHIR door's development token signing key with its JWKS. `certs init` writes them; the
//! server and clients use `certs/dev/` by default, creating it on first use.
//! Production identities come from the organisation's own CA (certs/README.md).

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use chrono::{Datelike, Days, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A client identity of the development PKI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevIdentity {
    /// File stem: `NAME.pem` and `NAME.key`.
    pub name: &'static str,
    pub ods_code: &'static str,
    pub organisation: &'static str,
    pub role: &'static str,
}

/// The identities `certs init` issues.
pub const DEV_IDENTITIES: [DevIdentity; 5] = [
    DevIdentity {
        name: "ed-rr8",
        ods_code: "RR8",
        organisation: "LEEDS TEACHING HOSPITALS NHS TRUST",
        role: "unscheduled-care",
    },
    DevIdentity { name: "la-706", ods_code: "706", organisation: "LONDON BOROUGH OF ISLINGTON", role: "social-care" },
    DevIdentity { name: "la-855", ods_code: "855", organisation: "LEICESTERSHIRE COUNTY COUNCIL", role: "social-care" },
    DevIdentity { name: "auditor", ods_code: "X26", organisation: "NHS ENGLAND", role: "auditor" },
    // Scheduled care: a made-up GP practice (practice codes are a letter and five digits).
    DevIdentity { name: "gp-y02", ods_code: "Y02999", organisation: "CPIS TEST GP PRACTICE", role: "scheduled-care" },
];

/// A person's development certificate for the browser view: an organisation
/// identity of [`DEV_IDENTITIES`] whose subject also names the user (UID =
/// user id, name, title = role code; see [`crate::auth::user_from_certificate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevUser {
    /// File stem: `NAME.pem`, `NAME.key` and `NAME.p12` (for browsers).
    pub name: &'static str,
    /// The organisation, by its [`DevIdentity::name`].
    pub organisation: &'static str,
    pub user_id: &'static str,
    pub user_name: &'static str,
    pub role_code: &'static str,
}

/// The users `certs init` issues, one per page of the browser view.
pub const DEV_USERS: [DevUser; 4] = [
    DevUser {
        name: "user-ed-rr8",
        organisation: "ed-rr8",
        user_id: "555000000001",
        user_name: "Dr Alex Example (development)",
        role_code: "R8000",
    },
    DevUser {
        name: "user-gp-y02",
        organisation: "gp-y02",
        user_id: "555000000002",
        user_name: "Dr Jo Sample (development)",
        role_code: "R8000",
    },
    DevUser {
        name: "user-la-706",
        organisation: "la-706",
        user_id: "706-DUTY-01",
        user_name: "Sam Duty (development)",
        role_code: "SW-DUTY",
    },
    DevUser {
        name: "user-auditor",
        organisation: "auditor",
        user_id: "555000000004",
        user_name: "Robin Governance (development)",
        role_code: "R8015",
    },
];

/// The password of every development PKCS#12 file (browsers refuse to import one without).
pub const DEV_P12_PASSWORD: &str = "cpis-dev";

/// The default directory of development certificates.
pub(crate) const DEV_DIR: &str = "certs/dev";

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("generating certificates failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("reading a certificate: {0}")]
    Certificate(String),
    #[error("the FHIR token key: {0}")]
    TokenKey(#[from] crate::auth::token::TokenError),
}

/// A PEM certificate and its private key.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority that can issue server and client certificates.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

impl Authority {
    /// A new self-signed CA.
    pub fn generate(common_name: &str) -> Result<Self, CertsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, "cpis-relay development", None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, 3650);
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        Ok(Self { issuer: CertifiedIssuer::self_signed(params, key)?, key_pem })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, names: &[&str]) -> Result<Pair, CertsError> {
        let mut params = CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = name(names.first().copied().unwrap_or("cpis-relay"), "cpis-relay", None);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate: CN = ODS code, O = organisation, OU = role.
    pub fn issue_client(&self, ods_code: &str, organisation: &str, role: Option<&str>) -> Result<Pair, CertsError> {
        self.issue_client_named(name(ods_code, organisation, role))
    }

    /// A personal client certificate: the organisation's subject plus the user.
    pub fn issue_user(&self, user: &DevUser) -> Result<Pair, CertsError> {
        let organisation = DEV_IDENTITIES
            .iter()
            .find(|identity| identity.name == user.organisation)
            .ok_or_else(|| CertsError::Certificate(format!("no development identity {}", user.organisation)))?;
        let mut subject = name(organisation.ods_code, organisation.organisation, Some(organisation.role));
        subject.push(DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 1]), user.user_id);
        subject.push(DnType::CustomDnType(vec![2, 5, 4, 41]), user.user_name);
        subject.push(DnType::CustomDnType(vec![2, 5, 4, 12]), user.role_code);
        self.issue_client_named(subject)
    }

    /// A client certificate with exactly this subject (tests of identity parsing).
    pub(crate) fn issue_client_named(&self, name: DistinguishedName) -> Result<Pair, CertsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A client certificate (CN = ODS code, O, OU = role) that expires
    /// `lifetime` from now (tests of expiry while connected).
    pub fn issue_client_expiring(
        &self,
        ods_code: &str,
        organisation: &str,
        role: Option<&str>,
        lifetime: std::time::Duration,
    ) -> Result<Pair, CertsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(ods_code, organisation, role);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(60)).into();
        params.not_after = (now + lifetime).into();
        self.sign_as_is(params)
    }

    /// A certificate revocation list of this CA (PEM and DER) revoking the
    /// given PEM certificates, valid from yesterday for `days`.
    pub fn revocation_list(&self, revoked_pems: &[&str], days: u64) -> Result<(String, Vec<u8>), CertsError> {
        let today = Utc::now().date_naive();
        let at = |date: chrono::NaiveDate| rcgen::date_time_ymd(date.year(), date.month() as u8, date.day() as u8);
        let yesterday = at(today.checked_sub_days(Days::new(1)).unwrap_or(today));
        let mut revoked_certs = Vec::with_capacity(revoked_pems.len());
        for pem in revoked_pems {
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&serial_of(pem)?),
                revocation_time: yesterday,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: yesterday,
            next_update: at(today.checked_add_days(Days::new(days)).unwrap_or(today)),
            crl_number: rcgen::SerialNumber::from(Utc::now().timestamp_micros() as u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer)?;
        Ok((crl.pem()?, crl.der().to_vec()))
    }

    fn sign(&self, mut params: CertificateParams) -> Result<Pair, CertsError> {
        set_validity(&mut params, 825);
        self.sign_as_is(params)
    }

    /// Signs `params` with the validity they carry.
    fn sign_as_is(&self, mut params: CertificateParams) -> Result<Pair, CertsError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A PKCS#12 file (what browsers import) of a key, its certificate and the
/// CA, encrypted with `password` (PBES2 with AES-256 and an HMAC-SHA256 MAC).
pub fn pkcs12(pair: &Pair, ca_pem: &str, alias: &str, password: &str) -> Result<Vec<u8>, CertsError> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, pem::PemObject};
    let bad = |message: String| CertsError::Certificate(message);
    let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|error| bad(error.to_string()));
    let certificate = |der: CertificateDer| Certificate::from_der(&der).map_err(|error| bad(error.to_string()));
    let key = PrivatePkcs8KeyDer::from_pem_slice(pair.key_pem.as_bytes()).map_err(|error| bad(error.to_string()))?;
    let key = PrivateKey::from_der(key.secret_pkcs8_der()).map_err(|error| bad(error.to_string()))?;
    let leaf = der(&pair.cert_pem)?;
    let key_id = <sha2::Sha256 as sha2::Digest>::digest(&leaf).to_vec();
    let chain = PrivateKeyChain::new(key_id, key, [certificate(leaf)?, certificate(der(ca_pem)?)?]);
    let mut store = KeyStore::new();
    store.add_entry(alias, KeyStoreEntry::PrivateKeyChain(chain));
    store.writer(password).write().map_err(|error| bad(format!("writing a PKCS#12 file: {error}")))
}

/// The serial number of a PEM certificate, as its DER encodes it.
fn serial_of(pem: &str) -> Result<Vec<u8>, CertsError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let bad = |message: String| CertsError::Certificate(message);
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|error| bad(error.to_string()))?;
    let (_, certificate) = x509_parser::parse_x509_certificate(&der).map_err(|error| bad(error.to_string()))?;
    Ok(certificate.raw_serial().to_vec())
}

fn name(common_name: &str, organisation: &str, unit: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, organisation);
    if let Some(unit) = unit {
        name.push(DnType::OrganizationalUnitName, unit);
    }
    name
}

fn set_validity(params: &mut CertificateParams, days: u64) {
    let today = Utc::now().date_naive();
    let from = today.checked_sub_days(Days::new(1)).unwrap_or(today);
    let until = today.checked_add_days(Days::new(days)).unwrap_or(today);
    params.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(until.year(), until.month() as u8, until.day() as u8);
}

/// Writes a fresh development PKI into `dir`: `ca.pem`/`ca.key`,
/// `server.pem`/`server.key` and `NAME.pem`/`NAME.key` per [`DEV_IDENTITIES`].
pub fn init(dir: &Path) -> Result<Vec<PathBuf>, CertsError> {
    Ok(init_keeping_ca(dir)?.1)
}

/// [`init`], also returning the CA to issue more certificates with (the
/// national-day bench issues one per local authority and organisation).
pub(crate) fn init_keeping_ca(dir: &Path) -> Result<(Authority, Vec<PathBuf>), CertsError> {
    let authority = Authority::generate("cpis-relay development CA")?;
    let server = authority.issue_server(&["localhost", "127.0.0.1"])?;
    let mut written = Vec::new();
    create_dir(dir)?;
    written.push(write(dir, "ca.pem", &authority.cert_pem(), false)?);
    written.push(write(dir, "ca.key", &authority.key_pem, true)?);
    written.extend(write_pair(dir, "server", &server)?);
    for identity in DEV_IDENTITIES {
        let pair = authority.issue_client(identity.ods_code, identity.organisation, Some(identity.role))?;
        written.extend(write_pair(dir, identity.name, &pair)?);
    }
    for user in DEV_USERS {
        let pair = authority.issue_user(&user)?;
        written.extend(write_pair(dir, user.name, &pair)?);
        let p12 = pkcs12(&pair, &authority.cert_pem(), user.name, DEV_P12_PASSWORD)?;
        written.push(write_bytes(dir, &format!("{}.p12", user.name), &p12, true)?);
    }
    written.extend(write_token_key(dir)?);
    Ok((authority, written))
}

/// Writes `NAME.pem` and `NAME.key` (private) into `dir`; returns their paths.
pub(crate) fn write_pair(dir: &Path, name: &str, pair: &Pair) -> Result<[PathBuf; 2], CertsError> {
    Ok([
        write(dir, &format!("{name}.pem"), &pair.cert_pem, false)?,
        write(dir, &format!("{name}.key"), &pair.key_pem, true)?,
    ])
}

/// Writes a fresh development signing key for the FHIR door's bearer tokens
/// and the JWKS that verifies them (`fhir-token.key`, `fhir-jwks.json`).
pub(crate) fn write_token_key(dir: &Path) -> Result<Vec<PathBuf>, CertsError> {
    use crate::auth::token;
    let (key_pem, jwks) = token::generate_dev_key()?;
    create_dir(dir)?;
    Ok(vec![write(dir, token::DEV_SIGNING_KEY, &key_pem, true)?, write(dir, token::DEV_JWKS, &jwks, false)?])
}

/// Creates the development token key in `dir` unless its JWKS already exists
/// (a directory made before the FHIR door existed has none). Returns whether it was created.
pub(crate) fn ensure_token_key(dir: &Path) -> Result<bool, CertsError> {
    if dir.join(crate::auth::token::DEV_JWKS).exists() {
        return Ok(false);
    }
    write_token_key(dir)?;
    Ok(true)
}

/// Creates the development PKI in `dir` unless its CA already exists.
/// Returns whether it was created.
pub(crate) fn ensure_dev(dir: &Path) -> Result<bool, CertsError> {
    if dir.join("ca.pem").exists() {
        return Ok(false);
    }
    init(dir)?;
    Ok(true)
}

fn create_dir(dir: &Path) -> Result<(), CertsError> {
    fs::create_dir_all(dir).map_err(|source| CertsError::Io { path: dir.to_owned(), source })
}

fn write(dir: &Path, file: &str, contents: &str, private: bool) -> Result<PathBuf, CertsError> {
    write_bytes(dir, file, contents.as_bytes(), private)
}

fn write_bytes(dir: &Path, file: &str, contents: &[u8], private: bool) -> Result<PathBuf, CertsError> {
    let path = dir.join(file);
    let io = |source| CertsError::Io { path: path.clone(), source };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut handle = options.open(&path).map_err(io)?;
    handle.write_all(contents).map_err(io)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_each_users_certificate_naming_the_user_and_a_pkcs12_of_it_with_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        for user in DEV_USERS {
            let pem = fs::read_to_string(dir.path().join(format!("{}.pem", user.name))).unwrap();
            let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
                .map(|der: rustls::pki_types::CertificateDer| der.to_vec())
                .unwrap();
            let named = crate::auth::user_from_certificate(&der).unwrap().unwrap();
            assert_eq!((named.user_id.as_str(), named.name.as_str()), (user.user_id, user.user_name));
            assert!(crate::auth::Identity::from_certificate(&der).is_ok(), "{}", user.name);

            let p12 = fs::read(dir.path().join(format!("{}.p12", user.name))).unwrap();
            assert!(
                p12_keystore::KeyStore::from_pkcs12(&p12, "wrong", Default::default()).is_err(),
                "the password protects it"
            );
            let store = p12_keystore::KeyStore::from_pkcs12(&p12, DEV_P12_PASSWORD, Default::default()).unwrap();
            let (_, chain) = store.private_key_chain().expect("a key with its chain");
            assert_eq!(chain.certs()[0].as_der(), der.as_slice(), "the user's certificate first");
            assert_eq!(chain.certs().len(), 2, "then the CA");
            let key = fs::read_to_string(dir.path().join(format!("{}.key", user.name))).unwrap();
            let key: rustls::pki_types::PrivatePkcs8KeyDer =
                rustls::pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap();
            assert_eq!(chain.key().as_der(), key.secret_pkcs8_der(), "the user's key");
        }
    }
}
