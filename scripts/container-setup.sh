#!/usr/bin/env bash
# Installs, or checks (--check), what the container image and the compose
# cluster need, saying each step (README, "Containers"):
#
#   podman, runc        build and run the images (runc: crun refuses some VMs'
#                       hybrid cgroups; deploy/containers/containers.conf)
#                                                   apt-get install podman runc
#   mmdebstrap          the local Debian base where no registry image can be
#                       pulled (scripts/image-build.sh --local)
#                                                   apt-get install mmdebstrap
#   netavark, aardvark-dns   container networks with names (compose)
#                                                   apt-get install netavark aardvark-dns
#   podman-compose      with --compose only: runs compose.yaml
#                                                   pip install podman-compose
#
# apt-get is used only as root; otherwise a missing package is named and the
# script fails. Nothing is started.
set -euo pipefail
cd "$(dirname "$0")/.."

check_only=false
compose=false
for arg in "$@"; do
  case "$arg" in
    --check) check_only=true ;;
    --compose) compose=true ;;
    *) echo "usage: scripts/container-setup.sh [--check] [--compose]" >&2; exit 64 ;;
  esac
done
say() { echo "container-setup: $*"; }
missing=0
updated=false

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

have() { # command...
  for command in "$@"; do command -v "$command" >/dev/null 2>&1 || return 1; done
}

if have podman runc mmdebstrap && [ -x /usr/lib/podman/netavark ] && [ -x /usr/lib/podman/aardvark-dns ] \
  || { apt_install podman runc mmdebstrap netavark aardvark-dns uidmap \
       && have podman runc mmdebstrap; }; then
  say "podman: $(podman --version), runc: $(command -v runc), mmdebstrap: $(command -v mmdebstrap)"
else
  say "MISSING: podman, runc or mmdebstrap (apt-get install podman runc mmdebstrap netavark aardvark-dns)"
  missing=1
fi

if $compose; then
  # The version tried with Debian bookworm's podman 4.3.
  if have podman-compose \
    || { ! $check_only && say "pip install podman-compose==1.6.0" \
         && { python3 -m pip install --quiet podman-compose==1.6.0 2>/dev/null \
              || python3 -m pip install --quiet --break-system-packages podman-compose==1.6.0; } \
         && have podman-compose; }; then
    say "podman-compose: $(podman-compose --version 2>/dev/null | head -n1)"
  else
    say "MISSING: podman-compose (pip install podman-compose)"
    missing=1
  fi
fi

if [ "$missing" != 0 ]; then
  say "not ready: install what is MISSING above (as root this script installs it)"
  exit 1
fi
say "ready"
