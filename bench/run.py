"""Service benchmarks on loopback: `python -m bench.run [--quick]`; prints a Markdown table.

Starts its own stack like the integration tests (scratch database, Redis prefix, fake LLM, gunicorn
with 2 uvicorn workers) and measures:
  http    requests/s and latency percentiles: bare uvicorn vs the service (same JSON), and an
          authenticated PostgreSQL-backed route;
  ttft    time to first token straight from the fake LLM vs through the service's WebSocket;
  fanout  one discussion streamed to 100 and 1000 WebSocket clients: delivery spread per event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
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
from tests.service.conftest import (
    ORIGIN,
    PYTHON,
    REPO,
    FakeLlm,
    Service,
    User,
    create_discussion,
    free_port,
    new_user,
    running_fake_llm,
    scratch_database,
    service_env,
    start_service,
    stop_process,
    wait_finished,
    wait_until,
    ws_ticket,
    ws_url,
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(values: list[float]) -> str:
    return f"p50 {percentile(values, 0.5) * 1000:.1f} ms, p95 {percentile(values, 0.95) * 1000:.1f} ms"


# --- http ---------------------------------------------------------------------------------------------
def wrk(url: str, headers: dict[str, str], seconds: float) -> str:
    """Closed-loop load from wrk (2 threads, 32 connections, 10 s timeout); a Python client would be the bottleneck."""
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed; run `apt-get install wrk` and retry")
    flags = [arg for key, value in headers.items() for arg in ("-H", f"{key}: {value}")]
    report_script = str(REPO / "bench" / "wrk_report.lua")
    command = ["wrk", "-t2", "-c32", "--timeout", "10s", f"-d{seconds:g}s", "-s", report_script, *flags, url]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    return (
        f"{report['rps']:.0f} req/s, p50 {report['p50_us'] / 1000:.1f} ms, p95 {report['p95_us'] / 1000:.1f} ms,"
        f" p99 {report['p99_us'] / 1000:.1f} ms, errors {report['errors']}"
    )


@contextmanager
def bare_uvicorn() -> Iterator[str]:
    port = free_port()
    app = ["bench.bare_app:app", "--port", str(port), "--workers", "2", "--lifespan", "off"]
    command = [PYTHON, "-m", "uvicorn", *app, "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(command, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url).status_code == 200, 20, "bare uvicorn")
        yield url
    finally:
        stop_process(proc)


def bench_http(service: Service, user: User, seconds: float) -> list[tuple[str, str]]:
    rows = []
    with bare_uvicorn() as bare:
        targets = [
            ("bare uvicorn, 2 workers: static JSON", f"{bare}/", {}),
            ("service, 2 workers: GET /api/roles (same JSON)", f"{service.url}/api/roles", {}),
            ("service: GET /api/discussions (JWT + PostgreSQL)", f"{service.url}/api/discussions", user.headers),
        ]
        for name, url, headers in targets:
            rows.append((name, wrk(url, headers, seconds)))
    return rows


# --- ttft ---------------------------------------------------------------------------------------------
async def direct_ttft(fake: FakeLlm, samples: int) -> list[float]:
    client = AsyncOpenAI(api_key="sk-bench", base_url=fake.base_url, max_retries=0)
    result = []
    for i in range(samples):
        started = time.perf_counter()
        stream = await client.chat.completions.create(
            model="fake-bench", stream=True, messages=[{"role": "user", "content": f"ttft {i} [[fake:words=5]]"}]
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                result.append(time.perf_counter() - started)
                break
        await stream.close()
    await client.close()
    return result


async def service_ttft(
    service: Service, client: httpx.Client, user: User, samples: int
) -> tuple[list[float], list[float]]:
    """(agent_started -> first token event, POST create -> first token event) as seen by a WS client."""
    from_start, from_create = [], []
    for i in range(samples):
        created = time.perf_counter()
        discussion = create_discussion(client, user, f"TTFT {i} [[fake:words=5]]", ["risk"])
        url = ws_url(service, discussion, ws_ticket(client, user, discussion))
        agent_started = None
        async with websockets.connect(url, origin=websockets.Origin(ORIGIN)) as ws:
            async for raw in ws:
                event = json.loads(raw)
                if event["type"] == "agent_started" and agent_started is None:
                    agent_started = time.perf_counter()
                if event["type"] == "token":
                    now = time.perf_counter()
                    from_start.append(now - (agent_started or now))
                    from_create.append(now - created)
                    break
        wait_finished(client, user, discussion)
    return from_start, from_create


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test of the benchmark)")
    args = parser.parse_args()
    seconds, samples, fanouts = (2.0, 5, (20,)) if args.quick else (10.0, 20, (100, 1000))
    rows: list[tuple[str, str]] = []
    with (
        scratch_database("svc_bench") as database_url,
        running_fake_llm() as fake,
        tempfile.TemporaryDirectory() as tmp,
    ):
        asyncio.run(apply_migrations(database_url))
        prefix = f"bench:{secrets.token_hex(4)}:"
        env = service_env(
            database_url, prefix, fake, Path(tmp), MAX_CONCURRENT_AGENTS="10", AGENT_TIMEOUT="60", LOG_LEVEL="WARNING"
        )
        service = start_service(env, Path(tmp) / "service.log")
        try:
            with httpx.Client(base_url=service.url, timeout=60) as client:
                user = new_user(client)
                rows += bench_http(service, user, seconds)
                direct = asyncio.run(direct_ttft(fake, samples))
                from_start, from_create = asyncio.run(service_ttft(service, client, user, samples))
                rows.append(("TTFT straight from the fake LLM (openai SDK)", summary_ms(direct)))
                rows.append(("TTFT through the service: agent_started -> first token on WS", summary_ms(from_start)))
                rows.append(("TTFT through the service: POST create -> first token on WS", summary_ms(from_create)))
                for n in fanouts:
                    result = asyncio.run(fanout(service, client, user, n))
                    name = f"WS fan-out, {n} clients, {result['events']} events each"
                    spread = summary_ms(result["spread"])
                    rows.append((name, f"all delivered in order: {result['complete']}; per-event spread {spread}"))
        finally:
            stop_process(service.proc, timeout=40)
    print("| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
