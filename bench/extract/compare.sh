#!/usr/bin/env bash
# The extraction benchmark (bench/extract/run.sh) of two commits in one run: BASE
# (e.g. the commit before a refactor) and this tree, built in release into one shared
# target folder, then run alternately ROUNDS times each so both see the same machine.
# Prints each run's table and, at the end, the clean and faulty target times side by side.
# Usage: [ROUNDS=3] bench/extract/compare.sh BASE_COMMIT
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${1:?usage: bench/extract/compare.sh BASE_COMMIT}
ROUNDS=${ROUNDS:-3}
WORK=$PWD/target/bench-extract
export CARGO_TARGET_DIR=$WORK/target
mkdir -p "$WORK"

build() { # source-dir name → $WORK/<name>
  # Both trees share one target folder and the same workspace layout: cargo would take
  # the other tree's build of a crate as fresh when this tree's files are older than
  # it (git archive dates them to the commit). Newer files make cargo look again.
  find "$1/crates" -name '*.rs' -exec touch {} +
  (cd "$1" && nice cargo build --release --quiet -p sluice-connectors --example extract_bench)
  cp "$CARGO_TARGET_DIR/release/examples/extract_bench" "$WORK/$2"
}

BASE_SRC=$WORK/base-src
rm -rf "$BASE_SRC" && mkdir -p "$BASE_SRC"
git archive "$BASE" | tar -x -C "$BASE_SRC"
echo "building base $(git rev-parse --short "$BASE")…" >&2
build "$BASE_SRC" base
echo "building head $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (+ uncommitted changes)')…" >&2
build "$PWD" head

for round in $(seq "$ROUNDS"); do
  for which in base head; do
    echo "== round $round: $which" >&2
    "$WORK/$which" | tee "$WORK/$which-$round.txt" >&2
  done
done

echo
echo "| round | base clean s | head clean s | head/base | base faults s | head faults s | head/base | exact (base, head) |"
echo "|---:|---:|---:|---:|---:|---:|---:|---|"
for round in $(seq "$ROUNDS"); do
  # "target: … clean 1.23 s (…), with faults 2.34 s = … exact: true / true"; the last field keeps the rest
  read -r bc bf be < <(sed -n 's/^target:.* clean \([0-9.]*\) s .*with faults \([0-9.]*\) s .*exact: \(.*\)$/\1 \2 \3/p' "$WORK/base-$round.txt")
  read -r hc hf he < <(sed -n 's/^target:.* clean \([0-9.]*\) s .*with faults \([0-9.]*\) s .*exact: \(.*\)$/\1 \2 \3/p' "$WORK/head-$round.txt")
  awk -v r="$round" -v bc="$bc" -v hc="$hc" -v bf="$bf" -v hf="$hf" -v be="$be" -v he="$he" \
    'BEGIN { printf "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %s, %s |\n", r, bc, hc, hc/bc, bf, hf, hf/bf, be, he }'
done
