#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest (unit, real peers, PostgreSQL, Ray, browser).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONDONTWRITEBYTECODE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Two workers, a module each at a time (module fixtures such as a gateway stay in one process);
# tests/conftest.py hands out the slowest modules first. PETRAY_TEST_WORKERS=0 runs serially.
# The 25 slowest steps are listed at the end: where the suite's time goes (issue 13).
exec .venv/bin/python -m pytest -p no:cacheprovider -n "${PETRAY_TEST_WORKERS:-2}" --dist loadfile \
    --durations=25 "$@"
