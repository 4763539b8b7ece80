#!/usr/bin/env bash
# Host-side (installed to BASE/bin, run by the appliance's systemd unit): start or stop the current
# release — the long-lived services, then the release's API.
# Usage: stack.sh PROJECT up|down
set -euo pipefail
[ "$#" -eq 2 ] || { echo "usage: $0 PROJECT up|down" >&2; exit 2; }
project=$1 action=$2
base=$(cd "$(dirname "$0")/.." && pwd)
current="$base/current"
[ -e "$current/docker-compose.yml" ] || { echo "stack: no current release under $base" >&2; exit 1; }
slug=$(cat "$current/slug")
cd "$current"
compose="$base/bin/compose"
case $action in
  up)
    "$compose" --project-name "$project" --file docker-compose.yml up -d --remove-orphans
    "$compose" --project-name "$project-api-$slug" --file api.yml up -d
    ;;
  down)
    "$compose" --project-name "$project-api-$slug" --file api.yml down
    "$compose" --project-name "$project" --file docker-compose.yml down
    ;;
  *) echo "stack: unknown action $action (up or down)" >&2; exit 2 ;;
esac
