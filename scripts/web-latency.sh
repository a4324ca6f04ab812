#!/usr/bin/env bash
# Latency of the browser view's pages at 1 x 1 (one client, one keep-alive
# connection, one request at a time) on this machine: a release `serve` on the
# embedded store in a temporary directory (every flagged search's notification
# is durable before the page answers), 200 synthetic plans of Islington (706),
# then N requests per page with curl, each timed by curl (time_total). Prints
# p50, p99 and the worst per page. Not a test: nothing here asserts a time.
#
#   scripts/web-latency.sh [N]        (default 2000; needs a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-2000}"
binary="target/release/cpis-relay"
[ -x "$binary" ] || { echo "build it first: cargo build --release" >&2; exit 1; }

work="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

"$binary" certs init --out "$work/certs" >/dev/null
mkfifo "$work/stdout"
"$binary" serve --certs-dir "$work/certs" --data-dir "$work/data" --listen 127.0.0.1:0 \
  --admin-listen 127.0.0.1:0 --web-listen 127.0.0.1:0 --search-rate-per-second 0 \
  >"$work/stdout" 2>"$work/err" &
server=$!
exec 3<"$work/stdout"
# The one line serve prints once every listener is bound.
read -r listening <&3 || { cat "$work/err" >&2; exit 1; }
grpc="$(grep -o 'grpc=[0-9.:]*' <<<"$listening" | cut -d: -f2)"
web="https://localhost:$(grep -o 'web=[0-9.:]*' <<<"$listening" | cut -d: -f2)"
"$binary" synth --people 400 --out "$work/people.csv" >/dev/null 2>&1
"$binary" upload "$work/people.csv" --server "https://localhost:$grpc" --as la-706 --certs-dir "$work/certs" >/dev/null 2>&1
flagged="$(awk -F, '$16 == "706" { print $1; exit }' "$work/people.csv")"

as() { # USER: curl options presenting that user's certificate
  echo "--cacert $work/certs/ca.pem --cert $work/certs/$1.pem --key $work/certs/$1.key"
}
csrf() { # USER PATH: the CSRF token of a page's first form
  # shellcheck disable=SC2046
  curl -s $(as "$1") "$web$2" | grep -o 'name="csrf" value="[^"]*"' | head -1 | cut -d'"' -f4
}
# measure NAME USER METHOD PATH [FORM]: N requests over one connection, timed by curl.
measure() {
  local name="$1" user="$2" method="$3" path="$4" form="${5:-}" config="$work/curl.conf"
  : >"$config"
  for _ in $(seq "$count"); do printf 'url = "%s%s"\noutput = "/dev/null"\n' "$web" "$path" >>"$config"; done
  local extra=()
  if [ "$method" = POST ]; then extra=(--data "$form" -H "Origin: $web"); fi
  # shellcheck disable=SC2046
  curl -s $(as "$user") "${extra[@]}" -w '%{http_code} %{time_total}\n' -K "$config" >"$work/times"
  if grep -qv '^200 ' "$work/times"; then echo "$name: not every answer was 200: $(grep -v '^200 ' "$work/times" | head -1)" >&2; exit 1; fi
  awk '{ print $2 * 1000 }' "$work/times" | sort -n | awk -v name="$name" -v n="$count" '
    { t[NR] = $1 }
    END { printf "%-34s n=%d  p50 %6.2f ms  p99 %6.2f ms  max %6.2f ms\n", name, n, t[int(n * 0.50)], t[int(n * 0.99)], t[n] }'
}

token="$(csrf user-ed-rr8 /card)"
measure "GET /card (empty form)" user-ed-rr8 GET /card
measure "POST /card (flagged, notifies)" user-ed-rr8 POST /card "nhs_number=$flagged&care_setting=EmergencyDepartment&csrf=$token"
measure "GET /inbox (up to 500 shown)" user-la-706 GET /inbox
token="$(csrf user-auditor /audit)"
measure "POST /audit (person's access log)" user-auditor POST /audit "nhs_number=$flagged&csrf=$token"
measure "GET /ops" user-ed-rr8 GET /ops
