#!/usr/bin/env bash
# Files planning benchmark: the first run over a folder of new NDJSON files
# fingerprints each file (SHA-256 and line count, for content change detection)
# while planning. Times that planning (process start to the task's start, from the
# run's own log) for BIN and, when given, BASELINE_BIN, alternating ROUNDS times
# on the same files, each on a fresh lake (so every file is new).
# Usage: [ROUNDS=3] [BIN=…] [BASELINE_BIN=…] bench/files/run.sh [FILES] [MIB_EACH]
set -euo pipefail
cd "$(dirname "$0")/../.."
FILES=${1:-16}
MIB=${2:-25}
ROUNDS=${ROUNDS:-3}
WORK=$PWD/target/bench-files/${FILES}x${MIB}
BIN=${BIN:-$PWD/target/release/sluice}
mkdir -p "$WORK/project/data"
if [ ! -f "$WORK/project/data/part-$(printf %03d $((FILES - 1))).ndjson" ]; then
  echo "generating $FILES files of ~$MIB MiB…" >&2
  python3 - "$WORK/project/data" "$FILES" "$MIB" <<'PY'
import json, sys
folder, files, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for f in range(files):
    with open(f"{folder}/part-{f:03d}.ndjson", "w") as out:
        written, n = 0, 0
        while written < mib * 1024 * 1024:
            line = json.dumps({"id": f * 10_000_000 + n, "file": f, "note": "x" * 120}) + "\n"
            out.write(line)
            written += len(line)
            n += 1
PY
fi
cat > "$WORK/project/pipeline.yaml" <<YAML
name: benchfiles
lake: ./lake
destination: { type: sqlite, path: ./warehouse.db }
sources:
  folder:
    type: files
    streams:
      parts: { path: "data/*.ndjson", write_mode: append }
YAML

planning() { # binary → seconds from its start to its task's start
  rm -rf "$WORK/project/lake" "$WORK/project/warehouse.db"
  local started
  started=$(date +%s.%N)
  (cd "$WORK/project" && SLUICE_LOG=info NO_COLOR=1 "$1" run >/dev/null 2>"$WORK/log.txt") \
    || { cat "$WORK/log.txt" >&2; echo "bench: $1 run failed" >&2; exit 1; }
  python3 - "$started" "$WORK/log.txt" <<'PY'
import datetime, re, sys
start = float(sys.argv[1])
for line in open(sys.argv[2]):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})\d*Z .*task started", line)
    if m:
        t = datetime.datetime.strptime(m[1], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
        print(f"{t.timestamp() - start:.2f}")
        break
PY
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

bin_times=() base_times=()
for round in $(seq "$ROUNDS"); do
  bin_times+=("$(planning "$BIN")")
  line="  round $round: $(basename "$BIN") ${bin_times[-1]} s"
  if [ -n "${BASELINE_BIN:-}" ]; then
    base_times+=("$(planning "$BASELINE_BIN")")
    line+=", baseline ${base_times[-1]} s"
  fi
  echo "$line"
done
printf 'planning a first run over %s new files of ~%s MiB (median of %s): %s s' "$FILES" "$MIB" "$ROUNDS" "$(median "${bin_times[@]}")"
[ -n "${BASELINE_BIN:-}" ] && printf ', baseline %s s' "$(median "${base_times[@]}")"
echo
