"""Read-only views of a host for operators: its releases, its status, its logs.

Each view is a command (or a few) to run on the host and a pure function that turns their output into what
the operator reads; nothing here changes the host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from appliance.config import Settings
from appliance.release_commands import health_answer
from appliance.releases import Release, rollback_target
from appliance.render import BUNDLE_ROOT
from appliance.shell import sh

AUDIT_TAIL = 2000
SERVICES = ("api", "postgres", "redis", "nginx", "llm-stub", "prometheus", "alertmanager", "node-exporter", "relay")


def host_heading(settings: Settings, hosts: int) -> str:
    """The line before a host's block when a view shows several hosts (`settings`: that host's, first in hosts);
    nothing for one host, whose view stays as it was."""
    if hosts < 2:
        return ""
    host = settings.hosts[0]
    return f"\n=== {host.label} ({host.target})\n"


def releases_probe(settings: Settings) -> str:
    """Prints `@current PATH`, `@history V...`, `@release V MANIFEST-JSON` lines, then the audit log's tail."""
    paths = settings.paths
    return (
        f"echo @current $(readlink {sh(paths.current)}); "
        f"echo @history $(cat {sh(paths.history)} 2>/dev/null); "
        f'for d in {sh(paths.releases)}/*/; do [ -d "$d" ] || continue; v=$(basename "$d"); '
        f'echo "@release $v $(tr -d \'\\n\' < "$d/manifest.json" 2>/dev/null)"; done; '
        f"tail -n {AUDIT_TAIL} {sh(paths.audit_log)} 2>/dev/null"
    )


@dataclass(frozen=True)
class ReleaseRow:
    version: str
    role: str  # "current", "rollback" or ""
    result: str  # the last deploy/rollback outcome for it in the audit log, "-" when none
    action: str  # that last one: "deploy", "rollback from V2", "-" when the audit log has none
    at: str  # when and by whom: that action's, else the manifest's (when the release was made)
    who: str
    commit: str


def release_rows(probe_output: str) -> list[ReleaseRow]:
    """Releases on the host, most recently served first (never-served ones last)."""
    current, history, manifests, last = "", [], {}, {}
    for line in probe_output.splitlines():
        word, _, rest = line.partition(" ")
        if word == "@current":
            current = rest.strip().rsplit("/", 1)[-1]
        elif word == "@history":
            history = rest.split()
        elif word == "@release":
            version, _, body = rest.partition(" ")
            manifests[version] = _json_or_empty(body)
        elif line.startswith("{"):
            entry = _json_or_empty(line)
            if entry.get("command") in ("deploy", "rollback") and entry.get("version"):
                last[str(entry["version"])] = entry
    target = rollback_target(history, current) if current else None
    recency = {version: index for index, version in enumerate(history)}
    rows = [
        ReleaseRow(
            version,
            "current" if version == current else "rollback" if version == target else "",
            str(last.get(version, {}).get("result", "-")),
            _action(last.get(version, {})),
            str(last.get(version, {}).get("at") or body.get("at", "-")),
            str(last.get(version, {}).get("who") or body.get("who", "-")),
            str(body.get("commit", "-")),
        )
        for version, body in manifests.items()
    ]
    return sorted(rows, key=lambda row: recency.get(row.version, -1), reverse=True)


def _action(entry: dict[str, object]) -> str:
    command, previous = entry.get("command"), entry.get("previous")
    if command == "rollback":
        return f"rollback from {previous}" if previous else "rollback"
    return str(command or "-")


def _json_or_empty(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def releases_table(rows: list[ReleaseRow]) -> str:
    if not rows:
        return "no releases on the host yet: run inv deploy"
    width = max(len("VERSION"), *(len(row.version) for row in rows))
    action = max(len("LAST ACTION"), *(len(row.action) for row in rows))
    lines = [
        f"{'VERSION':<{width}}  {'ROLE':<8}  {'RESULT':<11}  {'LAST ACTION':<{action}}  {'AT':<25}  {'BY':<24}  COMMIT"
    ]
    lines += [
        f"{row.version:<{width}}  {row.role:<8}  {row.result:<11}  {row.action:<{action}}  {row.at:<25}  "
        f"{row.who:<24}  {row.commit}"
        for row in rows
    ]
    return "\n".join(lines)


def status_sections(settings: Settings, current: Release | None) -> list[tuple[str, str]]:
    """(heading, command) pairs for `inv status`: containers, health, versions, disk, memory."""
    name = settings.name
    # The stack's project and every release's API project (NAME-api-SLUG), whatever the Compose version.
    listed = "docker ps -a --format '{{.Label \"com.docker.compose.project\"}}\t{{.Names}}\t{{.Status}}\t{{.Image}}'"
    mine = f'awk -F\'\\t\' -v p={sh(name)} \'$1 == p || index($1, p "-api-") == 1 {{print $2"\\t"$3"\\t"$4}}\''
    containers = f"{listed} | {mine}"
    usage = "docker stats --no-stream --format '{{.Name}}\\t{{.CPUPerc}}\\t{{.MemUsage}}'"
    disk = f"df -h --output=target,size,used,avail,pcent {sh(settings.base_dir)} /var/lib/docker | uniq"
    sections = [("containers", containers), ("resources", usage), ("disk", disk), ("memory", "free -m")]
    if current is not None:
        sections.insert(1, (f"health of release {current.version}", health_answer(current)))
    if len(settings.hosts) > 1:
        sections.insert(0, ("load balancer", drain_state(settings)))
    if settings.monitoring.enabled:
        sections.append(("monitoring", monitor_command(settings.base_dir)))
    return sections


def drain_state(settings: Settings) -> str:
    """Whether `inv host.drain` holds this host (settings.hosts[0]) out of the load balancer, and since when."""
    flag, name = sh(settings.paths.drain_flag), sh(settings.hosts[0].label)
    drained = f"printf 'drained: %s (inv host.undrain %s)\\n' \"$(tr -d '\\n' < {flag})\" {name}"
    return f"if [ -e {flag} ]; then {drained}; else echo 'in service (not drained)'; fi"


def monitor_command(base_dir: str) -> str:
    """scripts/monitor.sh, as this checkout has it, run once on the host: one screen from its Prometheus.
    Run from here it is not in BASE/bin, so it is told where the appliance lives."""
    script = (BUNDLE_ROOT / "scripts" / "monitor.sh").read_text(encoding="utf-8")
    return f"APPLIANCE_BASE={sh(base_dir)} bash -c {sh(script)} monitor.sh 2>&1"
