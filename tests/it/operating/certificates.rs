//! Certificate revocation and reloading over real mutual TLS: a client
//! certificate a CRL revokes is refused and others are not; the server's
//! certificate, key, CA and CRLs reload (on request, on SIGHUP in a real
//! `serve` process) for new handshakes, and a reloaded CRL also closes the
//! revoked peer's established connections (others are untouched); a reload
//! of broken files keeps the old configuration.

use std::{path::Path, sync::Arc};

use crate::helpers::*;
use cpis_relay::{
    clock::ManualClock,
    relay::RelaySettings,
    store::{Store, memory::MemoryStore},
    tls::{self, PemFiles, PemText, ServerTls, ServerTlsFiles},
};
use tokio::io::AsyncBufReadExt;
use tonic::transport::Channel;

/// A call any authenticated caller may make (a health check) over
/// `channel`, or the error connecting it, as a result.
async fn call_over(channel: Result<Channel, cpis_relay::client::ClientError>) -> Result<(), String> {
    let channel = channel.map_err(|error| error.to_string())?;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .map(|_| ())
        .map_err(|status| status.to_string())
}

/// The server's files in `dir`, with CRLs at the given paths.
fn server_files(pki: &Pki, dir: &Path, crls: Vec<std::path::PathBuf>) -> ServerTlsFiles {
    let certs = dir.join("certs");
    pki.write_server_layout(&certs);
    ServerTlsFiles { pem: PemFiles::in_dir(&certs, "server"), crls }
}

/// A relay on the memory store serving `tls`.
async fn serve(pki: Pki, tls: ServerTls) -> TestRelay {
    tls::install_crypto_provider();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(test_start()));
    let dir = tempfile::tempdir().unwrap();
    TestRelay::serve_tuned(pki, store, clock, RelaySettings::default(), dir, move |options| options.tls = tls).await
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused_and_an_unrevoked_one_works() {
    tls::install_crypto_provider();
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let revoked = pki.client_pem("ed-rr8");
    let (crl_pem, crl_der) = pki.authority.revocation_list(&[&revoked.cert], 7).unwrap();
    // One CRL as PEM, the same as DER: both formats are read.
    std::fs::write(files.path().join("revoked.crl.pem"), crl_pem).unwrap();
    std::fs::write(files.path().join("revoked.crl"), crl_der).unwrap();
    let crls = vec![files.path().join("revoked.crl.pem"), files.path().join("revoked.crl")];
    let server_tls = ServerTls::from_files(server_files(&pki, files.path(), crls)).unwrap();
    let relay = serve(pki, server_tls).await;

    let refused = call_over(relay.channel_with(&revoked).await).await;
    assert!(refused.is_err(), "a revoked certificate must be refused");
    // Another certificate of the same organisation, and another organisation's, are not revoked.
    call_over(relay.channel_with(&relay.pki.client_pem("ed-rr8")).await).await.unwrap();
    call_over(relay.channel_with(&relay.pki.client_pem("gp-y02")).await).await.unwrap();
}

#[tokio::test]
async fn a_reloaded_crl_refuses_new_handshakes_and_ends_the_revoked_peers_established_connection() {
    tls::install_crypto_provider();
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let crl_path = files.path().join("ca.crl.pem");
    let (empty_crl, _) = pki.authority.revocation_list(&[], 7).unwrap();
    std::fs::write(&crl_path, empty_crl).unwrap();
    let server_tls = ServerTls::from_files(server_files(&pki, files.path(), vec![crl_path.clone()])).unwrap();
    let relay = serve(pki, server_tls.clone()).await;
    let leaked = relay.pki.client_pem("ed-rr8");
    let established = relay.channel_with(&leaked).await.unwrap();
    call_over(Ok(established.clone())).await.unwrap();

    let (revoking, _) = relay.pki.authority.revocation_list(&[&leaked.cert], 7).unwrap();
    std::fs::write(&crl_path, revoking).unwrap();
    assert!(server_tls.reload_if_changed().unwrap(), "the changed CRL is loaded");

    let refused = call_over(relay.channel_with(&leaked).await).await;
    assert!(refused.is_err(), "a new handshake with the revoked certificate must be refused");
    let ended = call_over(Ok(established)).await;
    assert!(ended.is_err(), "the revoked peer's established connection is closed (and cannot be made again)");
    call_over(relay.channel_with(&relay.pki.client_pem("gp-y02")).await).await.unwrap();
    assert!(!server_tls.reload_if_changed().unwrap(), "nothing changed since");
}

#[tokio::test]
async fn a_reload_of_broken_files_keeps_the_old_configuration_and_is_counted() {
    tls::install_crypto_provider();
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let crl_path = files.path().join("ca.crl.pem");
    let server_key = files.path().join("certs").join("server.key");
    let (empty_crl, _) = pki.authority.revocation_list(&[], 7).unwrap();
    std::fs::write(&crl_path, empty_crl).unwrap();
    let server_tls = ServerTls::from_files(server_files(&pki, files.path(), vec![crl_path.clone()])).unwrap();
    let relay = serve(pki, server_tls.clone()).await;
    let failures =
        || async { metric(&admin_get(relay.admin, "/metrics").await.1, "cpis_tls_reloads_total{outcome=\"failure\"}") };
    let before = failures().await;

    std::fs::write(&crl_path, "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n").unwrap();
    let error = server_tls.reload().unwrap_err().to_string();
    assert!(error.to_lowercase().contains("crl") || error.contains("revocation"), "{error}");
    std::fs::write(&crl_path, "").unwrap();
    server_tls.reload().unwrap_err();
    let (good_crl, _) = relay.pki.authority.revocation_list(&[], 7).unwrap();
    std::fs::write(&crl_path, good_crl).unwrap();
    // A PEM block that is not a key (its label built here, so no key-shaped text is committed).
    let label = ["PRIVATE", "KEY"].join(" ");
    std::fs::write(&server_key, format!("-----BEGIN {label}-----\nbm90IGEga2V5\n-----END {label}-----\n")).unwrap();
    server_tls.reload().unwrap_err();

    assert!(failures().await >= before + 3.0);
    // The old configuration still serves new handshakes.
    call_over(relay.channel_with(&relay.pki.client_pem("ed-rr8")).await).await.unwrap();
}

/// `serve --crl` in a real process: SIGHUP reloads the CRL.
#[tokio::test]
async fn sighup_reloads_the_crl_of_a_running_serve() {
    tls::install_crypto_provider();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    pki.write_server_layout(&dir.path().join("certs"));
    let crl_path = dir.path().join("ca.crl.pem");
    std::fs::write(&crl_path, pki.authority.revocation_list(&[], 7).unwrap().0).unwrap();
    let crl = crl_path.to_str().unwrap();
    // A long poll interval: only the SIGHUP can explain the reload.
    let mut running =
        start(dir.path(), &["--store", "memory", "--crl", crl, "--tls-reload-interval-secs", "3600"], "info").await;
    let leaked: PemText = pki.client_pem("ed-rr8");
    let url = running.url.clone();
    let connect = |pem: PemText| {
        let url = url.clone();
        async move { cpis_relay::client::connect(&url, &pem, None).await }
    };
    call_over(connect(leaked.clone()).await).await.unwrap();

    std::fs::write(&crl_path, pki.authority.revocation_list(&[&leaked.cert], 7).unwrap().0).unwrap();
    let pid = running.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
    let mut lines = tokio::io::BufReader::new(running.stderr.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.contains("TLS configuration reloaded") {
            break;
        }
        assert!(!line.contains("not reloaded"), "{line}");
    }
    assert!(call_over(connect(leaked).await).await.is_err(), "revoked after SIGHUP");
    call_over(connect(pki.client_pem("gp-y02")).await).await.unwrap();
    running.child.kill().await.unwrap();
}

/// The poll: a changed CRL file is loaded with no signal and no call.
#[tokio::test]
async fn a_changed_crl_file_is_loaded_by_the_watch() {
    tls::install_crypto_provider();
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let crl_path = files.path().join("ca.crl.pem");
    std::fs::write(&crl_path, pki.authority.revocation_list(&[], 7).unwrap().0).unwrap();
    let server_tls = ServerTls::from_files(server_files(&pki, files.path(), vec![crl_path.clone()])).unwrap();
    let watch = server_tls.spawn_watch(std::time::Duration::from_millis(20));
    let relay = serve(pki, server_tls).await;
    let leaked = relay.pki.client_pem("ed-rr8");
    call_over(relay.channel_with(&leaked).await).await.unwrap();

    // Written elsewhere and renamed over the old file, as docs/operating.md advises.
    let staged = files.path().join("ca.crl.pem.new");
    std::fs::write(&staged, relay.pki.authority.revocation_list(&[&leaked.cert], 7).unwrap().0).unwrap();
    std::fs::rename(&staged, &crl_path).unwrap();
    // Each attempt is a new handshake: the first refused one is the watch's reload at work.
    let mut attempts = 0;
    while call_over(relay.channel_with(&leaked).await).await.is_ok() {
        attempts += 1;
        assert!(attempts < 10_000, "the watch never loaded the changed CRL");
    }
    call_over(relay.channel_with(&relay.pki.client_pem("gp-y02")).await).await.unwrap();
    watch.abort();
}

/// A reloaded CRL reaches live peers, not only new handshakes: the revoked
/// authority's open subscription ends (its connection is closed) and
/// `cpis_tls_peers_ended_total{reason="revoked"}` counts it, while another
/// peer's established connection keeps working.
#[tokio::test]
async fn a_reloaded_crl_ends_the_revoked_peers_open_subscription() {
    tls::install_crypto_provider();
    let pki = Pki::new();
    let files = tempfile::tempdir().unwrap();
    let crl_path = files.path().join("ca.crl.pem");
    std::fs::write(&crl_path, pki.authority.revocation_list(&[], 7).unwrap().0).unwrap();
    let server_tls = ServerTls::from_files(server_files(&pki, files.path(), vec![crl_path.clone()])).unwrap();
    let relay = serve(pki, server_tls.clone()).await;
    let revoked = relay.pki.client_pem("la-706");
    let mut subscription =
        cpis_relay::proto::notifications_client::NotificationsClient::new(relay.channel_with(&revoked).await.unwrap())
            .subscribe(cpis_relay::proto::SubscribeRequest::default())
            .await
            .unwrap()
            .into_inner();
    let other = relay.channel_with(&relay.pki.client_pem("gp-y02")).await;
    let other = other.unwrap();
    call_over(Ok(other.clone())).await.unwrap();
    let before = metric(&cpis_relay::telemetry::metrics().render(), "cpis_tls_peers_ended_total{reason=\"revoked\"}");

    std::fs::write(&crl_path, relay.pki.authority.revocation_list(&[&revoked.cert], 7).unwrap().0).unwrap();
    server_tls.reload().unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), subscription.message())
        .await
        .expect("the revoked peer's subscription ends within 10 s");
    assert!(!matches!(ended, Ok(Some(_))), "no notification, the stream ended: {ended:?}");
    let after = metric(&cpis_relay::telemetry::metrics().render(), "cpis_tls_peers_ended_total{reason=\"revoked\"}");
    assert!(after > before, "counted: {before} -> {after}");
    call_over(Ok(other)).await.expect("an unrevoked peer's established connection is untouched");
}

/// A client certificate that expires while connected: its open
/// subscription ends at expiry, not at the next handshake, and
/// `cpis_tls_peers_ended_total{reason="expired"}` counts it.
#[tokio::test]
async fn a_client_certificate_that_expires_ends_its_open_subscription() {
    tls::install_crypto_provider();
    let pki = Pki::new();
    let relay = serve(pki.clone(), ServerTls::fixed(tls::server_config(&pki.server_pem()).unwrap())).await;
    let pair = pki
        .authority
        .issue_client_expiring("706", "CPIS TEST LA", Some("social-care"), std::time::Duration::from_secs(3))
        .unwrap();
    let expiring = PemText { ca: pki.authority.cert_pem(), cert: pair.cert_pem, key: pair.key_pem };
    let mut subscription =
        cpis_relay::proto::notifications_client::NotificationsClient::new(relay.channel_with(&expiring).await.unwrap())
            .subscribe(cpis_relay::proto::SubscribeRequest::default())
            .await
            .unwrap()
            .into_inner();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), subscription.message())
        .await
        .expect("the subscription ends once the certificate expires");
    assert!(!matches!(ended, Ok(Some(_))), "no notification, the stream ended: {ended:?}");
    let expired = metric(&cpis_relay::telemetry::metrics().render(), "cpis_tls_peers_ended_total{reason=\"expired\"}");
    assert!(expired >= 1.0, "counted: {expired}");
}
