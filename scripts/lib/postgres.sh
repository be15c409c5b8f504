# Finds a PostgreSQL for tests or starts a throwaway one; exports SLUICE_TEST_DATABASE_URL.
# Sourced by scripts/test and bench scripts.

pg_reachable() {
  # $1: URL. psql if present, else bash's /dev/tcp on the host:port.
  if command -v psql >/dev/null 2>&1; then
    psql "$1" -Atqc 'select 1' >/dev/null 2>&1
  else
    local hostport=${1#*@}; hostport=${hostport%%/*}
    timeout 2 bash -c "echo > /dev/tcp/${hostport%:*}/${hostport#*:}" 2>/dev/null
  fi
}

pg_bindir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return
  fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# start_throwaway_cluster DIR PORT [SERVER OPTION…]: a trust-auth cluster under DIR
# on 127.0.0.1:PORT with a `test` database, initialised on first use, started unless
# it already answers. Exits the test run, naming WHAT, when there is no initdb.
start_throwaway_cluster() {
  local dir=$1 port=$2 what=$3; shift 3
  local bindir; bindir=$(pg_bindir)
  if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "test: FAILED: no $what and no initdb to start one." >&2
    return 1
  fi
  local run=()
  # initdb refuses to run as root: use the postgres (or nobody) account then.
  if [ "$(id -u)" = 0 ]; then
    local user=postgres; id "$user" >/dev/null 2>&1 || user=nobody
    run=(runuser -u "$user" --)
    mkdir -p "$dir"; chown "$user" "$dir"
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    "${run[@]}" "$bindir/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
  fi
  if ! pg_reachable "postgres://postgres@127.0.0.1:$port/postgres"; then
    "${run[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 $*" start >/dev/null
  fi
  "${run[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres test 2>/dev/null || true
}

start_throwaway_postgres() {
  # Below the ephemeral port range, so an outgoing connection never holds it.
  local port=15432
  start_throwaway_cluster "$PWD/target/test-pg" $port "PostgreSQL reachable" || {
    echo "      Set SLUICE_TEST_DATABASE_URL, start PostgreSQL on 127.0.0.1:5432, or install it (apt-get install postgresql)." >&2
    exit 1
  }
  export SLUICE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/test"
  echo "test: started a throwaway PostgreSQL in target/test-pg (port $port)"
}

ensure_postgres() {
  if [ -n "${SLUICE_TEST_DATABASE_URL:-}" ]; then
    if ! pg_reachable "$SLUICE_TEST_DATABASE_URL"; then
      echo "test: FAILED: SLUICE_TEST_DATABASE_URL is set but PostgreSQL does not answer there." >&2
      exit 1
    fi
    return
  fi
  local local_url="postgres://postgres@127.0.0.1:5432/test"
  if pg_reachable "$local_url"; then
    export SLUICE_TEST_DATABASE_URL="$local_url"
    return
  fi
  start_throwaway_postgres
  if ! pg_reachable "$SLUICE_TEST_DATABASE_URL"; then
    echo "test: FAILED: the throwaway PostgreSQL did not come up (see target/test-pg/log)." >&2
    exit 1
  fi
}
