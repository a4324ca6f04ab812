//! The log keeper: the one task that builds the Merkle tree from the access
//! log after the accesses commit (never on a search's commit path), signs
//! checkpoints of it with the relay's key every `checkpoint_interval` and at
//! shutdown, records retention under a signed note, and answers proofs.
//!
//! The tree lives in the store ([`crate::store::log::AccessLog::tree`]) and
//! is derived data: `audit verify` recomputes it from the records. The keeper
//! is its only writer; its methods block on storage, so the async ones run
//! them on the blocking pool. Proofs read every hash they need in one read,
//! after the lock (which checkpoints need) is released.

use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use super::notes::RetentionNote;
use crate::{
    clock::Clock,
    store::{
        StoreError,
        log::{AccessLog, LeafProblem, LogEntry, NoteKind, TREE_MOVED, TreeStore},
    },
    transparency::{
        Checkpoint, Hash, LogSigner, MerkleLog, VerifierKey,
        tree::{ProofPlan, TreeError},
    },
};

/// Leaves appended per write of the tree.
const APPEND_CHUNK: u64 = 65_536;

/// A checkpoint and its signed note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub note: String,
}

/// An access's place in the log and the proof that a checkpoint includes it.
#[derive(Clone, Debug)]
pub struct Inclusion {
    pub position: u64,
    pub entry: LogEntry,
    pub proof: Vec<Hash>,
    pub checkpoint: SignedCheckpoint,
}

/// A cheap handle to the keeper.
#[derive(Clone)]
pub struct LogKeeper {
    shared: Arc<Shared>,
}

struct Shared {
    log: Arc<dyn AccessLog>,
    signer: Arc<LogSigner>,
    clock: Arc<dyn Clock>,
    /// Why the tree no longer extends the last checkpoint this key signed,
    /// once it does not: the keeper then signs nothing, and the relay is not ready.
    forked: tokio::sync::watch::Sender<Option<String>>,
    /// Each checkpoint as it is signed, for the witnessing task.
    signed: tokio::sync::watch::Sender<Option<SignedCheckpoint>>,
    /// The latest checkpoint a quorum of witnesses cosigned (its note carries
    /// their cosignatures).
    witnessed: tokio::sync::watch::Sender<Option<SignedCheckpoint>>,
    /// False while the witnesses' latest checkpoint is being learned at
    /// start: [`LogKeeper::run`] waits, so nothing is signed (and retention
    /// expires nothing) before the log is checked against it.
    learned: tokio::sync::watch::Sender<bool>,
    /// When a witnessed checkpoint was last stored, and its note; held while one is recorded.
    witnessed_stored: Mutex<Option<(DateTime<Utc>, String)>>,
    /// The tree and the latest checkpoint, under one lock: the keeper's
    /// task, retention and proofs take it briefly and never across an await.
    /// Proofs take it only to learn the checkpoint, never while they read.
    state: Mutex<State>,
    /// A second handle on the tree's hashes, for proofs: stored hashes never
    /// change, so they are read without the lock checkpoints need.
    reader: TreeStore,
}

struct State {
    tree: MerkleLog<TreeStore>,
    latest: Option<SignedCheckpoint>,
    /// Whether `latest` is stored.
    latest_stored: bool,
}

/// A cosigned (witnessed) checkpoint is stored at most this often unless
/// asked for (shutdown): each signed checkpoint is stored already, so the
/// witnessed copies add the cosignatures to `audit verify`'s evidence hourly.
pub(crate) const WITNESSED_STORED_SPACING: chrono::TimeDelta = chrono::TimeDelta::hours(1);

fn tree_error(error: TreeError<StoreError>) -> StoreError {
    match error {
        TreeError::Store(error) => error,
        other => StoreError::Corrupt(format!("access log tree: {other}")),
    }
}

impl LogKeeper {
    /// Opens the tree the store holds and finds the latest checkpoint this key signed. Blocks.
    pub fn open(log: Arc<dyn AccessLog>, signer: Arc<LogSigner>, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let tree = MerkleLog::open(log.tree()).map_err(tree_error)?;
        let latest = log.notes()?.into_iter().rev().filter(|note| note.kind == NoteKind::Checkpoint).find_map(|note| {
            Checkpoint::verify(&note.text, signer.verifier())
                .ok()
                .map(|checkpoint| SignedCheckpoint { checkpoint, note: note.text })
        });
        // A tree already as long as the last checkpoint signed must give its root now (a shorter
        // one is caught up from the records first, at the first checkpoint).
        let forked = match &latest {
            Some(latest) if tree.size() >= latest.checkpoint.size => {
                fork_of(&tree, &latest.checkpoint, "the last checkpoint this key signed")?
            }
            _ => None,
        };
        let reader = log.tree();
        let keeper = Self {
            shared: Arc::new(Shared {
                log,
                signer,
                clock,
                forked: tokio::sync::watch::Sender::new(None),
                signed: tokio::sync::watch::Sender::new(latest.clone()),
                witnessed: tokio::sync::watch::Sender::new(None),
                learned: tokio::sync::watch::Sender::new(true),
                witnessed_stored: Mutex::new(None),
                state: Mutex::new(State { tree, latest_stored: latest.is_some(), latest }),
                reader,
            }),
        };
        if let Some(reason) = forked {
            keeper.mark_forked(reason);
        }
        Ok(keeper)
    }

    /// Why the keeper refuses to sign, once it does (see [`fork_of`]).
    pub fn forked(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.shared.forked.subscribe()
    }

    fn mark_forked(&self, reason: String) {
        metrics::gauge!("cpis_access_log_forked").set(1.0);
        tracing::error!(%reason, "the access log's tree does not extend what this key signed or witnesses cosigned: signing nothing more; run `cpis-relay audit verify`");
        self.shared.forked.send_replace(Some(reason));
    }

    fn refuse_if_forked(&self) -> Result<(), StoreError> {
        match self.shared.forked.borrow().as_ref() {
            Some(reason) => Err(StoreError::Corrupt(format!(
                "access log: refusing to sign a checkpoint: {reason} (run `cpis-relay audit verify`)"
            ))),
            None => Ok(()),
        }
    }

    pub fn verifier(&self) -> &VerifierKey {
        self.shared.signer.verifier()
    }

    pub fn log(&self) -> &Arc<dyn AccessLog> {
        &self.shared.log
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends the leaves of every access committed since the last call;
    /// returns the tree size. Blocks.
    pub fn catch_up(&self) -> Result<u64, StoreError> {
        let mut state = self.state();
        catch_up(&self.shared.log, &mut state.tree)
    }

    /// The latest signed checkpoint, signing a new one first if the tree has
    /// grown (or none was signed yet), and stored as it is signed (one small
    /// note, so no access in the tree lacks a stored signature). Blocks.
    pub fn checkpoint(&self) -> Result<SignedCheckpoint, StoreError> {
        let mut state = self.state();
        self.checkpoint_locked(&mut state)
    }

    fn checkpoint_locked(&self, state: &mut State) -> Result<SignedCheckpoint, StoreError> {
        self.refuse_if_forked()?;
        let size = catch_up(&self.shared.log, &mut state.tree)?;
        if let Some(reason) = self.fork_before_signing(state)? {
            self.mark_forked(reason);
            self.refuse_if_forked()?;
        }
        let now = self.shared.clock.now();
        let signed = match &state.latest {
            Some(latest) if latest.checkpoint.size == size => latest.clone(),
            _ => {
                let signed = self.sign(size, state.tree.root(), now)?;
                metrics::gauge!("cpis_access_log_size").set(size as f64);
                tracing::debug!(size, "access log checkpoint signed");
                state.latest = Some(signed.clone());
                state.latest_stored = false;
                self.shared.signed.send_replace(Some(signed.clone()));
                signed
            }
        };
        // Stored before it is served or witnessed: a failed store is retried at the next call.
        if !state.latest_stored {
            self.shared.log.add_note(NoteKind::Checkpoint, &signed.note)?;
            state.latest_stored = true;
        }
        Ok(signed)
    }

    /// Before each signature: the tree as the store holds it now (read
    /// afresh: it may have been rewritten behind this process, or appended to
    /// by another node) must extend what this keeper holds, the last
    /// checkpoint it signed and the last one witnesses cosigned. Why not, if not.
    fn fork_before_signing(&self, state: &State) -> Result<Option<String>, StoreError> {
        let stored = MerkleLog::open(self.shared.log.tree()).map_err(tree_error)?;
        let held = Checkpoint {
            origin: self.shared.signer.name().to_owned(),
            size: state.tree.size(),
            root: state.tree.root(),
            time: self.shared.clock.now(),
        };
        let witnessed = self.witnessed();
        let against = [
            (Some(&held), "the tree this keeper built"),
            (state.latest.as_ref().map(|latest| &latest.checkpoint), "the last checkpoint this key signed"),
            (witnessed.as_ref().map(|witnessed| &witnessed.checkpoint), "the last checkpoint witnesses cosigned"),
        ];
        for (checkpoint, what) in against {
            if let Some(checkpoint) = checkpoint
                && let Some(reason) = fork_of(&stored, checkpoint, what)?
            {
                return Ok(Some(reason));
            }
        }
        Ok(None)
    }

    fn sign(&self, size: u64, root: Hash, time: DateTime<Utc>) -> Result<SignedCheckpoint, StoreError> {
        let checkpoint = Checkpoint { origin: self.shared.signer.name().to_owned(), size, root, time };
        let note = checkpoint.sign(&self.shared.signer).map_err(|error| StoreError::Corrupt(error.to_string()))?;
        Ok(SignedCheckpoint { checkpoint, note })
    }

    /// Each checkpoint as it is signed (the latest at once).
    pub(crate) fn signed_checkpoints(&self) -> tokio::sync::watch::Receiver<Option<SignedCheckpoint>> {
        self.shared.signed.subscribe()
    }

    /// The latest checkpoint a quorum of witnesses cosigned, its note with their cosignatures.
    pub fn witnessed(&self) -> Option<SignedCheckpoint> {
        self.shared.witnessed.borrow().clone()
    }

    /// [`Self::witnessed`] as it changes.
    pub fn witnessed_checkpoints(&self) -> tokio::sync::watch::Receiver<Option<SignedCheckpoint>> {
        self.shared.witnessed.subscribe()
    }

    /// Records `cosigned` (a checkpoint this key signed, its note carrying a
    /// quorum of cosignatures) as the latest witnessed one, unless a larger
    /// one is; stores it as a checkpoint note if none was stored for
    /// [`WITNESSED_STORED_SPACING`] (or `always`), so that `audit verify`
    /// finds the cosignatures in the store too. Blocks.
    pub(crate) fn record_witnessed(&self, cosigned: SignedCheckpoint, always: bool) -> Result<(), StoreError> {
        let now = self.shared.clock.now();
        let mut stored = self.shared.witnessed_stored.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.witnessed().is_some_and(|latest| latest.checkpoint.size > cosigned.checkpoint.size) {
            return Ok(());
        }
        let due = match &*stored {
            Some((_, note)) if *note == cosigned.note => false,
            Some((at, _)) => always || now - *at >= WITNESSED_STORED_SPACING,
            None => true,
        };
        if due {
            self.shared.log.add_note(NoteKind::Checkpoint, &cosigned.note)?;
            *stored = Some((now, cosigned.note.clone()));
        }
        metrics::gauge!("cpis_access_log_witnessed_size").set(cosigned.checkpoint.size as f64);
        self.shared.witnessed.send_replace(Some(cosigned));
        Ok(())
    }

    /// Takes `cosigned` (a checkpoint of this key a witness cosigned, read
    /// from it at start) as the latest witnessed one unless a larger one is
    /// known, without storing it: the next signature must extend it.
    pub(crate) fn learn_witnessed(&self, cosigned: SignedCheckpoint) {
        self.shared.witnessed.send_if_modified(|witnessed| {
            let larger = witnessed.as_ref().is_none_or(|known| known.checkpoint.size < cosigned.checkpoint.size);
            if larger {
                *witnessed = Some(cosigned);
            }
            larger
        });
    }

    /// Holds [`Self::run`] until [`Self::witnessed_learned`]: called before the
    /// witnesses' latest checkpoint is fetched at start.
    pub(crate) fn await_witnessed(&self) {
        self.shared.learned.send_replace(false);
    }

    /// Learning at start is over (learned, or no witness answered): `run` goes on.
    pub(crate) fn witnessed_learned(&self) {
        self.shared.learned.send_replace(true);
    }

    /// The latest checkpoint signed, without signing.
    pub fn latest(&self) -> Option<SignedCheckpoint> {
        self.state().latest.clone()
    }

    /// The inclusion proof of the access (or auditor's read) `id` in the
    /// latest checkpoint (signed now if it does not cover the access yet);
    /// `None` when no retained access has that id. Blocks.
    pub fn inclusion(&self, id: u128) -> Result<Option<Inclusion>, StoreError> {
        let Some(position) = self.shared.log.position_of(id)? else { return Ok(None) };
        let Some(entry) = self.shared.log.entry_at(position)? else { return Ok(None) };
        let checkpoint = {
            let mut state = self.state();
            match &state.latest {
                Some(latest) if latest.checkpoint.size > position => latest.clone(),
                _ => self.checkpoint_locked(&mut state)?,
            }
        };
        let proof = self.inclusion_proofs(&[position], checkpoint.checkpoint.size)?.pop().unwrap_or_default();
        Ok(Some(Inclusion { position, entry, proof, checkpoint }))
    }

    /// Inclusion proofs of `positions`, all in one checkpoint (the latest,
    /// signed now if the log grew), read together once the checkpoint is
    /// known. Blocks.
    pub fn proofs(&self, positions: &[u64]) -> Result<(SignedCheckpoint, Vec<Vec<Hash>>), StoreError> {
        let checkpoint = {
            let mut state = self.state();
            self.checkpoint_locked(&mut state)?
        };
        let proofs = self.inclusion_proofs(positions, checkpoint.checkpoint.size)?;
        Ok((checkpoint, proofs))
    }

    /// The inclusion proofs of `positions` in the tree of `size` leaves (one
    /// the keeper has stored), in one read of the hashes, without the lock.
    fn inclusion_proofs(&self, positions: &[u64], size: u64) -> Result<Vec<Vec<Hash>>, StoreError> {
        let mut plan = ProofPlan::default();
        for position in positions {
            plan.add_inclusion(*position, size).map_err(tree_error)?;
        }
        plan.read(&self.shared.reader)
    }

    /// The inclusion proofs of `positions` in the tree of its first `size`
    /// leaves (at most the tree's size; each position below it), read
    /// together without the lock. Blocks.
    pub(crate) fn inclusion_proofs_in(
        &self,
        positions: &[u64],
        size: u64,
    ) -> Result<Vec<Vec<Hash>>, TreeError<StoreError>> {
        let tree_size = self.tree_size();
        if size > tree_size {
            return Err(TreeError::SizeOutOfRange { size, tree_size });
        }
        let mut plan = ProofPlan::default();
        for position in positions {
            plan.add_inclusion(*position, size)?;
        }
        plan.read(&self.shared.reader).map_err(TreeError::Store)
    }

    /// The consistency proof from tree size `old` to `new`, read without the lock. Blocks.
    pub fn consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, TreeError<StoreError>> {
        let tree_size = self.tree_size();
        if new > tree_size {
            return Err(TreeError::SizeOutOfRange { size: new, tree_size });
        }
        let mut plan = ProofPlan::default();
        plan.add_consistency(old, new)?;
        Ok(plan.read(&self.shared.reader).map_err(TreeError::Store)?.pop().unwrap_or_default())
    }

    /// The tree's size now.
    pub fn tree_size(&self) -> u64 {
        self.state().tree.size()
    }

    /// After retention moved the first retained position: signs and stores a
    /// retention note, then a checkpoint. Blocks.
    pub fn record_retention(&self, removed_before: DateTime<Utc>) -> Result<RetentionNote, StoreError> {
        let boundary = self.shared.log.bounds()?.retained_from;
        let note = RetentionNote {
            origin: self.shared.signer.name().to_owned(),
            boundary,
            removed_before,
            time: self.shared.clock.now(),
        };
        self.shared.log.add_note(NoteKind::Retention, &note.sign(&self.shared.signer))?;
        tracing::info!(boundary, "access log retention recorded under a signed note");
        self.checkpoint()?;
        Ok(note)
    }

    /// Removes the stored checkpoints thinning leaves out as of now (see
    /// [`super::notes::thinned`]); returns how many went. Blocks.
    pub(crate) fn thin_notes(&self) -> Result<u64, StoreError> {
        let notes = self.shared.log.notes()?;
        let thinned = super::notes::thinned(&notes, self.verifier(), self.shared.clock.now());
        if thinned.is_empty() {
            return Ok(0);
        }
        let removed = self.shared.log.remove_notes(&thinned)?;
        tracing::info!(removed, "old stored checkpoints thinned to one an hour");
        Ok(removed)
    }

    /// Runs `work` on the blocking pool.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&LogKeeper) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        // The sender lives as long as the keeper: the wait ends when learning does.
        let _ = self.shared.learned.subscribe().wait_for(|learned| *learned).await;
        let keeper = self.clone();
        tokio::task::spawn_blocking(move || work(&keeper))
            .await
            .map_err(|error| StoreError::Io(format!("access log keeper: {error}")))?
    }

    /// Signs a checkpoint every `interval` (when the log grew), and a last one
    /// when `draining` flips; then ends. Run it on its own task.
    pub async fn keep(self, interval: std::time::Duration, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                _ = ticks.tick() => false,
                _ = stopped.wait_for(|stopped| *stopped) => true,
            };
            if let Err(error) = self.run(|keeper| keeper.checkpoint()).await {
                metrics::counter!("cpis_access_log_failures_total").increment(1);
                tracing::error!(%error, "access log checkpoint failed; will retry");
            }
            if last {
                return;
            }
        }
    }
}

/// Why `tree` does not extend `signed` (`what`: a checkpoint this key
/// signed, or the tree the keeper holds), if it does not: it holds fewer
/// leaves (the log was cut), or its first `signed.size` leaves give another
/// root (the log was rewritten). A store that fails to answer is an error, not a fork.
fn fork_of(tree: &MerkleLog<TreeStore>, signed: &Checkpoint, what: &str) -> Result<Option<String>, StoreError> {
    if tree.size() < signed.size {
        return Ok(Some(format!(
            "the stored tree holds {} accesses, fewer than the {} of {what}: the log was cut",
            tree.size(),
            signed.size
        )));
    }
    let root = tree.root_at(signed.size).map_err(tree_error)?;
    Ok((root != signed.root).then(|| {
        format!(
            "the stored tree's first {} accesses no longer give the root of {what}: the log was rewritten",
            signed.size
        )
    }))
}

fn catch_up(log: &Arc<dyn AccessLog>, tree: &mut MerkleLog<TreeStore>) -> Result<u64, StoreError> {
    let bounds = log.bounds()?;
    if tree.size() < bounds.retained_from {
        return Err(StoreError::Corrupt(format!(
            "access log: records below position {} were removed before the tree held them (tree size {})",
            bounds.retained_from,
            tree.size()
        )));
    }
    while tree.size() < bounds.next_position {
        let from = tree.size();
        let to = bounds.next_position.min(from + APPEND_CHUNK);
        let mut leaves = Vec::with_capacity((to - from) as usize);
        // What the store hashed as it wrote the records, without reading them back.
        log.take_appended(from, to, &mut leaves);
        let mut problem = None;
        let read_from = from + leaves.len() as u64;
        if read_from < to {
            log.leaf_hashes(read_from, to, &mut |position, leaf| match leaf {
                Ok(hash) => {
                    leaves.push(hash);
                    std::ops::ControlFlow::Continue(())
                }
                Err(error) => {
                    problem = Some((position, error));
                    std::ops::ControlFlow::Break(())
                }
            })?;
        }
        if !leaves.is_empty() {
            match tree.append(&leaves) {
                Ok(_) => {}
                // A shared store: another node's keeper appended first; continue from its tree.
                Err(TreeError::Store(StoreError::Io(message))) if message == TREE_MOVED => {
                    *tree = MerkleLog::open(log.tree()).map_err(tree_error)?;
                    continue;
                }
                Err(error) => return Err(tree_error(error)),
            }
        }
        if let Some((position, error)) = problem {
            let what = match error {
                LeafProblem::Missing => "no record".to_owned(),
                LeafProblem::Unreadable(error) => format!("an unreadable record ({error})"),
            };
            return Err(StoreError::Corrupt(format!(
                "access log: {what} at position {position}; the tree stops before it (run `cpis-relay audit verify`)"
            )));
        }
        if (leaves.len() as u64) < to - from {
            // The log ended early: a position is not visible yet.
            break;
        }
    }
    Ok(tree.size())
}
