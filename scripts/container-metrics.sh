#!/usr/bin/env bash
# Host-side (installed to BASE/bin, run every minute by cron): the state of the stack's containers as a
# Prometheus textfile for node_exporter — running or not, and healthy or not where a container has a
# health check — so alerts see a stopped or unhealthy container, not only the targets Prometheus scrapes.
# Usage: container-metrics.sh PROJECT OUT.prom   (PROJECT and every PROJECT-api-* Compose project)
set -euo pipefail
[ "$#" -eq 2 ] || { echo "usage: $0 PROJECT OUT.prom" >&2; exit 2; }
project=$1 out=$2
format='{{.Label "com.docker.compose.project"}}	{{.Label "com.docker.compose.service"}}	{{.Label "com.docker.compose.oneoff"}}	{{.State}}	{{.Status}}'
listing=$(docker ps -a --filter label=com.docker.compose.project --format "$format")
mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
# One family after the other (the text format wants each family's samples together); one-off containers
# (`compose run`, e.g. migrations) are left out.
printf '%s\n' "$listing" | awk -F'\t' -v p="$project" '
  ($1 == p || index($1, p "-api-") == 1) && $3 != "True" && $2 != "" {
    labels = sprintf("project=\"%s\",service=\"%s\"", $1, $2)
    running[++n] = sprintf("appliance_container_running{%s} %d", labels, ($4 == "running"))
    if ($5 ~ /\((healthy|unhealthy|health: starting)\)/)
      healthy[++h] = sprintf("appliance_container_healthy{%s} %d", labels, ($5 ~ /\(healthy\)/))
  }
  END {
    print "# HELP appliance_container_running 1 if the container is running, else 0."
    print "# TYPE appliance_container_running gauge"
    for (i = 1; i <= n; i++) print running[i]
    print "# HELP appliance_container_healthy 1 if the container passes its health check, else 0 (containers with one)."
    print "# TYPE appliance_container_healthy gauge"
    for (i = 1; i <= h; i++) print healthy[i]
  }' > "$tmp"
chmod 644 "$tmp"
mv "$tmp" "$out"
trap - EXIT
