//! Witnesses (issue 28): the `cpis-relay witness` process cosigns only
//! checkpoints that extend the last it cosigned, across restarts, and keeps
//! the log-signed evidence of a fork it refused; a relay's checkpoints get
//! cosigned by a quorum that includes a witness written from the C2SP specs
//! alone (tests/transparency/witness.py), whose checker also verifies our
//! witness's cosignatures. `audit verify` against a witnessed checkpoint is
//! in tests/it/access_log/witness_verify.rs.

use std::{path::Path, sync::Arc, time::Duration};

use crate::helpers::*;
use cpis_relay::{
    access_log::WitnessPolicy,
    proto::{LatestCheckpointRequest, PlanType},
    relay::RelaySettings,
    transparency::{
        Checkpoint, Hash, LogSigner, MemoryHashStore, MerkleLog,
        cosignature::{AddCheckpoint, CosignerKey, verify_cosignatures},
    },
    witness::Witness,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const LOG: &str = "test.example/log";

fn log_signer() -> LogSigner {
    LogSigner::from_seed(LOG, &[3; 32]).unwrap()
}

fn leaf(n: u8) -> Hash {
    [n; 32]
}

fn tree(leaves: &[Hash]) -> MerkleLog<MemoryHashStore> {
    let mut tree = MerkleLog::open(MemoryHashStore::new()).unwrap();
    tree.append(leaves).unwrap();
    tree
}

/// The signed checkpoint of `tree`'s first `size` leaves.
fn note(signer: &LogSigner, tree: &MerkleLog<MemoryHashStore>, size: u64) -> String {
    let checkpoint = Checkpoint {
        origin: signer.name().into(),
        size,
        root: tree.root_at(size).unwrap(),
        time: test_start() + chrono::Duration::seconds(size as i64),
    };
    checkpoint.sign(signer).unwrap()
}

fn request(signer: &LogSigner, tree: &MerkleLog<MemoryHashStore>, old: u64, size: u64) -> String {
    let proof = if old == 0 || old >= size { vec![] } else { tree.consistency_proof(old, size).unwrap() };
    AddCheckpoint { old_size: old, proof, note: note(signer, tree, size) }.encode()
}

/// A POST on `address`; (status, content type, body).
async fn post(address: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!("POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
    let content_type = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// `cpis-relay witness` with `config`; its address once it listens.
async fn start_witness(config: &Path) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["witness", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await.unwrap().unwrap().unwrap();
    let address = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("http=").or_else(|| word.strip_prefix("https=")))
        .expect(&line)
        .to_owned();
    (child, address)
}

fn evidence(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("state/evidence"))
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect()
}

#[tokio::test]
async fn the_witness_cosigns_what_extends_its_last_checkpoint_and_refuses_a_fork_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("witness.key");
    let init = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["witness", "init-key", "--name", "witness.test/w1", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let witness_key = CosignerKey::parse(&String::from_utf8(init.stdout).unwrap()).unwrap();
    let signer = log_signer();
    let config = dir.path().join("witness.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"witness.test/w1\"\nkey = {:?}\nstate_dir = {:?}\nlisten = \"127.0.0.1:0\"\nlogs = [\"{}\"]\n",
            key,
            dir.path().join("state"),
            signer.verifier()
        ),
    )
    .unwrap();
    let honest = tree(&(0..9).map(leaf).collect::<Vec<_>>());
    // The same first three leaves, then another history.
    let forked = tree(&[leaf(0), leaf(1), leaf(2), leaf(99), leaf(4), leaf(5), leaf(6)]);

    // A bad setting: exit 64 naming it.
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&bad, text.replace(&signer.verifier().to_string(), "not-a-key")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["witness", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("configuration logs"), "{stderr}");

    let (mut process, address) = start_witness(&config).await;
    let (status, _, body) = post(&address, "/add-checkpoint", &request(&signer, &honest, 0, 3)).await;
    assert_eq!(status, 200, "{body}");
    let cosigned = format!("{}{body}", note(&signer, &honest, 3));
    let found = verify_cosignatures(&cosigned, std::slice::from_ref(&witness_key)).unwrap();
    assert_eq!(found.len(), 1, "the answer is a cosignature of the witness's key: {body}");
    let (status, _, body) = post(&address, "/add-checkpoint", &request(&signer, &honest, 3, 5)).await;
    assert_eq!(status, 200, "{body}");

    // A fork of the five leaves cosigned: its proof from 5 does not lead to the root cosigned at 5.
    let (status, _, _) = post(&address, "/add-checkpoint", &request(&signer, &forked, 5, 7)).await;
    assert_eq!(status, 422, "an inconsistent proof is refused");
    // The size cosigned, signed with another root: 409 and the size.
    let (status, content_type, body) = post(&address, "/add-checkpoint", &request(&signer, &forked, 5, 5)).await;
    assert_eq!((status, content_type.as_str(), body.as_str()), (409, "text/x.tlog.size", "5\n"));
    assert_eq!(evidence(dir.path()).len(), 2, "both refusals kept as evidence");
    assert!(evidence(dir.path()).iter().all(|text| text.contains(&note(&signer, &honest, 5))), "with what it cosigned");
    // Never a smaller one, nor an old size it did not cosign.
    let (status, _, _) = post(&address, "/add-checkpoint", &request(&signer, &honest, 5, 4)).await;
    assert_eq!(status, 400);
    let (status, _, body) = post(&address, "/add-checkpoint", &request(&signer, &honest, 0, 6)).await;
    assert_eq!((status, body.as_str()), (409, "5\n"));
    // Unknown logs and bad signatures.
    let stranger = LogSigner::from_seed("other.example/log", &[3; 32]).unwrap();
    let (status, _, _) = post(&address, "/add-checkpoint", &request(&stranger, &honest, 5, 6)).await;
    assert_eq!(status, 404);
    let impostor = LogSigner::from_seed(LOG, &[4; 32]).unwrap();
    let (status, _, _) = post(&address, "/add-checkpoint", &request(&impostor, &honest, 5, 6)).await;
    assert_eq!(status, 403);

    // Restarted (killed, as a crash would): it still holds 5 and still refuses the fork.
    process.kill().await.unwrap();
    let (_process, address) = start_witness(&config).await;
    let (status, _, _) = post(&address, "/add-checkpoint", &request(&signer, &forked, 5, 7)).await;
    assert_eq!(status, 422, "the fork is refused after a restart too");
    let (status, _, body) = post(&address, "/add-checkpoint", &request(&signer, &forked, 0, 7)).await;
    assert_eq!((status, body.as_str()), (409, "5\n"));
    let (status, _, body) = post(&address, "/add-checkpoint", &request(&signer, &honest, 5, 9)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(evidence(dir.path()).len(), 3);
    let (status, latest) = admin_get(address.parse().unwrap(), "/checkpoint?origin=test.example%2Flog").await;
    assert_eq!(status, 200);
    assert_eq!(Checkpoint::verify(&latest, signer.verifier()).unwrap().size, 9);
    assert_eq!(verify_cosignatures(&latest, std::slice::from_ref(&witness_key)).unwrap().len(), 1);

    // The same witness over HTTPS (tls_cert and tls_key in its file), read with the CA given.
    drop(_process);
    let pki = Pki::new();
    let server = pki.server_pem();
    std::fs::write(dir.path().join("witness.pem"), &server.cert).unwrap();
    std::fs::write(dir.path().join("witness-tls.key"), &server.key).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        dir.path().join("witness.pem"),
        dir.path().join("witness-tls.key")
    ));
    std::fs::write(&config, text).unwrap();
    let (_process, address) = start_witness(&config).await;
    let port = address.rsplit(':').next().unwrap();
    let url = format!("https://localhost:{port}/checkpoint?origin=test.example%2Flog");
    let (status, latest) = cpis_relay::access_log::witnessing::fetch(&url, Some(&server.ca)).await.unwrap();
    assert_eq!(status, 200, "{latest}");
    assert_eq!(verify_cosignatures(&latest, &[witness_key]).unwrap().len(), 1);
    assert!(cpis_relay::access_log::witnessing::fetch(&url, None).await.is_err(), "not trusted without the CA");
}

/// A child process ended when the test ends, even by a failed assertion.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Python witness written from the specs: (process, its URL, its key).
fn python_witness(log: &LogSigner) -> (Killed, String, String) {
    use std::io::BufRead;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transparency/witness.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .args(["serve", "witness.test/python", &"07".repeat(32), &log.verifier().to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup.sh installs it with cryptography)");
    let stdout = child.stdout.take().unwrap();
    let child = Killed(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("listening"), "the Python witness did not start: {line:?}");
    let port = words.next().unwrap().to_owned();
    (child, format!("http://127.0.0.1:{port}"), words.next().unwrap().to_owned())
}

/// Our witness in this process, over HTTPS with `pki`'s server certificate
/// when given: its URL and key; it stops with the runtime.
async fn rust_witness(dir: &Path, name: &str, log: &LogSigner, pki: Option<&Pki>) -> (String, String) {
    let cosigner = cpis_relay::transparency::cosignature::Cosigner::from_seed(name, &[5; 32]).unwrap();
    let key = cosigner.key().to_string();
    let witness = Arc::new(Witness::open(cosigner, dir, vec![log.verifier().clone()]).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let Some(pki) = pki else {
        tokio::spawn(cpis_relay::witness::serve(listener, witness, std::future::pending()));
        return (format!("http://127.0.0.1:{port}"), key);
    };
    let pem = pki.server_pem();
    let tls = cpis_relay::tls::server_config_without_client_auth(&pem.cert, &pem.key).unwrap();
    tokio::spawn(cpis_relay::witness::https::serve_tls(listener, witness, tls, std::future::pending()));
    (format!("https://localhost:{port}"), key)
}

fn python_checks(note: &str, keys: &[&str]) -> (bool, String) {
    use std::io::Write;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transparency/witness.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg("verify")
        .args(keys)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(note.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relays_checkpoints_are_cosigned_by_a_quorum_including_a_witness_written_from_the_specs() {
    let signer = log_signer();
    let state = tempfile::tempdir().unwrap();
    // Ours over HTTPS, checked against the CA the relay is given (witness_ca).
    let pki = Pki::new();
    let (rust_url, rust_key) = rust_witness(&state.path().join("rust"), "witness.test/rust", &signer, Some(&pki)).await;
    let (_python, python_url, python_key) = python_witness(&signer);
    // A third witness holds another key for this log: it refuses every checkpoint (403).
    let misinformed = LogSigner::from_seed(LOG, &[9; 32]).unwrap();
    let (refusing_url, refusing_key) =
        rust_witness(&state.path().join("refusing"), "witness.test/refusing", &misinformed, None).await;
    let entries = [
        format!("{rust_key}@{rust_url}"),
        format!("{python_key}@{python_url}"),
        format!("{refusing_key}@{refusing_url}"),
    ];
    let policy = WitnessPolicy {
        ca_pem: Some(pki.server_pem().ca),
        ..WitnessPolicy::parse(&entries, Some(2)).unwrap().unwrap()
    };
    let settings = RelaySettings {
        log_signer: Some(Arc::new(log_signer())),
        checkpoint_interval: Duration::from_millis(100),
        witnesses: Some(Arc::new(policy)),
        ..RelaySettings::default()
    };
    let relay = TestRelay::start_with(StoreChoice::Embedded, settings).await;
    relay.relay.spawn_log_keeper().unwrap();
    let child = nhs(2801);
    relay.load("706", vec![record(&child, PlanType::ChildProtection)]).await;
    let mut witnessed = relay.relay.log_keeper().unwrap().witnessed_checkpoints();
    for n in 0..3 {
        relay.lookup().await.search(search_request(&child, &format!("u{n}"), &format!("r{n}"))).await.unwrap();
    }
    tokio::time::timeout(
        Duration::from_secs(60),
        witnessed.wait_for(|latest| latest.as_ref().is_some_and(|latest| latest.checkpoint.size == 3)),
    )
    .await
    .expect("a quorum cosigns the checkpoint of the three searches")
    .unwrap();

    let latest = relay.audit().await.latest_checkpoint(LatestCheckpointRequest {}).await.unwrap().into_inner();
    let keys = [CosignerKey::parse(&rust_key).unwrap(), CosignerKey::parse(&python_key).unwrap()];
    let cosigned = verify_cosignatures(&latest.witnessed_note, &keys).unwrap();
    assert_eq!(cosigned.len(), 2, "the served note carries both cosignatures: {}", latest.witnessed_note);
    assert_eq!(Checkpoint::verify(&latest.witnessed_note, signer.verifier()).unwrap().size, 3);
    let log_key = signer.verifier().to_string();
    let (verified, output) = python_checks(&latest.witnessed_note, &[&log_key, &rust_key, &python_key]);
    assert!(verified, "the spec-only checker verifies our witness's cosignature: {output}");
    let (tampered, _) = python_checks(&latest.witnessed_note.replacen("\n3\n", "\n4\n", 1), &[&log_key, &rust_key]);
    assert!(!tampered);

    // What an auditor sees: `audit proof checkpoint` checks the witnessed note with the keys given.
    let certs = relay.dir.path().join("client-certs");
    relay.pki.write_dev_layout(&certs);
    let (url, log_arg, keys_arg) = (relay.url(), log_key.clone(), format!("{rust_key},{refusing_key}"));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
            .args(["audit", "proof", "--server", &url, "--certs-dir"])
            .arg(&certs)
            .args(["checkpoint", "--verifier-key", &log_arg, "--witness-key", &keys_arg])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{said}");
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["witnessed"]["tree_size"], 3, "{said}");
    assert_eq!(shown["witnessed"]["cosigned_by"], serde_json::json!(["witness.test/rust"]), "{said}");

    assert_eq!(relay_metric(relay.admin, "cpis_access_log_witnessed_size").await, Some(3.0));
    for witness in ["witness.test/rust", "witness.test/python"] {
        let metric = format!("cpis_witness_size{{witness=\"{witness}\"}}");
        assert_eq!(relay_metric(relay.admin, &metric).await, Some(3.0), "{metric}");
    }
    // The witness that refuses shows: its size stays 0 and its failures count.
    let (_, body) = admin_get(relay.admin, "/metrics").await;
    assert_eq!(relay_metric(relay.admin, "cpis_witness_size{witness=\"witness.test/refusing\"}").await, Some(0.0));
    let refused = body.lines().find(|line| {
        line.starts_with("cpis_witness_failures_total{")
            && line.contains("witness=\"witness.test/refusing\"")
            && line.contains("reason=\"refused\"")
    });
    let count: f64 = refused.and_then(|line| line.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0);
    assert!(count >= 1.0, "{body}");
    assert_eq!(
        verify_cosignatures(&latest.witnessed_note, &[CosignerKey::parse(&refusing_key).unwrap()]).unwrap(),
        vec![]
    );
}
