#!/usr/bin/env bash
# Load benchmark: N NDJSON rows shaped like Facebook insights → typed PostgreSQL table.
# Reports sluice's wall time and peak memory as ratios to `psql \copy` of the same
# rows as CSV, measured in the same run, with the lake plain and encrypted
# (`lake_encryption:`) in the same rounds.
# Usage: [ROUNDS=3] [BIN=path/to/sluice] bench/load/run.sh [ROWS] (default 1000000);
# without BIN it builds and uses the release binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/postgres.sh
source bench/load/lib.sh
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
if [ -z "${BIN:-}" ]; then
  cargo build --release -p sluice --quiet
  BIN=$PWD/target/release/sluice
fi

psql "$URL" -qc "drop schema if exists bench_ref cascade; create schema bench_ref; create table bench_ref.insights ($COLUMNS)"
psql "$URL" -qc "drop schema if exists bench_d1 cascade; drop schema if exists bench__sluice cascade"
write_pipeline "$WORK/project/pipeline.yaml" ./lake bench_ "$URL"
# The same pipeline on an encrypted lake (its own schemas, so both loads are alike).
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/project/lake.key"
sed -e 's|^lake: ./lake$|lake: ./lake-encrypted\nlake_encryption: { master_key: "${file:lake.key}" }|' \
    -e 's|schema_prefix: "bench_"|schema_prefix: "bench_enc_"|' \
    "$WORK/project/pipeline.yaml" > "$WORK/project/encrypted.yaml"
# Rounds alternate the two loads, each after a CHECKPOINT on an emptied table,
# so neither inherits the other's dirty buffers or a WAL-triggered checkpoint;
# the ratio is of the medians (on 2 cores single runs vary by ±20 %).
ref_times=() s_times=() e_times=() s_peak=0 e_peak=0
for round in $(seq "$ROUNDS"); do
  psql "$URL" -qc "truncate bench_ref.insights" -c "checkpoint"
  read -r ref_s ref_kib < <(measure psql "$URL" -qc "\\copy bench_ref.insights from '$WORK/rows.csv' with (format csv)")
  psql "$URL" -qc "drop schema if exists bench_d1 cascade" -c "drop schema if exists bench__sluice cascade" -c "checkpoint" 2>/dev/null
  rm -rf "$WORK/project/lake"
  read -r s_s s_kib < <(measure "$BIN" -p "$WORK/project/pipeline.yaml" run)
  psql "$URL" -qc "drop schema if exists bench_enc_d1 cascade" -c "drop schema if exists bench_enc__sluice cascade" -c "checkpoint" 2>/dev/null
  rm -rf "$WORK/project/lake-encrypted"
  read -r e_s e_kib < <(measure "$BIN" -p "$WORK/project/encrypted.yaml" run)
  echo "  round $round: psql \\copy ${ref_s} s, sluice ${s_s} s ($((s_kib / 1024)) MiB), encrypted lake ${e_s} s ($((e_kib / 1024)) MiB)"
  ref_times+=("$ref_s") s_times+=("$s_s") e_times+=("$e_s")
  [ "$s_kib" -gt "$s_peak" ] && s_peak=$s_kib
  [ "$e_kib" -gt "$e_peak" ] && e_peak=$e_kib
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ref_s=$(median "${ref_times[@]}")
s_s=$(median "${s_times[@]}")
e_s=$(median "${e_times[@]}")
s_kib=$s_peak

ref_rows=$(psql "$URL" -Atqc "select count(*) from bench_ref.insights")
s_rows=$(psql "$URL" -Atqc "select count(*) from bench_d1.insights")
e_rows=$(psql "$URL" -Atqc "select count(*) from bench_enc_d1.insights")
same=$(psql "$URL" -Atqc "select count(*) from (select account_id, ad_id, date_start, impressions, clicks, spend, reach, actions from bench_ref.insights except all select account_id, ad_id, date_start, impressions, clicks, spend, reach, actions from bench_d1.insights) d")

printf '\nload benchmark: %s rows (Facebook-insights shape) into PostgreSQL, median of %s rounds\n' "$ROWS" "$ROUNDS"
printf '  %-22s %10s %12s %10s\n' "" "seconds" "peak MiB" "rows"
printf '  %-22s %10s %12s %10s\n' "psql \\copy (CSV)" "$ref_s" "$((ref_kib / 1024))" "$ref_rows"
printf '  %-22s %10s %12s %10s\n' "sluice run (NDJSON)" "$s_s" "$((s_kib / 1024))" "$s_rows"
printf '  %-22s %10s %12s %10s\n' "  … encrypted lake" "$e_s" "$((e_peak / 1024))" "$e_rows"
python3 - "$s_s" "$ref_s" "$e_s" <<'PY'
import sys
s, ref, e = map(float, sys.argv[1:4])
print(f"  time ratio sluice / psql \\copy: {s / ref:.2f}x  (target <= 1.25x)")
print(f"  time ratio sluice on an encrypted lake / psql \\copy: {e / ref:.2f}x  ({e / s:.2f}x the plain lake)")
PY
e_same=$(psql "$URL" -Atqc "select count(*) from (select account_id, ad_id, date_start, impressions, clicks, spend, reach, actions from bench_ref.insights except all select account_id, ad_id, date_start, impressions, clicks, spend, reach, actions from bench_enc_d1.insights) d")
echo "  rows differing from the reference load: $same (encrypted lake: $e_same)"
echo "  peak memory: $((s_kib / 1024)) MiB (target < 200 MiB)"
