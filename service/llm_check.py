"""`python -m service.llm_check`: one tiny request per key of the pool (AI_API_KEY), from where the service runs.

Prints one line per key, masked (`sk-…a1b2 ok`), with its verdict: ok, revoked, no balance, rate limited or
unreachable. Exit status 0 when a key is usable (ok, or only rate limited), 1 when none is, 2 on bad settings.
`inv llm.check` runs it in the API container; deploy runs it as a preflight warning.
"""

from __future__ import annotations

import asyncio
import sys

import openai
from openai import AsyncOpenAI

from service.llm import Failure, failure_of, masked
from service.settings import Settings, SettingsError, load_settings

CHECK_TIMEOUT = 15.0  # seconds per key; they are checked side by side
VERDICTS = {"auth": "revoked", "balance": "no balance", "rate_limit": "rate limited"}  # by category; else unreachable


def usable(failure: Failure | None) -> bool:
    """The upstream took the key: it answered, or only rate limited it (a valid key, just busy)."""
    return failure is None or failure.category == "rate_limit"


def verdict(failure: Failure | None) -> str:
    if failure is None:
        return "ok"
    return VERDICTS.get(failure.category, "unreachable")


def verdict_line(key: str, failure: Failure | None) -> str:
    """`sk-…a1b2 no balance (upstream 402: Insufficient Balance)`: the key as the operator may see it."""
    label = ("sk-" if key.startswith("sk-") else "") + masked(key)
    return f"{label} {verdict(failure)}" + (f" ({failure.cause()})" if failure else "")


async def probe_key(settings: Settings, key: str) -> Failure | None:
    """One request of one token with this key; None when the upstream answered it."""
    client = AsyncOpenAI(api_key=key, base_url=settings.ai_model_base_url, max_retries=0, timeout=CHECK_TIMEOUT)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            stream = await client.chat.completions.create(
                model=settings.ai_model_name,
                messages=[{"role": "user", "content": "ping"}],
                max_tokens=1,
                stream=True,
            )
            async for _chunk in stream:
                pass
        return None
    except TimeoutError:
        return Failure("timeout", None, f"no answer in {CHECK_TIMEOUT:g} s")
    except (openai.OpenAIError, ValueError) as exc:
        return failure_of(exc)
    finally:
        await client.close()


async def check(settings: Settings) -> list[Failure | None]:
    """Each key's failure (None: ok), in the pool's order."""
    return list(await asyncio.gather(*(probe_key(settings, key) for key in settings.ai_api_keys)))


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failures = asyncio.run(check(settings))
    for key, failure in zip(settings.ai_api_keys, failures, strict=True):
        print(verdict_line(key, failure))
    return 0 if any(usable(failure) for failure in failures) else 1


if __name__ == "__main__":
    sys.exit(main())
