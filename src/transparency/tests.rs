//! The tree, proofs, audit and checkpoints against published known answers
//! (RFC 6962 vectors of transparency-dev/merkle, the signed-note example of
//! golang.org/x/mod/sumdb/note) and against the definitions for random sizes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use super::audit::{Finding, SignedRoot, verify_records};
use super::checkpoint::{CheckpointError, open_note, sign_note};
use super::hash::{Hash, empty_root, from_hex, leaf_hash, root_of_leaf_hashes};
use super::proof::{
    ProofError, consistency_proof_length, inclusion_proof_length, verify_consistency, verify_inclusion,
};
use super::tree::{stored_hash_count, stored_hash_position};
use super::*;

fn hex(text: &str) -> Hash {
    from_hex(text).expect("a 64-digit hex hash")
}

fn bytes(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex")).collect()
}

/// The eight leaves of the RFC 6962 test vectors (transparency-dev/merkle,
/// proof/verify_test.go, originally certificate-transparency's).
fn vector_leaves() -> Vec<Vec<u8>> {
    ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
        .iter()
        .map(|text| bytes(text))
        .collect()
}

/// The roots of the trees of the first 1..=8 of those leaves.
const VECTOR_ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// (leaf index, tree size, audit path) from the same vectors.
fn vector_inclusion_proofs() -> Vec<(u64, u64, Vec<Hash>)> {
    vec![
        (0, 1, vec![]),
        (
            0,
            8,
            vec![
                hex("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                hex("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                hex("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ],
        ),
        (
            5,
            8,
            vec![
                hex("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                hex("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                hex("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ],
        ),
        (2, 3, vec![hex("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
        (
            1,
            5,
            vec![
                hex("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
                hex("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                hex("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            ],
        ),
    ]
}

/// (old size, new size, consistency proof) from the same vectors.
fn vector_consistency_proofs() -> Vec<(u64, u64, Vec<Hash>)> {
    vec![
        (1, 1, vec![]),
        (
            1,
            8,
            vec![
                hex("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                hex("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                hex("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ],
        ),
        (
            6,
            8,
            vec![
                hex("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                hex("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                hex("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ],
        ),
        (
            2,
            5,
            vec![
                hex("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                hex("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            ],
        ),
        (
            6,
            7,
            vec![
                hex("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                hex("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
                hex("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ],
        ),
    ]
}

fn vector_tree() -> MerkleLog<MemoryHashStore> {
    let mut tree = MerkleLog::open(MemoryHashStore::new()).expect("an empty tree");
    let leaves: Vec<Hash> = vector_leaves().iter().map(|leaf| leaf_hash(leaf)).collect();
    tree.append(&leaves).expect("in memory");
    tree
}

fn tree_of(leaves: &[Hash]) -> MerkleLog<MemoryHashStore> {
    let mut tree = MerkleLog::open(MemoryHashStore::new()).expect("an empty tree");
    tree.append(leaves).expect("in memory");
    tree
}

fn random_leaves(count: u64) -> Vec<Hash> {
    (0..count).map(|index| leaf_hash(&index.to_be_bytes())).collect()
}

#[test]
fn roots_of_every_prefix_match_the_rfc6962_vectors() {
    let tree = vector_tree();
    assert_eq!(tree.root_at(0).expect("size 0"), empty_root());
    assert_eq!(empty_root(), hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    for (size, root) in (1..=8).zip(VECTOR_ROOTS) {
        assert_eq!(tree.root_at(size).expect("within the tree"), hex(root), "size {size}");
    }
    assert_eq!(tree.root(), hex(VECTOR_ROOTS[7]));
}

#[test]
fn inclusion_proofs_match_the_rfc6962_vectors_and_verify() {
    let tree = vector_tree();
    for (index, size, expected) in vector_inclusion_proofs() {
        let proof = tree.inclusion_proof(index, size).expect("within the tree");
        assert_eq!(proof, expected, "leaf {index} of {size}");
        let leaf = leaf_hash(&vector_leaves()[index as usize]);
        let root = hex(VECTOR_ROOTS[size as usize - 1]);
        verify_inclusion(index, size, &leaf, &proof, &root).expect("a vector proof verifies");
        for (description, probe) in corrupted_inclusion_probes(index, size, leaf, &proof, root) {
            assert!(
                verify_inclusion(probe.0, probe.1, &probe.2, &probe.3, &probe.4).is_err(),
                "leaf {index} of {size}: {description} verified"
            );
        }
    }
}

type InclusionProbe = (u64, u64, Hash, Vec<Hash>, Hash);

/// The corruptions transparency-dev/merkle's verifier tests try, each of
/// which must fail.
fn corrupted_inclusion_probes(
    index: u64,
    size: u64,
    leaf: Hash,
    proof: &[Hash],
    root: Hash,
) -> Vec<(String, InclusionProbe)> {
    let some_hash = hex("abacaba000000000000000000000000000000000000000000060061e00123456");
    let mut probes: Vec<(String, InclusionProbe)> = vec![
        ("index + 1".into(), (index + 1, size, leaf, proof.to_vec(), root)),
        ("index ^ 2".into(), (index ^ 2, size, leaf, proof.to_vec(), root)),
        ("size * 2".into(), (index, size * 2, leaf, proof.to_vec(), root)),
        ("size / 2".into(), (index, size / 2, leaf, proof.to_vec(), root)),
        ("wrong leaf".into(), (index, size, leaf_hash(b"WrongLeaf"), proof.to_vec(), root)),
        ("empty root".into(), (index, size, leaf, proof.to_vec(), empty_root())),
        ("random root".into(), (index, size, leaf, proof.to_vec(), some_hash)),
        ("trailing root".into(), (index, size, leaf, [proof, &[root]].concat(), root)),
        ("preceding root".into(), (index, size, leaf, [&[root], proof].concat(), root)),
    ];
    if index > 0 {
        probes.push(("index - 1".into(), (index - 1, size, leaf, proof.to_vec(), root)));
    }
    for position in 0..proof.len() {
        let mut flipped = proof.to_vec();
        flipped[position][0] ^= 8;
        probes.push((format!("proof[{position}] bit 3 flipped"), (index, size, leaf, flipped, root)));
    }
    if let Some((_, shorter)) = proof.split_last() {
        probes.push(("removed component".into(), (index, size, leaf, shorter.to_vec(), root)));
    }
    if proof.len() > 1 {
        let inserted = [&[proof[0], some_hash], &proof[1..]].concat();
        probes.push(("inserted component".into(), (index, size, leaf, inserted, root)));
    }
    probes
}

#[test]
fn consistency_proofs_match_the_rfc6962_vectors_and_verify() {
    let tree = vector_tree();
    for (old, new, expected) in vector_consistency_proofs() {
        let proof = tree.consistency_proof(old, new).expect("within the tree");
        assert_eq!(proof, expected, "{old} to {new}");
        let old_root = hex(VECTOR_ROOTS[old as usize - 1]);
        let new_root = hex(VECTOR_ROOTS[new as usize - 1]);
        verify_consistency(old, new, &old_root, &new_root, &proof).expect("a vector proof verifies");
        if proof.is_empty() {
            continue;
        }
        let wrong = leaf_hash(b"WrongRoot");
        let mut probes: Vec<(String, u64, u64, Hash, Hash, Vec<Hash>)> = vec![
            ("old - 1".into(), old - 1, new, old_root, new_root, proof.clone()),
            ("old + 1".into(), old + 1, new, old_root, new_root, proof.clone()),
            ("old ^ 2".into(), old ^ 2, new, old_root, new_root, proof.clone()),
            ("new * 2".into(), old, new * 2, old_root, new_root, proof.clone()),
            ("new / 2".into(), old, new / 2, old_root, new_root, proof.clone()),
            ("wrong old root".into(), old, new, wrong, new_root, proof.clone()),
            ("wrong new root".into(), old, new, old_root, wrong, proof.clone()),
            ("swapped roots".into(), old, new, new_root, old_root, proof.clone()),
            ("empty proof".into(), old, new, old_root, new_root, vec![]),
            ("trailing old root".into(), old, new, old_root, new_root, [&proof[..], &[old_root]].concat()),
            ("preceding new root".into(), old, new, old_root, new_root, [&[new_root], &proof[..]].concat()),
            ("preceding proof[0]".into(), old, new, old_root, new_root, [&[proof[0]], &proof[..]].concat()),
            ("truncated".into(), old, new, old_root, new_root, proof[..proof.len() - 1].to_vec()),
        ];
        for position in 0..proof.len() {
            let mut flipped = proof.clone();
            flipped[position][0] ^= 16;
            probes.push((format!("proof[{position}] bit 4 flipped"), old, new, old_root, new_root, flipped));
        }
        for (description, old, new, old_root, new_root, proof) in probes {
            assert!(verify_consistency(old, new, &old_root, &new_root, &proof).is_err(), "{description} verified");
        }
    }
}

#[test]
fn trivial_consistency_cases_follow_the_reference_verifier() {
    let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
    assert!(verify_consistency(0, 0, &a, &a, &[]).is_ok());
    assert!(verify_consistency(0, 5, &a, &b, &[]).is_ok(), "the empty tree is a prefix of every tree");
    assert!(verify_consistency(3, 3, &b, &b, &[]).is_ok());
    assert!(verify_consistency(3, 3, &a, &b, &[]).is_err(), "one size, two roots");
    assert!(verify_consistency(3, 3, &a, &a, &[a]).is_err(), "equal sizes need no proof");
    assert!(verify_consistency(0, 1, &a, &a, &[a]).is_err());
    assert_eq!(verify_consistency(2, 1, &a, &b, &[]), Err(ProofError::SizesReversed { old: 2, new: 1 }));
    assert!(verify_consistency(1, 2, &a, &b, &[]).is_err(), "an empty proof between different sizes");
    assert!(verify_inclusion(0, 0, &a, &[], &a).is_err(), "no leaf is in the empty tree");
    assert!(verify_inclusion(0, 1, &a, &[], &a).is_ok(), "a one-leaf tree's root is its leaf");
    assert!(verify_inclusion(1, 1, &a, &[], &a).is_err());
}

#[test]
fn the_stored_layout_appends_leaves_and_completed_subtrees_in_order() {
    // Leaves 0..8: l0 l1 n(1,0) l2 l3 n(1,1) n(2,0) l4 l5 n(1,2) l6 l7 n(1,3) n(2,1) n(3,0).
    let order = [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (1, 1), (2, 0), (0, 4), (0, 5), (1, 2)];
    for (position, (level, index)) in order.into_iter().enumerate() {
        assert_eq!(stored_hash_position(level, index), position as u64, "({level}, {index})");
    }
    assert_eq!(stored_hash_position(3, 0), 14);
    assert_eq!(stored_hash_count(8), 15);
    let tree = vector_tree();
    assert_eq!(tree.store().tree_size().expect("in memory"), 8);
    let stored = tree.store().hash_at(stored_hash_position(3, 0)).expect("the root of 8 is stored");
    assert_eq!(stored, hex(VECTOR_ROOTS[7]));
}

#[test]
fn a_reopened_tree_and_a_tree_built_leaf_by_leaf_are_the_same_tree() {
    let leaves = random_leaves(77);
    let batch = tree_of(&leaves);
    let mut one_by_one = MerkleLog::open(MemoryHashStore::new()).expect("empty");
    for leaf in &leaves {
        one_by_one.append(&[*leaf]).expect("in memory");
    }
    assert_eq!(one_by_one.root(), batch.root());
    let mut reopened = MerkleLog::open(batch.into_store()).expect("reopens");
    assert_eq!(reopened.size(), 77);
    assert_eq!(reopened.root(), root_of_leaf_hashes(&leaves));
    let more = random_leaves(90);
    reopened.append(&more[77..]).expect("in memory");
    assert_eq!(reopened.root(), root_of_leaf_hashes(&more));
}

#[test]
fn proofs_beyond_the_tree_are_refused() {
    let tree = tree_of(&random_leaves(5));
    assert!(tree.root_at(6).is_err());
    assert!(tree.inclusion_proof(5, 5).is_err());
    assert!(tree.inclusion_proof(0, 6).is_err());
    assert!(tree.consistency_proof(3, 6).is_err());
    assert!(tree.consistency_proof(4, 3).is_err());
    assert!(tree.leaf_hash(5).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_inclusion_proof_verifies_and_a_changed_leaf_does_not(size in 1u64..600, index_seed in any::<u64>(), flip in any::<u8>()) {
        let leaves = random_leaves(size);
        let tree = tree_of(&leaves);
        let index = index_seed % size;
        let root = root_of_leaf_hashes(&leaves);
        prop_assert_eq!(tree.root(), root);
        let proof = tree.inclusion_proof(index, size).expect("within the tree");
        prop_assert_eq!(proof.len(), inclusion_proof_length(index, size));
        prop_assert!(verify_inclusion(index, size, &leaves[index as usize], &proof, &root).is_ok());
        let mut changed = leaves[index as usize];
        changed[usize::from(flip) % 32] ^= 1 << (flip % 8);
        prop_assert!(verify_inclusion(index, size, &changed, &proof, &root).is_err());
        if size > 1 {
            let other = (index + 1) % size;
            prop_assert!(verify_inclusion(other, size, &leaves[index as usize], &proof, &root).is_err());
        }
    }

    #[test]
    fn every_prefix_root_and_consistency_proof_verifies(new in 1u64..600, old_seed in any::<u64>(), tampered_seed in any::<u64>()) {
        let leaves = random_leaves(new);
        let tree = tree_of(&leaves);
        let old = old_seed % (new + 1);
        let old_root = root_of_leaf_hashes(&leaves[..old as usize]);
        prop_assert_eq!(tree.root_at(old).expect("within the tree"), old_root);
        let new_root = tree.root();
        let proof = tree.consistency_proof(old, new).expect("within the tree");
        if 0 < old && old < new {
            prop_assert_eq!(proof.len(), consistency_proof_length(old, new));
        }
        prop_assert!(verify_consistency(old, new, &old_root, &new_root, &proof).is_ok());
        // A log that changed any of the first `old` leaves cannot prove it extends the old root.
        if old > 0 && old < new {
            let mut rewritten = leaves.clone();
            rewritten[(tampered_seed % old) as usize] = leaf_hash(b"rewritten");
            let rewritten_tree = tree_of(&rewritten);
            let rewritten_proof = rewritten_tree.consistency_proof(old, new).expect("within the tree");
            prop_assert!(verify_consistency(old, new, &old_root, &rewritten_tree.root(), &rewritten_proof).is_err());
        }
    }

    #[test]
    fn a_changed_removed_or_swapped_record_is_found_at_its_position(size in 2u64..400, first_seed in any::<u64>(), second_seed in any::<u64>(), how in 0u8..3) {
        let leaves = random_leaves(size);
        let tree = tree_of(&leaves);
        let signed: Vec<SignedRoot> = (0..=size).step_by(7).chain([size]).map(|at| SignedRoot { size: at, root: tree.root_at(at).expect("within") }).collect();
        let clean = verify_records(leaves.iter().copied(), &signed, Some(&tree)).expect("in memory");
        prop_assert!(clean.is_clean(), "{:?}", clean.findings);
        prop_assert_eq!(clean.checkpoints_matched, signed.len());
        let first = first_seed % size;
        let mut records = leaves.clone();
        let expected_positions: Vec<u64> = match how {
            0 => {
                records[first as usize] = leaf_hash(b"altered");
                vec![first]
            }
            1 => {
                records.remove(first as usize);
                (first..size - 1).collect()
            }
            _ => {
                let second = first + 1 + second_seed % (size - first).max(1);
                let second = second.min(size - 1);
                if second == first {
                    records[first as usize] = leaf_hash(b"altered");
                    vec![first]
                } else {
                    records.swap(first as usize, second as usize);
                    vec![first, second]
                }
            }
        };
        let report = verify_records(records.iter().copied(), &signed, Some(&tree)).expect("in memory");
        let positions: Vec<u64> = report.findings.iter().filter_map(|finding| match finding {
            Finding::LeafDiffers { position } => Some(*position),
            _ => None,
        }).collect();
        prop_assert_eq!(&positions[..], &expected_positions[..expected_positions.len().min(100)]);
        // Every checkpoint covering the first tampered position fails; none before it does.
        for checkpoint in &signed {
            let mismatched = report.findings.contains(&Finding::CheckpointMismatch { size: checkpoint.size })
                || report.findings.contains(&Finding::CheckpointBeyondRecords { size: checkpoint.size, records: size - 1 });
            prop_assert_eq!(mismatched, checkpoint.size > first, "checkpoint {}", checkpoint.size);
        }
        if how == 1 {
            let missing = Finding::RecordsMissing { position: size - 1, tree_size: size };
            prop_assert!(report.findings.contains(&missing), "{:?}", report.findings);
        }
        // Without the stored tree the checkpoints alone still catch it.
        let alone = verify_records::<MemoryHashStore>(records.iter().copied(), &signed, None).expect("no store");
        prop_assert!(!alone.is_clean());
    }
}

#[test]
fn a_tampered_stored_tree_is_reported_against_the_checkpoints() {
    let leaves = random_leaves(20);
    let tree = tree_of(&leaves);
    let signed = [SignedRoot { size: 20, root: tree.root() }];
    let mut store = tree.into_store();
    // The subtree of leaves 0..16: a forged stored node changes the stored tree's root.
    store.hashes_mut()[stored_hash_position(4, 0) as usize] = leaf_hash(b"forged");
    let forged = MerkleLog::open(store).expect("reopens");
    let report = verify_records(leaves.iter().copied(), &signed, Some(&forged)).expect("in memory");
    assert_eq!(report.findings, vec![Finding::TreeMismatch { size: 20 }]);
    assert_eq!(report.checkpoints_matched, 1, "the records themselves still match the signed root");
}

fn test_signer(name: &str) -> LogSigner {
    LogSigner::from_seed(name, &[42u8; 32]).expect("a valid name")
}

fn a_checkpoint(origin: &str) -> Checkpoint {
    Checkpoint {
        origin: origin.into(),
        size: 8,
        root: hex(VECTOR_ROOTS[7]),
        time: Utc.timestamp_micros(1_764_925_200_000_001).single().expect("a valid time"),
    }
}

#[test]
fn a_checkpoint_is_a_c2sp_signed_note_that_verifies_with_the_public_key_alone() {
    let signer = test_signer("relay.example/access-log");
    let checkpoint = a_checkpoint("relay.example/access-log");
    let note = checkpoint.sign(&signer).expect("origin is the key name");
    let expected_text = format!(
        "relay.example/access-log\n8\n{}\n2025-12-05T09:00:00.000001Z\n",
        STANDARD.encode(hex(VECTOR_ROOTS[7]))
    );
    assert!(note.starts_with(&format!("{expected_text}\n\u{2014} relay.example/access-log ")), "{note}");
    let verifier = VerifierKey::parse(&signer.verifier().to_string()).expect("the published key parses");
    assert_eq!(Checkpoint::verify(&note, &verifier).expect("verifies"), checkpoint);

    let tampered = [
        note.replacen("\n8\n", "\n9\n", 1),
        note.replacen("09:00:00.000001", "09:00:00.000002", 1),
        note.replacen(&STANDARD.encode(hex(VECTOR_ROOTS[7])), &STANDARD.encode(hex(VECTOR_ROOTS[6])), 1),
    ];
    for note in tampered {
        assert_eq!(
            Checkpoint::verify(&note, &verifier),
            Err(CheckpointError::BadSignature("relay.example/access-log".into()))
        );
    }
    let other = LogSigner::from_seed("relay.example/access-log", &[7u8; 32]).expect("valid");
    assert_eq!(
        Checkpoint::verify(&note, other.verifier()),
        Err(CheckpointError::NotSigned("relay.example/access-log".into())),
        "another key with the same name is unknown, not trusted"
    );
    assert!(matches!(
        checkpoint.sign(&test_signer("another.example/log")),
        Err(CheckpointError::OriginMismatch { .. })
    ));
}

#[test]
fn a_cosignature_from_an_unknown_key_is_ignored() {
    let signer = test_signer("relay.example/log");
    let witness = LogSigner::from_seed("witness.example", &[9u8; 32]).expect("valid");
    let note = a_checkpoint("relay.example/log").sign(&signer).expect("signs");
    let witness_line = sign_note(&a_checkpoint("relay.example/log").text(), &witness);
    let cosigned = format!("{note}{}", witness_line.rsplit_once("\n\n").expect("a signature").1);
    assert!(Checkpoint::verify(&cosigned, signer.verifier()).is_ok(), "{cosigned}");
}

#[test]
fn checkpoint_texts_other_than_the_canonical_form_are_refused() {
    let good = a_checkpoint("relay.example/log").text();
    assert!(Checkpoint::parse_text(&good).is_ok());
    let bad = [
        good.replacen("\n8\n", "\n08\n", 1),
        good.replacen("\n8\n", "\n-8\n", 1),
        good.replacen(".000001Z", ".000001+00:00", 1),
        good.trim_end().to_owned(),
        format!("{good}extra\n"),
        good.replacen("relay.example/log", "relay example", 1),
    ];
    for text in bad {
        assert!(Checkpoint::parse_text(&text).is_err(), "{text:?} parsed");
    }
}

// golang.org/x/mod/sumdb/note's example: the key
// PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz signs this
// text to exactly this note (Ed25519 is deterministic), and verifies with the published key.
#[test]
fn signed_notes_match_the_go_note_package_byte_for_byte() {
    let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    let expected = format!(
        "{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    );
    let private = STANDARD.decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz").expect("base64");
    let seed: [u8; 32] = private[1..].try_into().expect("type byte and 32-byte seed");
    let signer = LogSigner::from_seed("PeterNeumann", &seed).expect("valid");
    assert_eq!(signer.verifier().to_string(), "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW");
    assert_eq!(sign_note(text, &signer), expected);
    let verifier =
        VerifierKey::parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").expect("parses");
    assert_eq!(open_note(&expected, &verifier), Ok(text));
    assert!(open_note(&expected.replacen("cryptography", "cryptographY", 1), &verifier).is_err());
}
