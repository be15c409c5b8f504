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

start_throwaway_postgres() {
  local bindir; bindir=$(pg_bindir)
  if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "test: FAILED: no PostgreSQL reachable and no initdb to start one." >&2
    echo "      Set SLUICE_TEST_DATABASE_URL, start PostgreSQL on 127.0.0.1:5432, or install it (apt-get install postgresql)." >&2
    exit 1
  fi
  # Below the ephemeral port range, so an outgoing connection never holds it.
  local dir="$PWD/target/test-pg" port=15432 run=()
  # initdb refuses to run as root: use the postgres (or nobody) account then.
  if [ "$(id -u)" = 0 ]; then
    local user=postgres; id "$user" >/dev/null 2>&1 || user=nobody
    run=(runuser -u "$user" --)
    mkdir -p "$dir"; chown "$user" "$dir"
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    "${run[@]}" "$bindir/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
  fi
  "${run[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
  "${run[@]}" "$bindir/createdb" -h 127.0.0.1 -p $port -U postgres test 2>/dev/null || true
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
