#!/usr/bin/env python3
"""A C2SP tlog-witness and tlog-cosignature checker written from the specs
alone (c2sp.org/tlog-witness, c2sp.org/tlog-cosignature, c2sp.org/signed-note),
with Python's `cryptography`, for the relay's interoperability tests.

  witness.py serve NAME SEED_HEX LOG_VKEY
      Runs a witness for one log on 127.0.0.1 (a free port), in memory. Prints
      one line "listening PORT VKEY" (VKEY: name+id+base64(0x04 || key)), then
      serves POST /add-checkpoint until killed.
  witness.py verify LOG_VKEY WITNESS_VKEY...
      Reads a cosigned checkpoint note on stdin; exits 0 and prints "verified"
      when the log's signature and a cosignature of every witness key verify.
"""
import base64
import hashlib
import http.server
import os
import struct
import sys
import threading
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verify_proof import verify_consistency  # noqa: E402  (RFC 9162 2.1.4.2, written from the RFC)

DASH = "\u2014 "


def parse_vkey(text, sig_type):
    name, key_id, key = text.strip().split("+", 2)
    key = base64.b64decode(key)
    if len(key) != 33 or key[0] != sig_type:
        raise ValueError("wrong key type")
    computed = hashlib.sha256(name.encode() + b"\n" + key).digest()[:4]
    if computed.hex() != key_id:
        raise ValueError("key id mismatch")
    return name, computed, Ed25519PublicKey.from_public_bytes(key[1:])


def split_note(note):
    text, sep, sigs = note.rpartition("\n\n")
    if not sep:
        raise ValueError("no signatures")
    lines = []
    for line in sigs.rstrip("\n").split("\n"):
        if not line.startswith(DASH):
            raise ValueError("malformed signature line")
        name, blob = line[len(DASH):].split(" ", 1)
        lines.append((name, base64.b64decode(blob)))
    return text + "\n", lines


def log_signed(text, lines, log_key):
    name, key_id, public = log_key
    for signer, blob in lines:
        if signer == name and blob[:4] == key_id:
            try:
                public.verify(blob[4:], text.encode())
                return True
            except InvalidSignature:
                return False
    return False


def cosigned(text, lines, witness_key):
    name, key_id, public = witness_key
    for signer, blob in lines:
        if signer != name or blob[:4] != key_id or len(blob) != 4 + 8 + 64:
            continue
        (timestamp,) = struct.unpack(">Q", blob[4:12])
        message = ("cosignature/v1\ntime %d\n" % timestamp + text).encode()
        try:
            public.verify(blob[12:], message)
            return True
        except InvalidSignature:
            continue
    return False


class Witness:
    def __init__(self, name, seed, log_key):
        self.name = name
        self.private = Ed25519PrivateKey.from_private_bytes(seed)
        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        key = b"\x04" + raw
        self.key_id = hashlib.sha256(name.encode() + b"\n" + key).digest()[:4]
        self.vkey = "%s+%s+%s" % (name, self.key_id.hex(), base64.b64encode(key).decode())
        self.log_key = log_key
        self.size, self.root = 0, None
        self.lock = threading.Lock()

    def add_checkpoint(self, body):
        head, sep, note = body.partition("\n\n")
        if not sep:
            return 400, "text/plain", "no empty line\n"
        head = head.split("\n")
        if not head[0].startswith("old "):
            return 400, "text/plain", "no old line\n"
        old = int(head[0][4:])
        proof = [base64.b64decode(line) for line in head[1:]]
        try:
            text, lines = split_note(note)
        except ValueError as error:
            return 400, "text/plain", "%s\n" % error
        body_lines = text.rstrip("\n").split("\n")
        if body_lines[0] != self.log_key[0]:
            return 404, "text/plain", "unknown log\n"
        if not log_signed(text, lines, self.log_key):
            return 403, "text/plain", "bad signature\n"
        size, root = int(body_lines[1]), base64.b64decode(body_lines[2])
        if old > size:
            return 400, "text/plain", "old size beyond the checkpoint\n"
        with self.lock:
            if old != self.size:
                return 409, "text/x.tlog.size", "%d\n" % self.size
            if old == size:
                if self.root is not None and root != self.root:
                    return 409, "text/x.tlog.size", "%d\n" % self.size
            elif not verify_consistency(old, size, self.root or b"", root, proof):
                return 422, "text/plain", "inconsistent\n"
            self.size, self.root = size, root
            timestamp = int(time.time())
            message = ("cosignature/v1\ntime %d\n" % timestamp + text).encode()
            signature = self.private.sign(message)
            blob = self.key_id + struct.pack(">Q", timestamp) + signature
            return 200, "text/plain", DASH + self.name + " " + base64.b64encode(blob).decode() + "\n"


def serve(name, seed_hex, log_vkey):
    witness = Witness(name, bytes.fromhex(seed_hex), parse_vkey(log_vkey, 0x01))

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode()
            if self.path.rstrip("/").endswith("/add-checkpoint"):
                status, content_type, answer = witness.add_checkpoint(body)
            else:
                status, content_type, answer = 404, "text/plain", "not found\n"
            data = answer.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("listening %d %s" % (server.server_address[1], witness.vkey), flush=True)
    server.serve_forever()


def verify(log_vkey, witness_vkeys):
    note = sys.stdin.read()
    text, lines = split_note(note)
    if not log_signed(text, lines, parse_vkey(log_vkey, 0x01)):
        print("NOT VERIFIED: the log's signature")
        sys.exit(1)
    for vkey in witness_vkeys:
        if not cosigned(text, lines, parse_vkey(vkey, 0x04)):
            print("NOT VERIFIED: no cosignature of " + vkey.split("+")[0])
            sys.exit(1)
    print("verified")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "verify":
        verify(sys.argv[2], sys.argv[3:])
    else:
        sys.exit("usage: witness.py serve NAME SEED_HEX LOG_VKEY | verify LOG_VKEY WITNESS_VKEY...")
