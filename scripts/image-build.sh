#!/usr/bin/env bash
# Builds the container image from this checkout: localhost/cpis-relay:VERSION
# and :latest, labelled with the version and the commit (README, "Containers").
#
#   scripts/image-build.sh           compile in the public Rust image (BINARY=source)
#   scripts/image-build.sh --local   no registry needed: the base is made with
#                                    mmdebstrap, the binary by this host's
#                                    `cargo build --release --locked` (BINARY=host)
#
# Needs podman (or docker: CPIS_ENGINE=docker); scripts/container-setup.sh
# installs podman, runc and mmdebstrap. Prints the image's size.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/container-env.sh

local_build=false
[ "${1:-}" = "--local" ] && local_build=true
if [ -z "$CPIS_ENGINE" ]; then
  echo "image-build: neither podman nor docker is installed (scripts/container-setup.sh installs podman)" >&2
  exit 69
fi

# The labels also as --label: podman 4.3's buildah reuses a cached LABEL step
# even when the ARG it names changed, which would label a new build with an
# old commit (the image test caught it).
args=(--build-arg "VERSION=$CPIS_VERSION" --build-arg "REVISION=$CPIS_REVISION"
  --label "org.opencontainers.image.version=$CPIS_VERSION" --label "org.opencontainers.image.revision=$CPIS_REVISION")
if $local_build; then
  local_debian_base
  echo "image-build: cargo build --release --locked"
  cargo build --release --locked
  # Built on this host: its Debian must be the base's release, or the libraries would not match.
  if ! grep -q 'VERSION_CODENAME=bookworm' /etc/os-release; then
    echo "image-build: --local copies this host's binary into a Debian bookworm image; this host is not bookworm" >&2
    exit 64
  fi
  args+=(--build-arg BINARY=host --build-arg "DEBIAN_IMAGE=$LOCAL_DEBIAN_IMAGE")
fi
[ -n "${RUST_IMAGE:-}" ] && args+=(--build-arg "RUST_IMAGE=$RUST_IMAGE")
[ -n "${DEBIAN_IMAGE:-}" ] && ! $local_build && args+=(--build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE")

start=$(date +%s%N)
$CPIS_ENGINE build "${args[@]}" -t "$CPIS_IMAGE:$CPIS_VERSION" -t "$CPIS_IMAGE:latest" -f Containerfile .
end=$(date +%s%N)
size=$($CPIS_ENGINE image inspect --format '{{.Size}}' "$CPIS_IMAGE:latest")
awk -v image="$CPIS_IMAGE" -v version="$CPIS_VERSION" -v revision="$CPIS_REVISION" -v size="$size" -v ns=$((end - start)) \
  'BEGIN { printf "image-build: %s:latest (%s, revision %s): %.1f MB (%d bytes); image build %.1f s\n", image, version, revision, size / 1e6, size, ns / 1e9 }'
