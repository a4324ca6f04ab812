#!/usr/bin/env bash
# Measures every row of PERFORMANCE.md's table with the release binary, one
# run per row, and prints each result as it comes. The bench starts the relay
# (and, with --baseline, the echo) in their own processes on 127.0.0.1; this
# script's own process is the load generator, and each row reports its CPU and
# which side was the limit. Other work on the machine (a compiler, even at
# nice 19) costs the echo a third of its rate: run it on a quiet machine.
# Runs for about 7 minutes, plus
# the 900,000-person fill (about 10 minutes) unless SKIP_FILL=1.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
R=target/release/cpis-relay
out=${OUT:-/tmp/cpis-perf}
mkdir -p "$out"

row() { echo; echo "== $1"; shift; "$@" | tee -a "$out/table.txt"; }

row "flagged searches, 4 x 64, against the echo" \
  $R bench --baseline --flagged-ratio 1.0 --connections 4 --in-flight 64 --duration 10
row "flagged searches, 4 x 64, memory store (no durability), against the echo" \
  $R bench --baseline --store memory --flagged-ratio 1.0 --connections 4 --in-flight 64 --duration 10
row "unflagged searches, 4 x 64, against the echo" \
  $R bench --baseline --flagged-ratio 0.0 --connections 4 --in-flight 64 --duration 10
row "flagged searches, 1 x 1, against the echo" \
  $R bench --baseline --flagged-ratio 1.0 --connections 1 --in-flight 1 --duration 10
row "flagged searches, 1 x 1, while 150,000-record FULL_REFRESHes run back to back" \
  $R bench --baseline --flagged-ratio 1.0 --connections 1 --in-flight 1 --duration 20 --refresh-records 150000
row "notification delivery at 1,000 searches/s" \
  $R bench --scenario delivery --rate 1000 --duration 10
row "FULL_REFRESH of 150,000 records over gRPC" \
  $R bench --scenario refresh --records 150000
if [ "${SKIP_FILL:-0}" != 1 ]; then
  rm -rf "$out/fill"
  row "fill: 900,000 people and 1,000,000 notifications" \
    $R bench --scenario fill --data-dir "$out/fill" --people 900000 --notifications 1000000
  row "start-up and memory of that store, in a fresh process" \
    $R bench --scenario startup --data-dir "$out/fill"
fi
