#!/usr/bin/env bash
# How soon a local authority confirms its notifications in the witnessed
# access log (issue 28's target: within two checkpoint intervals at 1,000
# searches/s), with the release binary, each part its own process on
# 127.0.0.1: a witness (`cpis-relay witness`), a relay on the embedded store
# pushing its checkpoints to it (checkpoint_interval_secs 5, the default),
# la-706's delivery agent (outbox sink, log check every 5 s trusting only
# checkpoints the witness cosigned), and `bench --scenario delivery` pacing
# flagged searches at RATE/s for DURATION s. Then it waits (at most 120 s)
# for the agent to confirm everything and prints the agent's log-check
# metrics: cpis_deliver_log_confirm_seconds is from delivery to proof.
# Stops everything it started. RATE (1000) and DURATION (30) from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release
R=$PWD/target/release/cpis-relay
RATE=${RATE:-1000}
DURATION=${DURATION:-30}
out=$(mktemp -d /tmp/cpis-log-check-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$out"
}
trap cleanup EXIT
# The first line of a process's stdout that holds "$2", waited for (60 s at most).
wait_line() {
  for _ in $(seq 1 600); do grep -q "$2" "$1" 2>/dev/null && { grep -m1 "$2" "$1"; return; }; sleep 0.1; done
  echo "no '$2' in $1" >&2; exit 1
}
word() { tr ' ' '\n' | sed -n "s/^$1=//p" | head -1; }

$R certs init --out "$out/certs" >/dev/null
log_key=$($R audit init-key --key "$out/access-log.key" | tail -1)
witness_key=$($R witness init-key --name witness.test/authority --key "$out/witness.key" | tail -1)
cat > "$out/witness.toml" <<TOML
name = "witness.test/authority"
key = "$out/witness.key"
state_dir = "$out/witness-state"
listen = "127.0.0.1:0"
logs = ["$log_key"]
TOML
$R witness --config "$out/witness.toml" > "$out/witness.out" 2> "$out/witness.log" &
PIDS+=($!)
witness_url=http://$(wait_line "$out/witness.out" "http=" | word http)

$R serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --certs-dir "$out/certs" --data-dir "$out/data" \
  --log-key "$out/access-log.key" --witness "$witness_key@$witness_url" --search-rate-per-second 0 \
  > "$out/relay.out" 2> "$out/relay.log" &
PIDS+=($!)
grpc=$(wait_line "$out/relay.out" "grpc=" | word grpc | sed 's/127.0.0.1/localhost/')

mkdir -p /dev/shm/cpis-log-check-bench-$$
$R deliver --server "https://$grpc" --as la-706 --certs-dir "$out/certs" --admin-listen 127.0.0.1:0 \
  --outbox /dev/shm/cpis-log-check-bench-$$ --log-state-dir "$out/log-check" \
  --log-verifier-key "$log_key" --witness-key "$witness_key" \
  > "$out/deliver.out" 2> "$out/deliver.log" &
PIDS+=($!)
trap 'cleanup; rm -rf /dev/shm/cpis-log-check-bench-$$' EXIT
admin=$(wait_line "$out/deliver.out" "admin=" | word admin)

echo "== $RATE flagged searches/s for $DURATION s (la-706's and la-855's people), witnessed checkpoints every 5 s"
$R bench --scenario delivery --rate "$RATE" --duration "$DURATION" --server "https://$grpc" --certs-dir "$out/certs"
metric() { curl -s "http://$admin/metrics" | awk -v name="$1" '$1 == name { print $2 }'; }
for _ in $(seq 1 1200); do
  confirmed=$(metric cpis_deliver_log_confirmed_total)
  unconfirmed=$(metric cpis_deliver_log_unconfirmed)
  [ "${unconfirmed:-1}" = 0 ] && [ "${confirmed:-0}" != 0 ] && break
  sleep 0.1
done
echo "== the agent's log check ($(uptime | sed 's/.*load/load/'))"
curl -s "http://$admin/metrics" | grep -E '^cpis_deliver_(log_|delivered_total\{sink="outbox"\})' | grep -v ' 0$' || true
curl -s "http://$admin/healthz"

# COST=1: what witnessing costs the flagged search. `bench` starts its own
# relay (default logging, the same log key), alternately without and with
# the witness (CPIS_WITNESSES), each against the bare echo in the same run.
if [ "${COST:-0}" = 1 ]; then
  for round in 1 2; do
    for witnessed in no yes; do
      echo "== round $round, witnessed: $witnessed ($(uptime | sed 's/.*load/load/'))"
      if [ $witnessed = yes ]; then export CPIS_WITNESSES="$witness_key@$witness_url"; else unset CPIS_WITNESSES; fi
      CPIS_LOG_KEY="$out/access-log.key" $R bench --baseline --flagged-ratio 1.0 --connections 4 --in-flight 64 \
        --duration 10 --certs-dir "$out/certs" | grep -E '^(relay|echo) |relay / echo' || true
    done
  done
fi
