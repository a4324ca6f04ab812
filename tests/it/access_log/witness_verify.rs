//! `audit verify` against a witnessed checkpoint (issue 28): an operator
//! holding the store and the signing key can rewrite the whole store
//! consistently (records, tree and signed notes) or cut its newest
//! accesses with their leaves and notes; alone, the store then verifies.
//! Given a checkpoint a witness cosigned (from a file or fetched from the
//! witness), `audit verify` finds both. Each tampered store is made the way
//! such an operator would end up with it: a store written afresh by the
//! real keeper with the same key, holding the rewritten or shortened history.
//! And `serve --witness` end to end: its last checkpoint, signed at shutdown,
//! is cosigned, and `audit verify` fetches it from the witness.

use std::{path::Path, sync::Arc};

use crate::helpers;
use chrono::{DateTime, Duration, Utc};
use cpis_relay::{
    access_log::{LogKeeper, load_or_create_signer},
    clock::{Clock, ManualClock},
    model::{AccessEvent, Accessor, CareSetting},
    nhs::NhsNumber,
    store::{Change, Store, embedded::EmbeddedStore},
    transparency::{
        LogSigner,
        cosignature::{AddCheckpoint, Cosigner},
    },
    witness::{Answer, Witness},
};

fn start() -> DateTime<Utc> {
    "2026-06-01T09:00:00Z".parse().unwrap()
}

fn person(n: u64) -> NhsNumber {
    (999_000_000u64..).filter_map(NhsNumber::complete).nth(n as usize).unwrap()
}

fn access(n: u64, user: &str) -> AccessEvent {
    AccessEvent {
        id: 0x1000 + n as u128,
        accessed_at: start() + Duration::minutes(n as i64),
        nhs_number: person(n % 3),
        organisation_ods_code: "RR8".into(),
        organisation_name: "Leeds ED".into(),
        care_setting: CareSetting::EmergencyDepartment,
        accessor: Accessor { user_id: user.into(), name: "Dr Test".into(), role_code: "R8000".into() },
        request_id: format!("r{n}"),
        scheduled: false,
    }
}

/// Writes a store in `dir` of `count` accesses (the one at `rewritten`, if
/// any, by another user), checkpoints every 5 and at the end, signed with
/// `signer`; returns the last signed checkpoint note.
async fn write_store(dir: &Path, signer: &Arc<LogSigner>, count: u64, rewritten: Option<u64>) -> String {
    let store = EmbeddedStore::open(dir).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(start()));
    let keeper = LogKeeper::open(store.access_log().unwrap(), Arc::clone(signer), clock).unwrap();
    for n in 0..count {
        let user = if rewritten == Some(n) { "someone-else" } else { "u-seen" };
        store.apply(Change::RecordAccess { access: access(n, user), drafts: vec![] }).await.unwrap();
        if (n + 1) % 5 == 0 {
            keeper.checkpoint().unwrap();
        }
    }
    keeper.checkpoint().unwrap().note
}

/// `audit verify` of the store in `dir`: (exit status, what it printed).
fn audit_verify(dir: &Path, signer: &LogSigner, extra: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir)
        .args(["--verifier-key", &signer.verifier().to_string()])
        .args(extra)
        .env_remove("CPIS_WITNESS_KEYS")
        .env_remove("CPIS_TRUSTED_CHECKPOINT")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_with_a_witnessed_checkpoint_finds_a_log_rewritten_or_cut_consistently() {
    let keys = tempfile::tempdir().unwrap();
    let signer = Arc::new(load_or_create_signer("test.example/log", &keys.path().join("access-log.key")).unwrap().0);
    let honest = tempfile::tempdir().unwrap();
    let note = write_store(honest.path(), &signer, 20, None).await;

    // A witness cosigned the checkpoint of the 20 accesses.
    let cosigner = Cosigner::from_seed("witness.test/w1", &[5; 32]).unwrap();
    let witness_key = cosigner.key().to_string();
    let state = tempfile::tempdir().unwrap();
    let witness = Arc::new(Witness::open(cosigner, state.path(), vec![signer.verifier().clone()]).unwrap());
    let body = AddCheckpoint { old_size: 0, proof: vec![], note: note.clone() }.encode();
    let Answer::Cosigned(line) = witness.add_checkpoint(&body, 1_780_000_000) else { panic!("not cosigned") };
    let trusted = keys.path().join("trusted.checkpoint");
    std::fs::write(&trusted, format!("{note}{line}")).unwrap();
    let trusted = trusted.to_str().unwrap();
    let with_trusted = ["--witness-key", &witness_key, "--trusted-checkpoint", trusted];

    let (status, output) = audit_verify(honest.path(), &signer, &with_trusted);
    assert_eq!(status, 0, "{output}");
    assert!(output.contains("cosigned by witness.test/w1"), "{output}");

    // Records, tree and notes rewritten consistently (position 7 by someone else):
    // the store alone verifies; against the witnessed checkpoint it does not.
    let rewritten = tempfile::tempdir().unwrap();
    write_store(rewritten.path(), &signer, 20, Some(7)).await;
    let (status, output) = audit_verify(rewritten.path(), &signer, &[]);
    assert_eq!(status, 0, "without a trusted checkpoint the rewrite is invisible: {output}");
    let (status, output) = audit_verify(rewritten.path(), &signer, &with_trusted);
    assert_eq!(status, 1, "{output}");
    assert!(
        output.contains("witnessed checkpoint of size 20 is not extended by this store")
            && output.contains("the records no longer give its root"),
        "{output}"
    );

    // The newest accesses removed with their leaves and notes: 15 of the 20 left.
    let cut = tempfile::tempdir().unwrap();
    write_store(cut.path(), &signer, 15, None).await;
    assert_eq!(audit_verify(cut.path(), &signer, &[]).0, 0);
    let (status, output) = audit_verify(cut.path(), &signer, &with_trusted);
    assert_eq!(status, 1, "{output}");
    assert!(
        output.contains("witnessed checkpoint of size 20 is not extended by this store: only 15 positions are held"),
        "{output}"
    );

    // The same checkpoint fetched from the witness over HTTP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cpis_relay::witness::serve(listener, Arc::clone(&witness), std::future::pending()));
    let (dir, signer_for_cli, url_for_cli) = (cut.path().to_owned(), Arc::clone(&signer), url.clone());
    let (status, output) = tokio::task::spawn_blocking(move || {
        audit_verify(&dir, &signer_for_cli, &["--witness-key", &witness_key, "--trusted-checkpoint", &url_for_cli])
    })
    .await
    .unwrap();
    assert_eq!(status, 1, "{output}");
    assert!(output.contains("only 15 positions are held"), "{output}");

    // A checkpoint without the quorum's cosignatures is not trusted (exit 65, data).
    let other = Cosigner::from_seed("witness.test/w2", &[6; 32]).unwrap().key().to_string();
    let (status, output) =
        audit_verify(honest.path(), &signer, &["--witness-key", &other, "--trusted-checkpoint", trusted]);
    assert_ne!(status, 0, "{output}");
    assert!(output.contains("fewer than the quorum"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_witness_publishes_its_last_checkpoint_at_shutdown_refuses_to_sign_a_store_rewritten_while_stopped_and_bad_witness_settings_exit_64()
 {
    use cpis_relay::proto::{PlanType, UploadMode, lookup_client::LookupClient, plans_client::PlansClient};
    use helpers::{Pki, nhs, record, search_request, start, upload};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.write_server_layout(&dir.path().join("certs"));
    // The log key is made first: the witness must know the relay's verifier key.
    let key_path = dir.path().join("access-log.key");
    cpis_relay::transparency::key::generate_key_file(&key_path).unwrap();
    let signer = LogSigner::from_key_file(cpis_relay::access_log::DEFAULT_LOG_NAME, &key_path).unwrap();
    let cosigner = Cosigner::from_seed("witness.test/w1", &[5; 32]).unwrap();
    let witness_key = cosigner.key().to_string();
    let state = tempfile::tempdir().unwrap();
    let witness = Arc::new(Witness::open(cosigner, state.path(), vec![signer.verifier().clone()]).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(cpis_relay::witness::serve(listener, Arc::clone(&witness), std::future::pending()));
    let flag = format!("{witness_key}@{url}");
    let key_arg = key_path.to_str().unwrap();

    let mut relay = start(dir.path(), &["--log-key", key_arg, "--witness", &flag], "warn").await;
    let la = cpis_relay::client::connect(&relay.url, &pki.client_pem("la-706"), None).await.unwrap();
    let person = nhs(2802);
    upload(&mut PlansClient::new(la), "706", UploadMode::Incremental, vec![record(&person, PlanType::ChildProtection)])
        .await
        .unwrap();
    let ed = cpis_relay::client::connect(&relay.url, &pki.client_pem("ed-rr8"), None).await.unwrap();
    let mut lookup = LookupClient::new(ed);
    for n in 0..2 {
        lookup.search(search_request(&person, &format!("u{n}"), &format!("r{n}"))).await.unwrap();
    }
    // SIGTERM: the last checkpoint, signed once the writes are over, is pushed before the exit.
    let pid = relay.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = tokio::time::timeout(std::time::Duration::from_secs(60), relay.child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit:?}");
    let latest = witness.latest(cpis_relay::access_log::DEFAULT_LOG_NAME).expect("the witness cosigned");
    assert_eq!(cpis_relay::transparency::Checkpoint::verify(&latest, signer.verifier()).unwrap().size, 2);

    let (data, signer_for_cli, url_for_cli, key_for_cli) =
        (dir.path().join("data"), signer, url.clone(), witness_key.clone());
    let (status, output) = tokio::task::spawn_blocking(move || {
        audit_verify(&data, &signer_for_cli, &["--witness-key", &key_for_cli, "--trusted-checkpoint", &url_for_cli])
    })
    .await
    .unwrap();
    assert_eq!(status, 0, "{output}");
    assert!(output.contains("trusted checkpoint: 2 accesses"), "{output}");

    // The store rewritten while the relay was stopped, its signed notes with it (written afresh
    // with the same key, the second access by someone else): restarted, the relay learns what the
    // witness cosigned, refuses to sign a log that does not extend it, and is not ready (issue 28
    // item 4). Before, its keeper found only the rewritten notes and signed on.
    let data = dir.path().join("data");
    std::fs::remove_dir_all(&data).unwrap();
    let rewriter = Arc::new(LogSigner::from_key_file(cpis_relay::access_log::DEFAULT_LOG_NAME, &key_path).unwrap());
    write_store(&data, &rewriter, 2, Some(1)).await;
    let relay = start(dir.path(), &["--log-key", key_arg, "--witness", &flag], "warn").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while helpers::relay_metric(relay.admin, "cpis_access_log_forked").await != Some(1.0) {
        assert!(std::time::Instant::now() < deadline, "the keeper did not refuse the rewritten log");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(helpers::admin_get(relay.admin, "/readyz").await.0, 503, "not ready");
    drop(relay);

    // Bad witness settings: exit 64 naming the setting.
    let layout = helpers::serve_layout(dir.path());
    for (args, key) in [
        (vec!["--witness", "not-a-key@http://127.0.0.1:1"], "configuration witnesses"),
        (vec!["--witness", &flag, "--witness-quorum", "2"], "configuration witness_quorum"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(&layout)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(key), "{args:?}: {stderr}");
    }
}
