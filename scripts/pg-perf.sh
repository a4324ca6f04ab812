#!/usr/bin/env bash
# The PostgreSQL rows of PERFORMANCE.md, with the release binary: a private
# PostgreSQL (Debian's package, as the `postgres` user when run as root) on
# 127.0.0.1 in a temporary directory, on the same 2 cores as everything else.
# Each row is one out-of-process bench run; the script stops everything it
# started. About 10 minutes, plus the 900,000-person fill unless SKIP_FILL=1.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release
R=$PWD/target/release/cpis-relay
out=${OUT:-/tmp/cpis-pg-perf}
mkdir -p "$out"
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PORT=${PG_PORT:-56432}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
PGDIR=$(mktemp -d /tmp/cpis-pg-perf.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$PGDIR"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$BIN/pg_ctl" -w -m fast -D "$PGDIR/data" stop >/dev/null 2>&1 || true
  rm -rf "$PGDIR"
}
trap cleanup EXIT
as_pg "$BIN/initdb" -U cpis --auth=trust -E UTF8 --no-locale -D "$PGDIR/data" >/dev/null
printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nmax_connections = 200\nshared_buffers = 256MB\n" \
  "$PORT" "$PGDIR" >> "$PGDIR/data/postgresql.conf"
as_pg "$BIN/pg_ctl" -w -D "$PGDIR/data" -l "$PGDIR/log" start >/dev/null
db() { as_pg "$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U cpis -d postgres -c "$1" >/dev/null; }
url() { echo "postgres://cpis@127.0.0.1:$PORT/$1?sslmode=disable"; }

row() { echo; echo "== $1"; shift; "$@" | tee -a "$out/table.txt"; }

db "CREATE DATABASE load"
row "PostgreSQL: flagged searches, 4 x 64, against the echo" \
  $R bench --baseline --store "$(url load)" --flagged-ratio 1.0 --connections 4 --in-flight 64 --duration 10
row "PostgreSQL: flagged searches, 1 x 1, against the echo" \
  $R bench --baseline --store "$(url load)" --flagged-ratio 1.0 --connections 1 --in-flight 1 --duration 10

# Two relay nodes: searches through B, subscribers on A.
db "CREATE DATABASE delivery"
certs=$PWD/certs/dev
$R certs init --out "$certs" >/dev/null 2>&1 || true
for node in a b; do
  mkdir -p "$out/node-$node"
  $R serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --store "$(url delivery)" --certs-dir "$certs" \
    --data-dir "$out/node-$node" --search-rate-per-second 0 --max-upload-records 2000000 \
    > "$out/node-$node.out" 2> "$out/node-$node.log" &
  PIDS+=($!)
done
for node in a b; do
  for _ in $(seq 1 300); do grep -q "listening" "$out/node-$node.out" && break; sleep 0.1; done
done
grpc() { sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$out/node-$1.out" | sed 's/127.0.0.1/localhost/'; }
row "PostgreSQL: notification delivery across nodes (search on B, subscriber on A) at 1,000 searches/s" \
  $R bench --scenario delivery --rate 1000 --duration 10 --server "https://$(grpc b)" --subscribe-server "https://$(grpc a)"

if [ "${SKIP_FILL:-0}" != 1 ]; then
  db "CREATE DATABASE fill"
  row "PostgreSQL: fill 900,000 people and 100,000 notifications" \
    $R bench --scenario fill --store "$(url fill)" --data-dir "$out" --people 900000 --notifications 100000
  row "PostgreSQL: start-up of a node with those 900,000 people, in a fresh process" \
    $R bench --scenario startup --store "$(url fill)" --data-dir "$out"
fi
