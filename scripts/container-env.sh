# Sourced by the container scripts (image-build.sh, image-test.sh,
# compose-smoke.sh): which engine, its settings, the image's labels, and the
# local Debian base for machines that reach no container registry.
#
#   CPIS_ENGINE     podman (default when installed) or docker
#   DEBIAN_IMAGE    the Debian bookworm base of every image built here
#                   (default: the public debian:bookworm-slim; with --local, a
#                   base made by mmdebstrap from Debian's package mirror)

if [ -z "${CPIS_ENGINE:-}" ]; then
  if command -v podman >/dev/null 2>&1; then CPIS_ENGINE=podman
  elif command -v docker >/dev/null 2>&1; then CPIS_ENGINE=docker
  else CPIS_ENGINE=""
  fi
fi
if [ "$CPIS_ENGINE" = podman ]; then
  # runc, cgroupfs and open-file limits this kind of VM allows (see the file).
  export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/containers/containers.conf}
  # HEALTHCHECK is kept only in the docker image format.
  export BUILDAH_FORMAT=docker
fi

CPIS_VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
CPIS_REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# A tree with changes not committed is not the commit it names.
if [ "$CPIS_REVISION" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  CPIS_REVISION="$CPIS_REVISION-dirty"
fi
CPIS_IMAGE=${CPIS_IMAGE:-localhost/cpis-relay}
LOCAL_DEBIAN_IMAGE=localhost/cpis-debian:bookworm

# Makes $LOCAL_DEBIAN_IMAGE (once): a minimal Debian bookworm root file system
# from Debian's package mirror (mmdebstrap), imported as an image. It stands in
# for debian:bookworm-slim where no registry is reachable; binutils is there so
# that the relay image's build needs no network. It also trusts the CAs this
# host added (/usr/local/share/ca-certificates, such as a TLS-inspecting
# proxy's), so that pip in an image build reaches PyPI as the host does; the
# relay image itself carries only Debian's Mozilla roots (see Containerfile).
local_debian_base() {
  if $CPIS_ENGINE image exists "$LOCAL_DEBIAN_IMAGE" 2>/dev/null; then
    return 0
  fi
  local mirror=${CPIS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
  local tar
  tar=$(mktemp --suffix=.tar)
  echo "containers: making $LOCAL_DEBIAN_IMAGE with mmdebstrap from $mirror"
  local hooks=()
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    hooks=(--customize-hook='copy-in /usr/local/share/ca-certificates /usr/local/share'
      --customize-hook='chroot "$1" update-ca-certificates >/dev/null')
  fi
  mmdebstrap --quiet --variant=minbase --include=ca-certificates,binutils "${hooks[@]}" bookworm "$tar" "$mirror"
  $CPIS_ENGINE import --change 'CMD ["/bin/bash"]' "$tar" "$LOCAL_DEBIAN_IMAGE" >/dev/null
  rm -f "$tar"
}
