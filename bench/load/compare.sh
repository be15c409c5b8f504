#!/usr/bin/env bash
# The load benchmark (bench/load/run.sh) of two commits in one run: BASE (e.g. the
# commit before a refactor) and HEAD_REV (default: this tree), both built in release
# into one shared target folder, then run alternately ROUNDS times against the same
# PostgreSQL, each round also timing the reference `psql \copy` of the same rows.
# Prints every round and, at the end, the medians side by side as ratios to `\copy`
# and head/base. The plain lake only: the encrypted lake did not exist before #13.
# Usage: [ROUNDS=3] [HEAD_REV=commit] [STEP=build|run] bench/load/compare.sh BASE_COMMIT [ROWS]
# STEP=build only builds (e.g. niced while the machine is busy); STEP=run reuses the
# binaries a build step left, so the timed part can run on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${1:?usage: bench/load/compare.sh BASE_COMMIT [ROWS]}
ROWS=${2:-1000000}
ROUNDS=${ROUNDS:-3}
source scripts/lib/postgres.sh
source bench/load/lib.sh
ensure_postgres
URL=$SLUICE_TEST_DATABASE_URL
WORK=$PWD/target/bench-load-compare
DATA=$PWD/target/bench-load/$ROWS
export CARGO_TARGET_DIR=$WORK/target
mkdir -p "$WORK/project" "$DATA/project/data"

build() { # source-dir name → $WORK/<name>
  # Both trees share one target folder and the same workspace layout: cargo would take
  # the other tree's build of a crate as fresh when this tree's files are older than
  # it (git archive dates them to the commit). Newer files make cargo look again.
  find "$1/crates" -name '*.rs' -exec touch {} +
  (cd "$1" && nice cargo build --release --quiet -p sluice)
  cp "$CARGO_TARGET_DIR/release/sluice" "$WORK/$2"
}
source_of() { # commit dir → the commit's tree, unpacked
  rm -rf "$2" && mkdir -p "$2"
  git archive "$1" | tar -x -C "$2"
}
if [ "${STEP:-}" != run ]; then
  source_of "$BASE" "$WORK/base-src"
  echo "building base $(git rev-parse --short "$BASE")…" >&2
  build "$WORK/base-src" base
  if [ -n "${HEAD_REV:-}" ]; then
    source_of "$HEAD_REV" "$WORK/head-src"
    echo "building head $(git rev-parse --short "$HEAD_REV")…" >&2
    build "$WORK/head-src" head
  else
    echo "building head $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (+ uncommitted changes)')…" >&2
    build "$PWD" head
  fi
fi
[ "${STEP:-}" = build ] && exit 0
[ -x "$WORK/base" ] && [ -x "$WORK/head" ] || { echo "bench: no binaries in $WORK: run STEP=build first" >&2; exit 1; }

if [ ! -f "$DATA/rows.csv" ]; then
  echo "generating $ROWS rows…" >&2
  python3 bench/load/generate.py "$ROWS" "$DATA/project/data/insights.ndjson" "$DATA/rows.csv"
fi
ln -sfn "$DATA/project/data" "$WORK/project/data"

psql "$URL" -qc "drop schema if exists bench_ref cascade; create schema bench_ref; create table bench_ref.insights ($COLUMNS)"
# One pipeline per binary, each with its own schemas, so the two never share a table.
for which in base head; do
  write_pipeline "$WORK/project/$which.yaml" "./lake-$which" "bench_${which}_" "$URL"
done

fresh() { # which → drops its schemas and lake, then a CHECKPOINT so no load inherits another's dirty buffers
  psql "$URL" -qc "drop schema if exists bench_${1}_d1 cascade" -c "drop schema if exists bench_${1}__sluice cascade" -c "checkpoint" 2>/dev/null
  rm -rf "$WORK/project/lake-$1"
}

phases() { # process start (epoch s), its log → "planning_s extract_and_load_s"
  python3 - "$1" "$2" <<'PY'
import datetime, re, sys
start, stamps = float(sys.argv[1]), {}
for line in open(sys.argv[2]):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})\d*Z .*task (started|finished)", line)
    if m:
        t = datetime.datetime.strptime(m[1], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
        stamps.setdefault(m[2], t.timestamp())
print(f"{stamps['started'] - start:.2f} {stamps['finished'] - stamps['started']:.2f}")
PY
}

declare -A times peaks plans loads
ref_times=()
for round in $(seq "$ROUNDS"); do
  psql "$URL" -qc "truncate bench_ref.insights" -c "checkpoint"
  read -r ref_s _ < <(measure psql "$URL" -qc "\\copy bench_ref.insights from '$DATA/rows.csv' with (format csv)")
  ref_times+=("$ref_s")
  line="  round $round: psql \\copy ${ref_s} s"
  # Alternate which binary goes first, so neither always follows the reference load.
  order="base head"; [ $((round % 2)) -eq 0 ] && order="head base"
  for which in $order; do
    fresh "$which"
    started=$(date +%s.%N)
    read -r s kib < <(measure env SLUICE_LOG=info NO_COLOR=1 "$WORK/$which" -p "$WORK/project/$which.yaml" run)
    times[$which]="${times[$which]:-} $s"
    # Where the time went, from the run's own log: start-up and planning (to the task
    # start; the files source fingerprints a new file by content there), then the
    # extraction and load (task start to task end).
    read -r plan_s load_s < <(phases "$started" "$WORK/stderr.txt")
    plans[$which]="${plans[$which]:-} $plan_s" loads[$which]="${loads[$which]:-} $load_s"
    [ "$kib" -gt "${peaks[$which]:-0}" ] && peaks[$which]=$kib
    line+=", $which ${s} s ($((kib / 1024)) MiB)"
  done
  echo "$line"
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ref_s=$(median "${ref_times[@]}")
# shellcheck disable=SC2086 # the lists are space-separated numbers
base_s=$(median ${times[base]})
# shellcheck disable=SC2086
head_s=$(median ${times[head]})
differing() { # which → rows in the reference and not in its table, or the other way
  psql "$URL" -Atqc "select count(*) from (
    (select account_id, ad_id, date_start, impressions, clicks, spend, reach, actions from bench_ref.insights
     except all select account_id, ad_id, date_start, impressions, clicks, spend, reach, actions from bench_${1}_d1.insights)
    union all
    (select account_id, ad_id, date_start, impressions, clicks, spend, reach, actions from bench_${1}_d1.insights
     except all select account_id, ad_id, date_start, impressions, clicks, spend, reach, actions from bench_ref.insights)) d"
}

printf '\nload benchmark, base %s vs head %s: %s rows into PostgreSQL, median of %s rounds\n' \
  "$(git rev-parse --short "$BASE")" "$(git rev-parse --short "${HEAD_REV:-HEAD}")" "$ROWS" "$ROUNDS"
printf '| | seconds | ratio to \\copy | peak MiB | rows differing from \\copy |\n|---|---:|---:|---:|---:|\n'
printf '| psql \\copy (CSV) | %s | 1.00 | | |\n' "$ref_s"
for which in base head; do
  s=$([ "$which" = base ] && echo "$base_s" || echo "$head_s")
  printf '| sluice %s | %s | %.2f | %s | %s |\n' "$which" "$s" "$(echo "$s / $ref_s" | bc -l)" \
    "$((${peaks[$which]} / 1024))" "$(differing "$which")"
done
printf 'head / base: %.2f (time), %.2f (peak memory)\n' "$(echo "$head_s / $base_s" | bc -l)" \
  "$(echo "${peaks[head]} / ${peaks[base]}" | bc -l)"
for which in base head; do
  # shellcheck disable=SC2086
  printf '%s: start-up and planning %s s, extraction and load %s s (medians)\n' "$which" \
    "$(median ${plans[$which]})" "$(median ${loads[$which]})"
done
