"""The upstream prompt-cache hit ratio of a discussion: `python -m bench.prompt_cache [--rounds 3] [--words 120]`.

Starts its own stack like the integration tests (scratch database, Redis prefix, a fresh fake LLM, gunicorn with
2 uvicorn workers), runs one 4-agent discussion and compares the prompt-cache hits the upstream reported for its
requests with the best any append-only prompt layout could reach for the same transcript. Prints Markdown tables.

The bound: whatever the layout, request k carries two things no earlier request could have carried, the turn
spoken since request k-1 (the upstream produced it; it never received it) and, after it, the cue that hands the
turn to the next speaker. Everything before them can be a cached prefix, so at best
hit_k = prompt_k - (tokens of that turn + tokens of the cue), and nothing at all on the first request.
Tokens are counted as the fake LLM counts them (`service.fakellm.count_tokens`, per message).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass

import asyncpg
import httpx

from bench.run import bench_stack
from service.agents.presets import DEFAULT_PANEL, MODERATOR, ROLES, speaker_cue
from service.fakellm import count_tokens
from tests.service.api import create_discussion, new_user, wait_finished
from tests.service.stack import running_service

TARGET_POINTS = 3.0  # issue 15: within 3 points of the best append-only layout


@dataclass(frozen=True)
class Request:
    """One upstream request of the discussion, as the upstream reported it, and the bound for it."""

    speaker: str
    prompt_tokens: int
    hit_tokens: int
    best_hit_tokens: int


def best_hits(speakers: list[str], answers: list[str], prompt_tokens: list[int]) -> list[int]:
    """The bound above, per request: `speakers[k]` answered `answers[k]` to a prompt of `prompt_tokens[k]`."""
    best = [0]
    for k in range(1, len(speakers)):
        role = MODERATOR if speakers[k] == MODERATOR.key else ROLES[speakers[k]]
        new = count_tokens(answers[k - 1]) + count_tokens(speaker_cue(role))
        best.append(max(prompt_tokens[k] - new, 0))
    return best


def ratio(hits: int, prompts: int) -> float:
    return 100.0 * hits / prompts if prompts else 0.0


async def usage_rows(database_url: str, discussion_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(
            "SELECT prompt_tokens, cache_hit_tokens FROM token_usage WHERE discussion_id = $1 ORDER BY id",
            discussion_id,
        )
    finally:
        await conn.close()


def run_discussion(rounds: int, words: int) -> list[Request]:
    with bench_stack() as (env, tmp, _):  # a fresh fake LLM process: its cache has seen nothing yet
        database_url = env["DATABASE_URL"]
        with (
            running_service(env, tmp / "service.log") as service,
            httpx.Client(base_url=service.url, timeout=60) as client,
        ):
            user = new_user(client)
            topic = f"Should we buy ACME this quarter? [[fake:words={words},delay=0.001]]"
            discussion = create_discussion(client, user, topic, list(DEFAULT_PANEL), rounds=rounds)
            detail = wait_finished(client, user, discussion, timeout=300)
        messages = detail["messages"]
        if detail["status"] != "completed" or any(m["status"] != "completed" for m in messages):
            sys.exit(f"the discussion did not complete every turn: {detail['status']}, {detail.get('error')}")
        rows = asyncio.run(usage_rows(database_url, discussion))
    speakers = [m["role"] for m in messages]
    prompts = [r["prompt_tokens"] for r in rows]
    best = best_hits(speakers, [m["content"] for m in messages], prompts)
    return [Request(s, p, r["cache_hit_tokens"], b) for s, p, r, b in zip(speakers, prompts, rows, best, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--words", type=int, default=120, help="words per answer (DeepSeek's run about 100-150)")
    args = parser.parse_args()
    requests = run_discussion(args.rounds, args.words)
    prompts = sum(r.prompt_tokens for r in requests)
    measured = ratio(sum(r.hit_tokens for r in requests), prompts)
    best = ratio(sum(r.best_hit_tokens for r in requests), prompts)
    gap = best - measured
    print("| request | speaker | prompt tokens | cache hits | best append-only |\n|---|---|---|---|---|")
    for k, r in enumerate(requests):
        print(f"| {k} | {r.speaker} | {r.prompt_tokens} | {r.hit_tokens} | {r.best_hit_tokens} |")
    print()
    print("| measurement | result |\n|---|---|")
    print(f"| {len(DEFAULT_PANEL)} agents x {args.rounds} rounds + moderator: requests | {len(requests)} |")
    print(f"| prompt-cache hit ratio reported by the upstream | {measured:.1f}% |")
    print(f"| best ratio of any append-only layout, same transcript | {best:.1f}% |")
    verdict = "met" if gap <= TARGET_POINTS else "MISSED"
    print(f"| gap (target <= {TARGET_POINTS:g} points) | {gap:.1f} points: {verdict} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
