"""Prometheus metrics, correct under several gunicorn workers.

Counters and histograms use prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR);
gunicorn_conf.child_exit folds exited workers' files into archives (service/metric_files.py).
Gauges that must be ONE number for the whole service (agents running, turns waiting) are read
from the Redis semaphore at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

from service import metric_files

# Bucket edges include the thresholds people alert on: 1 s, AGENT_TIMEOUT 300 s, WORKFLOW_TIMEOUT 1800 s.
FAST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TURN_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DISCUSSION_BUCKETS = (1.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)

HTTP_REQUEST_DURATION = Histogram(
    "cvm_http_request_duration_seconds",
    "HTTP request duration by route template.",
    ["method", "route", "status"],
    buckets=FAST_BUCKETS,
)
AGENT_TURN_DURATION = Histogram(
    "cvm_agent_turn_duration_seconds", "Duration of one agent turn.", ["outcome"], buckets=TURN_BUCKETS
)
LLM_TIME_TO_FIRST_TOKEN = Histogram(
    "cvm_llm_time_to_first_token_seconds", "Time from request to first streamed token.", buckets=FAST_BUCKETS
)
LLM_REQUESTS = Counter("cvm_llm_requests", "Upstream LLM requests by outcome.", ["outcome"])
LLM_UPSTREAM_FAILURES = Counter(
    "cvm_llm_upstream_failures", "Failed upstream LLM attempts by failure category (service.llm).", ["category"]
)
LLM_TOKENS = Counter("cvm_llm_tokens", "LLM tokens by direction.", ["direction"])
LLM_PROMPT_CACHE_TOKENS = Counter(
    "cvm_llm_prompt_cache_tokens", "Prompt tokens served from / missing the upstream cache.", ["result"]
)
DISCUSSION_DURATION = Histogram(
    "cvm_discussion_duration_seconds",
    "Discussion wall time by final status.",
    ["status"],
    buckets=DISCUSSION_BUCKETS,
)
WEBSOCKET_CONNECTIONS = Gauge("cvm_websocket_connections", "Open WebSocket connections.", multiprocess_mode="livesum")
# No labels, so it is exposed (as 0) from the start: the StorageFull alert's increase() sees the first refusal.
UPLOADS_REFUSED_DISK_FULL = Counter(
    "cvm_uploads_refused_disk_full", "Uploads refused (507) because the disk that holds them is full (service.storage)."
)


class AgentSlotsCollector(Collector):
    """Agents running and turns waiting, read from the service-wide Redis semaphore."""

    def __init__(self, client: redis.Redis, holders_key: str, queue_key: str) -> None:
        self._client = client
        self._holders_key = holders_key
        self._queue_key = queue_key

    def collect(self) -> Iterable[GaugeMetricFamily]:
        seconds, micros = self._client.time()  # the clock the semaphore's leases are scored with
        now_ms = seconds * 1000 + micros // 1000
        running = self._client.zcount(self._holders_key, now_ms, "+inf")
        waiting = self._client.zcard(self._queue_key)
        yield GaugeMetricFamily("cvm_agents_running", "Agent turns holding a slot now.", value=running)
        yield GaugeMetricFamily("cvm_agent_turns_waiting", "Agent turns queued for a slot.", value=waiting)


class RedisMemory(Collector):
    """Redis's used memory and its maxmemory: the stack runs it with noeviction, so a full Redis refuses the
    writes every discussion needs (event streams, slots) instead of dropping old keys."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def collect(self) -> Iterable[GaugeMetricFamily]:
        info = self._client.info("memory")
        yield GaugeMetricFamily("cvm_redis_used_memory_bytes", "Memory Redis uses.", value=info["used_memory"])
        yield GaugeMetricFamily("cvm_redis_maxmemory_bytes", "Redis maxmemory; 0: no limit.", value=info["maxmemory"])


class DailyTokens(Collector):
    """The service's tokens spent today and its DAILY_TOKEN_CEILING (the ceiling alert divides them); read from
    PostgreSQL by the scrape, since token_usage is their one home. `spent` None: the database did not answer."""

    def __init__(self, spent: int | None, ceiling: int) -> None:
        self._spent = spent
        self._ceiling = ceiling

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily("cvm_llm_daily_token_ceiling", "DAILY_TOKEN_CEILING.", value=self._ceiling)
        if self._spent is not None:
            yield GaugeMetricFamily(
                "cvm_llm_tokens_today", "LLM tokens the service spent since local midnight.", value=self._spent
            )


def render(*extra: Collector) -> bytes:
    """Prometheus text exposition for this process or, in multiprocess mode, all workers."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry = CollectorRegistry()
    registry.register(_WorkerFiles(Path(directory)) if directory else _ProcessLocal())
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


class _WorkerFiles(Collector):
    """Every worker's metric files (and the archives of exited ones), read while no merge runs."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        with metric_files.reading(self._directory):
            return list(MultiProcessCollector(None, str(self._directory)).collect())  # type: ignore[no-untyped-call]


class _ProcessLocal(Collector):
    """The default registry's metrics, re-exposed so `extra` is not registered globally."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield from REGISTRY.collect()  # type: ignore[misc]
