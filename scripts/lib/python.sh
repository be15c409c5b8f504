# Creates the pinned Python venvs the tests run, and exports their entry points.
# Sourced by scripts/test.
#
# A venv is kept between runs: it is rebuilt only when its requirements file changed
# (a hash stamp inside the venv), so a warm run costs a hash. A cold install of the
# test set takes about 45 s here (Airflow is most of it), of the taps about 25 s.

# ensure_venv DIR REQUIREMENTS ENTRY WHAT: the venv DIR with REQUIREMENTS installed;
# prints the path of its ENTRY (a file under bin/). WHAT names it in messages.
ensure_venv() {
  local venv="$PWD/$1" req="$PWD/$2" entry="$1/bin/$3" what="$4"
  local stamp="$venv/.requirements.sha256" want
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ -x "$PWD/$entry" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "$PWD/$entry"
    return
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    echo "test: FAILED: python3 is needed for $what (apt-get install python3 python3-venv)." >&2
    exit 1
  fi
  echo "test: installing $what into $1 ($2)" >&2
  local started=$SECONDS
  rm -rf "$venv"
  python3 -m venv "$venv" >&2 || { echo "test: FAILED: python3 -m venv (apt-get install python3-venv)" >&2; exit 1; }
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2; then
    echo "test: FAILED: pip install -r $2" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
  echo "test: $1 ready in $((SECONDS - started)) s" >&2
  echo "$PWD/$entry"
}

# target/py: Airflow, kubernetes-validate, openlineage-python, prometheus-client;
# tests run its interpreter through $SLUICE_TEST_PYTHON.
ensure_test_python() {
  SLUICE_TEST_PYTHON=$(ensure_venv target/py scripts/requirements-test.txt python \
    "the pinned Python test packages (Airflow/Kubernetes/OpenLineage/Prometheus checks)")
  export SLUICE_TEST_PYTHON
}

# target/py-taps: the pinned Singer taps, kept apart from the Airflow venv; the
# `type: command` tests run the tap through $SLUICE_TEST_TAP_SPREADSHEETS.
ensure_tap_python() {
  SLUICE_TEST_TAP_SPREADSHEETS=$(ensure_venv target/py-taps scripts/requirements-taps.txt \
    tap-spreadsheets "the pinned Singer taps")
  export SLUICE_TEST_TAP_SPREADSHEETS
}
