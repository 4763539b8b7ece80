"""The fixtures of the service tests: one migrated database, Redis prefix, fake LLM and gunicorn per session."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from service.migrate import apply_migrations
from tests.service.api import User, new_user
from tests.service.stack import (
    FakeLlm,
    Service,
    running_fake_llm,
    running_service,
    scratch_database,
    scratch_redis_prefix,
    service_env,
)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated database for this test session, dropped at the end."""
    with scratch_database() as url:
        asyncio.run(apply_migrations(url))
        yield url


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A key prefix of this session; its keys are deleted at the end."""
    with scratch_redis_prefix() as prefix:
        yield prefix


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLlm]:
    with running_fake_llm() as llm:
        yield llm


@pytest.fixture(scope="session")
def service(
    database_url: str, redis_prefix: str, fake_llm: FakeLlm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """gunicorn with 2 uvicorn workers, agent cap 3, AGENT_TIMEOUT 4 s, discussion lease 3 s."""
    tmp = tmp_path_factory.mktemp("svc")
    with running_service(service_env(database_url, redis_prefix, fake_llm, tmp), tmp / "service.log") as svc:
        yield svc


@pytest.fixture
def user(client: httpx.Client) -> User:
    """A fresh user of the shared service, logged in."""
    return new_user(client)


@pytest.fixture
def client(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30) as c:
        yield c
