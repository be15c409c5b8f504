# A PostgreSQL with wal_level=logical for the CDC tests; exports SLUICE_TEST_CDC_DATABASE_URL.
# Sourced by scripts/test after ensure_postgres (it reuses pg_reachable and pg_bindir).
#
# Order: $SLUICE_TEST_CDC_DATABASE_URL if set; else the main test database when its
# wal_level is already logical; else a throwaway cluster under target/test-pg-cdc
# (initdb + pg_ctl, port 15433, wal_level=logical). The main server is never reconfigured.

pg_wal_level() {
  psql "$1" -Atqc 'show wal_level' 2>/dev/null
}

start_throwaway_cdc_postgres() {
  local port=15433
  start_throwaway_cluster "$PWD/target/test-pg-cdc" $port "PostgreSQL with wal_level=logical" \
    -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 || {
    echo "      Set SLUICE_TEST_CDC_DATABASE_URL to a server with wal_level = logical, or install PostgreSQL." >&2
    exit 1
  }
  export SLUICE_TEST_CDC_DATABASE_URL="postgres://postgres@127.0.0.1:$port/test"
  echo "test: started a throwaway PostgreSQL with wal_level=logical in target/test-pg-cdc (port $port)"
}

ensure_cdc_postgres() {
  if [ -n "${SLUICE_TEST_CDC_DATABASE_URL:-}" ]; then
    if [ "$(pg_wal_level "$SLUICE_TEST_CDC_DATABASE_URL")" != logical ]; then
      echo "test: FAILED: SLUICE_TEST_CDC_DATABASE_URL does not answer or its wal_level is not logical." >&2
      exit 1
    fi
    return
  fi
  if [ "$(pg_wal_level "$SLUICE_TEST_DATABASE_URL")" = logical ]; then
    export SLUICE_TEST_CDC_DATABASE_URL="$SLUICE_TEST_DATABASE_URL"
    return
  fi
  start_throwaway_cdc_postgres
  if [ "$(pg_wal_level "$SLUICE_TEST_CDC_DATABASE_URL")" != logical ]; then
    echo "test: FAILED: the throwaway logical PostgreSQL did not come up (see target/test-pg-cdc/log)." >&2
    exit 1
  fi
}
