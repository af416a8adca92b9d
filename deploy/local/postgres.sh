#!/usr/bin/env bash
# A private PostgreSQL cluster for developing and testing kommo-pay.
#
#   deploy/local/postgres.sh start    start it (or reuse the running one); prints DATABASE_URL
#   deploy/local/postgres.sh stop     stop it
#   deploy/local/postgres.sh status   say whether it runs
#   deploy/local/postgres.sh url      print the DATABASE_URL for it
#
# It uses the machine's PostgreSQL server binaries (initdb, pg_ctl), installing Debian's
# `postgresql` package with apt when none are found and we are root. The cluster has its own data
# directory and its own port, listens on 127.0.0.1 only, and trusts loopback connections: it is
# for this machine's developer and tests, never for production.
#
# Settings (environment):
#   KOMMO_PAY_PG_PORT   port (default 54329, chosen to stay clear of a system cluster on 5432)
#   KOMMO_PAY_PG_DIR    data directory (default .local/postgres inside the checkout)
#
# PostgreSQL refuses to run as root. Run as root, the server runs as the `postgres` OS user, which
# must be able to reach the data directory; a checkout under a private folder (mktemp -d) is not
# reachable, so the data directory then falls back to a folder under the system temp directory.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
checkout=$(cd "$here/../.." && pwd)
port=${KOMMO_PAY_PG_PORT:-54329}
database=kommo_pay

die() { echo "postgres.sh: $*" >&2; exit 1; }

find_bindir() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return 0; }
  done
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v pg_ctl)"; return 0
  fi
  return 1
}

bindir=$(find_bindir) || {
  [ "$(id -u)" = 0 ] || die "no PostgreSQL server binaries (initdb, pg_ctl) found; install your distribution's postgresql package"
  echo "postgres.sh: installing PostgreSQL server binaries with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
  bindir=$(find_bindir) || die "apt-get installed postgresql but no initdb/pg_ctl was found"
}

# Run a server binary as the OS user that owns the cluster.
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  # From /: the postgres user may not be able to enter the current directory.
  as_owner() { (cd / && runuser -u postgres -- "$@"); }
else
  as_owner() { "$@"; }
fi

# Can the cluster's owner reach $1? Directories we create on the way get the default 755 mode, so
# what matters is the nearest one that exists already.
reachable() {
  local dir=$1
  while [ ! -e "$dir" ]; do dir=$(dirname "$dir"); done
  as_owner test -x "$dir" 2>/dev/null
}

datadir=${KOMMO_PAY_PG_DIR:-$checkout/.local/postgres}
case "$datadir" in /*) ;; *) datadir=$PWD/$datadir ;; esac
if ! reachable "$(dirname "$datadir")"; then
  if [ -n "${KOMMO_PAY_PG_DIR:-}" ]; then
    die "the postgres OS user cannot reach KOMMO_PAY_PG_DIR=$datadir"
  fi
  # One cluster per checkout: the fallback name carries a hash of the checkout path.
  datadir=${TMPDIR:-/tmp}/kommo-pay-pg-$(printf '%s' "$checkout" | sha256sum | cut -c1-12)
fi
logfile=$datadir.log
url="postgres://postgres@127.0.0.1:$port/$database"

running() { [ -f "$datadir/PG_VERSION" ] && as_owner "$bindir/pg_ctl" -D "$datadir" status >/dev/null 2>&1; }

start() {
  if ! running; then
    mkdir -p "$(dirname "$datadir")"
    if [ ! -f "$datadir/PG_VERSION" ]; then
      mkdir -p "$datadir"
      [ "$(id -u)" = 0 ] && chown postgres: "$datadir" && touch "$logfile" && chown postgres: "$logfile"
      chmod 700 "$datadir"
      as_owner "$bindir/initdb" -D "$datadir" -U postgres --auth=trust --encoding=UTF8 \
        --locale=C.UTF-8 >/dev/null || die "initdb failed for $datadir"
      # Loopback only, durable commits (the benchmarks measure real fsyncs), room for a parallel
      # test suite in which every test opens its own pool.
      cat >>"$datadir/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 300
shared_buffers = 256MB
fsync = on
synchronous_commit = on
EOF
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "port $port is taken by another server; set KOMMO_PAY_PG_PORT to a free port"
    fi
    as_owner "$bindir/pg_ctl" -D "$datadir" -l "$logfile" -o "-p $port" -w -t 60 start >/dev/null \
      || die "PostgreSQL did not start; see $logfile"
  fi
  # Create the application database once; tests create their own databases next to it.
  if ! as_owner "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atqc \
      "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1; then
    as_owner "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$database"
  fi
  echo "DATABASE_URL=$url"
}

case "${1:-}" in
  start) start ;;
  stop)
    if running; then as_owner "$bindir/pg_ctl" -D "$datadir" -m fast -w stop >/dev/null; echo "stopped"
    else echo "not running"; fi ;;
  status) if running; then echo "running at $url (data: $datadir)"; else echo "not running (data: $datadir)"; exit 3; fi ;;
  url) echo "$url" ;;
  *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
