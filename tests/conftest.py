"""Shared fixtures: a fake clock, the fake server on a real socket, and a Session bound to both."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import deerluma
from deerluma.testing import FakeClock, FakeDeerAPI

SAMPLES = Path(__file__).parent / "samples"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


#: The fake server's side of a connection: its handlers, and the loop accepting one that a
#: cancelled request had just opened.
_SERVER_SIDE = ("RequestHandler", "BaseSelectorEventLoop._accept_connection")


def our_tasks() -> list[asyncio.Task[object]]:
    """Tasks still alive apart from this test's own and the fake server's side."""
    return [
        task
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task()
        and not task.get_coro().__qualname__.startswith(_SERVER_SIDE)  # type: ignore[union-attr]
    ]


def sample(name: str) -> bytes:
    """A recorded response body from tests/samples."""
    return (SAMPLES / name).read_bytes()


@pytest.fixture(autouse=True)
def _rate_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions of one key share their 429s through a file: each test has a folder of its own."""
    monkeypatch.setenv("DEERLUMA_RATE_DIR", str(tmp_path / "rates"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def fake(clock: FakeClock) -> AsyncIterator[FakeDeerAPI]:
    async with FakeDeerAPI(clock=clock) as server:
        yield server


@pytest.fixture
async def session(fake: FakeDeerAPI, clock: FakeClock) -> AsyncIterator[deerluma.Session]:
    async with deerluma.Session(
        api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep
    ) as s:
        yield s


@pytest.fixture
def pg_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    name = f"deerluma_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
