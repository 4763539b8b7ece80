"""A local OpenAI-compatible chat-completions server for tests and the sandbox. Never run in production.

`python -m service.fakellm --port 8900 [--reject-key KEY ...] [--empty-balance-key KEY ...]`

Per key, with DeepSeek's own error bodies: a rejected key gets 401, an empty-balance key 402. Both sets can be
replaced at run time: `POST /admin/keys {"reject": [...], "empty_balance": [...]}` (a field left out stays).

Answers are deterministic, derived from the request. Faults are injected per request either by a
marker anywhere in the messages, `[[fake:delay=0.05,stall_first=3,only=Bear]]`, or by queueing
one-shot faults with `POST /admin/faults {"faults": [{"status": 429}, {}]}` (one per request
that passes the key checks, in order).

Marker/fault keys: words (answer length), delay (s between chunks), reasoning (words of
reasoning_content first), stall_first / stall_mid (s of silence with keep-alive comments before the
first / middle token), cut (1: drop the connection mid-stream), stream_error (after N words send an error object inside
the stream, then end it), malformed (after N words send a chunk that is not JSON), status (answer with
this HTTP error), retry_after (with status 429: its Retry-After header, s), only (apply the faults
stall/cut/stream_error/malformed/status only when the last message contains this text), strict_roles (1: answer
400 like deepseek-reasoner when two successive messages share a role), format (markdown: the fixed MARKDOWN_ANSWER
instead of words; the moderator's verdict stays JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MARKER = re.compile(r"\[\[fake:([^\]]*)\]\]")
FAULT_KEYS = ("stall_first", "stall_mid", "cut", "stream_error", "malformed", "status")
VOCABULARY = (
    "revenue",
    "margin",
    "growth",
    "valuation",
    "momentum",
    "support",
    "resistance",
    "volume",
    "sentiment",
    "risk",
    "downside",
    "upside",
    "catalyst",
    "guidance",
    "earnings",
    "cashflow",
    "leverage",
    "moat",
    "competition",
    "regulation",
    "volatility",
    "trend",
    "breakout",
    "dividend",
    "buyback",
    "liquidity",
    "drawdown",
    "hedge",
    "exposure",
    "outlook",
    "consensus",
)
KEEPALIVE_SECONDS = 0.5
# What a real model's answer looks like, with the raw HTML and the javascript: link a console must not obey.
MARKDOWN_ANSWER = """## Three things to weigh

- **Revenue** grew 12% on the quarter
- Margins held at `41%`
- Guidance was raised

```python
def upside(price: float, target: float) -> float:
    return target / price - 1
```

Read [the filing](https://example.com/acme-10q) first; [this](javascript:alert(2)) is no link.

<script>alert(1)</script>
"""
# DeepSeek's bodies for a revoked key and an account without balance, as its API sends them.
AUTH_FAILS = "Authentication Fails, Your api key: ****{tail} is invalid"
INSUFFICIENT_BALANCE = {
    "error": {
        "message": "Insufficient Balance",
        "type": "unknown_error",
        "param": None,
        "code": "invalid_request_error",
    }
}


@dataclass
class FakeState:
    rejected_keys: set[str]
    empty_balance_keys: set[str] = field(default_factory=set)
    queued_faults: list[dict[str, Any]] = field(default_factory=list)
    seen_prefixes: set[str] = field(default_factory=set)
    active: int = 0
    max_active: int = 0
    requests: int = 0
    keys_seen: list[str] = field(default_factory=list)


def count_tokens(text: str) -> int:
    return len(text.split()) + 1


def parse_options(messages: list[dict[str, Any]]) -> dict[str, str]:
    options: dict[str, str] = {}
    for message in messages:
        for body in MARKER.findall(str(message.get("content", ""))):
            for pair in body.split(","):
                key, _, value = pair.partition("=")
                options[key.strip()] = value.strip()
    only = options.get("only")
    if only and only not in str(messages[-1].get("content", "")):
        for key in FAULT_KEYS:
            options.pop(key, None)
    return options


def cached_prefix_tokens(state: FakeState, messages: list[dict[str, Any]]) -> int:
    """Tokens of the longest message prefix already seen, as a provider's prompt cache would report."""
    hit = 0
    running = 0
    digest = hashlib.sha256()
    for message in messages:
        digest.update(json.dumps(message, sort_keys=True).encode())
        key = digest.hexdigest()
        running += count_tokens(str(message.get("content", "")))
        if key in state.seen_prefixes:
            hit = running
        state.seen_prefixes.add(key)
    return hit


def answer_text(body: dict[str, Any], words: int) -> str:
    seed = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).digest()
    picked = [VOCABULARY[seed[i % len(seed)] * (i + 1) % len(VOCABULARY)] for i in range(words)]
    if (body.get("response_format") or {}).get("type") == "json_object":
        stance = ("bullish", "bearish", "neutral")[seed[0] % 3]
        verdict = {"stance": stance, "confidence": round(seed[1] / 255, 2), "summary": " ".join(picked)}
        return json.dumps(verdict)
    return " ".join(picked)


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def stall(seconds: float) -> AsyncIterator[bytes]:
    """Silence on the data channel, with SSE comment lines so the connection looks alive."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(KEEPALIVE_SECONDS, left))
        yield b": keep-alive\n\n"


def error_response(status: int, message: str) -> JSONResponse:
    kind = {401: "authentication_error", 429: "rate_limit_error"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def successive_roles_error(model: str, messages: list[dict[str, Any]]) -> JSONResponse | None:
    """DeepSeek's 400 for two successive messages of the same role, or None when roles alternate."""
    for i in range(1, len(messages)):
        if messages[i - 1].get("role") == messages[i].get("role"):
            message = (
                f"{model} does not support successive user or assistant messages (messages[{i - 1}] and "
                f"messages[{i}] in your input). You should interleave the user/assistant messages in the message "
                "sequence."
            )
            kind = "invalid_request_error"
            return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": kind}}, 400)
    return None


def auth_fails(key: str) -> JSONResponse:
    message = AUTH_FAILS.format(tail=key[-4:])
    body = {
        "error": {"message": message, "type": "authentication_error", "param": None, "code": "invalid_request_error"}
    }
    return JSONResponse(body, status_code=401)


def create_app(rejected_keys: set[str] | None = None, empty_balance_keys: set[str] | None = None) -> Starlette:
    state = FakeState(rejected_keys=rejected_keys or set(), empty_balance_keys=empty_balance_keys or set())

    async def completions(request: Request) -> Response:
        body = await request.json()
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        state.requests += 1
        state.keys_seen.append(key)
        if key in state.rejected_keys:
            return auth_fails(key)
        if key in state.empty_balance_keys:
            return JSONResponse(INSUFFICIENT_BALANCE, status_code=402)
        options = parse_options(body["messages"])
        if state.queued_faults:
            options.update({k: str(v) for k, v in state.queued_faults.pop(0).items()})
        if options.get("strict_roles") == "1" and (refused := successive_roles_error(body["model"], body["messages"])):
            return refused
        if "status" in options:
            status = int(options["status"])
            response = error_response(status, f"injected HTTP {status}")
            if "retry_after" in options:
                response.headers["Retry-After"] = options["retry_after"]
            return response
        words = min(int(options.get("words", "12")), int(body.get("max_tokens") or 10**6))
        text = answer_text(body, words)
        if options.get("format") == "markdown" and (body.get("response_format") or {}).get("type") != "json_object":
            text = MARKDOWN_ANSWER
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in body["messages"])
        cache_hit = cached_prefix_tokens(state, body["messages"])
        pieces = re.findall(r"\S+\s*", text)
        if not body.get("stream"):
            return JSONResponse({"error": {"message": "this fake only streams; set stream=true"}}, 400)
        return StreamingResponse(
            stream(body, options, pieces, prompt_tokens, cache_hit), media_type="text/event-stream"
        )

    async def stream(
        body: dict[str, Any], options: dict[str, str], pieces: list[str], prompt_tokens: int, cache_hit: int
    ) -> AsyncIterator[bytes]:
        state.active += 1
        state.max_active = max(state.max_active, state.active)
        try:
            base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time())}
            base["model"] = body["model"]
            delay = float(options.get("delay", "0.01"))
            yield sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            async for line in stall(float(options.get("stall_first", "0"))):
                yield line
            for i in range(int(options.get("reasoning", "0"))):
                delta = {"reasoning_content": f"{VOCABULARY[i % len(VOCABULARY)]} "}
                yield sse({**base, "choices": [{"index": 0, "delta": delta}]})
            half = len(pieces) // 2
            for i, piece in enumerate(pieces):
                if str(i) == options.get("stream_error"):
                    error = {"message": "injected in-stream error", "type": "server_error", "code": "stream_error"}
                    yield sse({"error": error})
                    return
                if str(i) == options.get("malformed"):
                    yield b"data: {not json\n\n"
                    return
                if i == half:
                    async for line in stall(float(options.get("stall_mid", "0"))):
                        yield line
                    if options.get("cut") == "1":
                        return  # connection closes without finish_reason or [DONE]
                await asyncio.sleep(delay)
                yield sse({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
            yield sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                completion = count_tokens("".join(pieces))
                usage = {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion,
                    "prompt_cache_hit_tokens": cache_hit,
                    "prompt_cache_miss_tokens": prompt_tokens - cache_hit,
                }
                yield sse({**base, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
        finally:
            state.active -= 1

    async def queue_faults(request: Request) -> Response:
        state.queued_faults.extend((await request.json())["faults"])
        return JSONResponse({"queued": len(state.queued_faults)})

    async def set_keys(request: Request) -> Response:
        body = await request.json()
        state.rejected_keys = set(body.get("reject", state.rejected_keys))
        state.empty_balance_keys = set(body.get("empty_balance", state.empty_balance_keys))
        return JSONResponse({"reject": sorted(state.rejected_keys), "empty_balance": sorted(state.empty_balance_keys)})

    async def stats(request: Request) -> Response:
        return JSONResponse(
            {
                "active": state.active,
                "max_active": state.max_active,
                "requests": state.requests,
                "keys_seen": state.keys_seen,
            }
        )

    async def reset(request: Request) -> Response:
        state.queued_faults.clear()
        state.keys_seen.clear()
        state.max_active = state.active
        state.requests = 0
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/admin/faults", queue_faults, methods=["POST"]),
            Route("/admin/keys", set_keys, methods=["POST"]),
            Route("/admin/stats", stats, methods=["GET"]),
            Route("/admin/reset", reset, methods=["POST"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--reject-key", action="append", default=[], help="answer 401 for this API key")
    parser.add_argument("--empty-balance-key", action="append", default=[], help="answer 402 for this API key")
    args = parser.parse_args()
    app = create_app(set(args.reject_key), set(args.empty_balance_key))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
