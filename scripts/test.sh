#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest (unit, real peers, PostgreSQL, Ray, browser).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONDONTWRITEBYTECODE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
