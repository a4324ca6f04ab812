//! The `store` setting: `embedded` (the default), `memory` (tests only) or a
//! `postgres://` URL, parsed the same from a flag, `CPIS_STORE` or the TOML
//! file, and printed with any password redacted.

use serde::{Deserialize, Serialize};

use crate::store::postgres::StoreUrl;

/// Where the relay keeps its data: `embedded`, `memory` or a `postgres://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// Durable: the embedded store in the data directory (one machine).
    Embedded,
    /// In process memory, lost on exit: for tests and benchmarks only.
    Memory,
    /// Durable and shared: several relay nodes on one PostgreSQL database.
    Postgres(StoreUrl),
}

impl std::str::FromStr for StoreKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "embedded" => Ok(Self::Embedded),
            "memory" => Ok(Self::Memory),
            url if StoreUrl::is_postgres(url) => {
                StoreUrl::parse(url).map(Self::Postgres).map_err(|reason| format!("{}: {reason}", redact(url)))
            }
            _ => Err("must be embedded, memory or a postgres:// URL".into()),
        }
    }
}

/// A URL that failed to parse, shown without anything that may be a password.
fn redact(url: &str) -> String {
    StoreUrl::parse(url).map(|url| url.redacted()).unwrap_or_else(|_| "the postgres:// URL".into())
}

impl<'de> Deserialize<'de> for StoreKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for StoreKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Embedded => serializer.serialize_str("embedded"),
            Self::Memory => serializer.serialize_str("memory"),
            Self::Postgres(url) => serializer.serialize_str(&url.redacted()),
        }
    }
}
