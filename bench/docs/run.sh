#!/usr/bin/env bash
# Docs benchmark: `sluice docs build` for a generated project of 100 `files` streams
# (declared columns) and 100 models (50 D2A joins of two streams, 50 D2B rollups of
# them), so every model is planned and its column-level lineage walked. Target < 2 s.
#
# Usage: [BIN=…] bench/docs/run.sh. BIN defaults to a debug build of this checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=$PWD/target/bench-docs
if [ -z "${BIN:-}" ]; then
  cargo build --workspace --all-targets --quiet
  BIN=$PWD/target/debug/sluice
fi
rm -rf "$WORK" && mkdir -p "$WORK/models/d2a" "$WORK/models/d2b"
{
  printf 'name: benchdocs\nlake: ./lake\nsources:\n  shop:\n    type: files\n    streams:\n'
  for i in $(seq 0 99); do
    printf '      s%d:\n        path: data/s%d/*.ndjson\n        infer_columns: false\n' "$i" "$i"
    printf '        columns: { id: bigint, day: date, account: text, clicks: bigint, spend: "numeric(12,2)" }\n'
    printf '        primary_key: [id]\n'
  done
} > "$WORK/pipeline.yaml"
for i in $(seq 0 49); do
  a=$((2 * i)) b=$((2 * i + 1))
  echo "SELECT a.day, a.account, sum(a.clicks) AS clicks, sum(a.spend + b.spend) AS spend FROM d1.shop_s$a AS a JOIN d1.shop_s$b AS b ON a.id = b.id GROUP BY a.day, a.account" > "$WORK/models/d2a/m$i.sql"
  echo "SELECT day, sum(spend) AS spend, sum(clicks) AS clicks FROM d2a.m$i GROUP BY day" > "$WORK/models/d2b/r$i.sql"
done
cd "$WORK"
start=$(date +%s.%N)
"$BIN" docs build --out "$WORK/site"
end=$(date +%s.%N)
echo "docs build, 100 streams + 100 models: $(awk "BEGIN { printf \"%.2f\", $end - $start }") s (target < 2 s)"
