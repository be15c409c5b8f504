#!/usr/bin/env bash
# Real-client check of the sandbox: the official facebook-business SDK and
# google-ads protobuf types must accept what `sluice sandbox` serves.
# Usage: scripts/sandbox-sdk-check/run.sh [path/to/sluice]   (default target/debug/sluice)
# Exits non-zero on any mismatch.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${1:-$ROOT/target/debug/sluice}"
VENV="$ROOT/target/sdk-venv"
[ -x "$BIN" ] || { echo "sandbox binary not found: $BIN (build it, or pass its path)" >&2; exit 2; }
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import facebook_business, google.ads.googleads' 2>/dev/null; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check facebook-business google-ads
fi
# `sluice sandbox serve …`, or the crate's example binary which takes `serve …` directly.
if "$BIN" sandbox --help >/dev/null 2>&1; then PREFIX='["sandbox"]'; else PREFIX='[]'; fi
exec "$VENV/bin/python" "$ROOT/scripts/sandbox-sdk-check/check.py" "$BIN" "$PREFIX"
