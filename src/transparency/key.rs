//! The log's Ed25519 key (ring): generating it into a PKCS#8 file only its
//! owner can read, loading it, and the public verifier key a third party
//! needs, in the signed-note verifier key text form
//! `<name>+<key id, 8 hex digits>+<base64(0x01 || 32-byte public key)>`
//! (the form Go's golang.org/x/mod/sumdb/note reads). The key id is
//! SHA-256(name || 0x0A || 0x01 || public key)[:4], big-endian (C2SP signed-note).
//! Never logs or prints the private key.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

/// The signed-note signature type of an Ed25519 signature.
pub(crate) const ED25519_SIGNATURE_TYPE: u8 = 0x01;

/// Why a key could not be made, read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not an Ed25519 private key in PKCS#8 form ({reason})", path.display())]
    NotEd25519 { path: PathBuf, reason: String },
    #[error("key name {0:?} must be non-empty, with no spaces, control characters or '+'")]
    BadName(String),
    #[error("verifier key: {0}")]
    BadVerifierKey(&'static str),
    #[error("the system random generator failed")]
    Random,
    #[error("{}: the signing key is readable or writable by others (mode {mode:o}); it must be the owner's only: chmod 600 it", path.display())]
    NotPrivate { path: PathBuf, mode: u32 },
}

/// Whether `name` may name a signed-note key (and so a checkpoint's origin).
pub(crate) fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '+')
}

/// The key id of an Ed25519 key named `name`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ED25519_SIGNATURE_TYPE]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Generates a new Ed25519 key and writes it to `path` as PKCS#8 (DER),
/// readable by its owner only (0600). Refuses to overwrite an existing file.
pub fn generate_key_file(path: &Path) -> Result<(), KeyError> {
    let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Random)?;
    let io_error = |source| KeyError::Io { path: path.to_owned(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io_error)?;
    file.write_all(document.as_ref()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    // The new file's directory entry must survive a power loss too.
    let dir = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| KeyError::Io { path: dir.to_owned(), source })
}

/// The log's signing key and the name it signs under.
pub struct LogSigner {
    name: String,
    key_pair: Ed25519KeyPair,
    verifier: VerifierKey,
}

impl std::fmt::Debug for LogSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSigner").field("verifier", &self.verifier.to_string()).finish_non_exhaustive()
    }
}

impl LogSigner {
    /// Loads the PKCS#8 key at `path` to sign as `name`; refuses a key file
    /// others may read or write.
    pub fn from_key_file(name: &str, path: &Path) -> Result<Self, KeyError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let metadata = std::fs::metadata(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::NotPrivate { path: path.to_owned(), mode });
            }
        }
        let der = std::fs::read(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
        Self::from_pkcs8(name, &der).map_err(|error| match error {
            KeyError::NotEd25519 { reason, .. } => KeyError::NotEd25519 { path: path.to_owned(), reason },
            other => other,
        })
    }

    /// A new key held in memory only: checkpoints it signs cannot be
    /// verified once the process ends (a relay with no configured key).
    pub fn generate_ephemeral(name: &str) -> Result<Self, KeyError> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Random)?;
        Self::from_pkcs8(name, document.as_ref())
    }

    /// A signer from a PKCS#8 document (v1 or v2).
    pub(crate) fn from_pkcs8(name: &str, der: &[u8]) -> Result<Self, KeyError> {
        if !is_valid_key_name(name) {
            return Err(KeyError::BadName(name.to_owned()));
        }
        let key_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|error| KeyError::NotEd25519 { path: PathBuf::new(), reason: error.to_string() })?;
        Self::from_key_pair(name, key_pair)
    }

    /// A signer from a raw 32-byte Ed25519 private key (the RFC 8032 seed),
    /// the form Go's note package keeps keys in.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, KeyError> {
        if !is_valid_key_name(name) {
            return Err(KeyError::BadName(name.to_owned()));
        }
        let key_pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|error| KeyError::NotEd25519 { path: PathBuf::new(), reason: error.to_string() })?;
        Self::from_key_pair(name, key_pair)
    }

    fn from_key_pair(name: &str, key_pair: Ed25519KeyPair) -> Result<Self, KeyError> {
        let public_key: [u8; 32] =
            key_pair.public_key().as_ref().try_into().map_err(|_| KeyError::BadVerifierKey("public key length"))?;
        let verifier = VerifierKey::new(name, public_key)?;
        Ok(Self { name: name.to_owned(), key_pair, verifier })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> &VerifierKey {
        &self.verifier
    }

    /// The Ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let signature = self.key_pair.sign(message);
        let mut out = [0u8; 64];
        out.copy_from_slice(signature.as_ref());
        out
    }
}

/// The public half: what a third party verifies checkpoints with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    public_key: [u8; 32],
}

impl VerifierKey {
    pub fn new(name: &str, public_key: [u8; 32]) -> Result<Self, KeyError> {
        if !is_valid_key_name(name) {
            return Err(KeyError::BadName(name.to_owned()));
        }
        Ok(Self { name: name.to_owned(), key_id: key_id(name, &public_key), public_key })
    }

    /// Parses `<name>+<hex key id>+<base64(0x01 || public key)>`, checking the id.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(KeyError::BadVerifierKey("expected name+keyid+key"));
        };
        if id.len() != 8 {
            return Err(KeyError::BadVerifierKey("the key id must be 8 hexadecimal digits"));
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| KeyError::BadVerifierKey("the key id is not hexadecimal"))?;
        let key = STANDARD.decode(key).map_err(|_| KeyError::BadVerifierKey("the key is not base64"))?;
        let [ED25519_SIGNATURE_TYPE, public_key @ ..] = key.as_slice() else {
            return Err(KeyError::BadVerifierKey("not an Ed25519 (type 0x01) key"));
        };
        let public_key: [u8; 32] =
            public_key.try_into().map_err(|_| KeyError::BadVerifierKey("an Ed25519 public key is 32 bytes"))?;
        let verifier = Self::new(name, public_key)?;
        if verifier.key_id != id {
            return Err(KeyError::BadVerifierKey("the key id does not match the name and key"));
        }
        Ok(verifier)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub(crate) fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// Whether `signature` is this key's Ed25519 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key).verify(message, signature).is_ok()
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key = Vec::with_capacity(33);
        key.push(ED25519_SIGNATURE_TYPE);
        key.extend_from_slice(&self.public_key);
        write!(f, "{}+{:08x}+{}", self.name, self.key_id, STANDARD.encode(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("log.pk8");
        generate_key_file(&path).expect("a new key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("the key file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        }
        let before = std::fs::read(&path).expect("the key");
        assert!(matches!(generate_key_file(&path), Err(KeyError::Io { .. })));
        assert_eq!(std::fs::read(&path).expect("the key"), before, "the key was overwritten");
        let signer = LogSigner::from_key_file("relay.example/access-log", &path).expect("loads");
        let signature = signer.sign(b"text\n");
        assert!(signer.verifier().verifies(b"text\n", &signature));
        assert!(!signer.verifier().verifies(b"text.\n", &signature));
    }

    #[test]
    fn the_verifier_key_text_round_trips_and_checks_its_id() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("log.pk8");
        generate_key_file(&path).expect("a new key");
        let signer = LogSigner::from_key_file("relay.example/log", &path).expect("loads");
        let text = signer.verifier().to_string();
        assert!(text.starts_with("relay.example/log+"), "{text}");
        assert_eq!(&VerifierKey::parse(&text).expect("parses"), signer.verifier());
        let renamed = text.replacen("relay.example/log", "relay.example/other", 1);
        assert!(matches!(VerifierKey::parse(&renamed), Err(KeyError::BadVerifierKey(_))));
        assert!(matches!(LogSigner::from_key_file("two words", &path), Err(KeyError::BadName(_))));
        assert!(matches!(LogSigner::from_pkcs8("a", b"not a key"), Err(KeyError::NotEd25519 { .. })));
    }

    // The key id rule of the C2SP signed-note spec, checked by hand: the first
    // four bytes of SHA-256("name\n\x01" || key).
    #[test]
    fn the_key_id_is_the_signed_note_one() {
        let public_key = [7u8; 32];
        let mut preimage = b"example.com/log\n\x01".to_vec();
        preimage.extend_from_slice(&public_key);
        let digest = Sha256::digest(&preimage);
        assert_eq!(key_id("example.com/log", &public_key).to_be_bytes(), digest[..4]);
    }
}
