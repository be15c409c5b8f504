# Finds the MariaDB (or MySQL) the relational-source tests need, or starts a throwaway one
# under target/test-mysql when the server binaries are installed; exports
# SLUICE_TEST_MYSQL_URL. Sourced by scripts/test. Fails loudly when it can do neither.

mysql_reachable() {
  # $1: URL mysql://user[:password]@host[:port]/db. The mysql client if present, else /dev/tcp.
  local rest=${1#*://} userinfo hostport user password host port
  userinfo=${rest%%@*}; hostport=${rest#*@}; hostport=${hostport%%/*}
  user=${userinfo%%:*}; password=""
  [ "$userinfo" != "$user" ] && password=${userinfo#*:}
  host=${hostport%:*}; port=${hostport##*:}
  [ "$host" = "$hostport" ] && port=3306
  if command -v mysql >/dev/null 2>&1; then
    MYSQL_PWD="$password" mysql --protocol=TCP -h "$host" -P "$port" -u "$user" -N -B -e 'select 1' >/dev/null 2>&1
  else
    timeout 2 bash -c "echo > /dev/tcp/$host/$port" 2>/dev/null
  fi
}

# Starts MariaDB on 127.0.0.1:13306 (below the ephemeral port range) with its data in target/test-mysql (kept between runs);
# returns non-zero when the binaries are missing or it does not come up.
start_throwaway_mysql() {
  local server install
  server=$(command -v mariadbd || command -v mysqld || ls /usr/sbin/mariadbd /usr/sbin/mysqld 2>/dev/null | head -n 1 || true)
  install=$(command -v mariadb-install-db || command -v mysql_install_db || true)
  [ -n "$server" ] && [ -n "$install" ] || return 1
  local dir="$PWD/target/test-mysql" port=13306 as_root=()
  [ "$(id -u)" = 0 ] && as_root=(--user=root)
  mkdir -p "$dir"
  local url="mysql://root@127.0.0.1:$port/test"
  if ! mysql_reachable "mysql://root@127.0.0.1:$port/mysql"; then
    if [ ! -d "$dir/data/mysql" ]; then
      "$install" --no-defaults --datadir="$dir/data" "${as_root[@]}" --auth-root-authentication-method=normal \
        --skip-test-db >"$dir/install.log" 2>&1 || return 1
    fi
    "$server" --no-defaults --datadir="$dir/data" "${as_root[@]}" --port=$port --bind-address=127.0.0.1 \
      --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" --log-error="$dir/error.log" \
      --skip-name-resolve >/dev/null 2>&1 &
    local waited=0
    until mysql_reachable "mysql://root@127.0.0.1:$port/mysql"; do
      sleep 0.5; waited=$((waited + 1))
      [ $waited -gt 60 ] && { echo "test: the throwaway MariaDB did not come up (see $dir/error.log)" >&2; return 1; }
    done
  fi
  if command -v mysql >/dev/null 2>&1; then
    mysql --protocol=TCP -h 127.0.0.1 -P $port -u root -e 'CREATE DATABASE IF NOT EXISTS test' || return 1
  fi
  export SLUICE_TEST_MYSQL_URL="$url"
  echo "test: started a throwaway MariaDB in target/test-mysql (port $port)"
}

ensure_mysql() {
  if [ -n "${SLUICE_TEST_MYSQL_URL:-}" ]; then
    if ! mysql_reachable "$SLUICE_TEST_MYSQL_URL"; then
      echo "test: FAILED: SLUICE_TEST_MYSQL_URL is set but MariaDB/MySQL does not answer there." >&2
      exit 1
    fi
    return
  fi
  local local_url="mysql://root@127.0.0.1:3306/test"
  if mysql_reachable "$local_url"; then
    export SLUICE_TEST_MYSQL_URL="$local_url"
    return
  fi
  start_throwaway_mysql && return
  echo "test: FAILED: no MariaDB/MySQL answers at 127.0.0.1:3306 (user root, no password, database test)." >&2
  echo "      Set SLUICE_TEST_MYSQL_URL=mysql://user:password@host:port/db, or install and start MariaDB:" >&2
  echo "        apt-get install mariadb-server mariadb-client && service mariadb start" >&2
  echo "        mysql -u root -e 'CREATE DATABASE IF NOT EXISTS test'" >&2
  exit 1
}
