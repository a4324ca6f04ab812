#!/usr/bin/env python3
"""An independent verifier of the relay's access log proofs (issue 20).

Written from the specifications, not from the relay's code: RFC 6962 / RFC 9162
Merkle hashing and proof verification, the C2SP signed-note format with an
Ed25519 key (via Python's `cryptography`), and the relay's documented leaf
encoding (README, "Proving every access"). Reads one JSON object on stdin:

  verifier_key   name+keyid+base64(0x01 || public key)
  checkpoint     the signed note of the checkpoint
  inclusion      optional: {leaf_index, leaf (hex), audit_path [hex], access}
                 where access = {kind, access_id, accessed_at_micros, nhs_number,
                 organisation_ods_code, organisation_name, care_setting, user_id,
                 name, role_code, request_id}: the leaf is re-encoded from it
  consistency    optional: {old_size, old_root (hex), hashes [hex]} to the checkpoint

Prints "verified" and exits 0, or prints why not and exits 1.
"""
import base64
import hashlib
import json
import struct
import sys
import uuid

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def fail(reason):
    print("NOT VERIFIED: " + reason)
    sys.exit(1)


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def parse_verifier_key(text):
    name, key_id, key = text.strip().split("+", 2)
    key = base64.b64decode(key)
    if key[0] != 1 or len(key) != 33:
        fail("not an Ed25519 verifier key")
    computed = hashlib.sha256(name.encode() + b"\n" + key).digest()[:4]
    if computed.hex() != key_id:
        fail("the verifier key's id does not match its name and key")
    return name, computed, Ed25519PublicKey.from_public_bytes(key[1:])


def open_checkpoint(note, verifier):
    name, key_id, public_key = verifier
    text, _, signatures = note.rpartition("\n\n")
    text += "\n"
    signed = False
    for line in signatures.rstrip("\n").split("\n"):
        if not line.startswith("\u2014 "):
            fail("malformed signature line")
        signer, blob = line[2:].split(" ", 1)
        blob = base64.b64decode(blob)
        if signer != name or blob[:4] != key_id:
            continue
        try:
            public_key.verify(blob[4:], text.encode())
        except InvalidSignature:
            fail("the checkpoint's signature does not verify")
        signed = True
    if not signed:
        fail("the checkpoint is not signed by the verifier key")
    origin, size, root, time = text.rstrip("\n").split("\n")
    if origin != name:
        fail("the checkpoint's origin is not the key's name")
    return int(size), base64.b64decode(root), time


def encode_leaf(access):
    out = bytes([1, access["kind"]])
    out += uuid.UUID(access["access_id"]).bytes
    out += struct.pack(">q", access["accessed_at_micros"])
    out += struct.pack(">Q", int(access["nhs_number"]))
    for field in ("organisation_ods_code", "organisation_name", "care_setting", "user_id", "name", "role_code",
                  "request_id"):
        data = access[field].encode("utf-8")
        out += struct.pack(">I", len(data)) + data
    return out


def root_from_inclusion(index, size, leaf, path):
    # RFC 9162 section 2.1.3.2
    if index >= size:
        fail("leaf index beyond the tree")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            fail("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        fail("inclusion proof too short")
    return r


def verify_consistency(old, new, old_root, new_root, proof):
    # RFC 9162 section 2.1.4.2
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof
    if old > new or not proof:
        return False
    if old & (old - 1) == 0:
        proof = [old_root] + proof
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def main():
    request = json.load(sys.stdin)
    verifier = parse_verifier_key(request["verifier_key"])
    size, root, _time = open_checkpoint(request["checkpoint"], verifier)
    inclusion = request.get("inclusion")
    if inclusion:
        leaf = bytes.fromhex(inclusion["leaf"])
        if "access" in inclusion and encode_leaf(inclusion["access"]) != leaf:
            fail("the leaf is not the encoding of the access")
        path = [bytes.fromhex(h) for h in inclusion["audit_path"]]
        if root_from_inclusion(inclusion["leaf_index"], size, leaf_hash(leaf), path) != root:
            fail("the inclusion proof does not lead to the checkpoint's root")
    consistency = request.get("consistency")
    if consistency:
        proof = [bytes.fromhex(h) for h in consistency["hashes"]]
        if not verify_consistency(consistency["old_size"], size, bytes.fromhex(consistency["old_root"]), root, proof):
            fail("the consistency proof does not verify")
    print("verified")


if __name__ == "__main__":
    main()
