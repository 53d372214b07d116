#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: loopback only, trust auth, fsync off.
#
#   .ci/postgres.sh start DIR   init a cluster in DIR, start it on a free port on
#                               127.0.0.1, create database etl_test, print
#                               ETL_TEST_PG_DSN=postgresql://postgres@127.0.0.1:PORT/etl_test
#   .ci/postgres.sh env DIR     print that line again
#   .ci/postgres.sh stop DIR    stop the server and remove DIR
#
# Only the ETL_TEST_PG_DSN line goes to stdout (progress and errors go to
# stderr), so `export "$(.ci/postgres.sh start /tmp/pg)"` sets it in a shell and
# `.ci/postgres.sh start /tmp/pg >> "$GITHUB_ENV"` in a GitHub Actions step.
# Without ETL_TEST_PG_DSN, tests/test_postgres.py runs this script itself. initdb/pg_ctl come from PATH, else from
# /usr/lib/postgresql/*/bin, else `apt-get install postgresql` (as root, or with
# passwordless sudo). The server refuses to run as root, so as root the cluster
# belongs to the `postgres` user and every server command runs as that user.
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }
die() { log "$*"; exit 1; }

usage() { die "usage: $0 start|stop|env DIR"; }

[ $# -eq 2 ] || usage
action=$1
dir=$2

find_bindir() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return 0
    fi
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$found" ] && [ -x "$found/initdb" ] && { echo "$found"; return 0; }
    return 1
}

install_postgres() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo -n true 2>/dev/null || die "initdb not found and not root: install PostgreSQL (apt-get install postgresql)"
        sudo="sudo -n"
    fi
    command -v apt-get >/dev/null 2>&1 || die "initdb not found and no apt-get: install PostgreSQL"
    log "installing postgresql with apt-get"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql </dev/null >&2
}

# as_owner CMD...: run a server command as the cluster's owner.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        echo $((20000 + RANDOM % 20000))
    fi
}

dsn_line() { echo "ETL_TEST_PG_DSN=postgresql://postgres@127.0.0.1:$1/etl_test"; }

# The data directory: DIR/data, unless the `postgres` user cannot reach DIR (a
# pytest tmp dir under a 0700 /tmp/pytest-of-root): then a fresh dir in /tmp,
# whose path is kept in DIR/pgdata so that `stop` finds it.
data_dir() { cat "$dir/pgdata"; }

start() {
    local bindir data port attempt
    [ -e "$dir/pgdata" ] && die "$dir already holds a cluster; run '$0 stop $dir' first"
    bindir=$(find_bindir) || { install_postgres; bindir=$(find_bindir) || die "no initdb after installing postgresql"; }
    mkdir -p "$dir"
    data="$dir/data"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to own the cluster"
        if ! as_owner test -x "$dir" 2>/dev/null; then
            data=$(mktemp -d /tmp/etl-pg.XXXXXX)
        fi
        mkdir -p "$data"
        chown -R postgres: "$data"
    fi
    echo "$data" >"$dir/pgdata"
    chmod 0700 "$data" 2>/dev/null || true

    log "initdb in $data ($("$bindir/initdb" --version))"
    as_owner "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    # trust on loopback and the data dir's socket only; nothing listens elsewhere
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' | as_owner tee "$data/pg_hba.conf" >/dev/null

    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        if as_owner "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 -s \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories='$data' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
            start </dev/null >&2; then
            break
        fi
        log "start on port $port failed (attempt $attempt)"
        tail -n 5 "$data/server.log" >&2 || true
        port=""
    done
    [ -n "$port" ] || die "the server did not start; see $data/server.log"
    echo "$port" >"$dir/port"

    as_owner "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
        -c "CREATE DATABASE etl_test" </dev/null >&2 || die "cannot create database etl_test"
    dsn_line "$port" >"$dir/env"
    log "PostgreSQL is up on 127.0.0.1:$port (data $data)"
    cat "$dir/env"
}

stop() {
    [ -e "$dir/pgdata" ] || { log "nothing to stop in $dir"; rm -rf "$dir"; return 0; }
    local data bindir
    data=$(data_dir)
    if [ -f "$data/postmaster.pid" ]; then
        bindir=$(find_bindir) || die "pg_ctl not found"
        as_owner "$bindir/pg_ctl" -D "$data" -m immediate -w -t 30 -s stop </dev/null >&2 || log "pg_ctl stop failed"
    fi
    rm -rf "$data" "$dir"
}

case "$action" in
    start) start ;;
    stop) stop ;;
    env) [ -f "$dir/env" ] || die "no server in $dir"; cat "$dir/env" ;;
    *) usage ;;
esac
