"""Worker restarts: the metrics folder stays small and counter totals survive (real gunicorn, SIGTERMed workers)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
import pytest

from service.metric_files import ARCHIVED_KINDS
from tests.service.stack import FakeLlm, Service, running_service, service_env, wait_until
from tests.service.test_metrics import sample, scrape

pytestmark = pytest.mark.integration
WORKERS = 2
RESTART_ROUNDS = 5  # each restarts every worker: 10 worker restarts
PID_IN_NAME = re.compile(r"_(\d+)\.db$")


def restart_workers(service: Service) -> None:
    """SIGTERM every worker (as max_requests or a HUP would end them) and wait for gunicorn's replacements."""
    old = set(service.worker_pids())
    for pid in old:
        os.kill(pid, signal.SIGTERM)

    def replaced() -> bool:
        pids = set(service.worker_pids())
        return len(pids) == WORKERS and not pids & old and httpx.get(f"{service.url}/api/health").status_code == 200

    wait_until(replaced, 60, "gunicorn to replace its workers")


def test_metric_files_stay_bounded_and_totals_survive_restarts(
    database_url: str, redis_prefix: str, fake_llm: FakeLlm, tmp_path: Path
) -> None:
    env = service_env(database_url, redis_prefix, fake_llm, tmp_path, WEB_CONCURRENCY=str(WORKERS))
    folder = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    sent = 0
    with running_service(env, tmp_path / "service.log") as service:
        for _ in range(RESTART_ROUNDS):
            for _ in range(20):  # new connections, so both workers serve some
                with httpx.Client(base_url=service.url) as client:
                    client.get("/api/roles").raise_for_status()
                sent += 1
            restart_workers(service)
            files = sorted(p.name for p in folder.glob("*.db"))
            live = {str(pid) for pid in service.worker_pids()}
            dead = [name for name in files if (m := PID_IN_NAME.search(name)) and m.group(1) not in live]
            assert dead == [], f"files of exited workers left behind: {dead}"
            assert len(files) <= len(ARCHIVED_KINDS) + 3 * WORKERS, files
        body = scrape(service)
        counted = sample(
            body, "cvm_http_request_duration_seconds_count", method="GET", route="/api/roles", status="200"
        )
        assert counted == sent  # every request counted exactly once, though every worker that served it is gone
        assert (folder / "histogram_archive.db").exists()  # where the exited workers' counts live now
