#!/usr/bin/env bash
# A PostgreSQL server of the tests' own, in a temporary directory, on a free loopback port: no system service.
#
#   eval "$(bash scripts/postgres.sh start)"   # exports BOTCLUSTER_TEST_POSTGRES and BOTCLUSTER_TEST_POSTGRES_DIR
#   bash scripts/postgres.sh stop "$BOTCLUSTER_TEST_POSTGRES_DIR"
#
# The server refuses to run as root: run as root, this script runs it as the user botcluster-test (created when
# missing), which the process tests run as too. It listens on 0.0.0.0 so that hosts in network namespaces reach it
# through their veth links: loopback connections are trusted, every other one must give the password (SCRAM), a
# random one exported as BOTCLUSTER_TEST_POSTGRES_PASSWORD.
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -n $bindir && -x $bindir/postgres ]] || { echo "postgres.sh: no PostgreSQL server (apt-get install postgresql)" >&2; exit 1; }

# As root, the user the server runs as (created first: the server's directory is given to it before it runs).
if [[ $(id -u) -eq 0 ]] && ! id -u botcluster-test >/dev/null 2>&1; then
  useradd --system --create-home --home-dir /var/lib/botcluster-test --shell /bin/sh botcluster-test
fi

as_user() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u botcluster-test -- "$@"
  else
    "$@"
  fi
}

case "${1:-}" in
start)
  dir=$(mktemp -d /tmp/botcluster-postgres.XXXXXX)
  if [[ $(id -u) -eq 0 ]]; then chown botcluster-test "$dir"; fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_user "$bindir/initdb" -D "$dir/data" -U botcluster -A trust --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  # initdb trusts loopback only; the hosts in network namespaces come from their veth addresses, with the password.
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$dir/data/pg_hba.conf"
  password=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
  as_user "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=0.0.0.0 -p $port -k $dir -c fsync=off -c max_connections=200" start >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
  as_user "$bindir/createdb" -h 127.0.0.1 -p "$port" -U botcluster botcluster
  as_user "$bindir/psql" -q -h 127.0.0.1 -p "$port" -U botcluster -d botcluster -c "ALTER USER botcluster PASSWORD '$password'"
  echo "export BOTCLUSTER_TEST_POSTGRES=postgres://botcluster@127.0.0.1:$port/botcluster"
  echo "export BOTCLUSTER_TEST_POSTGRES_PASSWORD=$password"
  echo "export BOTCLUSTER_TEST_POSTGRES_DIR=$dir"
  ;;
stop)
  dir=${2:?usage: postgres.sh stop DIR}
  [[ -d $dir/data ]] && as_user "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  ;;
*)
  echo "usage: postgres.sh start | stop DIR" >&2
  exit 2
  ;;
esac
