#!/usr/bin/env bash
# The test command: prerequisites and test servers, the virtualenv with dev extras, then every tier
# (unit, integration, e2e). Extra arguments go to pytest, e.g. `scripts/test.sh -m unit`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/dev-prereqs.sh --servers
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
exec .venv/bin/pytest "$@"
