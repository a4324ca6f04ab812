#!/usr/bin/env bash
# A longer seeded fault run by hand (the CI form is 6 steps): two relay nodes
# and PostgreSQL on test hosts in network namespaces, nodes killed and
# restarted, cut off from the database, the database restarted, text no
# store keeps and a record the database refuses (quarantined, replayed),
# all under load; afterwards every answered search notified exactly once,
# the log gapless and `audit verify` clean. Needs root (namespaces).
#
#   scripts/fault-run.sh [STEPS] [RUNS]     default 40 steps, 3 runs
#   CPIS_FAULT_SEED=N scripts/fault-run.sh  replays one run
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-40}"
runs="${2:-3}"
[ -n "${CPIS_FAULT_SEED:-}" ] && runs=1
cargo nextest run --release --test it --no-run
for run in $(seq 1 "$runs"); do
  echo "fault run $run of $runs: $steps steps"
  CPIS_FAULT_STEPS="$steps" cargo nextest run --release --test it --no-capture \
    -E 'test(=faults::network::a_seeded_run_of_kills_cuts_restarts_and_poison_requests_loses_and_duplicates_nothing)' 2>&1 \
    | grep -E "fault run|step|PASS|FAIL|panicked|assert"
done
