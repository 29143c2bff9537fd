#!/usr/bin/env bash
# The Python half of the test command: sets up python/.venv from scratch if needed,
# installs the package with its test and django extras (Django from PyPI, for the
# Django project under tests/), checks that the committed stubs match
# proto/, type-checks the package, and runs pytest against the real daemon (built by
# the tests' session fixture unless CACHEBACKD_BIN names a binary).
# Extra arguments go to pytest. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")"

# The fleet failover tests run a real redis-server.
if ! command -v redis-server >/dev/null; then
    apt-get update -qq && apt-get install -y -qq redis-server
fi
PYTHON=${PYTHON:-python3}
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# Non-editable, so the tests see the package as a user installs it (py.typed, stubs included).
"$PY" -m pip install --quiet --disable-pip-version-check ".[test,django]"
"$PY" scripts/gen_protos.py --check
"$PY" -m mypy
exec "$PY" -m pytest "$@"
