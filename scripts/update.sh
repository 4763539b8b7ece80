#!/usr/bin/env bash
# Host-side (installed to BASE/bin; for operators or a maintenance cron): apply the OS's security
# updates, then make sure the stack serves again. If Docker itself was upgraded, the stack is restarted
# through its systemd unit; a kernel update is reported (or rebooted into with --reboot: the stack
# comes back by itself at boot). One line at the end; exit 0 when the stack serves afterwards.
# Usage: update.sh PROJECT [--reboot]
set -euo pipefail
[ "$#" -ge 1 ] && [ "$#" -le 2 ] || { echo "usage: $0 PROJECT [--reboot]" >&2; exit 2; }
project=$1 reboot=${2:-}
[ -z "$reboot" ] || [ "$reboot" = --reboot ] || { echo "usage: $0 PROJECT [--reboot]" >&2; exit 2; }
bin=$(cd "$(dirname "$0")" && pwd)
command -v unattended-upgrade >/dev/null || { echo "update: unattended-upgrades is not installed (bootstrap installs it)" >&2; exit 2; }
exec 9>"/run/lock/$project-update.lock"
flock -n 9 || { echo "update: another update is running" >&2; exit 1; }

docker_before=$(dpkg-query -W -f='${Version}' docker.io docker-ce containerd containerd.io 2>/dev/null || true)
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l
apt-get -q update >/dev/null
# Only what unattended-upgrades is configured to take (the security origins), never a release upgrade.
unattended-upgrade
docker_after=$(dpkg-query -W -f='${Version}' docker.io docker-ce containerd containerd.io 2>/dev/null || true)

if [ "$docker_before" != "$docker_after" ]; then
  systemctl restart "$project.service"
fi
if [ -e /var/run/reboot-required ] && [ "$reboot" = --reboot ]; then
  echo "update: rebooting into the updated kernel; the stack starts at boot"
  systemctl reboot
  exit 0
fi
# The stack must serve again: wait for it as a deploy's health gate would (up to two minutes).
for _ in $(seq 60); do
  status=0
  health=$("$bin/health-check.sh" "$project") || status=$?
  [ "$status" -ne 1 ] && break  # healthy, or nothing deployed to wait for
  sleep 2
done
note=""
[ -e /var/run/reboot-required ] && note="; a reboot is required (run again with --reboot in a maintenance window)"
case $health in
  OK* | UNKNOWN*) echo "update: done, $health$note" ;;
  *) echo "update: done, but $health$note"; exit 1 ;;
esac
