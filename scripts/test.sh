#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m pytest -q tests "$@"
