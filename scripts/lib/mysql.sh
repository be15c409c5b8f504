# Finds the MariaDB (or MySQL) the relational-source tests need; exports SLUICE_TEST_MYSQL_URL.
# Sourced by scripts/test. Unlike PostgreSQL no throwaway server is started: it fails loudly.

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
  echo "test: FAILED: no MariaDB/MySQL answers at 127.0.0.1:3306 (user root, no password, database test)." >&2
  echo "      Set SLUICE_TEST_MYSQL_URL=mysql://user:password@host:port/db, or install and start MariaDB:" >&2
  echo "        apt-get install mariadb-server mariadb-client && service mariadb start" >&2
  echo "        mysql -u root -e 'CREATE DATABASE IF NOT EXISTS test'" >&2
  exit 1
}
