"""/metrics from several gunicorn workers passes promtool and holds one agents-running number."""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest
import redis

from tests.service.api import create_discussion, new_user, read_events
from tests.service.stack import TEST_REDIS_URL, Service

pytestmark = pytest.mark.integration
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def scrape(service: Service) -> str:
    with httpx.Client(base_url=service.url, timeout=10) as fresh:  # fresh connection: any worker
        response = fresh.get("/metrics")
    response.raise_for_status()
    return response.text


def sample(body: str, name: str, **labels: str) -> float:
    """The value of one sample; fails if it is absent."""
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.compile(rf"^{re.escape(name)}(\{{.*\}})? (\S+)$", re.M)
    values = [float(m.group(2)) for m in pattern.finditer(body) if selector in (m.group(1) or "")]
    assert len(values) == 1, f"{name}{{{selector}}}: {values}"
    return values[0]


def test_metrics_are_clean_and_aggregated_over_workers(client: httpx.Client, service: Service) -> None:
    user = new_user(client)
    discussion = create_discussion(client, user, "Metrics [[fake:words=5]]", ["bull", "bear"])
    read_events(service, client, user, discussion)
    client.get(f"/api/discussions/{discussion}", headers=user.headers)

    body = scrape(service)
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.strip() == "" and check.stderr.strip() == "", check

    assert not UUID.search(body), "ids must never be label values"
    assert sample(body, "cvm_agents_running") == 0
    assert sample(body, "cvm_agent_turns_waiting") == 0
    assert sample(body, "cvm_websocket_connections") == 0
    memory = redis.Redis.from_url(TEST_REDIS_URL).info("memory")  # what the alert on a full Redis reads
    assert sample(body, "cvm_redis_maxmemory_bytes") == memory["maxmemory"]
    assert 0 < sample(body, "cvm_redis_used_memory_bytes") < 4 * memory["used_memory"]
    for name, edges in (
        ("cvm_agent_turn_duration_seconds_bucket", ("1.0", "300.0")),
        ("cvm_discussion_duration_seconds_bucket", ("1.0", "1800.0")),
        ("cvm_llm_time_to_first_token_seconds_bucket", ("1.0",)),
    ):
        for edge in edges:
            assert f'le="{edge}"' in "\n".join(line for line in body.splitlines() if line.startswith(name))
    assert sample(body, "cvm_llm_requests_total", outcome="ok") >= 3
    assert sample(body, "cvm_llm_tokens_total", direction="completion") > 0
    assert sample(body, "cvm_llm_prompt_cache_tokens_total", result="hit") > 0
    assert sample(body, "cvm_discussion_duration_seconds_count", status="completed") >= 1
    route = "/api/discussions/{discussion_id}"
    assert sample(body, "cvm_http_request_duration_seconds_count", method="GET", route=route, status="200") >= 1

    # Counters summed over workers never go backwards, whichever worker answers the scrape.
    counts = [
        sample(
            scrape(service),
            "cvm_http_request_duration_seconds_count",
            method="GET",
            route="/metrics",
            status="200",
        )
        for _ in range(6)
    ]
    assert counts == sorted(counts)
