#!/usr/bin/env bash
# Model memory benchmark: a D2A model over N D1 rows (the `generate` source), published
# to PostgreSQL. Reports the model run's wall time and peak RSS, and — when
# BASELINE_BIN names another sluice binary (e.g. one built from an older commit) —
# the same for it, measured in the same run on the same lake, side by side.
#
# Then the same model with `engine: destination`: planned by sluice, run inside
# PostgreSQL over the published D1 table (no row passes through sluice), with its
# time, sluice's own peak RSS and a row-for-row comparison with the local result.
#
# Usage: [BIN=…] [BASELINE_BIN=…] bench/model/run.sh [ROWS] (default 10000000).
# BIN defaults to a release build of this checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/postgres.sh
ensure_postgres
ROWS=${1:-10000000}
URL=$SLUICE_TEST_DATABASE_URL
WORK=$PWD/target/bench-model/$ROWS
if [ -z "${BIN:-}" ]; then
  cargo build --release -p sluice --quiet
  BIN=$PWD/target/release/sluice
fi
mkdir -p "$WORK/project/models/d2a"

cat > "$WORK/project/pipeline.yaml" <<YAML
name: benchmodel
lake: ./lake
destination: { type: postgres, url: "$URL", schema_prefix: "benchmodel_" }
sources:
  synthetic:
    type: generate
    streams:
      insights: { rows: $ROWS, page_rows: 100000, days: 30 }
YAML
# The measured runs read the same D1 table through a stand-in `files` stream that is
# never extracted (`--select` runs the model only), so a binary older than the
# `generate` source can be the baseline.
cat > "$WORK/project/model-only.yaml" <<YAML
name: benchmodel
lake: ./lake
destination: { type: postgres, url: "$URL", schema_prefix: "benchmodel_" }
sources:
  synthetic:
    type: files
    streams:
      insights:
        path: never-read/*.ndjson
        columns: { id: bigint, day: date, account: text, clicks: bigint, spend: "numeric(12,2)" }
        infer_columns: false
        write_mode: replace
YAML
cat > "$WORK/project/models/d2a/spend_daily_rows.sql" <<'SQL'
SELECT id, day, account, clicks, spend, clicks * 2 AS double_clicks,
       CASE WHEN spend > 500 THEN 'high' ELSE 'low' END AS band
FROM d1.synthetic_insights
SQL
printf 'partition_by: day\n' > "$WORK/project/models/d2a/spend_daily_rows.yml"

measure() { # command… → prints "seconds maxrss_kib"
  local report="$WORK/time.txt"
  /usr/bin/time -o "$report" -f '%e %M' "$@" >"$WORK/stdout.txt" 2>"$WORK/stderr.txt" \
    || { cat "$WORK/stdout.txt" "$WORK/stderr.txt" >&2; echo "bench: command failed: $*" >&2; exit 1; }
  tail -n 1 "$report"
}

if [ ! -d "$WORK/project/lake/d1/synthetic_insights" ]; then
  echo "loading $ROWS D1 rows (once)…"
  psql "$URL" -qc "drop schema if exists benchmodel_d1 cascade" -c "drop schema if exists benchmodel_d2a cascade"
  (cd "$WORK/project" && "$BIN" run --select synthetic >/dev/null)
fi

run_model() { # binary [pipeline file] → "seconds maxrss_kib" on stdout; exits on a wrong result
  psql "$URL" -qc "drop schema if exists benchmodel_d2a cascade" 2>/dev/null
  rm -rf "$WORK/project/lake/d2a"
  local result
  result=$(cd "$WORK/project" && measure "$1" -p "${2:-model-only.yaml}" run --full-refresh --select spend_daily_rows)
  local published
  published=$(psql "$URL" -tAc "select count(*) from benchmodel_d2a.spend_daily_rows")
  if [ "$published" != "$ROWS" ]; then
    cat "$WORK/stdout.txt" >&2
    echo "bench: $1 published ${published:-no} rows, expected $ROWS" >&2
    exit 1
  fi
  echo "$result"
}

result=$(run_model "$BIN"); read -r s_s s_kib <<<"$result"
echo "model over $ROWS rows → PostgreSQL: ${s_s} s, peak $((s_kib / 1024)) MiB  ($BIN)"
if [ -n "${BASELINE_BIN:-}" ]; then
  result=$(run_model "$BASELINE_BIN"); read -r b_s b_kib <<<"$result"
  echo "baseline:                          ${b_s} s, peak $((b_kib / 1024)) MiB  ($BASELINE_BIN)"
  python3 -c "print(f'peak memory ratio (this / baseline): {$s_kib / $b_kib:.2f}x; time ratio {$s_s / $b_s:.2f}x')"
fi

# The same model inside PostgreSQL. The local result is kept aside to compare with.
psql "$URL" -qc "drop schema if exists benchmodel_local cascade" \
  -c "alter table benchmodel_d2a.spend_daily_rows set schema public" \
  -c "create schema benchmodel_local" \
  -c "alter table public.spend_daily_rows set schema benchmodel_local"
sed 's#^sources:#models: { path: ./models, engine: destination }\nsources:#' \
  "$WORK/project/model-only.yaml" >"$WORK/project/model-in-warehouse.yaml"
result=$(run_model "$BIN" model-in-warehouse.yaml); read -r w_s w_kib <<<"$result"
echo "engine: destination (in PostgreSQL): ${w_s} s, peak $((w_kib / 1024)) MiB of sluice  ($BIN)"
differ=$(psql "$URL" -tAc "select count(*) from ((select * from benchmodel_local.spend_daily_rows except all select * from benchmodel_d2a.spend_daily_rows) union all (select * from benchmodel_d2a.spend_daily_rows except all select * from benchmodel_local.spend_daily_rows)) d")
if [ "$differ" != "0" ]; then
  echo "bench: engine: destination differs from engine: local in $differ rows" >&2
  exit 1
fi
echo "engine: destination = engine: local row for row ($ROWS rows)"
python3 -c "print(f'destination / local: time {$w_s / $s_s:.2f}x, sluice peak memory {$w_kib / $s_kib:.2f}x')"
if [ "$((w_kib / 1024))" -ge 100 ]; then
  echo "bench: sluice's peak RSS with engine: destination is $((w_kib / 1024)) MiB, over 100 MiB" >&2
  exit 1
fi
