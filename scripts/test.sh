#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# Two workers, a test file each at a time (a file's fixtures are built once): most of a test's
# time is single-threaded (imports, compiling, subprocesses starting), so two share the cores.
.venv/bin/python -m pytest -q -n "${MUSICFLAX_TEST_WORKERS:-2}" --dist loadfile tests "$@"
