#!/usr/bin/env bash
# `sluice serve` benchmark: idle memory, and the dashboard's and API's latency with
# 10,000 run records in the lake (targets: idle RSS < 30 MiB; p95 < 100 ms).
#
# One real run of a files pipeline with a model gives a real run record; it is copied
# under 10,000 run ids, then `sluice serve` starts on a loopback port. Reported:
#   - RSS after start-up and 5 s idle (VmRSS), before any request;
#   - p50/p95 of `/`, `/api/runs`, `/api/tables`, `/metrics` over 100 requests each,
#     next to `/healthz` (a route that reads nothing: the HTTP floor of the same run);
#   - RSS and peak RSS (VmHWM) after those requests.
#
# Usage: [BIN=…] [RUNS=10000] bench/serve/run.sh. BIN defaults to target/release/sluice
# when it exists (the number that counts), else a debug build of this checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=$PWD/target/bench-serve
RUNS=${RUNS:-10000}
if [ -z "${BIN:-}" ]; then
  if [ -x target/release/sluice ]; then
    BIN=$PWD/target/release/sluice
  else
    cargo build --workspace --all-targets --quiet
    BIN=$PWD/target/debug/sluice
  fi
fi
rm -rf "$WORK" && mkdir -p "$WORK/data/orders" "$WORK/models/d2a"
cat > "$WORK/pipeline.yaml" <<'YAML'
name: benchserve
lake: ./lake
sources:
  shop:
    type: files
    streams:
      orders:
        path: data/orders/*.ndjson
        columns: { order_id: bigint, amount: "numeric(12,2)", order_date: date }
        primary_key: [order_id]
        partition_column: order_date
YAML
echo "SELECT order_date, sum(amount) AS amount, count(*) AS orders FROM d1.shop_orders GROUP BY order_date" \
  > "$WORK/models/d2a/orders_daily.sql"
for i in $(seq 1 200); do
  printf '{"order_id": %d, "amount": "%d.50", "order_date": "2026-11-%02d"}\n' "$i" "$i" $((i % 28 + 1))
done > "$WORK/data/orders/a.ndjson"
cd "$WORK"
"$BIN" run > /dev/null

# Copy the one real record under $RUNS run ids, one minute apart.
python3 - "$RUNS" <<'PY'
import json, pathlib, sys, datetime
runs = pathlib.Path("lake/_state/benchserve/runs")
[record_path] = [p for p in runs.glob("*.json")]
record = json.loads(record_path.read_text())
start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
for i in range(int(sys.argv[1]) - 1):
    t = start + datetime.timedelta(minutes=i)
    run_id = t.strftime("%Y%m%dT%H%M%S000Z") + f"-{i:06x}"
    record["run_id"] = run_id
    record["started_at"] = t.isoformat().replace("+00:00", "Z")
    record["finished_at"] = (t + datetime.timedelta(seconds=3)).isoformat().replace("+00:00", "Z")
    (runs / f"{run_id}.json").write_text(json.dumps(record))
PY

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" serve --listen "127.0.0.1:$PORT" 2> serve.log &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/healthz" > /dev/null && break
  sleep 0.1
done
sleep 5
rss() { awk -v k="$1:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$PID/status"; }
echo "binary: $BIN"
echo "run records: $RUNS"
echo "idle RSS after start-up: $(rss VmRSS) MiB (target < 30 MiB)"

latency() { # path → "p50 p95" in ms over 100 requests (after one warm-up)
  curl -fs "http://127.0.0.1:$PORT$1" > /dev/null
  for _ in $(seq 1 100); do
    curl -fs -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$PORT$1"
  done | sort -n | awk '{ t[NR] = $1 * 1000 } END { printf "p50 %6.1f ms  p95 %6.1f ms", t[50], t[95] }'
}
for path in /healthz / /api/runs /api/tables /metrics; do
  printf '%-12s %s\n' "$path" "$(latency "$path")"
done
echo "RSS after the requests: $(rss VmRSS) MiB; peak $(rss VmHWM) MiB"
