"""gunicorn settings: `gunicorn -c service/gunicorn_conf.py`.

Env: BIND, WEB_CONCURRENCY, GRACEFUL_TIMEOUT, PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

wsgi_app = "service.main:create_app()"
worker_class = "service.worker.DrainingUvicornWorker"  # uvicorn's, draining WebSockets first
bind = os.environ.get("BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
if workers > 1:
    # Several workers need prometheus_client's multiprocess mode, or each scrape shows one worker's counts.
    # Set before any worker imports prometheus_client, which reads it at import time.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(Path(tempfile.gettempdir()) / "cvm-service-metrics"))
# Requests are short; discussions hand over to another worker via their lease, so 30 s drains HTTP.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "30"))
timeout = 60
keepalive = 5  # nginx keeps idle upstream connections 4 s (nginx/upstream.conf.j2): shorter than this
accesslog = None  # the app logs one JSON line per request
control_socket_disable = True  # gunicorn >= 27's control socket: unused here, and $HOME is read-only
# gunicorn's and uvicorn's own messages as JSON lines too (uvicorn workers reuse gunicorn.error's handlers).
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "service.logging.JsonFormatter"}},
    "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": ["json"]},
    "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["json"], "propagate": False}},
}
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def on_starting(server: Any) -> None:
    # Metric files of a previous run would be summed into this one's. The folder itself stays: in the
    # appliance's stack it is a tmpfs mount point, which cannot be removed.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        for leftover in Path(directory).iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """Runs in the master for every worker that exited, however it ended (restart, HUP, crash, SIGKILL)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from service.metric_files import retire_worker  # imported late: see PROMETHEUS_MULTIPROC_DIR above

        retire_worker(Path(directory), worker.pid)
