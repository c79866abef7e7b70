#!/usr/bin/env bash
# A throwaway PostgreSQL server, for the test that runs batchinfer with PostgreSQL as the Prefect
# database (tests/e2e/test_postgres.py), or to try that by hand.
#
#   scripts/postgres-for-tests.sh install            apt-get install postgresql, unless it is there
#   scripts/postgres-for-tests.sh start DIR [PORT]   a new cluster in DIR, on 127.0.0.1:PORT (default: a
#                                                    free port), with a database `batchinfer`; prints
#                                                    its URL for PREFECT_API_DATABASE_CONNECTION_URL
#   scripts/postgres-for-tests.sh stop DIR           stop it (then remove DIR)
#
# Run as root, the cluster belongs to the `postgres` user that Debian's package creates (the server
# refuses to run as root), so DIR's parent directories must be open to that user: use /tmp, not a
# 0700 directory such as pytest's tmp_path. The server trusts every local connection and does not
# fsync: it is for tests, never for data you want to keep.
#
# Exit status 3: PostgreSQL is not installed and cannot be installed here (not root, no apt-get, or
# no package repository). The tests skip on it instead of failing.
set -euo pipefail

UNAVAILABLE=3
DATABASE=batchinfer

die_unavailable() {
  echo "PostgreSQL is unavailable: $*" >&2
  exit "$UNAVAILABLE"
}

server_bindir() {
  # Debian keeps the server programs off PATH, one directory per major version: take the newest.
  local dir
  dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
  if [[ -n "$dir" && -x "$dir/initdb" ]]; then
    echo "$dir"
  elif command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  else
    return 1
  fi
}

install_postgres() {
  if server_bindir >/dev/null; then
    return 0
  fi
  [[ $EUID -eq 0 ]] || die_unavailable "not installed, and installing it needs root (apt-get install postgresql)"
  command -v apt-get >/dev/null 2>&1 || die_unavailable "not installed, and there is no apt-get to install it"
  local log="${TMPDIR:-/tmp}/batchinfer-apt-postgresql.log"
  echo "Installing Debian's postgresql package (once; log: $log) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  # The package lists on the machine are often enough; refresh them only when the install fails.
  if ! apt-get install -y -q --no-install-recommends postgresql >"$log" 2>&1; then
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends postgresql; } >>"$log" 2>&1; then
      tail -n 5 "$log" >&2
      die_unavailable "apt-get install postgresql failed (see $log)"
    fi
  fi
  server_bindir >/dev/null || die_unavailable "the postgresql package installed no initdb"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs a server program as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
  if [[ $EUID -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  local dir=${1:?usage: $0 start DIR [PORT]} port=${2:-}
  install_postgres
  local bin
  bin=$(server_bindir)
  [[ -n "$port" ]] || port=$(free_port)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  cd "$dir" # the server programs run as `postgres`, who may not be allowed into the caller's directory
  if [[ $EUID -eq 0 ]]; then
    chown postgres: "$dir"
  fi
  as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
  # TCP on loopback only; the socket goes in DIR so nothing outside it is touched. Durability is
  # traded for speed: a test database need not survive a power cut.
  local options="-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir"
  options+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "$options" -w -t 60 start >/dev/null ||
    { cat "$dir/postgres.log" >&2; exit 1; }
  as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$DATABASE"
  echo "postgresql+asyncpg://postgres@127.0.0.1:$port/$DATABASE"
}

stop() {
  local dir=${1:?usage: $0 stop DIR}
  local bin
  bin=$(server_bindir) || return 0
  [[ -d "$dir" ]] || return 0
  dir=$(cd "$dir" && pwd)
  cd "$dir"
  if [[ -f "$dir/data/postmaster.pid" ]]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null
  fi
}

case "${1:-}" in
  install) install_postgres ;;
  start) start "${@:2}" ;;
  stop) stop "${@:2}" ;;
  *)
    echo "usage: $0 install | start DIR [PORT] | stop DIR" >&2
    exit 2
    ;;
esac
