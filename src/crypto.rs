//! The one crypto provider of the process: ring, chosen explicitly (no
//! aws-lc). Every rustls configuration takes it from here: the relay's own
//! TLS (`tls`), and the clients of PostgreSQL, witnesses and webhooks, which
//! sit below `tls` and must not import it.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The one crypto provider of the process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process default so that no library picks another.
/// Safe to call more than once.
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}
