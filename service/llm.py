"""Streaming chat completions through the openai SDK, with a key pool whose health every worker shares through
Redis, retries before the first token, and a whole-turn timeout.

Every failed upstream attempt is one FailureCategory, one warning line (logger `service.llm`) and one count of
`cvm_llm_upstream_failures_total{category}`; a turn that cannot be completed raises LlmError naming the cause.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from redis.asyncio import Redis

from service.metrics import (
    LLM_PROMPT_CACHE_TOKENS,
    LLM_REQUESTS,
    LLM_TIME_TO_FIRST_TOKEN,
    LLM_TOKENS,
    LLM_UPSTREAM_FAILURES,
)
from service.settings import Settings

log = logging.getLogger(__name__)

FailureCategory = Literal[
    "auth",
    "balance",
    "rate_limit",
    "server",
    "bad_request",
    "timeout",
    "cut",
    "stream_error",
    "malformed",
    "connection",
]
# A key that failed this way cools down in the shared pool health; other categories retry or end the turn.
KEY_COOLDOWN_SECONDS: dict[FailureCategory, float] = {"auth": 3600.0, "balance": 600.0}
RATE_LIMIT_BACKOFF = (1.0, 30.0)  # without Retry-After: 1 s, doubling per attempt, at most 30 s
RETRY_AFTER_CAP = 120.0
MAX_ATTEMPTS = 4  # server and connection failures, on the same key
# Called with (content_delta, reasoning_delta) as they arrive.
DeltaCallback = Callable[[str, str], Awaitable[None]]


class LlmError(Exception):
    """The turn could not be completed upstream; the message says why in words a user understands."""

    def __init__(self, message: str, category: FailureCategory) -> None:
        super().__init__(message)
        self.category = category


class LlmTimeoutError(LlmError):
    def __init__(self, message: str) -> None:
        super().__init__(message, "timeout")


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


def category_of_status(status: int) -> FailureCategory:
    if status in (401, 403):
        return "auth"
    if status == 402:
        return "balance"
    if status == 429:
        return "rate_limit"
    return "server" if status >= 500 else "bad_request"


def masked(key: str) -> str:
    """An API key as logs and the operator see it: its last 4 characters, never more."""
    return "…" + key[-4:]


@dataclass(frozen=True)
class Failure:
    """One failed upstream attempt: what kind, the HTTP status if any, the upstream's own words."""

    category: FailureCategory
    status: int | None
    message: str
    retry_after: float | None = None  # seconds, from a 429's Retry-After header

    def cause(self) -> str:
        return self.message if self.status is None else f"upstream {self.status}: {self.message}"


def failure_of(exc: Exception) -> Failure:
    """The Failure an exception raised while talking to the upstream stands for."""
    if isinstance(exc, openai.APIStatusError):
        return Failure(
            category_of_status(exc.status_code),
            exc.status_code,
            _upstream_message(exc.body, exc.message),
            _retry_after(exc.response.headers.get("retry-after")),
        )
    if isinstance(exc, openai.APIConnectionError):
        return Failure("connection", None, str(exc.__cause__ or "") or exc.message)  # httpx's words, if any
    if isinstance(exc, openai.APIError):  # the SDK raises this for an error object sent inside the stream
        return Failure("stream_error", None, _upstream_message(exc.body, exc.message))
    return Failure("malformed", None, f"{type(exc).__name__}: {exc}")


def _upstream_message(body: object, fallback: str) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return fallback


def _retry_after(header: str | None) -> float | None:
    try:
        return min(max(float(header), 0.0), RETRY_AFTER_CAP) if header else None
    except ValueError:  # an HTTP date: fall back to the backoff
        return None


def turn_error(failure: Failure, attempts: int = 1) -> LlmError:
    """The words a user reads for a turn that ended on this failure (key failures: see pool_exhausted)."""
    texts: dict[FailureCategory, str] = {
        "server": f"the LLM upstream kept failing with a server error ({failure.cause()}) after {attempts} attempts",
        "bad_request": f"the LLM upstream refused the request ({failure.cause()})",
        "connection": f"could not reach the LLM upstream after {attempts} attempts ({failure.message})",
        "cut": "upstream LLM stream ended before finish_reason; the answer is incomplete",
        "stream_error": f"the LLM upstream sent an error inside the stream ({failure.message}); answer incomplete",
        "malformed": f"the LLM upstream sent a chunk this service cannot read ({failure.message})",
    }
    if failure.category in texts:
        return LlmError(texts[failure.category], failure.category)
    return pool_exhausted([failure])


_KEY_TROUBLE: dict[FailureCategory, tuple[str, str]] = {  # (every key like this, some keys like this)
    "rate_limit": ("rate limit reached on every usable API key of the pool", "rate limited"),
    "balance": ("every API key of the pool has insufficient balance", "with insufficient balance"),
    "auth": ("every API key of the pool is refused by the upstream (invalid or revoked)", "refused"),
}
_KEY_ADVICE: dict[FailureCategory, str] = {
    "rate_limit": "try again in a minute",
    "balance": "top up the upstream account",
    "auth": "replace the keys in AI_API_KEY",
}


def pool_exhausted(cooling: list[Failure]) -> LlmError:
    """No key is usable. A rate limit is the cause whenever a key is rate limited: it is the one that passes,
    and naming a revoked key instead would hide it. Otherwise every cause is named."""
    if any(f.category == "rate_limit" for f in cooling):
        cooling = [f for f in cooling if f.category == "rate_limit"]
    kinds = [c for c in _KEY_TROUBLE if any(f.category == c for f in cooling)]
    first = {c: next(f for f in cooling if f.category == c) for c in kinds}
    if len(kinds) == 1:
        kind = kinds[0]
        return LlmError(f"{_KEY_TROUBLE[kind][0]} ({first[kind].cause()}); {_KEY_ADVICE[kind]}", kind)
    parts = [f"{sum(f.category == c for f in cooling)} {_KEY_TROUBLE[c][1]} ({first[c].cause()})" for c in kinds]
    return LlmError(f"no API key of the pool is usable: {', '.join(parts)}", kinds[0])


# A rest only ever grows: a 429 seen by one worker must not cut short the hour another worker gave a revoked key.
_LONGER_REST = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
"""


class KeyHealth:
    """Which keys of the pool are cooling down, and why: shared by every worker through Redis.

    A key is stored under a hash of itself (never the key), its value the Failure, its TTL the cooldown."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._longer_rest = redis.register_script(_LONGER_REST)

    def redis_key(self, api_key: str) -> str:
        return f"{self._prefix}llm-key:{hashlib.sha256(api_key.encode()).hexdigest()[:16]}"

    async def cooling(self, api_keys: list[str]) -> list[tuple[Failure, float] | None]:
        """Per key: (why it cools down, seconds left), or None when it is usable."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for api_key in api_keys:
                pipe.get(self.redis_key(api_key))
                pipe.pttl(self.redis_key(api_key))
            replies = await pipe.execute()
        states: list[tuple[Failure, float] | None] = []
        for raw, ttl_ms in zip(replies[::2], replies[1::2], strict=True):
            if raw is None or ttl_ms is None or ttl_ms <= 0:
                states.append(None)
                continue
            fields = json.loads(raw)
            failure = Failure(fields["category"], fields["status"], fields["message"])
            states.append((failure, ttl_ms / 1000))
        return states

    async def cool(self, api_key: str, failure: Failure, seconds: float) -> None:
        value = json.dumps({"category": failure.category, "status": failure.status, "message": failure.message})
        await self._longer_rest(keys=[self.redis_key(api_key)], args=[value, max(int(seconds * 1000), 1)])


def _cooldown(failure: Failure, attempt: int) -> float | None:
    """How long a key rests after this failure; None: the key is fine, the failure is not its fault."""
    if failure.category == "rate_limit":
        if failure.retry_after is not None:
            return failure.retry_after
        first, cap = RATE_LIMIT_BACKOFF
        return min(first * 2.0**attempt, cap)
    return KEY_COOLDOWN_SECONDS.get(failure.category)


class _Failed(Exception):
    """An attempt failed with this Failure (raised inside _stream_once, handled by the retry loop)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass
class _Turn:
    """What the retry loop knows of the turn in flight."""

    deadline: float  # event-loop time
    started: bool = False  # a token arrived: a retry now would repeat text
    key: str = ""  # the key of the attempt in flight
    waiting_for: Failure | None = None  # set while sleeping out a rate limit


class LlmClient:
    """One AsyncOpenAI client per API key. 401/403, 402 and 429 cool the key down in the shared pool health and
    move to the next usable key; 5xx and connection failures retry the same key; all before the first token."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self._model = settings.ai_model_name
        self._max_tokens = settings.ai_model_max_tokens
        self._timeout = settings.agent_timeout
        self._keys = list(settings.ai_api_keys)
        self._health = KeyHealth(redis, settings.redis_key_prefix)
        # The SDK's own retries are off: retrying after tokens were streamed would duplicate text.
        self._clients = {
            key: AsyncOpenAI(
                api_key=key,
                base_url=settings.ai_model_base_url,
                max_retries=0,
                timeout=openai.Timeout(settings.agent_timeout, connect=10.0),
            )
            for key in self._keys
        }
        self._key_index = 0  # this worker's last good key: where the next turn starts looking

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()

    async def stream_turn(
        self, messages: list[dict[str, str]], on_delta: DeltaCallback, *, json_mode: bool = False
    ) -> Usage:
        """Stream one completion into `on_delta`. The whole turn, retries included, has AGENT_TIMEOUT
        seconds: SSE keep-alive comments reset socket read timeouts but not this deadline."""
        turn = _Turn(deadline=asyncio.get_running_loop().time() + self._timeout)
        try:
            async with asyncio.timeout(self._timeout):
                return await self._with_retries(messages, on_delta, json_mode, turn)
        except TimeoutError:
            if turn.waiting_for is not None:  # the deadline fell while a rate limit was being waited out
                raise pool_exhausted([turn.waiting_for]) from None
            LLM_REQUESTS.labels(outcome="timeout").inc()
            message = f"turn exceeded AGENT_TIMEOUT={self._timeout:g} s"
            self._record(Failure("timeout", None, message), turn.key)
            raise LlmTimeoutError(message) from None

    async def _with_retries(
        self, messages: list[dict[str, str]], on_delta: DeltaCallback, json_mode: bool, turn: _Turn
    ) -> Usage:
        same_key_failures = 0
        # Each key failure takes a key out of rotation, so the loop is bounded by the keys and the retries.
        attempts = MAX_ATTEMPTS + 2 * len(self._keys)
        for attempt in range(attempts):
            key = await self._usable_key(turn)
            turn.key = key
            try:
                usage = await self._stream_once(key, messages, on_delta, json_mode, turn)
            except _Failed as failed:
                failure = failed.failure
                self._record(failure, key)
                if turn.started or attempt == attempts - 1:
                    raise turn_error(failure, attempt + 1) from None
                cooldown = _cooldown(failure, attempt)
                if cooldown is not None:
                    await self._health.cool(key, failure, cooldown)
                    self._key_index = (self._keys.index(key) + 1) % len(self._keys)
                    continue
                same_key_failures += 1
                if failure.category not in ("server", "connection") or same_key_failures >= MAX_ATTEMPTS:
                    raise turn_error(failure, same_key_failures) from None
                await asyncio.sleep(min(0.2 * 2**same_key_failures, 2.0))
                continue
            self._key_index = self._keys.index(key)
            return usage
        raise AssertionError("unreachable: the last attempt raises")

    async def _usable_key(self, turn: _Turn) -> str:
        """The next key that is not cooling down, from this worker's last good one; waits out a rate limit that
        ends before the turn's deadline; raises the pool's cause when no key can serve this turn."""
        while True:
            states = await self._health.cooling(self._keys)
            order = self._keys[self._key_index :] + self._keys[: self._key_index]
            usable = [key for key in order if states[self._keys.index(key)] is None]
            if usable:
                turn.waiting_for = None
                return usable[0]
            cooling = [state for state in states if state is not None]
            limited = [(failure, left) for failure, left in cooling if failure.category == "rate_limit"]
            soonest = min(limited, key=lambda state: state[1], default=None)
            loop_time = asyncio.get_running_loop().time()
            if soonest is None or loop_time + soonest[1] >= turn.deadline:
                raise pool_exhausted([failure for failure, _ in cooling])
            turn.waiting_for = soonest[0]
            await asyncio.sleep(soonest[1])

    def _record(self, failure: Failure, key: str) -> None:
        """The one warning line and count of a failed upstream attempt."""
        LLM_UPSTREAM_FAILURES.labels(category=failure.category).inc()
        status = failure.status if failure.status is not None else "-"
        log.warning(
            "upstream LLM failed: category=%s key=%s status=%s model=%s: %s",
            failure.category,
            masked(key),
            status,
            self._model,
            failure.message,
        )

    async def _stream_once(
        self, key: str, messages: list[dict[str, str]], on_delta: DeltaCallback, json_mode: bool, turn: _Turn
    ) -> Usage:
        begun = time.monotonic()
        try:
            stream = await self._clients[key].chat.completions.create(
                model=self._model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                max_tokens=self._max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                response_format={"type": "json_object"} if json_mode else openai.omit,
            )
        except openai.APIError as exc:
            LLM_REQUESTS.labels(outcome=_outcome(exc)).inc()
            raise _Failed(failure_of(exc)) from exc
        usage: Usage | None = None
        finished = False
        try:
            async for content, reasoning, chunk_usage, chunk_finished in _deltas(stream):
                usage = chunk_usage or usage
                if (content or reasoning) and not turn.started:
                    turn.started = True
                    LLM_TIME_TO_FIRST_TOKEN.observe(time.monotonic() - begun)
                if content or reasoning:
                    await on_delta(content, reasoning)
                finished = finished or chunk_finished
        finally:
            await stream.close()  # on cancel (user stop) this closes the upstream connection
        if not finished:
            LLM_REQUESTS.labels(outcome="cut").inc()
            raise _Failed(Failure("cut", None, "the stream ended before finish_reason"))
        LLM_REQUESTS.labels(outcome="ok").inc()
        usage = usage or Usage()
        LLM_TOKENS.labels(direction="prompt").inc(usage.prompt_tokens)
        LLM_TOKENS.labels(direction="completion").inc(usage.completion_tokens)
        LLM_PROMPT_CACHE_TOKENS.labels(result="hit").inc(usage.cache_hit_tokens)
        LLM_PROMPT_CACHE_TOKENS.labels(result="miss").inc(usage.cache_miss_tokens)
        return usage


async def _deltas(stream: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[tuple[str, str, Usage | None, bool]]:
    """(content, reasoning, usage, finished) per chunk. Whatever goes wrong reading the upstream becomes _Failed
    here, and only here: an exception of the caller's own delta callback must pass through as it is."""
    iterator = aiter(stream)
    while True:
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except Exception as exc:  # an in-stream error object, a chunk that is not JSON, a dropped connection
            LLM_REQUESTS.labels(outcome=_outcome(exc)).inc()
            raise _Failed(failure_of(exc)) from exc
        try:
            usage = _usage_from(chunk.usage) if chunk.usage is not None else None
            content = "".join(choice.delta.content or "" for choice in chunk.choices)
            reasoning = "".join(
                str((choice.delta.model_extra or {}).get("reasoning_content") or "") for choice in chunk.choices
            )
            finished = any(choice.finish_reason is not None for choice in chunk.choices)
        except (AttributeError, TypeError, ValueError) as exc:  # JSON, but not a chat completion chunk
            LLM_REQUESTS.labels(outcome="malformed").inc()
            raise _Failed(Failure("malformed", None, f"{type(exc).__name__}: {exc}")) from exc
        yield content, reasoning, usage, finished


def _outcome(exc: Exception) -> str:
    """cvm_llm_requests_total's outcome label: the HTTP status where there is one, as it always was."""
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}"
    if isinstance(exc, openai.APIConnectionError):
        return "connection_error"
    return failure_of(exc).category
