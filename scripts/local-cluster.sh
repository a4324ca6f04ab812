#!/usr/bin/env bash
# Several relay nodes on one PostgreSQL, all on loopback, for trying the
# multi-node deployment by hand:
#   - a PostgreSQL primary and a synchronous streaming standby (Debian's
#     postgresql package; run as the `postgres` user when started as root),
#   - three `cpis-relay serve` nodes on the multi-host URL
#     (target_session_attrs=read-write, so they follow a failover).
#
#   scripts/local-cluster.sh          start it (state in target/local-cluster)
#   scripts/local-cluster.sh --stop   stop exactly what it started
#
# Environment: CPIS_CLUSTER_DIR (state directory), CPIS_PG_BIN (directory of
# initdb/pg_ctl), CPIS_CLUSTER_PG_PORT (primary; the standby takes the next),
# CPIS_CLUSTER_NODES (relay nodes, default 3; 0 starts the database only, as
# scripts/national-day.sh does, whose bench starts its own nodes).
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${CPIS_CLUSTER_DIR:-$PWD/target/local-cluster}
PG_PORT=${CPIS_CLUSTER_PG_PORT:-55432}
STANDBY_PORT=$((PG_PORT + 1))
NODES=${CPIS_CLUSTER_NODES:-3}

pg_bin() {
  if [ -n "${CPIS_PG_BIN:-}" ]; then echo "$CPIS_PG_BIN"; return; fi
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "PostgreSQL is not installed: apt-get install postgresql (or set CPIS_PG_BIN)" >&2
    exit 69
  fi
  echo "$bin"
}

# PostgreSQL refuses to run as root: as root, its commands run as `postgres`.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop() {
  local bin
  bin=$(pg_bin)
  if [ -f "$STATE/relays.pid" ]; then
    while read -r pid; do
      if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        # Graceful: up to the relay's grace period.
        for _ in $(seq 1 250); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      fi
    done < "$STATE/relays.pid"
    rm -f "$STATE/relays.pid"
  fi
  for cluster in standby primary; do
    if [ -f "$STATE/$cluster/postmaster.pid" ]; then
      as_pg "$bin/pg_ctl" -w -m fast -D "$STATE/$cluster" stop >/dev/null
    fi
  done
  echo "stopped what $STATE held (its data stays; remove the directory to start afresh)"
}

if [ "${1:-}" = "--stop" ]; then
  stop
  exit 0
fi
if [ -f "$STATE/relays.pid" ]; then
  echo "already running (state in $STATE); scripts/local-cluster.sh --stop first" >&2
  exit 64
fi

BIN=$(pg_bin)
mkdir -p "$STATE"
if [ "$(id -u)" = 0 ]; then chown postgres: "$STATE"; fi

if [ ! -d "$STATE/primary" ]; then
  as_pg "$BIN/initdb" -U cpis --auth=trust -E UTF8 --no-locale -D "$STATE/primary" >/dev/null
  cat >> "$STATE/primary/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$STATE'
wal_level = replica
max_wal_senders = 4
max_connections = 200
synchronous_standby_names = ''
EOF
  echo "host replication cpis 127.0.0.1/32 trust" >> "$STATE/primary/pg_hba.conf"
  as_pg "$BIN/pg_ctl" -w -D "$STATE/primary" -l "$STATE/primary.log" start >/dev/null
  as_pg "$BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U cpis -d postgres -c "CREATE DATABASE cpis"
  as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U cpis -R -X stream -c fast -D "$STATE/standby"
  cat >> "$STATE/standby/postgresql.conf" <<EOF
port = $STANDBY_PORT
# pg_basebackup -R wrote primary_conninfo; the walreceiver names itself after cluster_name.
cluster_name = 'standby1'
EOF
  as_pg "$BIN/pg_ctl" -w -D "$STATE/standby" -l "$STATE/standby.log" start >/dev/null
  # From here a commit waits until the standby has it too.
  sed -i "s/^synchronous_standby_names = ''/synchronous_standby_names = 'standby1'/" "$STATE/primary/postgresql.conf"
  as_pg "$BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U cpis -d postgres -c "SELECT pg_reload_conf()" >/dev/null
else
  as_pg "$BIN/pg_ctl" -w -D "$STATE/primary" -l "$STATE/primary.log" start >/dev/null
  as_pg "$BIN/pg_ctl" -w -D "$STATE/standby" -l "$STATE/standby.log" start >/dev/null
fi

STORE="postgres://cpis@127.0.0.1:$PG_PORT,127.0.0.1:$STANDBY_PORT/cpis?target_session_attrs=read-write&sslmode=disable"
: > "$STATE/relays.pid"
if [ "$NODES" = 0 ]; then
  echo "Running: PostgreSQL primary 127.0.0.1:$PG_PORT with synchronous standby 127.0.0.1:$STANDBY_PORT"
  echo "  --store '$STORE'"
  exit 0
fi
cargo build -q
RELAY=$PWD/target/debug/cpis-relay
# One access log key for the deployment, outside the nodes' data directories
# (a node with another key refuses to start).
[ -e "$STATE/access-log.key" ] || "$RELAY" audit init-key --key "$STATE/access-log.key" >/dev/null
for node in $(seq 1 "$NODES"); do
  mkdir -p "$STATE/node$node"
  "$RELAY" serve --listen "127.0.0.1:5005$node" --admin-listen "127.0.0.1:909$node" \
    --store "$STORE" --data-dir "$STATE/node$node" --certs-dir "$STATE/certs" --log-key "$STATE/access-log.key" \
    > "$STATE/node$node.out" 2> "$STATE/node$node.log" &
  echo $! >> "$STATE/relays.pid"
  for _ in $(seq 1 300); do
    grep -q "cpis-relay listening" "$STATE/node$node.out" 2>/dev/null && break
    kill -0 "$(tail -1 "$STATE/relays.pid")" 2>/dev/null || { cat "$STATE/node$node.log" >&2; stop; exit 70; }
    sleep 0.1
  done
done

cat <<EOF
Running: PostgreSQL primary 127.0.0.1:$PG_PORT with synchronous standby 127.0.0.1:$STANDBY_PORT,
and three relay nodes (gRPC 127.0.0.1:50051-50053, admin 127.0.0.1:9091-9093), all on
  --store '$STORE'
State, logs and development certificates: $STATE

Try it (any node serves any request; notifications reach subscribers on every node):
  $RELAY synth --people 200 --out $STATE/people.csv
  $RELAY upload $STATE/people.csv --as la-706 --server https://localhost:50051 --certs-dir $STATE/certs
  $RELAY subscribe --as la-706 --server https://localhost:50052 --certs-dir $STATE/certs
  $RELAY search \$(grep -m1 ',706-' $STATE/people.csv | cut -d, -f1) --user-id u1 --user-name 'Dr One' --as ed-rr8 --server https://localhost:50053 --certs-dir $STATE/certs
  $RELAY top --admin 127.0.0.1:9091
Fail something:
  kill -KILL \$(sed -n 1p $STATE/relays.pid)                                  # a relay node
  runuser -u postgres -- $BIN/pg_ctl -m immediate -D $STATE/primary stop     # the primary ...
  runuser -u postgres -- $BIN/pg_ctl -D $STATE/standby promote               # ... and fail over
Stop: scripts/local-cluster.sh --stop
EOF
