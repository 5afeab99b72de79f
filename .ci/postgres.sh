#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests of the PostgreSQL store.
#
#   eval "$(.ci/postgres.sh start)"   # prints the exports below; progress goes to stderr
#   .ci/postgres.sh stop              # stops the cluster of $DAGENGINE_TEST_POSTGRES_DIR
#   .ci/postgres.sh restart [DIR]     # a fast restart, same port (reconnection tests)
#
# `start --watch PID` also stops the cluster once process PID is gone (the tests' fixture
# passes its own pid: a killed test session leaves no server behind).
#
# `start` installs Debian's postgresql if its binaries are missing (as root; not with
# --no-install, which the tests' fixture passes), runs initdb on a temporary folder as a
# non-root user (root: the `postgres` user of the package, or a system user made for it;
# another user: itself), starts the server on a free port of 127.0.0.1 (and a Unix socket
# in the folder), creates the database `dagengine_test` and prints:
#
#   export DAGENGINE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:PORT/dagengine_test
#   export DAGENGINE_TEST_POSTGRES_DIR=/tmp/dagengine-pg.XXXXXX
#
# The cluster is for tests only: trust authentication on loopback, and fsync off (a crash
# of the machine may lose it; the tests kill the orchestrator, never the database server).
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }

bindir() {
  # The newest installed server's binaries (/usr/lib/postgresql/<major>/bin).
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$dir" ] && command -v pg_config >/dev/null 2>&1; then
    dir=$(pg_config --bindir)
  fi
  if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
    return 1
  fi
  echo "$dir"
}

# Run a command as the cluster's owner (root cannot run initdb or postgres).
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "$OWNER" -- "$@"
  else
    "$@"
  fi
}

start() {
  local install=1 watch=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --no-install) install=0 ;;
      --watch) watch="$2"; shift ;;
      *) log "unknown option $1"; exit 2 ;;
    esac
    shift
  done
  local bin
  if ! bin=$(bindir); then
    if [ "$install" -eq 0 ]; then
      log "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)"
      exit 3
    fi
    if [ "$(id -u)" -ne 0 ]; then
      log "PostgreSQL is not installed, and installing it needs root"
      exit 3
    fi
    log "installing Debian's postgresql"
    apt-get install -y -qq postgresql >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null
      apt-get install -y -qq postgresql >/dev/null
    }
    bin=$(bindir) || { log "postgresql installed, but initdb is missing"; exit 3; }
  fi
  OWNER=$(id -un)
  if [ "$(id -u)" -eq 0 ]; then
    OWNER=postgres
    if ! id -u "$OWNER" >/dev/null 2>&1; then
      OWNER=dagengine-pg
      id -u "$OWNER" >/dev/null 2>&1 || useradd --system --no-create-home "$OWNER"
    fi
  fi
  local dir port
  dir=$(mktemp -d /tmp/dagengine-pg.XXXXXX)
  chmod 755 "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chown "$OWNER" "$dir"
  fi
  as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
    --no-sync >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    log "initdb failed"
    exit 1
  }
  # A free port: bound and let go (a race with another process is possible, but rare; the
  # start fails loudly then).
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null || {
    cat "$dir/server.log" >&2
    log "the server did not start"
    exit 1
  }
  as_owner "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
    -c "CREATE DATABASE dagengine_test" >/dev/null
  log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port, data in $dir/data"
  if [ -n "$watch" ]; then
    # The cluster goes with process $watch (a test session), even one killed before its
    # clean-up ran: a detached watcher stops it once that process is gone.
    setsid bash "$0" watch "$watch" "$dir" </dev/null >/dev/null 2>&1 &
  fi
  echo "export DAGENGINE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$port/dagengine_test"
  echo "export DAGENGINE_TEST_POSTGRES_DIR=$dir"
}

watch() {
  local pid="$1" dir="$2"
  while kill -0 "$pid" 2>/dev/null && [ -d "$dir/data" ]; do
    sleep 2
  done
  if [ -d "$dir/data" ]; then
    stop "$dir"
  fi
}

restart() {
  # Stop the server fast (its sessions are cut, as a crash would) and start it again on the
  # same port: for tests of reconnection.
  local dir="${1:-${DAGENGINE_TEST_POSTGRES_DIR:-}}"
  if [ -z "$dir" ] || [ ! -d "$dir/data" ]; then
    log "no cluster to restart (give its folder or set DAGENGINE_TEST_POSTGRES_DIR)"
    exit 1
  fi
  local bin
  bin=$(bindir)
  OWNER=$(stat -c %U "$dir/data")
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart >/dev/null
}

stop() {
  local dir="${1:-${DAGENGINE_TEST_POSTGRES_DIR:-}}"
  if [ -z "$dir" ] || [ ! -d "$dir/data" ]; then
    log "no cluster to stop (give its folder or set DAGENGINE_TEST_POSTGRES_DIR)"
    exit 1
  fi
  local bin
  bin=$(bindir)
  OWNER=$(stat -c %U "$dir/data")
  as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
  rm -rf "$dir"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  restart) shift; restart "$@" ;;
  watch) shift; watch "$@" ;;
  *)
    echo "usage: $0 start [--no-install] [--watch PID] | stop [DIR] | restart [DIR]" >&2
    exit 2
    ;;
esac
