//! A bad setting. Apart from the settings themselves so that the parts that
//! check their own (`traces`) can say which key is wrong without importing
//! the configuration that wires them together.

/// A bad setting: the key and why.
#[derive(Debug, thiserror::Error)]
#[error("configuration {key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}
