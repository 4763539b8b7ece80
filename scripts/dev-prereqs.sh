#!/usr/bin/env bash
# Operator-workstation prerequisites (not run on a CVM): the Debian packages the appliance's tools and
# tests use, a Docker engine, and PostgreSQL/Redis on loopback for the integration tests.
# Safe to run again: it installs only what is missing and starts only what is not running.
set -euo pipefail

want_servers=0
[ "${1:-}" = "--servers" ] && want_servers=1

die() { echo "dev-prereqs: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  die "run as root (it installs Debian packages and starts dockerd)"
fi
command -v apt-get >/dev/null || die "needs a Debian or Ubuntu machine (apt-get not found)"

packages=(docker.io docker-compose debootstrap openssh-client python3-venv ca-certificates)
packages+=(age)  # age-keygen for backup keys; the backup tests encrypt and decrypt with it
packages+=(chromium chromium-driver fonts-wqy-microhei)  # the web console's browser test; a CJK font for its screenshots
packages+=(tmux)  # the terminal e2e records inv bootstrap --check in a tmux pane
command -v npm >/dev/null || packages+=(nodejs npm)  # the front-end test builds tests/fixtures/vue-app (npm ci)
if [ "$want_servers" = 1 ]; then
  packages+=(postgresql redis-server nginx-light prometheus testssl.sh wrk docker-registry)
  packages+=(prometheus-alertmanager)  # amtool: the monitoring tests check Alertmanager's config
  packages+=(pebble)  # Let's Encrypt's test ACME server: the ACME e2e issues and renews through it
  packages+=(haproxy)  # the scale-out e2e's stand-in for the Tencent CLB, health-checking both hosts
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A machine without systemd as PID 1 (a CI VM, a container) gets dockerd started by hand.
if ! docker info >/dev/null 2>&1; then
  if [ "$(cat /proc/1/comm)" = systemd ]; then
    systemctl start docker
  else
    nohup dockerd >/var/log/dockerd.log 2>&1 &
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || die "the Docker engine did not start: see /var/log/dockerd.log"
fi

if [ "$want_servers" = 1 ]; then
  # PostgreSQL: the Debian cluster on 127.0.0.1:5432 with a test role that may create databases.
  pg_version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
    pg_ctlcluster "$pg_version" main start
  fi
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='appliance_test'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"CREATE ROLE appliance_test LOGIN SUPERUSER PASSWORD 'appliance_test'\""

  # Redis on 127.0.0.1:6379, no password (loopback only, tests only).
  if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save "" --appendonly no \
      --logfile /var/log/redis-test.log
  fi
  for _ in $(seq 30); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 1; done
fi
echo "dev-prereqs: ready"
