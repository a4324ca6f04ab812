#!/usr/bin/env bash
# A national day of England on three relay nodes and one PostgreSQL with a
# synchronous standby, all on loopback (see PERFORMANCE.md, "A national day"):
#
#   scripts/national-day.sh                       the default day: 152 authorities,
#                                                 135,000 flagged people, 200,000
#                                                 searches in 10 minutes
#   scripts/national-day.sh --faults              the same day with every fault
#                                                 (root; in a network namespace the
#                                                 script makes and removes):
#                                                 05:00 node 1 cut off from the
#                                                 database for 30 s; 07:00 the
#                                                 synchronous standby away for 60 s;
#                                                 10:00 node 2 cut off from its
#                                                 clients for 30 s; 12:00-14:00 the
#                                                 nodes' links to the database
#                                                 100 ms +- 50 ms and 2 % lost; 16:00
#                                                 the primary killed and the standby
#                                                 promoted; node 3's clock 5 minutes
#                                                 ahead all day
#   scripts/national-day.sh --day-seconds 120 --day-searches 50000 --flagged 20000
#                                                 a shorter day (any `bench` option)
#
# Starts a fresh database (scripts/local-cluster.sh with no relay nodes, state
# in target/national-day), runs `cpis-relay bench --scenario national-day`
# (release build), which starts the nodes, the deliver agents and the load,
# prints its report (JSON on stdout) and stops every process it started; then
# stops the database. Exit status: the bench's (0 when no notification was lost).
set -euo pipefail
cd "$(dirname "$0")/.."
export CPIS_CLUSTER_DIR=${CPIS_CLUSTER_DIR:-$PWD/target/national-day}
PG_PORT=${CPIS_CLUSTER_PG_PORT:-55432}
export CPIS_CLUSTER_PG_PORT=$PG_PORT
FAULTS=0
ARGS=()
for arg in "$@"; do
  if [ "$arg" = --faults ]; then FAULTS=1; else ARGS+=("$arg"); fi
done

# The faulty day runs in a network namespace of its own (its loopback, its
# netfilter rules), made here and removed after: nothing touches the machine's.
if [ "$FAULTS" = 1 ] && [ -z "${CPIS_DAY_NETNS:-}" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "national-day.sh --faults needs root (a network namespace and netfilter rules)" >&2
    exit 64
  fi
  cargo build --release -q
  NS=cpis-day-$$
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  STATUS=0
  ip netns exec "$NS" env CPIS_DAY_NETNS="$NS" "$0" "$@" || STATUS=$?
  ip netns del "$NS"
  exit "$STATUS"
fi
if [ "$FAULTS" = 1 ]; then
  ARGS=(--network-faults "${ARGS[@]}")
  case " ${ARGS[*]} " in *" --skew-last-node-secs "*) ;; *) ARGS+=(--skew-last-node-secs 300) ;; esac
fi

# The database's own messages go to stderr: stdout is the report.
if [ -f "$CPIS_CLUSTER_DIR/primary/postmaster.pid" ]; then scripts/local-cluster.sh --stop >&2; fi
rm -rf "$CPIS_CLUSTER_DIR"
CPIS_CLUSTER_NODES=0 scripts/local-cluster.sh >&2
FAULT_PID=
finish() {
  if [ -n "$FAULT_PID" ]; then kill "$FAULT_PID" 2>/dev/null || true; fi
  scripts/local-cluster.sh --stop >&2
}
trap finish EXIT
cargo build --release -q
STORE="postgres://cpis@127.0.0.1:$PG_PORT,127.0.0.1:$((PG_PORT + 1))/cpis?target_session_attrs=read-write&sslmode=disable"
LOG=$CPIS_CLUSTER_DIR/bench.log
: > "$LOG"

if [ "$FAULTS" = 1 ]; then
  BIN=${CPIS_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
  as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  # The bench prints "HH:00" as each hour of the day starts.
  wait_for_hour() { until grep -q "^$1:00 " "$LOG"; do sleep 0.2; done; }
  (
    wait_for_hour 07
    echo "fault: the synchronous standby is away for 60 s" >&2
    as_pg "$BIN/pg_ctl" -w -m immediate -D "$CPIS_CLUSTER_DIR/standby" stop >/dev/null
    sleep 60
    as_pg "$BIN/pg_ctl" -w -D "$CPIS_CLUSTER_DIR/standby" -l "$CPIS_CLUSTER_DIR/standby.log" start >/dev/null
    echo "fault: the standby is back" >&2
    wait_for_hour 16
    echo "fault: the primary is killed; the standby is promoted" >&2
    as_pg "$BIN/pg_ctl" -w -m immediate -D "$CPIS_CLUSTER_DIR/primary" stop >/dev/null
    as_pg "$BIN/pg_ctl" -w -D "$CPIS_CLUSTER_DIR/standby" promote >/dev/null
    echo "fault: the standby is the primary now" >&2
  ) &
  FAULT_PID=$!
fi
target/release/cpis-relay bench --scenario national-day --store "$STORE" "${ARGS[@]}" 2> >(tee -a "$LOG" >&2)
