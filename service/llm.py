"""Streaming chat completions through the openai SDK, with a key pool, retries and a whole-turn timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from service.metrics import LLM_PROMPT_CACHE_TOKENS, LLM_REQUESTS, LLM_TIME_TO_FIRST_TOKEN, LLM_TOKENS
from service.settings import Settings

MAX_ATTEMPTS = 4
# Called with (content_delta, reasoning_delta) as they arrive.
DeltaCallback = Callable[[str, str], Awaitable[None]]


class LlmError(Exception):
    """The turn could not be completed upstream; the message says why."""


class LlmTimeoutError(LlmError):
    pass


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hit_tokens: int = 0
    cache_miss_tokens: int = 0


def _usage_from(raw: Any) -> Usage:
    extra = raw.model_extra or {}
    hit = extra.get("prompt_cache_hit_tokens")
    if hit is None:  # OpenAI reports cached tokens here instead of DeepSeek's top-level fields
        details = getattr(raw, "prompt_tokens_details", None)
        hit = getattr(details, "cached_tokens", None) or 0
    miss = extra.get("prompt_cache_miss_tokens", raw.prompt_tokens - hit)
    return Usage(raw.prompt_tokens, raw.completion_tokens, int(hit), int(miss))


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}"
    if isinstance(exc, openai.APIConnectionError):
        return "connection_error"
    return "error"


class LlmClient:
    """One AsyncOpenAI client per API key; 401/429 move on to the next key of the pool."""

    def __init__(self, settings: Settings) -> None:
        self._model = settings.ai_model_name
        self._max_tokens = settings.ai_model_max_tokens
        self._timeout = settings.agent_timeout
        # The SDK's own retries are off: retrying after tokens were streamed would duplicate text.
        self._clients = [
            AsyncOpenAI(
                api_key=key,
                base_url=settings.ai_model_base_url,
                max_retries=0,
                timeout=openai.Timeout(settings.agent_timeout, connect=10.0),
            )
            for key in settings.ai_api_keys
        ]
        self._key_index = 0

    async def close(self) -> None:
        for client in self._clients:
            await client.close()

    async def stream_turn(
        self, messages: list[dict[str, str]], on_delta: DeltaCallback, *, json_mode: bool = False
    ) -> Usage:
        """Stream one completion into `on_delta`. The whole turn, retries included, has AGENT_TIMEOUT
        seconds: SSE keep-alive comments reset socket read timeouts but not this deadline."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._with_retries(messages, on_delta, json_mode)
        except TimeoutError:
            LLM_REQUESTS.labels(outcome="timeout").inc()
            raise LlmTimeoutError(f"turn exceeded AGENT_TIMEOUT={self._timeout:g} s") from None

    async def _with_retries(self, messages: list[dict[str, str]], on_delta: DeltaCallback, json_mode: bool) -> Usage:
        started = [False]  # set once the first token arrived; after that a retry would repeat text
        for attempt in range(MAX_ATTEMPTS):
            try:
                return await self._stream_once(messages, on_delta, json_mode, started)
            except (openai.APIStatusError, openai.APIConnectionError) as exc:
                LLM_REQUESTS.labels(outcome=_outcome(exc)).inc()
                status = getattr(exc, "status_code", None)
                retryable = status is None or status in (401, 429) or status >= 500
                if started[0] or not retryable or attempt == MAX_ATTEMPTS - 1:
                    raise LlmError(f"upstream LLM failed: {_outcome(exc)}: {exc}") from exc
                if status in (401, 429):
                    self._key_index = (self._key_index + 1) % len(self._clients)
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        raise AssertionError("unreachable: the last attempt raises")

    async def _stream_once(
        self, messages: list[dict[str, str]], on_delta: DeltaCallback, json_mode: bool, started: list[bool]
    ) -> Usage:
        client = self._clients[self._key_index]
        begun = time.monotonic()
        stream = await client.chat.completions.create(
            model=self._model,
            messages=cast("list[ChatCompletionMessageParam]", messages),
            max_tokens=self._max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            response_format={"type": "json_object"} if json_mode else openai.omit,
        )
        usage: Usage | None = None
        finished = False
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = _usage_from(chunk.usage)
                for choice in chunk.choices:
                    content = choice.delta.content or ""
                    reasoning = (choice.delta.model_extra or {}).get("reasoning_content") or ""
                    if (content or reasoning) and not started[0]:
                        started[0] = True
                        LLM_TIME_TO_FIRST_TOKEN.observe(time.monotonic() - begun)
                    if content or reasoning:
                        await on_delta(content, reasoning)
                    finished = finished or choice.finish_reason is not None
        finally:
            await stream.close()  # on cancel (user stop) this closes the upstream connection
        if not finished:
            LLM_REQUESTS.labels(outcome="cut").inc()
            raise LlmError("upstream LLM stream ended before finish_reason; the answer is incomplete")
        LLM_REQUESTS.labels(outcome="ok").inc()
        usage = usage or Usage()
        LLM_TOKENS.labels(direction="prompt").inc(usage.prompt_tokens)
        LLM_TOKENS.labels(direction="completion").inc(usage.completion_tokens)
        LLM_PROMPT_CACHE_TOKENS.labels(result="hit").inc(usage.cache_hit_tokens)
        LLM_PROMPT_CACHE_TOKENS.labels(result="miss").inc(usage.cache_miss_tokens)
        return usage
