//! Which store an offline tool (`store check`, `audit verify`, `quarantine
//! replay`) works on, named the way `serve` names it (the same flags,
//! environment variables and defaults), and opening it once for all of them.

use std::{path::PathBuf, sync::Arc};

use clap::Args;

use super::CliError;
use crate::{
    config::StoreKind,
    store::{Store, postgres},
};

#[derive(Debug, Args)]
pub struct StoreArgs {
    #[arg(long, env = "CPIS_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// embedded (the data directory, no relay running) or a postgres:// URL (relays may run).
    #[arg(long, env = "CPIS_STORE", default_value = "embedded")]
    pub store: StoreKind,
    /// PostgreSQL: file holding the password, when neither the URL nor PGPASSWORD gives one.
    #[arg(long, env = "CPIS_STORE_PASSWORD_FILE")]
    pub store_password_file: Option<PathBuf>,
    /// PostgreSQL: allow sslmode=disable to a host other than this machine (never in production).
    #[arg(long, env = "CPIS_STORE_ALLOW_PLAINTEXT", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub store_allow_plaintext: Option<bool>,
}

impl StoreArgs {
    /// How to reach PostgreSQL at `url`, with the few connections a tool needs.
    pub fn connect_options(&self, url: &postgres::StoreUrl) -> postgres::ConnectOptions {
        let url = if self.store_allow_plaintext == Some(true) { url.clone().allowing_plaintext() } else { url.clone() };
        postgres::ConnectOptions { url, password_file: self.store_password_file.clone(), pool_size: 2 }
    }

    /// Opens the store for writing (an embedded one only while no relay has it).
    pub async fn open(&self) -> Result<Arc<dyn Store>, CliError> {
        let failed = |error: crate::store::StoreError| CliError::Failed(error.to_string());
        match &self.store {
            StoreKind::Embedded => {
                Ok(Arc::new(crate::store::embedded::EmbeddedStore::open(&self.data_dir).map_err(failed)?))
            }
            StoreKind::Postgres(url) => {
                let options = postgres::PostgresOptions {
                    connect: self.connect_options(url),
                    write_timeout: std::time::Duration::from_secs(30),
                };
                Ok(Arc::new(postgres::PostgresStore::open(&options).await.map_err(failed)?))
            }
            StoreKind::Memory => Err(CliError::Config("store: the memory store keeps nothing to work on".into())),
        }
    }
}
