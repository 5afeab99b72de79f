#!/usr/bin/env bash
# Build the dagengine image on a machine with a Docker engine and no registry:
#
#   deploy/images/build.sh            # -> dagengine:local (override with DAGENGINE_IMAGE)
#
# 1. the release wheel (`maturin build --release`, under flock /tmp/dagengine-build.lock, so
#    that it never runs beside another build of the workspace); DAGENGINE_WHEEL=path uses a
#    wheel built already instead;
# 2. the wheelhouse, deploy/images/wheelhouse/: that wheel and the wheels of its dependencies
#    and of EXTRAS for CPython 3.11 on manylinux x86_64, downloaded on this host (containers
#    never reach an index);
# 3. the base image (deploy/images/build-base.sh, started in the background at once, beside
#    steps 1 and 2: debootstrap mostly downloads and unpacks; skipped when it
#    exists);
# 4. deploy/Dockerfile's target `prebuilt` on that base, with the legacy builder or BuildKit,
#    from a context holding only the wheelhouse and the health check.
#
# Environment: DAGENGINE_IMAGE (dagengine:local), DAGENGINE_BASE_IMAGE
# (dagengine-base:bookworm), DAGENGINE_IMAGE_EXTRAS (postgres: the PostgreSQL store; add
# kubernetes for DISCOVERY=kubernetes, ~125 MB more), DAGENGINE_WHEEL, DAGENGINE_IMAGE_CACHE
# (build-base.sh's), PYTHON (the interpreter running pip: .venv/bin/python, else python3).
set -euo pipefail

log() { echo "build.sh: [$(( $(date +%s) - start ))s] $*" >&2; }
die() { log "$*"; exit 1; }

start=$(date +%s)
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
cd "$REPO"

IMAGE="${DAGENGINE_IMAGE:-dagengine:local}"
BASE="${DAGENGINE_BASE_IMAGE:-dagengine-base:bookworm}"
EXTRAS="${DAGENGINE_IMAGE_EXTRAS-postgres}"
WHEELHOUSE="$HERE/wheelhouse"
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x "$REPO/.venv/bin/python" ] && PYTHON="$REPO/.venv/bin/python"
fi

# Everything this script made goes at exit; a base build still running is waited for, never
# killed (debootstrap mounts /proc in its chroot).
out="" context="" basepid=""
baselog=$(mktemp /tmp/dagengine-base.XXXXXX)
cleanup() {
  [ -n "$basepid" ] && wait "$basepid" 2>/dev/null
  rm -rf "$baselog" ${out:+"$out"} ${context:+"$context" "$context.log"}
}
trap cleanup EXIT

# 3. (started now) The base image.
DAGENGINE_BASE_IMAGE="$BASE" "$HERE/build-base.sh" >"$baselog" 2>&1 &
basepid=$!

# 1. The wheel.
if [ -n "${DAGENGINE_WHEEL:-}" ]; then
  [ -f "$DAGENGINE_WHEEL" ] || die "DAGENGINE_WHEEL=$DAGENGINE_WHEEL: no such file"
  wheel="$DAGENGINE_WHEEL"
else
  out=$(mktemp -d /tmp/dagengine-wheel.XXXXXX)
  maturin=maturin
  [ -x "$REPO/.venv/bin/maturin" ] && maturin="$REPO/.venv/bin/maturin"
  command -v "$maturin" >/dev/null || die "maturin is not installed (make build installs it in .venv)"
  log "maturin build --release (waiting for /tmp/dagengine-build.lock)"
  flock /tmp/dagengine-build.lock "$maturin" build --release --quiet --out "$out" >&2
  wheel=$(ls "$out"/dagengine-*.whl)
fi
log "wheel: ${wheel##*/}"

# 2. The wheelhouse: the runtime's dependencies as wheels for CPython 3.11 on glibc x86_64
# (Debian bookworm has glibc 2.36). pip takes no manylinux_2_X as "that or older", so every
# tag is listed.
platforms=()
for minor in $(seq 36 -1 17); do
  platforms+=(--platform "manylinux_2_${minor}_x86_64")
done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
rm -rf "$WHEELHOUSE"
mkdir -p "$WHEELHOUSE"
cp "$wheel" "$WHEELHOUSE/"
log "pip download of the dependencies (extras: ${EXTRAS:-none}) into ${WHEELHOUSE#"$REPO"/}"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
  "${platforms[@]}" --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
  --dest "$WHEELHOUSE" "$WHEELHOUSE/${wheel##*/}[$EXTRAS]" >&2 \
  || die "pip download failed (the host needs the package index)"

# 3. The base image, done.
log "waiting for build-base.sh"
status=0
wait "$basepid" || status=$?
basepid=""
sed 's/^/  /' "$baselog" >&2
[ "$status" -eq 0 ] || die "build-base.sh failed (exit $status)"

# 4. The image, from a context of just what the target `prebuilt` copies.
context=$(mktemp -d /tmp/dagengine-context.XXXXXX)
mkdir -p "$context/deploy/images"
cp deploy/healthcheck.py "$context/deploy/"
cp -r "$WHEELHOUSE" "$context/deploy/images/"
log "docker build --target prebuilt --build-arg BASE_IMAGE=$BASE -> $IMAGE"
# The legacy builder (DOCKER_BUILDKIT=0) where the client has no buildx, else BuildKit.
builder=0
docker buildx version >/dev/null 2>&1 && builder=1
buildlog="$context.log"
DOCKER_BUILDKIT=$builder docker build -f deploy/Dockerfile --target prebuilt \
  --build-arg BASE_IMAGE="$BASE" --build-arg EXTRAS="$EXTRAS" -t "$IMAGE" "$context" \
  >"$buildlog" 2>&1 || { tail -n 40 "$buildlog" >&2; rm -f "$buildlog"; die "docker build failed"; }
rm -f "$buildlog"
# The legacy builder leaves the `prebuilt-install` stage behind as an untagged image (the
# wheels' layer): only those of this Dockerfile (its label) are removed.
# Best effort: the daemon runs one prune at a time, and another may be running.
docker image prune -f --filter label=org.opencontainers.image.title=dagengine >/dev/null 2>&1 \
  || log "docker image prune failed (another prune running?): untagged stage images stay"
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
log "$IMAGE: $((size / 1000000)) MB"
