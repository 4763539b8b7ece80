#!/usr/bin/env bash
# Host-side (installed to BASE/bin; from a laptop: ssh HOST BASE/bin/monitor.sh): one screen of the
# appliance's state from its Prometheus — health, agents running/queued, P95s, error rates, disk,
# memory, last backup, TLS, alerts.
# Usage: monitor.sh [--prometheus URL] [--watch SECONDS]
set -euo pipefail
prometheus=http://127.0.0.1:9090 watch=0
while [ "$#" -gt 0 ]; do
  case $1 in
    --prometheus) prometheus=${2:?--prometheus needs a URL}; shift 2 ;;
    --watch) watch=${2:?--watch needs seconds}; shift 2 ;;
    *) echo "usage: $0 [--prometheus URL] [--watch SECONDS]" >&2; exit 2 ;;
  esac
done

# Where the appliance lives: BASE/bin/monitor.sh is in it; `inv status` runs a copy and says (APPLIANCE_BASE).
appliance_base=${APPLIANCE_BASE:-$(cd "$(dirname "$0")/.." && pwd)}

screen() {
  PROMETHEUS=$prometheus APPLIANCE_BASE=$appliance_base python3 - <<'PY'
import json, os, sys, time, urllib.parse, urllib.request

BASE = os.environ["PROMETHEUS"].rstrip("/")


def get(path, **params):
    url = f"{BASE}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.load(answer)["data"]
    except OSError as exc:
        sys.exit(f"monitor: Prometheus at {BASE} does not answer ({exc}): is monitoring.enabled on this host?")


def one(promql):
    result = get("/api/v1/query", query=promql)["result"]
    return float(result[0]["value"][1]) if result else None


def seconds(value):
    if value is None or value != value:
        return "-"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.2f}s"


def percent(value):
    return "-" if value is None or value != value else f"{value * 100:.1f}%"


def count(value):
    return "-" if value is None else f"{value:.0f}"


NOT_WS = '{route!~"/ws/.*"}'


def p95(metric, selector=""):
    return one(f"histogram_quantile(0.95, sum by (le) (rate({metric}_bucket{selector}[5m])))")


up = get("/api/v1/query", query="up")["result"]
api = [series for series in up if series["metric"].get("job") == "api"]
api_state = "up" if api and api[0]["value"][1] == "1" else "DOWN"
release = api[0]["metric"].get("release", "?") if api else "?"
targets_up = sum(series["value"][1] == "1" for series in up)
health_503 = one('sum(rate(cvm_http_request_duration_seconds_count{route="/api/health",status="503"}[5m]))') or 0
alerts = get("/api/v1/alerts")["alerts"]
firing = sorted({a["labels"]["alertname"] for a in alerts if a["state"] == "firing"})
pending = sorted({a["labels"]["alertname"] for a in alerts if a["state"] == "pending"})
backup_age = one("time() - appliance_backup_last_success_timestamp_seconds")
drill = one("appliance_backup_drill_last_success")
# The filesystems that matter: where the appliance lives and where Docker keeps images and volumes. Each path's
# filesystem is the mount with the longest mount point above it (bind-mounted files such as /etc/hosts never are).
used = '1 - node_filesystem_avail_bytes{fstype!~"tmpfs|squashfs|nsfs"} / node_filesystem_size_bytes{fstype!~"tmpfs|squashfs|nsfs"}'
filesystems = get("/api/v1/query", query=used)["result"]


def holding(path):
    mounts = [f for f in filesystems if path == (m := f["metric"].get("mountpoint", "")) or path.startswith(m.rstrip("/") + "/")]
    return max(mounts, key=lambda f: len(f["metric"]["mountpoint"]), default=None)


disk_parts = []
for path in (os.environ["APPLIANCE_BASE"], "/var/lib/docker"):
    found = holding(path)
    if found is not None:
        disk_parts.append(f"{path} {percent(float(found['value'][1]))} used (on {found['metric']['mountpoint']})")
disk_text = "   ".join(disk_parts) or "-"

rows = [
    ("health", f"api {api_state} (release {release}){', /api/health 503s' if health_503 else ''}"
               f"   targets {targets_up}/{len(up)} up"),
    ("agents", f"running {count(one('max(cvm_agents_running)'))} / cap {count(one('appliance:agent_cap'))}"
               f"   queued {count(one('max(cvm_agent_turns_waiting)'))}"
               f"   websockets {count(one('sum(cvm_websocket_connections)'))}"),
    ("P95", f"turn {seconds(p95('cvm_agent_turn_duration_seconds'))}"
            f"   first token {seconds(p95('cvm_llm_time_to_first_token_seconds'))}"
            f"   http {seconds(p95('cvm_http_request_duration_seconds', NOT_WS))}"),
    ("errors", "http 5xx " + percent(one('(sum(rate(cvm_http_request_duration_seconds_count{status=~"5.."}[5m])) or vector(0))'
                                         ' / sum(rate(cvm_http_request_duration_seconds_count[5m]))'))
               + "   llm failed " + percent(one('(sum(rate(cvm_llm_requests_total{outcome!="ok"}[5m])) or vector(0))'
                                                ' / sum(rate(cvm_llm_requests_total[5m]))'))),
    ("host", f"disk {disk_text}   memory available "
             f"{percent(one('node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes'))}"),
    ("backup", "no backup metrics" if backup_age is None else
               f"last success {seconds(backup_age)} ago   drill {'passed' if drill == 1 else 'FAILED' if drill == 0 else '-'}"),
    ("tls", f"certificate expires in {seconds(one('appliance_tls_cert_expiry_timestamp_seconds - time()'))}"),
    ("alerts", f"firing: {', '.join(firing) or '-'}   pending: {', '.join(pending) or '-'}"),
]
print(f"appliance monitor   {time.strftime('%Y-%m-%d %H:%M:%S %Z')}   {BASE}")
for name, text in rows:
    print(f"  {name:<8} {text}")
PY
}

if [ "$watch" -gt 0 ] 2>/dev/null; then
  while true; do
    out=$(screen 2>&1) || true
    clear
    printf '%s\n' "$out"
    sleep "$watch"
  done
else
  screen
fi
