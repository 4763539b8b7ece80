"""The monitoring profile on the deployed shared sandbox: its own Prometheus scrapes the API and the host,
sees the agents saturate while more discussions run than the cap allows, raises AgentsSaturated, and
Alertmanager → relay → a WeCom robot stand-in on the VM delivers it in WeCom's message format. Every
dashboard query returns data from that Prometheus.

Read-only on the shared sandbox: the discussions it starts are stopped, the stand-in container removed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from appliance.config import Config, load_config
from appliance.remote import RemoteHost, open_host
from appliance.secrets import load_secrets
from appliance.shell import sh
from tests.conftest import RUN_ID, Deployed, inv
from tests.e2e.traffic import Site, follow_discussion
from tests.monitoring.dashboards import dashboard_queries

T = TypeVar("T")

# The robot stand-in: records each POST (path and JSON body) as one line on its output, answers like WeCom.
ROBOT = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Robot(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        print(json.dumps({"path": self.path, "body": body}), flush=True)
        answer = json.dumps({"errcode": 0, "errmsg": "ok"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
    def log_message(self, *args):
        pass
HTTPServer(("0.0.0.0", 8080), Robot).serve_forever()
"""


@dataclass(frozen=True)
class Monitored:
    config: Config
    host: RemoteHost
    site: Site

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query against the stack's Prometheus, on the host's loopback."""
        url = "http://127.0.0.1:9090/api/v1/query"
        answer = self.host.run(f"curl -fsS --max-time 10 --get --data-urlencode {sh('query=' + promql)} {url}")
        assert answer.exit_code == 0, answer.stderr
        document = json.loads(answer.stdout)
        assert document["status"] == "success", document
        result: list[dict[str, Any]] = document["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> list[dict[str, Any]]:
        answer = self.host.run("curl -fsS --max-time 10 http://127.0.0.1:9090/api/v1/alerts")
        assert answer.exit_code == 0, answer.stderr
        found: list[dict[str, Any]] = json.loads(answer.stdout)["data"]["alerts"]
        return found


def wait_for(what: str, probe: Callable[[], T | None], seconds: float) -> T:
    deadline = time.monotonic() + seconds
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {seconds:.0f}s"
        time.sleep(2)


@pytest.fixture(scope="module")
def monitored(deployed: Deployed) -> Iterator[Monitored]:
    config = load_config(deployed.sandbox.config_file)
    assert config.settings.monitoring.enabled, "the sandbox config must enable monitoring"
    with open_host(config) as host:
        ca = host.run(f"cat {config.settings.base_dir}/shared/certs/ca.pem").stdout
        yield Monitored(config, host, Site(deployed.sandbox.https_port, ca))


@pytest.fixture(scope="module")
def robot(monitored: Monitored) -> Iterator[str]:
    """The WeCom robot stand-in on the sandbox's egress network, under the name the sandbox's secret names."""
    name = f"{RUN_ID}-wecom-robot"
    project = monitored.config.settings.name
    labels = f"--filter label=com.docker.compose.project={project} --filter label=com.docker.compose.service=relay"
    relay = f"$(docker ps -q {labels})"  # Compose v1 and v2 name containers differently
    image = monitored.host.run(f"docker inspect -f '{{{{.Config.Image}}}}' {relay}").stdout.strip()
    assert image, "no relay container"
    started = monitored.host.run(
        f"docker run -d --name {name} --network {project}_egress --network-alias wecom-robot --read-only "
        f"--no-healthcheck {sh(image)} python3 -c {sh(ROBOT)}"
    )
    assert started.exit_code == 0, started.stderr
    yield name
    monitored.host.run(f"docker rm -f {name}")


@pytest.fixture(scope="module")
def user(monitored: Monitored) -> dict[str, str]:
    """A user who has had one quick discussion: turns, first tokens, tokens and cache counts now exist."""
    headers = monitored.site.new_user()
    quick = monitored.site.create_discussion(headers, "Buy ACME? [[fake:delay=0.01,words=8]]", ["bull", "bear"])
    follow_discussion(monitored.site, headers, quick, limit_seconds=120)
    return headers


@pytest.mark.e2e
def test_prometheus_scrapes_the_api_and_the_host_on_loopback_only(monitored: Monitored) -> None:
    def all_up() -> list[dict[str, Any]] | None:
        # By job: a Prometheus recreated by a deploy still shows the previous API's series for 5 minutes.
        found = monitored.query("up == 1")
        jobs = {series["metric"]["job"] for series in found}
        return found if jobs == {"api", "node", "alertmanager", "prometheus"} else None

    up = wait_for("api, node, alertmanager and prometheus scraped", all_up, 60)
    assert {series["metric"]["job"] for series in up} == {"api", "node", "alertmanager", "prometheus"}
    assert monitored.value("max(cvm_agents_running)") is not None
    assert monitored.value("appliance_tls_cert_expiry_timestamp_seconds") is not None  # the textfile collector
    # Published on the host's loopback only: nothing listens on 9090 on another address.
    listening = monitored.host.run("ss -Htln 'sport = :9090'").stdout.split()
    assert "127.0.0.1:9090" in listening
    assert not any(word.endswith(":9090") and not word.startswith("127.0.0.1") for word in listening)


@pytest.mark.e2e
def test_saturated_agents_raise_the_alert_and_wecom_receives_it(
    monitored: Monitored, robot: str, user: dict[str, str]
) -> None:
    cap = monitored.config.settings.service.agent_cap
    # More discussions than the cap, each first turn stalled long enough to hold its slot.
    busy = [
        monitored.site.create_discussion(user, f"Hold ACME {index}? [[fake:stall_first=240]]", ["bull"])
        for index in range(cap + 2)
    ]
    try:

        def saturated() -> tuple[float | None, float | None] | None:
            seen = monitored.value("max(cvm_agents_running)"), monitored.value("max(cvm_agent_turns_waiting)")
            return seen if seen == (cap, 2) else None

        assert wait_for(f"{cap} agents running and 2 turns waiting", saturated, 60)
        state = wait_for(
            "AgentsSaturated pending or firing",
            lambda: next(
                (a["state"] for a in monitored.alerts() if a["labels"]["alertname"] == "AgentsSaturated"), None
            ),
            60,
        )
        assert state in ("pending", "firing")
        # The operator's view (`inv status`, its monitoring section from scripts/monitor.sh) says the same.
        shown = inv("status", "--config", str(monitored.config.path), timeout=120)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        screen = shown.stdout.split("== monitoring\n", 1)[1]
        assert f"running {cap} / cap {cap}   queued 2" in screen
        assert "AgentsSaturated" in screen.split("alerts", 1)[1]
        # The disk row names where the appliance and Docker live, never a bind-mounted file such as /etc/hosts.
        disk = next(line for line in screen.splitlines() if line.strip().startswith("host"))
        base = monitored.config.settings.base_dir
        assert f"disk {base} " in disk and " /var/lib/docker " in disk and "/etc/" not in disk, disk

        key = str(load_secrets(monitored.config.secrets_path, {}).values["WECOM_WEBHOOK_URL"].reveal()).split("key=")[1]

        def delivered() -> dict[str, Any] | None:
            lines = monitored.host.run(f"docker logs {robot}").stdout.splitlines()
            posts = [json.loads(line) for line in lines if line.startswith("{")]
            return next((post for post in posts if "AgentsSaturated" in json.dumps(post, ensure_ascii=False)), None)

        post = wait_for("the WeCom robot stand-in receiving AgentsSaturated", delivered, 120)
        assert post["path"] == f"/cgi-bin/webhook/send?key={key}"
        assert post["body"]["msgtype"] == "markdown"
        content = post["body"]["markdown"]["content"]
        assert content.startswith(f"**[FIRING:1] AgentsSaturated ({monitored.config.settings.name} sandbox)**\n")
        assert f"All {cap} agent slots busy" in content
        assert "runbook: docs/runbook.md#agentssaturated" in content
    finally:
        with monitored.site.client() as client:
            for discussion in busy:
                client.post(f"/api/discussions/{discussion}/stop", headers=user)
    wait_for("agent slots released", lambda: monitored.value("max(cvm_agents_running)") == 0 or None, 60)


@pytest.mark.e2e
def test_every_dashboard_query_returns_data(monitored: Monitored, user: dict[str, str]) -> None:
    backups = monitored.config.settings.backup.enabled
    empty = []
    for query in dashboard_queries():
        if not backups and "appliance_backup_" in query.expr:
            continue  # the sandbox takes no backups: nothing to show there
        if not monitored.query(query.expr):
            empty.append(f"{query.panel}: {query.expr}")
    assert empty == []
