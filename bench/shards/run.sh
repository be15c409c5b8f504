#!/usr/bin/env bash
# Sharded-run benchmark (issue #20): the Facebook extraction of 16 ad accounts from the
# sandbox with a fixed 100 ms latency on every request, run as 1 shard and then as
# 3 `--shard K/3` worker processes started together (+ `--finalize`), in the same
# script run against the same sandbox. Target: 3 shards in ≤ 0.4× the wall time of
# 1 shard, within the same request budget and with the same requests (counted by the
# sandbox, `GET /_sandbox/requests`; any difference but the few account lookups
# explained at the end fails the script), and both warehouses equal to the sandbox's
# truth. TASKS is `execution.concurrency` (streams at once) in both.
#
# The sandbox makes 3 accounts per `--scale`: scale 6 serves 18, and the pipeline
# names 16 of them (`accounts: [act_…]`), so exactly 16 are extracted.
#
# The Facebook source's request budget (`http.requests_per_second`, default 50) is RPS,
# the same in both runs; the shards divide it (RPS/3 each). The default here, 600/s,
# binds neither run, so latency is what is measured: at the source's default 50/s,
# 240 requests need ≥ 4.8 s whatever the sharding, and at 150/s a shard's 50/s
# alone makes its 90 requests take ≥ 1.8 s.
#
# Usage: [BIN=…] [WORK=dir] [LATENCY_MS=100] [DAYS=28] [SHARDS=3] [RPS=600] [TASKS=4] [REPEAT=1] bench/shards/run.sh
# REPEAT measures the pair (1 shard, then the shards) that many times in turn, each on
# fresh projects and checked like the first: the 3-shard time varies between runs of one
# binary on a shared 2-core machine by more than a change moves it, so every pair's
# ratio is printed, then their median.
# WORK (default target/bench-shards) is emptied first and holds both projects; under
# /dev/shm the lakes are on tmpfs, away from a disk whose file creation varies.
# BIN defaults to target/release/sluice when it exists, else a debug build of this
# checkout (the run is dominated by request latency, not by CPU: say which was used).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-$PWD/target/bench-shards}
LATENCY_MS=${LATENCY_MS:-100}
DAYS=${DAYS:-28}
SHARDS=${SHARDS:-3}
RPS=${RPS:-600}
TASKS=${TASKS:-4}
REPEAT=${REPEAT:-1}
ACCOUNTS=16
SCALE=6
TODAY=2026-11-30
if [ -z "${BIN:-}" ]; then
  if [ -x target/release/sluice ]; then
    BIN=$PWD/target/release/sluice
  else
    cargo build --workspace --all-targets --quiet
    BIN=$PWD/target/debug/sluice
  fi
fi
SINCE=$(date -u -d "$TODAY - $((DAYS - 1)) days" +%F)
rm -rf "$WORK" && mkdir -p "$WORK"

"$BIN" sandbox serve --port 0 --seed 42 --scale $SCALE --today $TODAY --latency-ms "$LATENCY_MS" \
  > "$WORK/sandbox.out" 2> "$WORK/sandbox.err" &
SANDBOX=$!
trap 'kill $SANDBOX 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q 'listening on' "$WORK/sandbox.out" 2>/dev/null && break
  sleep 0.1
done
URL=$(sed -n 's/^sandbox listening on //p' "$WORK/sandbox.out")
[ -n "$URL" ] || { cat "$WORK/sandbox.err" >&2; echo "bench: the sandbox did not start" >&2; exit 1; }
requests() { curl -fs "$URL/_sandbox/requests" | python3 -c 'import json,sys; print(json.load(sys.stdin)["facebook"])'; }

# Account i = 284019000000001 + 17·i (docs/sandbox.md).
ACCOUNT_LIST=$(python3 -c "print(', '.join(f'act_{284019000000001 + 17 * i}' for i in range($ACCOUNTS)))")
project() { # $1 directory
  mkdir -p "$1"
  cat > "$1/pipeline.yaml" <<YAML
name: benchshards
lake: ./lake
execution: { concurrency: $TASKS }
sources:
  facebook:
    type: facebook_ads
    base_url: $URL
    access_token: sandbox-facebook-token
    api_version: v26.0
    accounts: [$ACCOUNT_LIST]
    start_date: $SINCE
    lookback_days: $DAYS
    http: { requests_per_second: $RPS }
    streams:
      insights:
        level: ad
        fields: [impressions, clicks, spend, reach, actions]
      insights_actions: {}
      campaigns: {}
      adsets: {}
      ads: {}
YAML
}

now() { date +%s.%N; }
# Each sluice process's CPU time (user + sys), when GNU time is installed: the shards and
# the sandbox share this machine's cores, which a shard on a pod of its own would not.
timed() { # $1 file for the CPU seconds, then the command
  local out=$1; shift
  if [ -x /usr/bin/time ]; then /usr/bin/time -f '%U %S' -o "$out" "$@"; else "$@"; fi
}
cpu() { [ -s "$1" ] && awk '{printf "%.2f", $1 + $2}' "$1" || echo "?"; }
fail() { echo "bench: $*" >&2; exit 1; }

"$BIN" sandbox truth --seed 42 --scale $SCALE --today $TODAY --since "$SINCE" --until $TODAY > "$WORK/truth.json"
EXACT=0
# One pair: 1 shard in $ONE, then the shards in $MANY; sets ONE_S, MANY_S, FINALIZE_S,
# ONE_REQ and MANY_REQ, and EXACT=1 when either warehouse differs from the truth.
measure_pair() {
  # ------------------------------------------------------------ 1 shard
  project "$ONE"
  before=$(requests)
  start=$(now)
  (cd "$ONE" && timed cpu.txt "$BIN" run --today $TODAY --shard 0/1 --round bench > run.out 2> run.err) \
    || { cat "$ONE/run.err" >&2; fail "the 1-shard run failed"; }
  (cd "$ONE" && "$BIN" run --today $TODAY --finalize --round bench > finalize.out 2> finalize.err) \
    || { cat "$ONE/finalize.err" >&2; fail "the 1-shard finalize failed"; }
  ONE_S=$(echo "$(now) - $start" | bc -l)
  ONE_REQ=$(( $(requests) - before ))

  # ------------------------------------------------------------ N shards, started together
  project "$MANY"
  before=$(requests)
  start=$(now)
  pids=()
  for k in $(seq 0 $((SHARDS - 1))); do
    (cd "$MANY" && timed "cpu-$k.txt" "$BIN" run --today $TODAY --shard "$k/$SHARDS" --round bench \
      > "shard-$k.out" 2> "shard-$k.err") &
    pids+=($!)
  done
  for k in "${!pids[@]}"; do
    wait "${pids[$k]}" || { cat "$MANY/shard-$k.err" >&2; fail "shard $k/$SHARDS failed"; }
  done
  SHARDS_DONE=$(now)
  (cd "$MANY" && "$BIN" run --today $TODAY --finalize --round bench > finalize.out 2> finalize.err) \
    || { cat "$MANY/finalize.err" >&2; fail "the $SHARDS-shard finalize failed"; }
  MANY_S=$(echo "$(now) - $start" | bc -l)
  FINALIZE_S=$(echo "$(now) - $SHARDS_DONE" | bc -l)
  MANY_REQ=$(( $(requests) - before ))

  # ------------------------------------------------------------ both equal the truth
  python3 - "$WORK/truth.json" "$ACCOUNTS" "$ONE/warehouse.db" "$MANY/warehouse.db" <<'PY' || EXACT=$?
import json, sqlite3, sys
from decimal import Decimal
truth_path, accounts, one, many = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
wanted = {f"{284019000000001 + 17 * i}" for i in range(accounts)}
truth = {}
for d in json.load(open(truth_path))["facebook"]["days"]:
    account = d["account_id"].removeprefix("act_")
    if account in wanted:
        truth[(account, d["date"])] = (d["impressions"], d["clicks"], Decimal(d["spend"]), d["rows"])

def per_account_day(path):
    db = sqlite3.connect(path)
    out = {}
    for account, day, impressions, clicks, spend in db.execute(
            "select account_id, date_start, impressions, clicks, spend from d1__facebook_insights"):
        i, c, s, n = out.get((account, day), (0, 0, Decimal(0), 0))
        out[(account, day)] = (i + (impressions or 0), c + (clicks or 0), s + Decimal(spend or 0), n + 1)
    return out

def rows(path):
    """Every row of every table, without sluice's per-run columns."""
    db = sqlite3.connect(path)
    tables = [t for (t,) in db.execute(
        "select name from sqlite_master where type = 'table' and name like 'd1\\_\\_%' escape '\\' order by name")]
    out = {}
    for table in tables:
        cursor = db.execute(f'select * from "{table}"')
        keep = [i for i, c in enumerate(cursor.description) if not c[0].startswith("_sluice_")]
        out[table] = sorted(repr(tuple(r[i] for i in keep)) for r in cursor)
    return out

ok = True
for label, path in (("1 shard", one), ("shards", many)):
    loaded = per_account_day(path)
    accounts_seen = {a for a, _ in loaded}
    if loaded != truth:
        ok = False
        wrong = sorted(k for k in set(loaded) | set(truth) if loaded.get(k) != truth.get(k))[:3]
        print(f"  {label}: insights differ from the truth at {wrong}")
    else:
        print(f"  {label}: insights equal the truth ({len(truth)} account-days, "
              f"{sum(v[3] for v in truth.values())} rows, {len(accounts_seen)} accounts)")
a, b = rows(one), rows(many)
for table in sorted(set(a) | set(b)):
    if a.get(table) != b.get(table):
        ok = False
        print(f"  {table}: {len(a.get(table, []))} rows (1 shard) vs {len(b.get(table, []))} (shards), not the same")
print(f"  every D1 table equal between the two warehouses: {'yes' if a == b else 'no'} "
      f"({', '.join(f'{t} {len(r)}' for t, r in sorted(a.items()))})")
sys.exit(0 if ok else 1)
PY

  # Each shard looks up the details of the accounts it reads (Source::prepare). The first
  # ACCOUNTS - ACCOUNTS % SHARDS accounts go round the shards the same way in every stream,
  # so each is looked up once; the streams of the accounts left over spread across the
  # shards (Shard::owns_position), so each of those may be looked up by every shard.
  EXTRA_LOOKUPS=$(( (ACCOUNTS % SHARDS) * (SHARDS - 1) ))
  if [ "$MANY_REQ" -lt "$ONE_REQ" ] || [ "$MANY_REQ" -gt $((ONE_REQ + EXTRA_LOOKUPS)) ]; then
    echo "  request totals differ by $((MANY_REQ - ONE_REQ)) (at most $EXTRA_LOOKUPS more account lookups expected)"
    EXACT=1
  elif [ "$MANY_REQ" != "$ONE_REQ" ]; then
    echo "  the shards sent $((MANY_REQ - ONE_REQ)) more requests: lookups of the $((ACCOUNTS % SHARDS)) account(s) left over after full rounds, whose streams spread across the shards"
  fi
}

ONE_TIMES=() MANY_TIMES=() RATIOS=()
for pair in $(seq 1 "$REPEAT"); do
  suffix=$([ "$pair" = 1 ] || echo "-$pair")
  ONE=$WORK/one$suffix MANY=$WORK/many$suffix
  measure_pair
  ONE_TIMES+=("$ONE_S") MANY_TIMES+=("$MANY_S")
  RATIOS+=("$(echo "$MANY_S / $ONE_S" | bc -l)")
done

echo
echo "binary: $BIN"
echo "Facebook, $ACCOUNTS accounts × $DAYS days, sandbox latency ${LATENCY_MS} ms per request, request budget $RPS/s (each of $SHARDS shards: $RPS/$SHARDS)"
printf '  %-30s %9s %9s %10s\n' "" seconds ratio requests
printf '  %-30s %9.2f %8.2fx %10s\n' "1 shard" "$ONE_S" 1 "$ONE_REQ"
printf '  %-30s %9.2f %8.2fx %10s\n' "$SHARDS shards (concurrent) + finalize" "$MANY_S" \
  "$(echo "$MANY_S / $ONE_S" | bc -l)" "$MANY_REQ"
printf '  %-30s %9.2f\n' "  of which the finalize" "$FINALIZE_S"
echo "  CPU seconds (user+sys): 1 shard $(cpu "$ONE/cpu.txt"); shards $(for k in $(seq 0 $((SHARDS - 1))); do printf '%s ' "$(cpu "$MANY/cpu-$k.txt")"; done)on $(nproc) cores shared with the sandbox"
echo "  target: ≤ 0.40x within the same request budget"
for k in $(seq 0 $((SHARDS - 1))); do
  echo "  shard $k/$SHARDS: $(grep -m1 '^run ' "$MANY/shard-$k.out" || true); $(grep -c ' ok ' "$MANY/shard-$k.out" || true) task(s) ok; $(grep -m1 'api facebook' "$MANY/shard-$k.out" | sed 's/^ *//' || true)"
done
if [ "$REPEAT" -gt 1 ]; then
  echo "  every pair (the last is detailed above), seconds: 1 shard / $SHARDS shards = ratio"
  for i in "${!RATIOS[@]}"; do
    printf '    pair %d: %.2f / %.2f = %.3fx\n' $((i + 1)) "${ONE_TIMES[$i]}" "${MANY_TIMES[$i]}" "${RATIOS[$i]}"
  done
  MEDIAN=$(printf '%s\n' "${RATIOS[@]}" | sort -g | awk '{r[NR] = $1} END {print (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2}')
  printf '  median ratio of %d pairs: %.3fx\n' "$REPEAT" "$MEDIAN"
fi
exit $EXACT
