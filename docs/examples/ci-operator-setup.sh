#!/usr/bin/env bash
# For the example pipeline: the operator's tools in .venv, the deploy key, the hosts' known keys, and the
# environment's secrets file, from the variables the workflow step sets. Usage: ci-operator-setup.sh SECRETS_FILE
set -euo pipefail
[ "$#" -eq 1 ] || { echo "usage: $0 SECRETS_FILE" >&2; exit 2; }
: "${DEPLOY_SSH_KEY:?set from the repository secret}" "${KNOWN_HOSTS:?set from the repository secret}"
: "${SECRETS:?set from the repository secret (the whole secrets file the first deploy generated)}"
python3 -m venv .venv
.venv/bin/pip install -q -e .
umask 077
install -d -m 700 ~/.ssh
printf '%s\n' "$DEPLOY_SSH_KEY" > ~/.ssh/id_ed25519
printf '%s\n' "$KNOWN_HOSTS" > ~/.ssh/known_hosts
printf '%s\n' "$SECRETS" > "$1"
