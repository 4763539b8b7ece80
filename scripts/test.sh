#!/usr/bin/env bash
# The test command: prerequisites and test servers, the virtualenv with dev extras, then every tier
# (unit, integration, e2e). Extra arguments go to pytest, e.g. `scripts/test.sh -m unit`.
# Two workers (TEST_WORKERS=N for more, 0 for none): most e2e time is waiting on a sandbox, so a second worker
# overlaps the next one's making with tests; tests/conftest.py keeps each sandbox's tests on one worker.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/dev-prereqs.sh --servers
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
workers=${TEST_WORKERS:-2}
if [ "$workers" -gt 0 ]; then
  exec .venv/bin/pytest -n "$workers" --dist loadgroup --no-loadscope-reorder "$@"
fi
exec .venv/bin/pytest "$@"
