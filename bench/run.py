"""Service benchmarks on loopback: `python -m bench.run [--quick]`; prints a Markdown table.

Starts its own stack like the integration tests (scratch database, Redis prefix, fake LLM, gunicorn
with 2 uvicorn workers) and measures:
  http    requests/s and latency percentiles: a bare ASGI app on the same server stack vs the service
          (same JSON), and an
          authenticated PostgreSQL-backed route;
  ttft    time to first token straight from the fake LLM vs through the service's WebSocket;
  fanout  one discussion streamed to 100 and 1000 WebSocket clients: delivery spread per event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import websockets
from openai import AsyncOpenAI

from service.migrate import apply_migrations
from tests.service.api import User, create_discussion, new_user, wait_finished, ws_ticket, ws_url
from tests.service.stack import (
    ORIGIN,
    PYTHON,
    REPO,
    FakeLlm,
    Service,
    free_port,
    running_fake_llm,
    running_service,
    scratch_database,
    scratch_redis_prefix,
    service_env,
    stop_process,
    wait_until,
)

WORKER_CLASS = "service.worker.DrainingUvicornWorker"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(values: list[float]) -> str:
    return f"p50 {percentile(values, 0.5) * 1000:.1f} ms, p95 {percentile(values, 0.95) * 1000:.1f} ms"


# --- http ---------------------------------------------------------------------------------------------
def wrk_run(url: str, headers: dict[str, str], seconds: float) -> dict[str, float]:
    """Closed-loop load from wrk (2 threads, 32 connections, 10 s timeout); a Python client would be the bottleneck."""
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed; run `apt-get install wrk` and retry")
    flags = [arg for key, value in headers.items() for arg in ("-H", f"{key}: {value}")]
    report_script = str(REPO / "bench" / "wrk_report.lua")
    command = ["wrk", "-t2", "-c32", "--timeout", "10s", f"-d{seconds:g}s", "-s", report_script, *flags, url]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def wrk_summary(runs: list[dict[str, float]]) -> str:
    """Medians over the rounds of one target."""

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    return (
        f"{med('rps'):.0f} req/s, p50 {med('p50_us') / 1000:.1f} ms, p95 {med('p95_us') / 1000:.1f} ms,"
        f" p99 {med('p99_us') / 1000:.1f} ms, errors {sum(r['errors'] for r in runs):.0f}"
    )


def wrk(url: str, headers: dict[str, str], seconds: float) -> str:
    """One wrk run, summarised."""
    return wrk_summary([wrk_run(url, headers, seconds)])


@contextmanager
def bare_baseline(workers: int) -> Iterator[str]:
    """The service's server stack (gunicorn, the same uvicorn worker class and count) serving a minimal ASGI app."""
    port = free_port()
    command = [PYTHON, "-m", "gunicorn", "-k", WORKER_CLASS, "-w", str(workers), "-b", f"127.0.0.1:{port}"]
    proc = subprocess.Popen([*command, "--log-level", "warning", "bench.bare_app:app"], cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url).status_code == 200, 20, "the bare baseline")
        yield url
    finally:
        stop_process(proc)


def bench_http(service: Service, user: User, seconds: float, rounds: int) -> list[tuple[str, str]]:
    """Targets take turns, round after round, so a burst of load from elsewhere hits them alike."""
    workers = int(service.env["WEB_CONCURRENCY"])
    with bare_baseline(workers) as bare:
        targets = [
            (f"bare ASGI app, same stack (gunicorn, {workers} uvicorn workers): the same JSON", f"{bare}/", {}),
            (f"service, {workers} workers: GET /api/roles (static JSON)", f"{service.url}/api/roles", {}),
            ("service: GET /api/discussions (JWT + PostgreSQL)", f"{service.url}/api/discussions", user.headers),
        ]
        runs: list[list[dict[str, float]]] = [[] for _ in targets]
        for _ in range(rounds):
            for i, (_, url, headers) in enumerate(targets):
                runs[i].append(wrk_run(url, headers, seconds))
    rows = [(name, wrk_summary(r)) for (name, _, _), r in zip(targets, runs, strict=True)]
    ratios = [s["rps"] / b["rps"] for b, s in zip(runs[0], runs[1], strict=True)]
    rows.append(
        (
            "GET /api/roles requests/s vs the bare app (per round)",
            f"median {statistics.median(ratios):.0%} (rounds: {', '.join(f'{r:.0%}' for r in ratios)})",
        )
    )
    return rows


# --- ttft ---------------------------------------------------------------------------------------------
# The fake LLM streams keep-alive comments for this long before the first token, for the direct client and
# the service alike, so the benchmark's WebSocket is surely open before the service's first token exists.
TTFT_MARKER = "[[fake:stall_first=0.3,words=5]]"


async def _direct_once(upstream: AsyncOpenAI, label: str) -> float:
    """Upstream TTFT: request sent -> first content chunk, straight from the fake LLM."""
    started = time.perf_counter()
    stream = await upstream.chat.completions.create(
        model="fake-bench", stream=True, messages=[{"role": "user", "content": f"ttft {label} {TTFT_MARKER}"}]
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()
    return time.perf_counter() - started


async def _through_service_once(service: Service, client: httpx.Client, user: User, label: str) -> float:
    """`agent_started` (appended just before the service's upstream request; its `ts` is server time) -> the
    first token event received by a WebSocket client. Same clock: everything runs on this host."""
    discussion = create_discussion(client, user, f"TTFT {label} {TTFT_MARKER}", ["risk"])
    url = ws_url(service, discussion, ws_ticket(client, user, discussion))
    started_at: float | None = None
    received = 0.0
    async with websockets.connect(url, origin=websockets.Origin(ORIGIN)) as ws:
        async for raw in ws:
            event = json.loads(raw)
            if event["type"] == "agent_started":
                started_at = float(event["ts"])
            if event["type"] == "token" and started_at is not None:
                received = time.time() - started_at
                break
    wait_finished(client, user, discussion)
    return received


async def bench_ttft(
    fake: FakeLlm, service: Service, client: httpx.Client, user: User, samples: int
) -> tuple[list[float], list[float]]:
    """(direct, through the service) TTFTs, sampled alternately so load from elsewhere hits both alike."""
    upstream = AsyncOpenAI(api_key="sk-bench", base_url=fake.base_url, max_retries=0)
    # Both paths warm up first: the connection to the upstream, and in the service the openai SDK's first-use
    # imports (tens of ms once per worker; the create requests all reach the worker behind `client`).
    await _direct_once(upstream, "warm-up")
    for label in ("warm-up 1", "warm-up 2"):
        await _through_service_once(service, client, user, label)
    direct, through = [], []
    for i in range(samples):
        direct.append(await _direct_once(upstream, str(i)))
        through.append(await _through_service_once(service, client, user, str(i)))
    await upstream.close()
    return direct, through


# --- fan-out ------------------------------------------------------------------------------------------
async def fanout(service: Service, client: httpx.Client, user: User, clients: int) -> dict[str, Any]:
    # The first token stalls long enough for every client to connect; then ~40 token batches stream.
    stall = max(5, clients // 100)
    discussion = create_discussion(
        client, user, f"Fan-out [[fake:stall_first={stall},words=300,delay=0.005]]", ["risk"]
    )
    tickets = [ws_ticket(client, user, discussion) for _ in range(clients)]
    arrivals: list[dict[int, float]] = [{} for _ in range(clients)]

    async def listen(i: int) -> None:
        url = ws_url(service, discussion, tickets[i])
        async with websockets.connect(url, origin=websockets.Origin(ORIGIN), open_timeout=60, ping_interval=None) as ws:
            async for raw in ws:
                event = json.loads(raw)
                arrivals[i][event["seq"]] = time.perf_counter()
                if event["type"] == "discussion_finished":
                    return

    connecting = time.perf_counter()
    await asyncio.gather(*(listen(i) for i in range(clients)))
    total = time.perf_counter() - connecting
    seqs = sorted(arrivals[0])
    complete = all(sorted(a) == seqs for a in arrivals)
    spreads = [max(a[s] for a in arrivals) - min(a[s] for a in arrivals) for s in seqs[-40:]]
    return {"clients": clients, "events": len(seqs), "complete": complete, "spread": spreads, "seconds": total}


# --- metrics ------------------------------------------------------------------------------------------
def some_traffic(service: Service) -> None:
    """Requests over several routes and statuses, so each worker's metric files hold a few label sets."""
    for path in ("/api/roles", "/api/health", "/api/discussions", "/no/such/route") * 3:
        with httpx.Client(base_url=service.url, timeout=30) as fresh:  # a new connection: any worker
            fresh.get(path)


def scrape_seconds(service: Service, count: int) -> list[float]:
    times = []
    for _ in range(count):
        with httpx.Client(base_url=service.url, timeout=30) as fresh:
            started = time.perf_counter()
            fresh.get("/metrics").raise_for_status()
            times.append(time.perf_counter() - started)
    return times


def bench_metrics(env: dict[str, str], tmp: Path, restarts: int, scrapes: int) -> list[tuple[str, str]]:
    """/metrics with 4 workers: fresh, then after `restarts` workers were SIGTERMed one by one and replaced."""
    folder = tmp / "metrics-4"
    env = {**env, "WEB_CONCURRENCY": "4", "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    with running_service(env, tmp / "service-4.log") as service:
        some_traffic(service)
        fresh, fresh_files = scrape_seconds(service, scrapes), len(list(folder.glob("*.db")))
        for _ in range(restarts):
            victim = service.worker_pids()[0]
            os.kill(victim, signal.SIGTERM)
            wait_until(
                lambda: victim not in (pids := service.worker_pids()) and len(pids) == 4,  # noqa: B023
                60,
                "gunicorn to replace a worker",
            )
            some_traffic(service)
        after, after_files = scrape_seconds(service, scrapes), len(list(folder.glob("*.db")))
    return [
        ("GET /metrics, 4 workers, fresh", f"{summary_ms(fresh)}; {fresh_files} metric files"),
        (
            f"GET /metrics, 4 workers, after {restarts} worker restarts",
            f"{summary_ms(after)}; {after_files} metric files",
        ),
    ]


@contextmanager
def bench_stack(**overrides: str) -> Iterator[tuple[dict[str, str], Path, FakeLlm]]:
    """What every bench's service runs on: a scratch database (migrated), the fake LLM, a Redis prefix and a
    temporary folder; yields the service's environment, that folder and the fake."""
    with (
        scratch_database("svc_bench") as database_url,
        running_fake_llm() as fake,
        tempfile.TemporaryDirectory() as tmp,
        scratch_redis_prefix("bench") as prefix,
    ):
        asyncio.run(apply_migrations(database_url))
        env = service_env(
            database_url,
            prefix,
            fake,
            Path(tmp),
            AI_API_KEY="sk-bench",  # no revoked key first: a rotation would add a round trip to a worker's first turn
            MAX_CONCURRENT_AGENTS="10",
            AGENT_TIMEOUT="60",
            LOG_LEVEL="INFO",  # the production default: every request writes its JSON log line
        )
        env.update(overrides)
        yield env, Path(tmp), fake


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test of the benchmark)")
    parser.add_argument("--only", default="http,ttft,fanout,metrics", help="comma-separated sections to run")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    seconds, rounds, samples, fanouts = (2.0, 1, 5, (20,)) if args.quick else (10.0, 5, 40, (100, 1000))
    restarts = 3 if args.quick else 50
    rows: list[tuple[str, str]] = []
    with bench_stack() as (env, tmp, fake):
        with (
            running_service(env, tmp / "service.log") as service,
            httpx.Client(base_url=service.url, timeout=60) as client,
        ):
            user = new_user(client)
            if "http" in sections:
                rows += bench_http(service, user, seconds, rounds)
            if "ttft" in sections:
                direct, through = asyncio.run(bench_ttft(fake, service, client, user, samples))
                added = statistics.median(through) - statistics.median(direct)
                rows.append(("TTFT straight from the fake LLM (openai SDK), 0.3 s stall", summary_ms(direct)))
                rows.append(("TTFT through the service: upstream request -> token on WS", summary_ms(through)))
                rows.append(("added TTFT (difference of the medians)", f"{added * 1000:.1f} ms"))
            for n in fanouts if "fanout" in sections else ():
                result = asyncio.run(fanout(service, client, user, n))
                name = f"WS fan-out, {n} clients, {result['events']} events each"
                spread = summary_ms(result["spread"])
                rows.append((name, f"all delivered in order: {result['complete']}; per-event spread {spread}"))
        if "metrics" in sections:
            rows += bench_metrics(env, tmp, restarts, scrapes=5 if args.quick else 30)
    print("| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
