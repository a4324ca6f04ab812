//! An authority checking its own notifications against the relay's access
//! log (`deliver`'s log check), on the real relay over mutual TLS with the
//! embedded store in a temporary directory, tampered with offline as an
//! operator holding the store and the signing key could: the newest
//! records, leaves and signed notes removed together, which `audit verify`
//! without a trusted checkpoint cannot see. Every wait is on the agent's
//! progress or the relay's acknowledged position.

use std::{path::Path, sync::Arc};

use crate::helpers::agent::*;
use crate::helpers::webhook_receiver::WAIT;
use crate::helpers::*;
use cpis_relay::{
    deliver::{config::DeliverSettings, metrics::LogProgress},
    proto::{NotificationProofStatus, NotificationProofsRequest, audit_client::AuditClient},
    relay::RelaySettings,
    store::{Store, embedded::EmbeddedStore},
    transparency::LogSigner,
};
use fjall::{Database, KeyspaceCreateOptions, PersistMode};

/// Relay settings with one signing key kept across restarts, as a deployment's.
fn relay_settings() -> RelaySettings {
    let signer = LogSigner::generate_ephemeral(cpis_relay::access_log::DEFAULT_LOG_NAME).unwrap();
    RelaySettings { log_signer: Some(Arc::new(signer)), ..RelaySettings::default() }
}

/// An outbox agent of la-706 checking every second, a notification late after 2 s.
fn checking(relay: &TestRelay, dir: &Path) -> DeliverSettings {
    let outbox = dir.join("outbox");
    DeliverSettings { outbox: Some(outbox), log_confirm_within_secs: Some(2), ..settings(relay, dir) }
}

async fn progress_until(agent: &RunningAgent, done: impl Fn(&LogProgress) -> bool) -> LogProgress {
    let mut progress = agent.status.log_progress();
    *tokio::time::timeout(WAIT, progress.wait_for(|progress| done(progress)))
        .await
        .expect("the log check got there in time")
        .unwrap()
}

/// Offline, as an operator with the store could: the log cut back to its
/// first `size` positions, the newest leaves and every signed note removed,
/// the tree left to be rebuilt from what remains. The removed accesses'
/// records stay, outside the log; their notifications stay too.
fn cut_the_log_back(dir: &Path, size: u64) {
    let database = Database::builder(dir.join("activity")).open().unwrap();
    let keyspace = |name: &str| database.keyspace(name, KeyspaceCreateOptions::default).unwrap();
    let (log, log_ids, notes, tree) =
        (keyspace("log"), keyspace("log_ids"), keyspace("log_notes"), keyspace("log_tree"));
    let mut cut = 0;
    for entry in log.range(size.to_be_bytes()..) {
        log.remove(entry.key().unwrap()).unwrap();
        cut += 1;
    }
    assert!(cut > 0, "there was something after position {size} to cut");
    for entry in log_ids.iter() {
        let (key, value) = entry.into_inner().unwrap();
        if u64::from_be_bytes(value[..8].try_into().unwrap()) >= size {
            log_ids.remove(key).unwrap();
        }
    }
    for space in [&notes, &tree] {
        for entry in space.iter() {
            space.remove(entry.key().unwrap()).unwrap();
        }
    }
    keyspace("log_meta").insert("tree_size", 0u64.to_be_bytes()).unwrap();
    database.persist(PersistMode::SyncAll).unwrap();
}

/// Stops `relay`, cuts its log back to `size` and serves the store again with the same key.
async fn tamper_and_restart(relay: TestRelay, settings: RelaySettings, size: u64) -> TestRelay {
    let (pki, store, clock, dir) = relay.stop().await;
    drop(store);
    cut_the_log_back(dir.path(), size);
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    TestRelay::serve(pki, store, clock, settings, dir).await
}

fn evidence(dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_dir(dir.join("log-check").join("evidence"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap().to_string_lossy().contains(kind))
        .map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn each_notification_delivered_is_confirmed_in_the_log_and_the_check_goes_on_after_a_restart() {
    let settings = relay_settings();
    let relay = TestRelay::start_with(StoreChoice::Embedded, settings).await;
    let dir = tempfile::tempdir().unwrap();
    notify(&relay, 0, 3, 6).await;
    let agent = RunningAgent::start(&relay, checking(&relay, dir.path()));
    let progress = progress_until(&agent, |progress| progress.confirmed >= 6 && progress.unconfirmed == 0).await;
    assert_eq!(progress.problems, 0);
    assert!(progress.trusted_size >= 6, "{progress:?}");
    assert!(agent.status.health().is_ok(), "{:?}", agent.status.health());
    agent.stop().await;

    // A new agent on the same state directory starts from the checkpoint trusted before.
    notify(&relay, 10, 2, 2).await;
    let agent = RunningAgent::start(&relay, checking(&relay, dir.path()));
    let resumed = progress_until(&agent, |progress| progress.confirmed >= 2 && progress.unconfirmed == 0).await;
    assert!(resumed.trusted_size >= progress.trusted_size + 2, "{resumed:?} after {progress:?}");
    assert_eq!(resumed.problems, 0);
    assert!(evidence(dir.path(), "").is_empty(), "no evidence of a problem");
    agent.stop().await;

    let (code, stderr) = subscribe_verify(&relay, &["--after", "0", "--count", "8"], &settings_key(&relay)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("verified 8 of 8"), "{stderr}");
    let other_key = LogSigner::generate_ephemeral("cpis-relay/access-log").unwrap().verifier().to_string();
    let (code, stderr) = subscribe_verify(&relay, &["--after", "0", "--count", "1"], &other_key).await;
    assert_eq!(code, Some(1), "a checkpoint that does not verify with the key given: {stderr}");
}

#[tokio::test]
async fn a_notification_whose_access_was_removed_from_the_log_is_reported() {
    let settings = relay_settings();
    let relay = TestRelay::start_with(StoreChoice::Embedded, settings.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    notify(&relay, 0, 5, 5).await;
    let agent = RunningAgent::start(&relay, checking(&relay, dir.path()));
    let trusted = progress_until(&agent, |progress| progress.confirmed >= 5 && progress.unconfirmed == 0).await;
    agent.stop().await;

    // Three more searches while the agent is away; then the operator removes
    // them from the log (records, leaves, notes) back to what the agent trusts.
    notify(&relay, 10, 3, 3).await;
    let relay = tamper_and_restart(relay, settings, trusted.trusted_size).await;

    let agent = RunningAgent::start(&relay, checking(&relay, dir.path()));
    let found = progress_until(&agent, |progress| progress.problems >= 1).await;
    assert_eq!(found.trusted_size, trusted.trusted_size, "the cut log still extends the trusted checkpoint");
    let health = agent.status.health().unwrap_err();
    assert!(health.contains("not confirmed in the access log"), "{health}");
    // Each round reports the ones that have waited too long by then: all three, in one round or more.
    let mut rounds = agent.status.log_progress();
    loop {
        let mut late: Vec<u64> = evidence(dir.path(), "late")
            .iter()
            .flat_map(|found| {
                found["sequences"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).collect::<Vec<_>>()
            })
            .collect();
        late.sort_unstable();
        if late.len() >= 3 {
            assert_eq!(late.len(), 3, "each late notification reported once: {late:?}");
            break;
        }
        tokio::time::timeout(WAIT, rounds.changed()).await.expect("another round").unwrap();
    }
    agent.stop().await;

    // `subscribe --verify` finds the same, and proves the ones still in the log.
    let key = settings_key(&relay);
    let (code, stderr) =
        subscribe_verify(&relay, &["--after", "0", "--count", "8", "--verify-within-secs", "2"], &key).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("verified 5 of 8"), "{stderr}");
    assert_eq!(stderr.matches("not in a checkpoint").count(), 3, "{stderr}");
}

/// The verifier key of the relay's log, as its operator would give it.
fn settings_key(relay: &TestRelay) -> String {
    relay.relay.log_keeper().unwrap().verifier().to_string()
}

/// `cpis-relay subscribe --verify` as la-706 with `args`: exit status and stderr.
async fn subscribe_verify(relay: &TestRelay, args: &[&str], key: &str) -> (Option<i32>, String) {
    let certs = relay.dir.path().join("client-certs");
    relay.pki.write_dev_layout(&certs);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay"))
        .args(["subscribe", "--server", &relay.url(), "--as", "la-706", "--certs-dir"])
        .arg(&certs)
        .args(args)
        .args(["--verify", "--verifier-key", key])
        .output()
        .await
        .unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn a_log_cut_back_behind_a_trusted_checkpoint_is_reported_with_both_notes() {
    let settings = relay_settings();
    let relay = TestRelay::start_with(StoreChoice::Embedded, settings.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    notify(&relay, 0, 4, 4).await;
    let agent = RunningAgent::start(&relay, checking(&relay, dir.path()));
    let before = progress_until(&agent, |progress| progress.confirmed >= 4 && progress.unconfirmed == 0).await;
    notify(&relay, 10, 2, 2).await;
    let after = progress_until(&agent, |progress| progress.confirmed >= 6 && progress.unconfirmed == 0).await;
    agent.stop().await;

    let relay = tamper_and_restart(relay, settings, before.trusted_size).await;
    let agent = RunningAgent::start(&relay, checking(&relay, dir.path()));
    progress_until(&agent, |progress| progress.problems >= 1).await;
    let health = agent.status.health().unwrap_err();
    assert!(health.contains("rollback"), "{health}");
    let rollback = evidence(dir.path(), "rollback");
    assert_eq!(rollback.len(), 1);
    let trusted_note = rollback[0]["trusted_checkpoint"].as_str().unwrap();
    let new_note = rollback[0]["new_checkpoint"].as_str().unwrap();
    assert!(trusted_note.contains(&format!("\n{}\n", after.trusted_size)), "{trusted_note}");
    assert!(new_note.contains(&format!("\n{}\n", before.trusted_size)), "{new_note}");
    agent.stop().await;
}

#[tokio::test]
async fn an_authority_gets_proofs_of_its_own_notifications_only() {
    let relay = TestRelay::start().await;
    notify(&relay, 0, 2, 2).await;
    let notifications = relay_notifications(&relay, 2).await;
    let sequences: Vec<u64> = notifications.iter().map(|(sequence, _)| *sequence).collect();
    let ask = |identity: &'static str| {
        let relay = &relay;
        let sequences = sequences.clone();
        async move {
            AuditClient::new(relay.channel(identity).await)
                .notification_proofs(NotificationProofsRequest { sequences, tree_size: 0 })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let own = ask("la-706").await;
    assert_eq!(own.proofs.len(), 2);
    for proof in &own.proofs {
        assert_eq!(proof.status, NotificationProofStatus::Included as i32, "{proof:?}");
        assert!(!proof.leaf.is_empty() && !proof.access_id.is_empty());
    }
    let other = ask("la-855").await;
    for proof in &other.proofs {
        assert_eq!(proof.status, NotificationProofStatus::NotHeld as i32, "{proof:?}");
        assert!(proof.leaf.is_empty() && proof.access_id.is_empty(), "nothing about another authority's person");
    }
    let too_many = AuditClient::new(relay.channel("la-706").await)
        .notification_proofs(NotificationProofsRequest { sequences: (1..=1001).collect(), tree_size: 0 })
        .await
        .unwrap_err();
    assert_eq!(field_violation(&too_many).0, "sequences");
}

/// With witness keys configured, the agent trusts only checkpoints a quorum
/// cosigned: with the witness the relay uses, every notification is
/// confirmed in a witnessed checkpoint; an agent that names a witness the
/// relay does not use trusts nothing, and its notifications go late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_witness_keys_only_a_witnessed_checkpoint_confirms_a_notification() {
    use cpis_relay::{access_log::WitnessPolicy, transparency::cosignature::Cosigner, witness::Witness};
    let signer = Arc::new(LogSigner::generate_ephemeral(cpis_relay::access_log::DEFAULT_LOG_NAME).unwrap());
    let state = tempfile::tempdir().unwrap();
    let cosigner = Cosigner::from_seed("witness.test/authority", &[5; 32]).unwrap();
    let witness_key = cosigner.key().to_string();
    let witness = Arc::new(Witness::open(cosigner, state.path(), vec![signer.verifier().clone()]).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let witness_url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(cpis_relay::witness::serve(listener, witness, std::future::pending()));
    let policy = WitnessPolicy::parse(&[format!("{witness_key}@{witness_url}")], None).unwrap().unwrap();
    let settings = RelaySettings {
        log_signer: Some(Arc::clone(&signer)),
        checkpoint_interval: std::time::Duration::from_millis(200),
        witnesses: Some(Arc::new(policy)),
        ..RelaySettings::default()
    };
    let relay = TestRelay::start_with(StoreChoice::Embedded, settings).await;
    relay.relay.spawn_log_keeper().unwrap();
    notify(&relay, 0, 2, 4).await;

    let dir = tempfile::tempdir().unwrap();
    let witnessed = DeliverSettings {
        log_verifier_key: Some(signer.verifier().to_string()),
        witness_key: vec![witness_key],
        ..checking(&relay, dir.path())
    };
    let agent = RunningAgent::start(&relay, witnessed);
    let progress = progress_until(&agent, |progress| progress.confirmed >= 4 && progress.unconfirmed == 0).await;
    assert_eq!(progress.problems, 0);
    let served = relay.relay.log_keeper().unwrap().witnessed().expect("a witnessed checkpoint");
    assert!(progress.trusted_size <= served.checkpoint.size, "{progress:?}: trusted beyond what was witnessed");
    agent.stop().await;

    let elsewhere = tempfile::tempdir().unwrap();
    let unknown = Cosigner::from_seed("witness.test/unknown", &[6; 32]).unwrap().key().to_string();
    let unwitnessed = DeliverSettings {
        log_verifier_key: Some(signer.verifier().to_string()),
        witness_key: vec![unknown],
        ..checking(&relay, elsewhere.path())
    };
    let agent = RunningAgent::start(&relay, unwitnessed);
    let found = progress_until(&agent, |progress| progress.problems >= 1).await;
    assert_eq!((found.trusted_size, found.confirmed), (0, 0), "nothing is trusted without the quorum: {found:?}");
    // Rounds go on (new checkpoints, each short of the quorum), reported once.
    // This agent starts where the first acknowledged: it delivers the new one only.
    notify(&relay, 10, 1, 1).await;
    progress_until(&agent, |progress| progress.unconfirmed >= 1).await;
    let mut rounds = agent.status.log_progress();
    for _ in 0..3 {
        tokio::time::timeout(WAIT, rounds.changed()).await.unwrap().unwrap();
    }
    assert_eq!(evidence(elsewhere.path(), "bad_checkpoint").len(), 1, "a checkpoint short of its quorum is evidence");
    agent.stop().await;
}
