#!/usr/bin/env bash
# The compose cluster's smoke test, by hand (README, "Containers"); about two
# minutes once the images are built, every wait bounded:
#   1. init step, `up` (Grafana excepted when its image cannot be pulled: here
#      no registry is reachable), and the time until all three nodes are ready;
#   2. upload Islington's (la-706) synthetic plans, search them on every node,
#      see each notification arrive at the example receiver (through `deliver`);
#   3. kill (SIGKILL) relay1, the node the agent is subscribed to, and search on;
#   4. kill the PostgreSQL primary, promote the standby, and search on;
#   5. check that every answered search of a flagged person was notified
#      exactly once (one notification id per search; redelivery of an id is
#      allowed, as at-least-once delivery says), then `down -v`.
#
#   scripts/compose-smoke.sh            the whole run, in the compose project cpis-smoke
#   scripts/compose-smoke.sh --keep     leave it running afterwards (podman-compose -p cpis-smoke down -v)
#
# Uses the same host ports as compose.yaml (127.0.0.1:50151-50153, 9190-9194):
# stop a cluster of your own first. Builds with scripts/image-build.sh --local
# and the local Debian base (mmdebstrap), so it needs no registry.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/container-env.sh
export DEBIAN_IMAGE=$LOCAL_DEBIAN_IMAGE CPIS_IMAGE_BINARY=host CPIS_VERSION CPIS_REVISION

keep=false
[ "${1:-}" = "--keep" ] && keep=true
project=cpis-smoke
compose() { podman-compose -p "$project" "$@"; }
say() { echo "compose-smoke: $*"; }
fail() { echo "compose-smoke: FAILED: $*" >&2; exit 1; }
work=$(mktemp -d)
cleanup() {
  local status=$?
  if ! $keep || [ "$status" != 0 ]; then
    [ "$status" != 0 ] && compose logs --tail 15 relay1 relay2 relay3 deliver 2>/dev/null | tail -n 60 >&2
    $keep || compose down -v -t 10 >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

scripts/container-setup.sh --compose
scripts/image-build.sh --local
# The other images (PostgreSQL, Prometheus, the receiver) are built by compose from the local base.
compose build postgres-primary prometheus receiver >/dev/null

ms() { date +%s%3N; }
# Polls until "$@" succeeds or $1 seconds pass; readiness has no event to wait on.
until_ok() { # seconds command...
  local deadline=$(($(date +%s) + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}
container() { echo "${project}_$1_1"; }
ready() { podman exec "$(container "$1")" cpis-relay probe http://127.0.0.1:9090/readyz; }
all_ready() { for node in "$@"; do ready "$node" || return 1; done; }

say "init step"
compose down -v -t 5 >/dev/null 2>&1 || true
compose --profile init run --rm init >/dev/null 2>&1
services=(postgres-primary postgres-standby relay1 relay2 relay3 receiver deliver prometheus)
if podman image exists "${GRAFANA_IMAGE:-docker.io/grafana/grafana-oss:11.3.0}" || podman pull -q "${GRAFANA_IMAGE:-docker.io/grafana/grafana-oss:11.3.0}" >/dev/null 2>&1; then
  services+=(grafana)
else
  say "Grafana's image cannot be pulled here: Grafana is not started (everything else is)"
fi
seconds() { printf '%d.%d s' $(($1 / 1000)) $(($1 % 1000 / 100)); }
synchronous() {
  [ "$(podman exec -u postgres "$(container postgres-primary)" psql -X -At -c \
    "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'" 2>/dev/null)" = sync ]
}
# The database first, then the rest: started together, the nodes restart
# (exit 1, `restart: on-failure`; podman restarts at once, with no backoff)
# until PostgreSQL answers, and a node whose migration waits for the standby
# holds the others at its lock (they exit after lock_timeout and restart).
start=$(ms)
compose up -d postgres-primary postgres-standby > "$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "compose up (database) failed"; }
until_ok 120 synchronous || fail "the standby was not streaming synchronously within 120 s"
database_ms=$(($(ms) - start))
compose up -d "${services[@]}" > "$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "compose up failed"; }
until_ok 120 all_ready relay1 relay2 relay3 || fail "the three nodes were not ready within 120 s"
up_ms=$(($(ms) - start))
say "compose up: primary and synchronous standby in $(seconds "$database_ms"), all three nodes ready $(seconds "$up_ms") after the first up"

client=$(container relay3)
podman exec "$client" cpis-relay synth --people 300 --out /tmp/people.csv >/dev/null
# Client verbs in a node's container: the node's CPIS_CA applies, its
# CPIS_CERT/CPIS_KEY (the server's) are overridden by --cert/--key.
as() { echo "--cert /secrets/$1.pem --key /secrets/$1.key"; }
# shellcheck disable=SC2046
podman exec "$client" cpis-relay upload /tmp/people.csv $(as la-706) --server https://relay2:50051 >/dev/null || [ $? = 2 ]
podman cp "$client:/tmp/people.csv" "$work/people.csv"
# Islington's people (la_ods_code 706 or a 706- local id), one search each.
mapfile -t people < <(awk -F, 'NR > 1 && $2 ~ /^706-/ { print $1 }' "$work/people.csv" | sort -u | head -n 60)
[ "${#people[@]}" -ge 45 ] || fail "only ${#people[@]} of Islington's people in the synthetic file"

answered=()   # user ids of answered searches of a flagged person
searched=0
search() { # index, nodes to try in order
  local index=$1; shift
  local nhs=${people[$index]} node output
  for node in "$@"; do
    # The same request id on every try: a retry on another node notifies nobody again.
    if output=$(podman exec "$client" cpis-relay search "$nhs" --user-id "smoke-$index" --user-name "Dr Smoke" \
      --request-id "smoke-$index" $(as ed-rr8) --server "https://$node:50051" --json 2>&1); then
      searched=$((searched + 1))
      if echo "$output" | grep -q '"flagged": *true'; then answered+=("smoke-$index"); fi
      return 0
    fi
  done
  fail "search $index was answered by none of $*"
}
# Distinct notification ids per user id, as the receiver printed them.
received() {
  podman logs "$(container receiver)" 2>/dev/null | python3 -c '
import json, sys, collections
ids = collections.defaultdict(set)
for line in sys.stdin:
    line = line.strip()
    if line.startswith("{") and "notification_id" in line:
        body = json.loads(line)
        ids[body["accessor"]["user_id"]].add(body["notification_id"])
for user, notification_ids in sorted(ids.items()):
    print(user, len(notification_ids))
' > "$work/received"
}
all_notified() {
  received
  for user in "${answered[@]}"; do grep -q "^$user 1$" "$work/received" || return 1; done
}

say "searching on every node"
start=$(ms)
for i in $(seq 0 14); do search "$i" "relay$((i % 3 + 1))" relay1 relay2 relay3; done
until_ok 60 all_notified || fail "not every answered search reached the receiver within 60 s"
say "${#answered[@]} of $searched searches flagged; each notified once at the receiver, the last $(($(ms) - start)) ms after the first search"

say "killing relay1 (the agent's node) with SIGKILL"
podman kill -s KILL "$(container relay1)" >/dev/null
killed=$(ms)
for i in $(seq 15 29); do search "$i" relay2 relay3; done
until_ok 90 all_notified || fail "after relay1 was killed, not every answered search reached the receiver within 90 s"
say "${#answered[@]} flagged searches so far, each notified once (the agent moved to another node), $(($(ms) - killed)) ms after the kill"

say "killing the PostgreSQL primary and promoting the standby"
podman kill -s KILL "$(container postgres-primary)" >/dev/null
for i in $(seq 30 37); do search "$i" relay2 relay3; done
podman exec -u postgres "$(container postgres-standby)" psql -X -q -c 'SELECT pg_promote()' >/dev/null
failover=$(ms)
until_ok 90 all_ready relay2 relay3 || fail "relay2 and relay3 were not ready on the promoted standby within 90 s"
say "relay2 and relay3 ready on the new primary $(($(ms) - failover)) ms after the promotion"
for i in $(seq 38 44); do search "$i" relay2 relay3; done
until_ok 90 all_notified || fail "after the failover, not every answered search reached the receiver within 90 s"
say "every search's notification at the receiver $(($(ms) - failover)) ms after the promotion"

received
extra=$(awk '$2 != 1' "$work/received")
[ -z "$extra" ] || fail "a search was notified under more than one id: $extra"
say "${#answered[@]} answered searches of flagged people (of $searched), each notified exactly once: nothing lost through a node kill and a failover"
if $keep; then say "left running: podman-compose -p $project down -v stops it"; fi
say "ok"
