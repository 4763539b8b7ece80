"""Every container of the deployed stack is confined: no new privileges, a process and a memory limit, only the
capabilities its program needs, and no process of its program running as root but the few that must start as root.

"Its program" is the container's first process and what descends from it. Docker's healthcheck runs beside it as
a short exec of its own (as the container's user, with the same capabilities and no new privileges): a check that
sampled those too failed whenever `docker top` caught Redis's `sh -c 'redis-cli ping'` mid-run (session 7's CI)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.config import load_config
from appliance.remote import open_host
from tests.conftest import Deployed

pytestmark = pytest.mark.e2e

# Service → the capabilities it keeps (all others dropped), and the processes allowed to run as root.
ALLOWED = {
    # Its master binds 80/443 and starts unprivileged workers.
    "nginx": ({"CHOWN", "NET_BIND_SERVICE", "SETGID", "SETUID"}, {"nginx"}),
    # The entrypoint owns the data folder, then the server runs as postgres (the stand-in keeps runuser as
    # the parent; the official image execs gosu, so nothing stays root there).
    "postgres": ({"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}, {"runuser"}),
    "redis": ({"CHOWN", "SETGID", "SETUID"}, set()),
    "api": (set(), set()),
    "llm-stub": (set(), set()),
    "prometheus": (set(), set()),
    "alertmanager": (set(), set()),
    "node-exporter": (set(), set()),
    "relay": (set(), set()),
}


def api_projects(containers: list[dict[str, Any]], name: str) -> set[str]:
    projects = {c["Config"]["Labels"]["com.docker.compose.project"] for c in containers}
    return {project for project in projects if project.startswith(f"{name}-api-")}


def own_processes(top: str, first: int) -> list[tuple[int, int, str]]:
    """`docker top -eo pid,ppid,uid,comm` rows (pid, uid, command) of the process `first` and its descendants."""
    rows = [line.split(None, 3) for line in top.splitlines()[1:]]
    children: dict[int, list[list[str]]] = {}
    for row in rows:
        children.setdefault(int(row[1]), []).append(row)
    found, queue = [], [row for row in rows if int(row[0]) == first]
    while queue:
        row = queue.pop()
        found.append((int(row[0]), int(row[2]), row[3]))
        queue.extend(children.get(int(row[0]), []))
    return found


def test_every_container_of_the_stack_is_confined(deployed: Deployed) -> None:
    config = load_config(deployed.sandbox.config_file)
    name = config.settings.name
    # The stack's project and each release's API project (NAME-api-SLUG).
    with open_host(config) as host:
        ids = host.run("docker ps -q --filter label=com.docker.compose.project").stdout.split()
        containers = json.loads(host.run(f"docker inspect {' '.join(ids)}").stdout)
        project = "com.docker.compose.project"
        mine = [c for c in containers if c["Config"]["Labels"][project] in (name, *api_projects(containers, name))]
        seen = {}
        for container in mine:
            service = container["Config"]["Labels"]["com.docker.compose.service"]
            caps, root_ok = ALLOWED[service]
            limits = container["HostConfig"]
            assert "no-new-privileges:true" in (limits["SecurityOpt"] or []), service
            assert (limits["PidsLimit"] or 0) > 0, f"{service}: no pids limit"
            assert limits["Memory"] > 0, f"{service}: no memory limit"
            assert limits["CapDrop"] == ["ALL"], f"{service}: capabilities not dropped"
            assert {cap.removeprefix("CAP_") for cap in limits["CapAdd"] or []} <= caps, service
            top = host.run(f"docker top {container['Id']} -eo pid,ppid,uid,comm").stdout
            processes = own_processes(top, container["State"]["Pid"])
            assert processes, f"{service}: its first process {container['State']['Pid']} is not in docker top"
            as_root = {command for _, uid, command in processes if uid == 0}
            assert as_root <= root_ok, f"{service}: runs {sorted(as_root)} as root"
            seen[service] = processes
    assert {"nginx", "postgres", "redis", "api"} <= set(seen), sorted(seen)
