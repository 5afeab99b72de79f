#!/usr/bin/env bash
# Build a minimal Debian base image with debootstrap and `docker import` it: for machines
# with a Docker engine but no registry to pull `python:3.11-slim-bookworm` from.
#
#   deploy/images/build-base.sh [--force]
#
# The image is Debian's `minbase` variant plus python3 (3.11 on bookworm, which the abi3
# wheel supports), python3-venv and ca-certificates, with a virtual environment at /opt/venv
# first on PATH: `pip install` in deploy/Dockerfile lands there exactly as it lands in the
# public python image's /usr/local. Documentation, man pages, locales and apt's lists are
# removed. Needs root and debootstrap (`apt-get install debootstrap`); reaches the Debian
# mirror only.
#
# Environment:
#   DAGENGINE_BASE_IMAGE   the tag to build (default dagengine-base:bookworm)
#   DAGENGINE_IMAGE_CACHE  folder of the cached root filesystem tarball (default
#                          ~/.cache/dagengine/images); a rerun imports it without debootstrap
#   DEBIAN_MIRROR          the mirror (default http://deb.debian.org/debian)
#   DEBIAN_RELEASE         the suite (default bookworm)
#   DAGENGINE_BASE_PACKAGES more Debian packages, comma-separated (tests/deploy/test_images.py
#                          makes its PostgreSQL server image so: postgresql-15)
#
# Idempotent: nothing is done when the image exists (--force, or DAGENGINE_FORCE_BASE=1,
# builds it again), and the tarball is reused while the package list is unchanged.
set -euo pipefail

log() { echo "build-base.sh: $*" >&2; }
die() { log "$*"; exit 1; }

FORCE="${DAGENGINE_FORCE_BASE:-0}"
case "${1:-}" in
  --force) FORCE=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

IMAGE="${DAGENGINE_BASE_IMAGE:-dagengine-base:bookworm}"
CACHE="${DAGENGINE_IMAGE_CACHE:-$HOME/.cache/dagengine/images}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
RELEASE="${DEBIAN_RELEASE:-bookworm}"
PACKAGES="python3,python3-venv,ca-certificates${DAGENGINE_BASE_PACKAGES:+,$DAGENGINE_BASE_PACKAGES}"
# The script's text and the package list make the cache key: a change to either rebuilds.
KEY=$( (cat "$0"; echo "$PACKAGES") | sha256sum | cut -c1-12)
NAME="${IMAGE//[^A-Za-z0-9._-]/_}"
TARBALL="$CACHE/rootfs-$NAME-$KEY.tar"

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info failed)"

if [ "$FORCE" != "1" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE exists (--force builds it again)"
  exit 0
fi

if [ "$FORCE" = "1" ] || [ ! -s "$TARBALL" ]; then
  [ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  mkdir -p "$CACHE"
  root=$(mktemp -d /tmp/dagengine-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  log "debootstrap --variant=minbase $RELEASE ($PACKAGES) from $MIRROR"
  debootstrap --variant=minbase --include="$PACKAGES" "$RELEASE" "$root" "$MIRROR" \
    >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; die "debootstrap failed (log: $root.log)"; }
  rm -f "$root.log"

  # The virtual environment the Dockerfile's `pip install` fills (Debian's own python3 is
  # "externally managed": pip refuses to install into it).
  chroot "$root" /usr/bin/python3 -m venv /opt/venv
  # pip stays (the Dockerfile installs with it); setuptools, which venv adds, is for building
  # sdists, and pip fetches its own for that.
  rm -rf "$root"/opt/venv/lib/python3*/site-packages/{setuptools,pkg_resources,_distutils_hack} \
    "$root"/opt/venv/lib/python3*/site-packages/setuptools-*.dist-info \
    "$root"/opt/venv/lib/python3*/site-packages/distutils-precedence.pth

  # Keep dpkg's and apt's tools (images built FROM this one may install packages), drop
  # what a container never reads.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/lintian "$root"/usr/share/common-licenses "$root"/tmp/* "$root"/root/.cache
  find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  # Debian's license statements are kept (copyright files), as the licenses ask.
  # apt's dpkg exclusions keep later `apt-get install`s of derived images as lean.
  cat >"$root/etc/dpkg/dpkg.cfg.d/01-dagengine-nodoc" <<'CFG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
CFG
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://security.debian.org/debian-security %s-security main\n' \
    "$MIRROR" "$RELEASE" "$MIRROR" "$RELEASE" "$RELEASE" >"$root/etc/apt/sources.list"
  : >"$root/etc/hostname"
  : >"$root/etc/resolv.conf"
  rm -f "$root"/etc/machine-id "$root"/var/lib/dbus/machine-id

  log "packing the root filesystem into $TARBALL"
  tar --numeric-owner --xattrs -C "$root" -cf "$TARBALL.part" .
  mv "$TARBALL.part" "$TARBALL"
  # Older tarballs of other keys are stale.
  find "$CACHE" -maxdepth 1 -name "rootfs-$NAME-*.tar" ! -name "${TARBALL##*/}" -delete
else
  log "reusing $TARBALL"
fi

log "docker import -> $IMAGE"
docker import \
  --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "debootstrap --variant=minbase $RELEASE + $PACKAGES" \
  "$TARBALL" "$IMAGE" >/dev/null
log "$IMAGE: $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"
