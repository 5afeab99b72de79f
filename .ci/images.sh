#!/usr/bin/env bash
# What tests/deploy/test_images.py needs in CI (run as root, before `make test`):
# debootstrap, for deploy/images/build-base.sh (installed from Debian's packages if missing),
# and a Docker engine that answers. Exits non-zero, saying exactly what fails, when the
# engine does not answer: with DAGENGINE_REQUIRE_DOCKER=1 the tests would fail anyway, and
# this says why first.
set -euo pipefail

log() { echo "images.sh: $*" >&2; }

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  apt-get install -y -qq debootstrap >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    apt-get install -y -qq debootstrap >/dev/null
  }
fi
command -v docker >/dev/null 2>&1 || { log "the docker command is not installed"; exit 1; }
if ! out=$(docker info --format '{{.ServerVersion}} {{.Driver}}' 2>&1); then
  log "the Docker engine does not answer: $out"
  exit 1
fi
log "Docker engine $out; debootstrap $(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null || echo '?')"
