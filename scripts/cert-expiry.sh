#!/usr/bin/env bash
# Host-side (installed to BASE/bin, run by cron): the TLS certificate's expiry as a Prometheus
# textfile metric, so monitoring can alert before it lapses.
# Usage: cert-expiry.sh CERT.pem OUT.prom
set -euo pipefail
[ "$#" -eq 2 ] || { echo "usage: $0 CERT.pem OUT.prom" >&2; exit 2; }
cert=$1 out=$2
end=$(openssl x509 -enddate -noout -in "$cert" | cut -d= -f2)
seconds=$(date -d "$end" +%s)
mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.XXXXXX")
cat > "$tmp" <<PROM
# HELP appliance_tls_cert_expiry_timestamp_seconds When the served TLS certificate expires.
# TYPE appliance_tls_cert_expiry_timestamp_seconds gauge
appliance_tls_cert_expiry_timestamp_seconds $seconds
PROM
chmod 644 "$tmp"
mv "$tmp" "$out"
