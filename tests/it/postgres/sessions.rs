//! How the relay's PostgreSQL sessions are opened, against a real server (a
//! private cluster per test, see tests/it/helpers/postgres.rs, which has no
//! TLS): TLS is required unless the URL says `sslmode=disable` (to this
//! machine), `prefer` never falls back to plaintext, and every session
//! carries its server-side limits, so a stuck writer cannot hold an LA's
//! rows locked for the others.

use std::time::Duration;

use crate::helpers::postgres::PgCluster;
use cpis_relay::store::postgres::{
    ConnectOptions, PostgresOptions, PostgresStore, StoreUrl,
    connect::{Connector, SESSION_LIMITS},
};

fn connect_options(url: &str) -> ConnectOptions {
    ConnectOptions { url: StoreUrl::parse(url).unwrap(), password_file: None, pool_size: 2 }
}

#[tokio::test]
async fn a_server_without_tls_is_refused_by_default_and_by_prefer_instead_of_plaintext() {
    cpis_relay::tls::install_crypto_provider();
    let cluster = PgCluster::start();
    let plaintext = cluster.create_database("cpis");
    let without_mode = plaintext.strip_suffix("?sslmode=disable").unwrap().to_owned();
    for url in [without_mode.clone(), format!("{without_mode}?sslmode=prefer")] {
        let options = PostgresOptions { connect: connect_options(&url), write_timeout: Duration::from_secs(5) };
        let refused = PostgresStore::open(&options).await.err();
        assert!(refused.is_some(), "{url}: opened over plaintext");
    }
    // Plaintext to this machine, when the URL asks for it, still works.
    let options = PostgresOptions { connect: connect_options(&plaintext), write_timeout: Duration::from_secs(5) };
    PostgresStore::open(&options).await.unwrap();
}

#[tokio::test]
async fn every_session_has_its_limits_and_a_stuck_lock_holder_cannot_block_it() {
    cpis_relay::tls::install_crypto_provider();
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let pool = Connector::new(&connect_options(&url)).unwrap().pool(2, &Default::default()).unwrap();
    let client = pool.get().await.unwrap();
    for (name, value) in SESSION_LIMITS {
        let shown: String = client.query_one(&format!("SHOW {name}"), &[]).await.unwrap().get(0);
        assert_eq!(shown, value, "{name}");
    }

    // Another session (as a relay node whose batch timed out mid-transaction) holds a row lock.
    cluster.psql(
        "cpis",
        "CREATE TABLE sequence_probe (la text PRIMARY KEY, next bigint); INSERT INTO sequence_probe VALUES ('706', 1)",
    );
    let (holder, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    holder.batch_execute("BEGIN; SELECT next FROM sequence_probe WHERE la = '706' FOR UPDATE").await.unwrap();
    // The relay's session gives up on the lock (lock_timeout) instead of queueing behind it for ever.
    let waited = client.query("SELECT next FROM sequence_probe WHERE la = '706' FOR UPDATE", &[]).await.unwrap_err();
    assert_eq!(waited.code(), Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE), "{waited}");
}
