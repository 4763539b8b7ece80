#!/usr/bin/env bash
# Host-side (installed as BASE/bin/compose): Compose v2 (`docker compose`) where the host has it,
# else v1 (`docker-compose`), with the same arguments. The appliance's units and scripts call this.
set -euo pipefail
if docker compose version >/dev/null 2>&1; then
  exec docker compose "$@"
elif command -v docker-compose >/dev/null 2>&1; then
  exec docker-compose "$@"
fi
echo "compose: neither 'docker compose' nor 'docker-compose' is installed: run inv bootstrap" >&2
exit 127
