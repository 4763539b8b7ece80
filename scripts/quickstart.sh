#!/usr/bin/env bash
# The main job, from a fresh clone to the appliance deployed in a local sandbox CVM; it ends by
# printing the URL it serves on.
# Each stage is one line: prerequisites, the project, the sandbox, bootstrap, deploy.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/dev-prereqs.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e .
.venv/bin/inv sandbox.up
.venv/bin/inv bootstrap --config sandbox.toml
.venv/bin/inv deploy --config sandbox.toml

# A login for the web console, made through the API over TLS (the same login on a re-run), and the CA to trust.
.venv/bin/inv sandbox.login --config sandbox.toml
