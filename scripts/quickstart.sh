#!/usr/bin/env bash
# The main job, from a fresh clone: prerequisites, the virtualenv with the project, a sandbox CVM.
# Later stages (bootstrap, deploy) are appended here as one line each.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/dev-prereqs.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e .
.venv/bin/inv sandbox.up
.venv/bin/inv bootstrap --config sandbox.toml
