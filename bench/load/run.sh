#!/usr/bin/env bash
# Load benchmark: N NDJSON rows shaped like Facebook insights → typed PostgreSQL table.
# Reports sluice's wall time and peak memory as ratios to `psql \copy` of the same
# rows as CSV, measured in the same run. Usage: [ROUNDS=3] bench/load/run.sh [ROWS] (default 1000000).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/postgres.sh
ensure_postgres
ROWS=${1:-1000000}
ROUNDS=${ROUNDS:-3}
URL=$SLUICE_TEST_DATABASE_URL
WORK=target/bench-load/$ROWS
mkdir -p "$WORK/project/data"

if [ ! -f "$WORK/rows.csv" ]; then
  echo "generating $ROWS rows…"
  python3 bench/load/generate.py "$ROWS" "$WORK/project/data/insights.ndjson" "$WORK/rows.csv"
fi
cargo build --release -p sluice --quiet
BIN=$PWD/target/release/sluice

COLUMNS="account_id text, campaign_id text, adset_id text, ad_id text, ad_name text, date_start date, date_stop date, impressions bigint, clicks bigint, spend numeric(12,2), reach bigint, account_currency text, actions jsonb"
psql "$URL" -qc "drop schema if exists bench_ref cascade; create schema bench_ref; create table bench_ref.insights ($COLUMNS)"
psql "$URL" -qc "drop schema if exists bench_d1 cascade; drop schema if exists bench__sluice cascade"

measure() { # command… → prints "seconds maxrss_kib" (GNU time writes them to a file)
  local report="$WORK/time.txt"
  /usr/bin/time -o "$report" -f '%e %M' "$@" >/dev/null 2>"$WORK/stderr.txt" \
    || { cat "$WORK/stderr.txt" >&2; echo "bench: command failed: $*" >&2; exit 1; }
  tail -n 1 "$report"
}

cat > "$WORK/project/pipeline.yaml" <<YAML
name: bench
lake: ./lake
destination: { type: postgres, url: "$URL", schema_prefix: "bench_" }
sources:
  fb:
    type: files
    streams:
      insights:
        path: data/insights.ndjson
        table: insights
        infer_columns: false
        columns: { account_id: text, campaign_id: text, adset_id: text, ad_id: text, ad_name: text, date_start: date, date_stop: date, impressions: bigint, clicks: bigint, spend: "numeric(12,2)", reach: bigint, account_currency: text, actions: jsonb }
        write_mode: append
YAML
# Rounds alternate the two loads, each after a CHECKPOINT on an emptied table,
# so neither inherits the other's dirty buffers or a WAL-triggered checkpoint;
# the ratio is of the medians (on 2 cores single runs vary by ±20 %).
ref_times=() s_times=() s_peak=0
for round in $(seq "$ROUNDS"); do
  psql "$URL" -qc "truncate bench_ref.insights" -c "checkpoint"
  read -r ref_s ref_kib < <(measure psql "$URL" -qc "\\copy bench_ref.insights from '$WORK/rows.csv' with (format csv)")
  psql "$URL" -qc "drop schema if exists bench_d1 cascade" -c "drop schema if exists bench__sluice cascade" -c "checkpoint" 2>/dev/null
  rm -rf "$WORK/project/lake"
  read -r s_s s_kib < <(measure "$BIN" -p "$WORK/project/pipeline.yaml" run)
  echo "  round $round: psql \\copy ${ref_s} s, sluice ${s_s} s ($((s_kib / 1024)) MiB)"
  ref_times+=("$ref_s") s_times+=("$s_s")
  [ "$s_kib" -gt "$s_peak" ] && s_peak=$s_kib
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ref_s=$(median "${ref_times[@]}")
s_s=$(median "${s_times[@]}")
s_kib=$s_peak

ref_rows=$(psql "$URL" -Atqc "select count(*) from bench_ref.insights")
s_rows=$(psql "$URL" -Atqc "select count(*) from bench_d1.insights")
same=$(psql "$URL" -Atqc "select count(*) from (select account_id, ad_id, date_start, impressions, clicks, spend, reach, actions from bench_ref.insights except all select account_id, ad_id, date_start, impressions, clicks, spend, reach, actions from bench_d1.insights) d")

printf '\nload benchmark: %s rows (Facebook-insights shape) into PostgreSQL, median of %s rounds\n' "$ROWS" "$ROUNDS"
printf '  %-22s %10s %12s %10s\n' "" "seconds" "peak MiB" "rows"
printf '  %-22s %10s %12s %10s\n' "psql \\copy (CSV)" "$ref_s" "$((ref_kib / 1024))" "$ref_rows"
printf '  %-22s %10s %12s %10s\n' "sluice run (NDJSON)" "$s_s" "$((s_kib / 1024))" "$s_rows"
python3 - "$s_s" "$ref_s" <<'PY'
import sys
s, ref = map(float, sys.argv[1:3])
print(f"  time ratio sluice / psql \\copy: {s / ref:.2f}x  (target <= 1.25x)")
PY
echo "  rows differing from the reference load: $same"
echo "  peak memory: $((s_kib / 1024)) MiB (target < 200 MiB)"
