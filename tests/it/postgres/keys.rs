//! One access log key per deployment (issue 28 item 5): `audit init-key`
//! makes it once; PostgreSQL nodes given it sign one log that `audit verify`
//! checks clean with its verifier key; a node with another key (its own,
//! made in its data directory as every node once did) refuses to start,
//! exit 64, naming both key ids.

use std::process::Command;

use crate::helpers::pg_load::load_people;
use crate::helpers::postgres::PgCluster;
use crate::helpers::*;
use cpis_relay::proto::lookup_client::LookupClient;

const RELAY: &str = env!("CARGO_BIN_EXE_cpis-relay");

/// `name+id` of a verifier key `name+id+base64` (the base64 may hold a '+').
fn key_id(verifier: &str) -> String {
    let parts: Vec<&str> = verifier.splitn(3, '+').collect();
    format!("{}+{}", parts[0], parts[1])
}

/// Stops `node` with SIGTERM (it signs and stores a last checkpoint after draining) and waits.
async fn stop(mut node: Running) {
    let pid = node.child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = node.child.wait().await.unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sharing_the_deployments_key_verify_clean_and_a_node_with_another_key_exits_64() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("cpis");
    let pki = Pki::new();
    let (ed, la) = (pki.client_pem("ed-rr8"), pki.client_pem("la-706"));
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("access-log.key");
    let key_arg = key.to_str().unwrap();

    let init = Command::new(RELAY).args(["audit", "init-key", "--key", key_arg]).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let verifier = String::from_utf8_lossy(&init.stdout).trim().to_owned();
    let ours = key_id(&verifier);
    assert_eq!(std::fs::read_to_string(keys.path().join("access-log.pub")).unwrap().trim(), verifier);
    let again = Command::new(RELAY).args(["audit", "init-key", "--key", key_arg]).output().unwrap();
    assert_eq!(again.status.code(), Some(64), "a key is made once");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));

    let people = nhs_numbers(4);
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        pki.write_server_layout(&dir.path().join("certs"));
        let extra = ["--store", url.as_str(), "--log-key", key_arg, "--feed-poll-ms", "200"];
        nodes.push(start(dir.path(), &extra, "warn").await);
        dirs.push(dir);
    }
    load_people(&nodes[0].url, None, &la, &people).await;
    for (n, node) in nodes.iter().enumerate() {
        let mut lookup = LookupClient::new(cpis_relay::client::connect(&node.url, &ed, None).await.unwrap());
        for (p, person) in people.iter().enumerate() {
            let request = search_request(person, &format!("u{n}-{p}"), &format!("r{n}-{p}"));
            assert!(lookup.search(request).await.unwrap().into_inner().flagged);
        }
    }
    for node in nodes {
        stop(node).await;
    }
    let verified =
        Command::new(RELAY).args(["audit", "verify", "--store", &url, "--verifier-key", &verifier]).output().unwrap();
    let text = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{text}{}", String::from_utf8_lossy(&verified.stderr));
    assert!(text.contains("verified"), "{text}");

    // A node left to its defaults makes a key of its own in its data directory: refused.
    let dir = tempfile::tempdir().unwrap();
    pki.write_server_layout(&dir.path().join("certs"));
    let refused = Command::new(RELAY)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--store", &url])
        .args(serve_layout(dir.path()))
        .env("CPIS_LOG", "error")
        .env_remove("CPIS_LOG_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64), "{stderr}");
    let theirs = std::fs::read_to_string(dir.path().join("data").join("access-log.pub")).unwrap();
    let theirs = key_id(theirs.trim());
    assert_ne!(theirs, ours);
    assert!(stderr.contains("log_key") && stderr.contains(&ours) && stderr.contains(&theirs), "{stderr}");
}

/// Off loopback and without --dev-certs, a node with no key refuses to start
/// (exit 64 naming log_key) rather than make one (--create-log-key asks it
/// to: tests/it/helpers/fault_run.rs starts its nodes so).
#[test]
fn a_node_off_loopback_creates_a_key_only_when_asked() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    pki.write_server_layout(&dir.path().join("certs"));
    let key = dir.path().join("keys").join("access-log.key");
    let refused = Command::new(RELAY)
        .args(["serve", "--listen", "0.0.0.0:0", "--admin-listen", "127.0.0.1:0", "--store", "embedded"])
        .args(serve_layout(dir.path()))
        .args(["--log-key", key.to_str().unwrap()])
        .env("CPIS_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("log_key") && stderr.contains("init-key"), "{stderr}");
    assert!(!key.exists());
}
