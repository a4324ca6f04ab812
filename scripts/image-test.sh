#!/usr/bin/env bash
# The container image's test (run by .ci/run): builds the image as
# `scripts/image-build.sh --local` does (no registry needed; the release build
# is cargo's, reused when up to date), then checks, each step bounded in time:
#   - the image: under 40 MB, labels with the version and the commit, user
#     10001, the data directory a volume, no shell;
#   - `demo` runs to completion in it;
#   - `serve` in it: its health check (the image's HEALTHCHECK, `cpis-relay
#     probe` of /healthz) passes, /readyz answers ready, the process is not
#     root's, and SIGTERM (podman stop) drains and exits 0 within the grace period.
# Without podman it skips, loudly; under CI=true it fails instead (.ci/run runs
# scripts/container-setup.sh first, which installs it as root).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/container-env.sh

if [ "$CPIS_ENGINE" != podman ]; then
  if [ "${CI:-}" = true ]; then
    echo "image-test: FAILED: podman is not installed (scripts/container-setup.sh installs it)" >&2
    exit 1
  fi
  echo "image-test: SKIPPED: podman is not installed (scripts/container-setup.sh installs it); the image was NOT tested" >&2
  exit 0
fi

max_bytes=40000000
name=cpis-image-test-$$
container=""
fail() { echo "image-test: FAILED: $*" >&2; [ -n "$container" ] && podman logs "$container" 2>&1 | tail -n 20 >&2; exit 1; }
step() { echo "image-test: $*"; }
cleanup() { # only what this run started
  [ -n "$container" ] && podman rm -f -t 0 "$container" >/dev/null 2>&1
  podman volume rm -f "$name-data" >/dev/null 2>&1 || true
}
trap cleanup EXIT

scripts/image-build.sh --local
image=$CPIS_IMAGE:latest

size=$(podman image inspect --format '{{.Size}}' "$image")
[ "$size" -lt "$max_bytes" ] || fail "the image is $size bytes, over $max_bytes"
step "size $size bytes (under $max_bytes)"
labels=$(podman image inspect --format '{{index .Config.Labels "org.opencontainers.image.version"}} {{index .Config.Labels "org.opencontainers.image.revision"}}' "$image")
[ "$labels" = "$CPIS_VERSION $CPIS_REVISION" ] || fail "labels say '$labels', not '$CPIS_VERSION $CPIS_REVISION'"
step "labels: version $CPIS_VERSION, revision $CPIS_REVISION"
[ "$(podman image inspect --format '{{.Config.User}}' "$image")" = 10001:10001 ] || fail "the image's user is not 10001:10001"
# (grep reads a variable, not a pipe: with pipefail an early exit of grep -q fails the writer.)
volumes=$(podman image inspect --format '{{json .Config.Volumes}}' "$image")
grep -q '"/var/lib/cpis-relay"' <<<"$volumes" || fail "/var/lib/cpis-relay is not a volume"
healthcheck=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$image")
grep -q 'probe' <<<"$healthcheck" || fail "no health check (built without --format docker?)"
if podman run --rm --entrypoint /bin/sh "$image" -c true >/dev/null 2>&1; then fail "the image has a shell"; fi
step "user 10001, /var/lib/cpis-relay a volume, a health check, no shell"

# The demo: a relay, uploads, searches and notifications, all inside the container.
start=$(date +%s)
demo_output=$(timeout 180 podman run --rm --name "$name-demo" "$image" demo --people 500 2>&1) \
  || { echo "$demo_output" | tail -n 20 >&2; fail "the demo did not complete (exit $?)"; }
grep -q 'acknowledged through sequence' <<<"$demo_output" \
  || { echo "$demo_output" | tail -n 20 >&2; fail "the demo showed no notification acknowledged"; }
step "demo completed in $(($(date +%s) - start)) s"

# serve, as an operator would start it (development certificates allowed explicitly).
container=$name
podman run -d --name "$container" -e CPIS_DEV_CERTS=true -v "$name-data:/var/lib/cpis-relay" "$image" >/dev/null
# Waits for the line serve prints once its listeners are bound (bounded by timeout).
exec {logs}< <(timeout 60 podman logs -f "$container" 2>&1)
logs_pid=$!
timeout 60 grep -q -m1 'cpis-relay listening' <&"$logs" || fail "serve did not start listening within 60 s"
kill "$logs_pid" 2>/dev/null || true
exec {logs}<&-
podman healthcheck run "$container" >/dev/null || fail "the image's health check failed on a running relay"
podman exec "$container" cpis-relay probe http://127.0.0.1:9090/readyz || fail "/readyz is not ready"
# The image's passwd names uid 10001 cpis-relay (podman reads /proc: the image has no ps).
user=$(podman top "$container" user | awk 'NR == 2 { print $1 }')
[ "$user" = cpis-relay ] || fail "serve runs as '$user', not cpis-relay (10001)"
step "serve: health check healthy, /readyz ready, running as $user (10001)"

start=$(date +%s%N)
podman stop -t 45 "$container" >/dev/null
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
status=$(podman inspect --format '{{.State.ExitCode}}' "$container")
[ "$status" = 0 ] || fail "serve exited $status after SIGTERM"
log=$(podman logs "$container" 2>&1)
grace_secs=$(grep -o 'draining grace_period_s=[0-9]*' <<<"$log" | grep -o '[0-9]*$') || fail "no draining in the log after SIGTERM"
[ "$elapsed_ms" -lt $((grace_secs * 1000)) ] || fail "SIGTERM took $elapsed_ms ms, past the $grace_secs s grace period"
step "SIGTERM: drained and exited 0 in $elapsed_ms ms (grace period $grace_secs s)"
echo "image-test: ok ($image, $size bytes)"
