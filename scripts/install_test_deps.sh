#!/usr/bin/env bash
# Installs everything the test suite needs, from the package registries only:
# the project with its dev+viz extras, PyTorch (CPU, an optional test oracle),
# and the Debian packages graphviz (system `dot`) and chromium (browser tests)
# when they are missing. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

$PYTHON -m pip install -q --disable-pip-version-check -e ".[dev,viz]"
# PyTorch is only a test oracle for parity tests; they skip when it is absent.
$PYTHON -m pip install -q --disable-pip-version-check "torch==2.13.0" \
    || echo "note: torch not installed; PyTorch parity tests will skip"

missing=()
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing system packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "note: missing ${missing[*]} (need root + apt-get); the tests that use them will skip"
    fi
fi
