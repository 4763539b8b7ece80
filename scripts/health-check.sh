#!/usr/bin/env bash
# Host-side (installed to BASE/bin; for cron, monitoring and operators): is the appliance serving?
# Checks the stack's containers (those its release defines), then /api/health through nginx's HTTPS as a browser reaches it.
# Prints one line; exit 0 healthy, 1 unhealthy, 2 usage or nothing deployed.
# Usage: health-check.sh PROJECT
set -uo pipefail
[ "$#" -eq 1 ] || { echo "usage: $0 PROJECT" >&2; exit 2; }
project=$1
base=$(cd "$(dirname "$0")/.." && pwd)
current="$base/current"
[ -e "$current/docker-compose.yml" ] || { echo "UNKNOWN: no release deployed under $base"; exit 2; }
version=$(basename "$(readlink -f "$current")")
slug=$(cat "$current/slug")
compose="$base/bin/compose"

problems=()
# The data services only where the release runs them (none with a managed database and Redis).
defined=$(cd "$current" && "$compose" --project-name "$project" --file docker-compose.yml config --services 2>/dev/null)
for service in postgres redis nginx; do
  [ -z "$defined" ] || grep -qx "$service" <<<"$defined" || continue  # (unreadable: check them all)
  id=$(cd "$current" && "$compose" --project-name "$project" --file docker-compose.yml ps -q "$service" 2>/dev/null)
  state=$( [ -n "$id" ] && docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id" 2>/dev/null )
  [ "$state" = "running/healthy" ] || problems+=("$service ${state:-missing}")
done
api=$(cd "$current" && "$compose" --project-name "$project-api-$slug" --file api.yml ps -q api 2>/dev/null)
[ -n "$api" ] && [ "$(docker inspect -f '{{.State.Status}}' "$api" 2>/dev/null)" = running ] || problems+=("api not running")

# Through nginx, as users reach it (the certificate may be self-signed: this checks serving, not identity).
answer=$(curl -ksS --max-time 5 -w '\n%{http_code}' https://127.0.0.1/api/health 2>&1)
code=${answer##*$'\n'}
body=${answer%$'\n'*}
if [ "$code" != 200 ]; then
  problems+=("https /api/health answered ${code:-nothing}")
elif ! printf '%s' "$body" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["database"]["connected"] else 1)' 2>/dev/null; then
  problems+=("database not connected")
fi

if [ "${#problems[@]}" -eq 0 ]; then
  echo "OK: release $version serving, database connected"
  exit 0
fi
joined=$(printf '%s; ' "${problems[@]}")
echo "UNHEALTHY: release $version: ${joined%; }"
exit 1
