#!/usr/bin/env bash
# Host-side (installed to BASE/bin by bootstrap, run by its systemd unit after Docker starts).
# Usage: docker-user-firewall.sh PORT...
# Drops new connections from the outside interface to any Docker-published port except PORT...;
# container-to-container and host-to-container traffic is untouched. Safe to run again: the
# DOCKER-USER chain is rebuilt from scratch each time.
set -euo pipefail
[ "$#" -gt 0 ] || { echo "usage: $0 PORT..." >&2; exit 2; }

outside=$(ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit }}')
[ -n "$outside" ] || { echo "docker-user-firewall: no default route, cannot tell the outside interface" >&2; exit 1; }

iptables -w -N DOCKER-USER 2>/dev/null || true
iptables -w -F DOCKER-USER
iptables -w -A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
for port in "$@"; do
  iptables -w -A DOCKER-USER -i "$outside" -p tcp -m conntrack --ctorigdstport "$port" -j RETURN
done
iptables -w -A DOCKER-USER -i "$outside" -j DROP
iptables -w -A DOCKER-USER -j RETURN
echo "docker-user-firewall: only ports $* of Docker-published ports reachable via $outside"
