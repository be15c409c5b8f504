#!/usr/bin/env bash
# Relational-source benchmark: a ROWS-row table (bigint id, text, numeric(12,2),
# timestamptz, date, boolean, jsonb) copied into PostgreSQL by `sluice run`
#   1. from PostgreSQL, against `psql -c "\copy t to stdout" | psql -c "\copy t2 from stdin"`;
#   2. from MariaDB, against `mysqldump --tab` (server-side files) then `psql \copy`;
# each reference measured in the same run, as wall time and peak RSS (GNU time),
# with the stream read whole (`ranges` unset) and in parallel key ranges.
# Usage: [ROWS=5000000] [RANGES="1 4"] [ROUNDS=1] [BIN=path/to/sluice] [SKIP_MYSQL=1]
#        bench/relational/run.sh
# Without BIN it builds and uses the release binary (run it niced on a shared machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/postgres.sh
source scripts/lib/mysql.sh
ensure_postgres
ROWS=${ROWS:-5000000}
RANGES=${RANGES:-"1 4"}
ROUNDS=${ROUNDS:-1}
URL=$SLUICE_TEST_DATABASE_URL
WORK=$PWD/target/bench-relational/$ROWS
mkdir -p "$WORK/project"
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin sluice --quiet
  BIN=$PWD/target/release/sluice
fi
SRC=bench_rel_src_$ROWS # kept per ROWS: generating takes minutes
pg() { psql "$URL" -v ON_ERROR_STOP=1 -qAt "$@"; }

COLUMNS="id bigint primary key, name text not null, amount numeric(12,2), created_at timestamptz not null, day date, active boolean, attrs jsonb"
# The source is generated once per ROWS (a few minutes at 5 000 000) and kept.
if [ "$(pg -c "select count(*) from pg_tables where schemaname = '$SRC' and tablename = 't'")" != 1 ] \
  || [ "$(pg -c "select count(*) from $SRC.t")" != "$ROWS" ]; then
  echo "generating $ROWS rows in PostgreSQL…"
  pg -c "drop schema if exists $SRC cascade" -c "create schema $SRC" \
     -c "create table $SRC.t ($COLUMNS)" \
     -c "insert into $SRC.t select g, 'customer ' || md5(g::text),
           case when g % 17 = 0 then null else round((g % 100000) * 1.37 - 5000, 2) end,
           timestamptz '2020-01-01 00:00:00+00' + g * interval '1.000217 second',
           date '2020-01-01' + (g % 1500), g % 3 = 0,
           jsonb_build_object('sku', 'S' || (g % 9973), 'qty', g % 40, 'tags', jsonb_build_array('a', g % 7))
         from generate_series(1, $ROWS) g" \
     -c "vacuum analyze $SRC.t"
fi

measure() { # command… → prints "seconds maxrss_kib" (GNU time writes them to a file)
  local report="$WORK/time.txt"
  /usr/bin/time -o "$report" -f '%e %M' "$@" >/dev/null 2>"$WORK/stderr.txt" \
    || { cat "$WORK/stderr.txt" >&2; echo "bench: command failed: $*" >&2; exit 1; }
  tail -n 1 "$report"
}

# $1 source kind, $2 source URL, $3 table, $4 ranges → the pipeline file's path.
pipeline() {
  local file="$WORK/project/$1-$4.yaml" ranges=""
  [ "$4" != 1 ] && ranges=", ranges: $4"
  cat > "$file" <<YAML
name: bench_rel
lake: ./lake-$1-$4
destination: { type: postgres, url: "$URL", schema_prefix: "bench_rel_$1_$4_" }
sources:
  src:
    type: $1
    url: "$2"
    max_concurrency: ${CONCURRENCY:-4}
    streams:
      t: { table: $3$ranges }
YAML
  echo "$file"
}

declare -A SECONDS_OF PEAK_OF ROWS_OF
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# $1 label, $2 destination schema to count, then the command → one row of results.
bench_row() {
  local label=$1 count_table=$2 times=() peak=0 s kib
  shift 2
  for _ in $(seq "$ROUNDS"); do
    "$RESET"
    read -r s kib < <(measure "$@")
    times+=("$s"); [ "$kib" -gt "$peak" ] && peak=$kib
  done
  SECONDS_OF[$label]=$(median "${times[@]}")
  PEAK_OF[$label]=$peak
  ROWS_OF[$label]=$(pg -c "select count(*) from $count_table")
  echo "  $label: ${SECONDS_OF[$label]} s, $((peak / 1024)) MiB, ${ROWS_OF[$label]} rows"
}

report() { # $1 title, $2 reference label, then the sluice labels
  local title=$1 ref=$2
  shift 2
  printf '\n%s: %s rows, median of %s round(s)\n' "$title" "$ROWS" "$ROUNDS"
  printf '  %-34s %9s %9s %9s %9s\n' "" seconds "ratio" "peak MiB" rows
  for label in "$ref" "$@"; do
    printf '  %-34s %9s %8.2fx %9s %9s\n' "$label" "${SECONDS_OF[$label]}" \
      "$(echo "${SECONDS_OF[$label]} / ${SECONDS_OF[$ref]}" | bc -l)" \
      "$((PEAK_OF[$label] / 1024))" "${ROWS_OF[$label]}"
  done
}

# Rows of the copy that differ from the source (0 when exact).
differing() { # $1 copied table
  pg -c "select count(*) from (
    (select id, name, amount, created_at, day, active, attrs from $SRC.t
     except all select id, name, amount, created_at, day, active, attrs from $1)
    union all
    (select id, name, amount, created_at, day, active, attrs from $1
     except all select id, name, amount, created_at, day, active, attrs from $SRC.t)) d"
}

# ------------------------------------------------------------ PostgreSQL → PostgreSQL
echo "PostgreSQL → PostgreSQL"
pg_reset() {
  local r
  pg -c "drop schema if exists bench_rel_ref cascade" -c "create schema bench_rel_ref" \
     -c "create table bench_rel_ref.t ($COLUMNS)"
  for r in $RANGES; do
    pg -c "drop schema if exists bench_rel_postgres_${r}_d1 cascade" \
       -c "drop schema if exists bench_rel_postgres_${r}__sluice cascade" 2>/dev/null
    rm -rf "$WORK/project/lake-postgres-$r"
  done
  pg -c "checkpoint"
}
RESET=pg_reset
bench_row "psql \\copy | psql \\copy" bench_rel_ref.t bash -c \
  "psql '$URL' -qc '\\copy $SRC.t to stdout' | psql '$URL' -qc '\\copy bench_rel_ref.t from stdin'"
pg_labels=()
for r in $RANGES; do
  label="sluice run (ranges: $r)"
  bench_row "$label" "bench_rel_postgres_${r}_d1.src_t" \
    "$BIN" -p "$(pipeline postgres "$URL" $SRC.t "$r")" run
  pg_labels+=("$label")
  echo "    rows differing from the source: $(differing "bench_rel_postgres_${r}_d1.src_t")"
done
report "PostgreSQL → PostgreSQL" "psql \\copy | psql \\copy" "${pg_labels[@]}"

# ------------------------------------------------------------ MariaDB → PostgreSQL
[ -n "${SKIP_MYSQL:-}" ] && exit 0
ensure_mysql
MYURL=$SLUICE_TEST_MYSQL_URL
rest=${MYURL#*://}; userinfo=${rest%%@*}; hostport=${rest#*@}; hostport=${hostport%%/*}
MYUSER=${userinfo%%:*}; MYPASS=""; [ "$userinfo" != "$MYUSER" ] && MYPASS=${userinfo#*:}
MYHOST=${hostport%:*}; MYPORT=${hostport##*:}; [ "$MYHOST" = "$hostport" ] && MYPORT=3306
export MYSQL_PWD=$MYPASS
my() { mysql --protocol=TCP -h "$MYHOST" -P "$MYPORT" -u "$MYUSER" -N -B "$@"; }
if [ "$(my -e "select count(*) from information_schema.tables where table_schema = '$SRC' and table_name = 't'")" != 1 ] \
  || [ "$(my -e "select count(*) from $SRC.t")" != "$ROWS" ]; then
  echo "copying the $ROWS rows into MariaDB…"
  my -e "drop database if exists $SRC; create database $SRC;
    create table $SRC.t (id bigint primary key, name text not null, amount decimal(12,2),
      created_at datetime(6) not null, day date, active boolean, attrs json) engine=InnoDB"
  # The same rows, through a file the server reads (LOAD DATA LOCAL: the client sends it).
  pg -c "\\copy (select id, name, amount, to_char(created_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), day, active::int, attrs from $SRC.t) to '$WORK/mysql-rows.tsv'"
  my --local-infile=1 -e "set unique_checks = 0; load data local infile '$WORK/mysql-rows.tsv' into table $SRC.t"
  rm -f "$WORK/mysql-rows.tsv"
fi
# `mysqldump --tab` makes the server write the rows: a directory it can write to.
DUMP=/tmp/sluice-bench-relational-dump
echo "MariaDB → PostgreSQL"
my_reset() {
  local r
  pg -c "drop schema if exists bench_rel_ref cascade" -c "create schema bench_rel_ref" \
     -c "create table bench_rel_ref.t ($COLUMNS)"
  for r in $RANGES; do
    pg -c "drop schema if exists bench_rel_mysql_${r}_d1 cascade" \
       -c "drop schema if exists bench_rel_mysql_${r}__sluice cascade" 2>/dev/null
    rm -rf "$WORK/project/lake-mysql-$r"
  done
  rm -rf "$DUMP"; mkdir -p "$DUMP"; chmod 777 "$DUMP"
  pg -c "checkpoint"
}
RESET=my_reset
# Booleans go as 0/1 and NULL as \N: PostgreSQL's text COPY format reads both.
bench_row "mysqldump --tab + psql \\copy" bench_rel_ref.t bash -c \
  "MYSQL_PWD='$MYPASS' mysqldump --protocol=TCP -h '$MYHOST' -P '$MYPORT' -u '$MYUSER' --tab='$DUMP' $SRC t \
   && psql '$URL' -qc \"\\\\copy bench_rel_ref.t from '$DUMP/t.txt'\""
my_labels=()
for r in $RANGES; do
  label="sluice run (ranges: $r)"
  bench_row "$label" "bench_rel_mysql_${r}_d1.src_t" \
    "$BIN" -p "$(pipeline mysql "$MYURL" $SRC.t "$r")" run
  my_labels+=("$label")
  echo "    rows differing from the source: $(differing "bench_rel_mysql_${r}_d1.src_t")"
done
report "MariaDB → PostgreSQL" "mysqldump --tab + psql \\copy" "${my_labels[@]}"
echo "  peak memory target: < 200 MiB"
