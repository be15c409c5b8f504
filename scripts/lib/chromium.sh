# Finds headless Chromium for the dashboard test; exports SLUICE_TEST_CHROMIUM.
# Sourced by scripts/test. Installs Debian's `chromium` when it is missing and we may
# (root with apt-get: about 25 s); otherwise fails loudly, saying how to install it.

ensure_chromium() {
  local bin=${SLUICE_TEST_CHROMIUM:-}
  [ -n "$bin" ] && [ -x "$bin" ] || bin=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
  if [ -z "$bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing Debian's chromium (headless dashboard test)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; } \
      || true
    bin=$(command -v chromium || true)
  fi
  if [ -z "$bin" ]; then
    echo "test: FAILED: headless Chromium is needed for the dashboard test (apt-get install chromium)." >&2
    exit 1
  fi
  export SLUICE_TEST_CHROMIUM="$bin"
}
