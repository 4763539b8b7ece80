#!/usr/bin/env bash
# Host-side (installed to BASE/bin; for operators and support): a support bundle of recent logs and
# state, as one tar.gz, with every secret value from the appliance's env files replaced by ***.
# Prints the bundle's path; exit 0 when written.
# Usage: log-collection.sh PROJECT [OUT_DIR] [SINCE]   (SINCE for journald/docker, default "24 hours ago")
set -euo pipefail
[ "$#" -ge 1 ] && [ "$#" -le 3 ] || { echo "usage: $0 PROJECT [OUT_DIR] [SINCE]" >&2; exit 2; }
project=$1 out_dir=${2:-/var/tmp} since=${3:-24 hours ago}
base=$(cd "$(dirname "$0")/.." && pwd)
current="$base/current"
compose="$base/bin/compose"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bundle="$work/$project-support-$stamp"
mkdir -p "$bundle/logs" "$bundle/state"

# Each piece is best effort: a missing program or a stopped container leaves a note, not a failed bundle.
capture() { local file=$1; shift; "$@" >"$bundle/$file" 2>&1 || echo "(exit $?)" >>"$bundle/$file"; }

capture state/host.txt sh -c 'hostname; uname -a; uptime; cat /etc/os-release'
capture state/disk.txt df -h
capture state/memory.txt free -m
capture state/containers.txt docker ps -a --format '{{.Names}}\t{{.Status}}\t{{.Image}}'
capture state/container-usage.txt docker stats --no-stream
capture state/firewall.txt sh -c 'ufw status verbose; iptables -S DOCKER-USER'
capture "logs/journal-$project.txt" journalctl --no-pager --since "$since" -u "$project" -u docker -u ssh -u fail2ban
for file in host.json history audit.jsonl; do
  if [ -e "$base/shared/$file" ]; then cp "$base/shared/$file" "$bundle/state/$file"; fi
done
for manifest in "$base"/releases/*/manifest.json; do
  if [ -e "$manifest" ]; then cp "$manifest" "$bundle/state/manifest-$(basename "$(dirname "$manifest")").json"; fi
done
if [ -e "$current/docker-compose.yml" ]; then
  slug=$(cat "$current/slug")
  cp "$current/docker-compose.yml" "$current/api.yml" "$bundle/state/"
  cp -r "$base/shared/nginx" "$bundle/state/nginx"
  for service in api postgres redis nginx; do
    if [ "$service" = api ]; then args=(--project-name "$project-api-$slug" --file api.yml); else args=(--project-name "$project" --file docker-compose.yml); fi
    (cd "$current" && capture "logs/$service.txt" "$compose" "${args[@]}" logs --no-color --timestamps --tail 5000 "$service")
  done
fi

# Secret values: every value of a PASSWORD/SECRET/KEY/TOKEN variable in the host's env files (key pools
# split on commas), longest first so that no part of one is left behind by a shorter one.
python3 - "$bundle" "$base" <<'PY'
import pathlib, re, sys
bundle, base = map(pathlib.Path, sys.argv[1:3])
secret_name = re.compile(r"(PASSWORD|SECRET|KEY|TOKEN)", re.I)
values = set()
for env in [*base.glob("releases/*/*.env"), *base.glob("shared/*.env")]:
    for line in env.read_text(errors="replace").splitlines():
        name, sep, value = line.partition("=")
        if sep and secret_name.search(name):
            values.update(v.strip() for v in value.split(",") if len(v.strip()) >= 4)
ordered = sorted(values, key=len, reverse=True)
for path in bundle.rglob("*"):
    if path.is_file():
        text = path.read_text(errors="replace")
        for value in ordered:
            text = text.replace(value, "***")
        path.write_text(text)
PY

mkdir -p "$out_dir"
tar -C "$work" -czf "$out_dir/$project-support-$stamp.tar.gz" "$project-support-$stamp"
chmod 600 "$out_dir/$project-support-$stamp.tar.gz"
echo "$out_dir/$project-support-$stamp.tar.gz"
