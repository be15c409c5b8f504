# Creates the test venv target/py from scripts/requirements-test.txt (pinned) and
# exports SLUICE_TEST_PYTHON, its interpreter. Sourced by scripts/test.
#
# The venv is kept between runs: it is rebuilt only when the requirements file changed
# (a hash stamp inside the venv), so a warm run costs a hash. A cold install of the
# pinned set takes about 45 s here (Airflow is most of it).

ensure_test_python() {
  local venv="$PWD/target/py" req="$PWD/scripts/requirements-test.txt"
  local stamp="$venv/.requirements.sha256" want
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    export SLUICE_TEST_PYTHON="$venv/bin/python"
    return
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    echo "test: FAILED: python3 is needed for the Airflow/Kubernetes/OpenLineage/Prometheus checks (apt-get install python3 python3-venv)." >&2
    exit 1
  fi
  echo "test: installing pinned Python test packages into target/py (scripts/requirements-test.txt)"
  local started=$SECONDS
  rm -rf "$venv"
  python3 -m venv "$venv" || { echo "test: FAILED: python3 -m venv (apt-get install python3-venv)" >&2; exit 1; }
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"; then
    echo "test: FAILED: pip install -r scripts/requirements-test.txt" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
  echo "test: target/py ready in $((SECONDS - started)) s"
  export SLUICE_TEST_PYTHON="$venv/bin/python"
}

# Creates target/py-taps from scripts/requirements-taps.txt (pinned Singer taps, kept
# apart from the Airflow venv) and exports SLUICE_TEST_TAP_SPREADSHEETS, the tap the
# `type: command` tests run. Rebuilt only when the requirements file changed.
ensure_tap_python() {
  local venv="$PWD/target/py-taps" req="$PWD/scripts/requirements-taps.txt"
  local stamp="$venv/.requirements.sha256" want
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ -x "$venv/bin/tap-spreadsheets" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    export SLUICE_TEST_TAP_SPREADSHEETS="$venv/bin/tap-spreadsheets"
    return
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    echo "test: FAILED: python3 is needed for the Singer tap checks (apt-get install python3 python3-venv)." >&2
    exit 1
  fi
  echo "test: installing pinned Singer taps into target/py-taps (scripts/requirements-taps.txt)"
  local started=$SECONDS
  rm -rf "$venv"
  python3 -m venv "$venv" || { echo "test: FAILED: python3 -m venv (apt-get install python3-venv)" >&2; exit 1; }
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"; then
    echo "test: FAILED: pip install -r scripts/requirements-taps.txt" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
  echo "test: target/py-taps ready in $((SECONDS - started)) s"
  export SLUICE_TEST_TAP_SPREADSHEETS="$venv/bin/tap-spreadsheets"
}
