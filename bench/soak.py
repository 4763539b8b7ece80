"""Soak: `python -m bench.soak [--minutes 30] [--rate 20] [--discussions 10]`; prints a Markdown table.

Starts the same loopback stack as bench.run (scratch database, Redis prefix, fake LLM, gunicorn with 2
workers), then for the whole run keeps `--rate` HTTP requests a second going (the console's everyday reads:
the discussion list, one discussion, the roles, health) and `--discussions` discussions running at once, each
followed to its end over a WebSocket and replaced by a new one. Every 30 s it samples each API worker's RSS and
open file descriptors, Redis's used memory and the database's connections. The table compares the sample
after the warm-up (the first 2 minutes) with the last one, and the request p95 of the first and last 5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis
import websockets

from bench.run import bench_stack, percentile
from tests.service.api import User, new_user
from tests.service.stack import ORIGIN, TEST_REDIS_URL, Service, running_service

TOPIC = "Soak [[fake:delay=0.02,words=40]]"
PANEL = ["bull", "bear", "risk"]
SAMPLE_SECONDS = 30.0
WARM_UP_SECONDS = 120.0
WINDOW_SECONDS = 300.0  # the p95 windows at the start and at the end


@dataclass
class Sample:
    at: float
    rss_kib: dict[int, int]  # worker pid -> VmRSS
    fds: dict[int, int]
    redis_bytes: int
    db_connections: int


@dataclass
class Soak:
    service: Service
    deadline: float
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)
    errors: dict[str, int] = field(default_factory=dict)  # "what status" -> count
    finished: int = 0
    readers_discussions: list[str] = field(default_factory=list)  # those of the user the reader reads as
    samples: list[Sample] = field(default_factory=list)

    def count_error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise LookupError(f"{key} not in /proc/{pid}/status")


async def sample(soak: Soak, db: asyncpg.Connection, redis: aioredis.Redis) -> Sample:
    pids = soak.service.worker_pids()
    info = await redis.info("memory")
    connections = await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
    return Sample(
        at=time.monotonic(),
        rss_kib={pid: _proc_status(pid, "VmRSS") for pid in pids},
        fds={pid: sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir()) for pid in pids},
        redis_bytes=int(info["used_memory"]),
        db_connections=int(connections),
    )


async def sampler(soak: Soak, database_url: str) -> None:
    db = await asyncpg.connect(database_url)
    redis = aioredis.Redis.from_url(TEST_REDIS_URL)
    try:
        while time.monotonic() < soak.deadline:
            soak.samples.append(await sample(soak, db, redis))
            await asyncio.sleep(SAMPLE_SECONDS)
        soak.samples.append(await sample(soak, db, redis))
    finally:
        await redis.aclose()
        await db.close()


async def reader(soak: Soak, client: httpx.AsyncClient, user: User, rate: float) -> None:
    """`rate` requests a second, paced by the clock (a slow answer does not lower the rate)."""
    paths = ["/api/discussions?limit=20", "/api/roles", "/api/health", "/api/usage"]
    tasks: set[asyncio.Task[None]] = set()
    n = 0
    start = time.monotonic()

    async def one(path: str) -> None:
        if path == "/api/discussions/one":  # the newest of the reader's own discussions
            path = f"/api/discussions/{soak.readers_discussions[-1]}" if soak.readers_discussions else "/api/roles"
        begun = time.monotonic()
        try:
            status = str((await client.get(path, headers=user.headers)).status_code)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        soak.latencies.append((begun, time.monotonic() - begun))
        if status != "200":
            soak.count_error(f"GET {path.split('?')[0]} {status}")

    while time.monotonic() < soak.deadline:
        path = [*paths, "/api/discussions/one"][n % (len(paths) + 1)]
        task = asyncio.create_task(one(path))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
        await asyncio.sleep(max(start + n / rate - time.monotonic(), 0))
    await asyncio.gather(*tasks)


async def discussion_loop(soak: Soak, client: httpx.AsyncClient, user: User, started: list[str]) -> None:
    """Start a discussion, follow it to its end over a WebSocket, and again, until the deadline."""
    url = soak.service.url.replace("http://", "ws://")
    while time.monotonic() < soak.deadline:
        body = {"topic": TOPIC, "panel": PANEL, "max_rounds": 1}
        response = await client.post("/api/discussions", json=body, headers=user.headers)
        if response.status_code != 201:
            soak.count_error(f"POST /api/discussions {response.status_code}")
            await asyncio.sleep(1)
            continue
        discussion = response.json()["id"]
        started.append(discussion)
        ticket = await client.post("/api/ws-ticket", json={"discussion_id": discussion}, headers=user.headers)
        address = f"{url}/ws/discussions/{discussion}?ticket={ticket.json()['ticket']}&after=0"
        async with websockets.connect(address, origin=websockets.Origin(ORIGIN)) as ws:
            async for message in ws:
                if json.loads(message)["type"] == "discussion_finished":
                    soak.finished += 1
                    break


async def relogin(client: httpx.AsyncClient, users: list[User], deadline: float) -> None:
    """Access tokens last 15 minutes: log every user in again every 10."""
    while time.monotonic() + 600 < deadline:
        await asyncio.sleep(600)
        for user in users:
            login = {"email": user.email, "password": user.password}
            tokens = (await client.post("/api/auth/login", json=login)).json()
            user.headers["Authorization"] = f"Bearer {tokens['access_token']}"


async def soak_run(service: Service, database_url: str, users: list[User], args: argparse.Namespace) -> Soak:
    soak = Soak(service, time.monotonic() + args.minutes * 60)
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=service.url, timeout=60, limits=limits) as client:
        await asyncio.gather(
            sampler(soak, database_url),
            reader(soak, client, users[0], args.rate),
            relogin(client, users, soak.deadline),
            discussion_loop(soak, client, users[0], soak.readers_discussions),
            *(discussion_loop(soak, client, user, []) for user in users[1:]),
        )
    return soak


def growth(first: dict[int, int], last: dict[int, int]) -> str:
    if first.keys() != last.keys():
        return f"workers changed ({sorted(first)} -> {sorted(last)}): not comparable"
    parts = [f"{first[p]} -> {last[p]} ({(last[p] - first[p]) / first[p] * 100:+.1f}%)" for p in sorted(first)]
    return "; ".join(parts)


def p95_ms(soak: Soak, start: float, end: float) -> str:
    values = [d for at, d in soak.latencies if start <= at < end]
    return f"{percentile(values, 0.95) * 1000:.1f} ms ({len(values)} requests)" if values else "no requests"


def report(soak: Soak, args: argparse.Namespace) -> list[tuple[str, str]]:
    begun = soak.samples[0].at
    warm = next((s for s in soak.samples if s.at - begun >= WARM_UP_SECONDS), soak.samples[0])
    last = soak.samples[-1]
    end = soak.deadline
    window = min(WINDOW_SECONDS, (end - begun) / 2)
    return [
        ("run", f"{args.minutes:g} min, {args.rate:g} requests/s, {args.discussions} discussions at once"),
        ("requests, failed", f"{len(soak.latencies)}, {dict(sorted(soak.errors.items())) or 0}"),
        ("discussions finished", str(soak.finished)),
        ("worker RSS KiB, after warm-up -> end", growth(warm.rss_kib, last.rss_kib)),
        ("worker open FDs, after warm-up -> end", growth(warm.fds, last.fds)),
        (
            "Redis used memory, after warm-up -> end",
            f"{warm.redis_bytes / 2**20:.1f} -> {last.redis_bytes / 2**20:.1f} MiB"
            " (event streams are kept 7 days by design: growth per finished discussion below)",
        ),
        (
            "Redis bytes per finished discussion",
            f"{(last.redis_bytes - warm.redis_bytes) / max(soak.finished, 1):.0f}",
        ),
        ("PostgreSQL connections, after warm-up -> end", f"{warm.db_connections} -> {last.db_connections}"),
        (
            "request p95, first vs last window",
            f"{p95_ms(soak, begun, begun + window)} vs {p95_ms(soak, end - window, end)}",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=20, help="HTTP requests a second")
    parser.add_argument("--discussions", type=int, default=10, help="discussions running at once")
    args = parser.parse_args()
    overrides = {"MAX_CONCURRENT_AGENTS": str(args.discussions), "DAILY_TOKEN_QUOTA": "1000000000"}
    with bench_stack(**overrides) as (env, tmp, _), running_service(env, tmp / "service.log") as service:
        with httpx.Client(base_url=service.url, timeout=60) as client:
            users = [new_user(client) for _ in range(args.discussions)]
        soak = asyncio.run(soak_run(service, env["DATABASE_URL"], users, args))
    print("| measurement | result |\n|---|---|")
    for name, value in report(soak, args):
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
