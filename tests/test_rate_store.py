"""The rate shared through Redis: Sessions on several machines hear each other's 429s.

Against the real Redis at 127.0.0.1:6379 (each test's keys are its own: a digest of
its fake server's address), and a Redis of the test's own (a `redis-server` process)
where the test stops it mid-run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

import deerluma
from deerluma._peers import PeerEvent, peers_for
from deerluma._redis_peers import RedisPeers
from deerluma.testing import FakeDeerAPI

REDIS = "redis://127.0.0.1:6379/0"


async def _until(check: object, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.02)


async def test_a_pause_published_on_one_machine_is_heard_on_another() -> None:
    digest = uuid.uuid4().hex
    one, two = RedisPeers(REDIS, digest), RedisPeers(REDIS, digest)
    try:
        one.pace = lambda now: (10.0, 12.0)
        two.pace = lambda now: (11.0, 12.0)
        assert one.news(time.monotonic()) == (None, 0)

        def both_sending() -> bool:
            # Both keep asking, as Sessions that send do (a Session counts while it sends:
            # one asked once only might connect too late to be counted, on a busy machine).
            for peers in (one, two):
                assert peers.news(time.monotonic()) == (None, 0)
            return one.up and two.up and two.fleet() == 2

        await _until(both_sending)
        now = time.monotonic()
        one.publish(PeerEvent(0, 0, at=now, pause_until=now + 5.0, rate=7.0, w_max=9.0))
        one.tick()
        one.tick()
        heard: list[tuple[PeerEvent | None, int]] = []

        def hears() -> bool:
            event, ticks = two.news(time.monotonic())
            heard.append((event, ticks))
            return event is not None

        await _until(hears)
        event = next(e for e, _ in heard if e is not None)
        # Times went through Redis's clock and back: the same instant here, give or take.
        assert event.pause_until - now == pytest.approx(5.0, abs=0.05)
        assert (event.rate, event.w_max, event.writer) == (7.0, 9.0, one.me)
        assert sum(t for _, t in heard) == 2  # the two plain 429s, once
        assert one.news(time.monotonic()) == (None, 0)  # its own: not news to it
        assert one.fleet() == 2
    finally:
        await one.aclose()
        await two.aclose()


async def test_the_keys_are_a_digest_never_the_api_key() -> None:
    import redis.asyncio as aioredis

    async with FakeDeerAPI() as fake:
        secret = f"sk-{uuid.uuid4().hex}"
        peers = peers_for(fake.url, secret, REDIS)
        assert isinstance(peers, RedisPeers)
        peers.news(time.monotonic())
        peers.publish(PeerEvent(0, 0, at=time.monotonic(), pause_until=-math.inf))
        await _until(lambda: peers.up)
        await peers.aclose()
    client = aioredis.from_url(REDIS)
    try:
        names = [name.decode() async for name in client.scan_iter("deerluma:*")]
        assert names and not any(secret in name for name in names)
        for name in names:
            assert secret.encode() not in repr(await client.dump(name)).encode()
    finally:
        await client.aclose()


def test_an_unknown_store_is_refused_plainly() -> None:
    with pytest.raises(deerluma.ConfigurationError, match="redis://"):
        deerluma.Session(api_key="k" * 20, rate_store="mysql://x/y")


@asynccontextmanager
async def _own_redis() -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own, on a free port: the test may stop it."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no redis-server on this machine")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
    url = f"redis://127.0.0.1:{port}/0"
    try:
        yield url, proc
    finally:
        proc.kill()
        proc.wait()


async def test_redis_stopped_mid_run_the_sessions_go_on_alone_and_come_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _own_redis() as (url, proc):
        digest = uuid.uuid4().hex
        one, two = RedisPeers(url, digest), RedisPeers(url, digest)
        try:
            for peers in (one, two):
                peers.pace = lambda now: (5.0, 6.0)

            def ask() -> bool:
                one.news(time.monotonic())
                two.news(time.monotonic())
                return one.up and two.up and one.fleet() == 2

            await _until(ask, within=5.0)
            with caplog.at_level(logging.WARNING, logger="deerluma"):
                proc.kill()
                proc.wait()
                started = time.monotonic()
                # Asking never waits for Redis: each answer comes at once, alone.
                while time.monotonic() - started < 1.5:
                    asked = time.perf_counter()
                    assert two.news(time.monotonic())[1] == 0
                    assert time.perf_counter() - asked < 0.01
                    await asyncio.sleep(0.02)
                assert not two.up and two.fleet() == 1
                warned = [r for r in caplog.records if "out of reach" in r.getMessage()]
                assert len(warned) == 2  # once for each, not once a try
                assert all(url.split("//")[1] in r.getMessage() for r in warned)
        finally:
            await one.aclose()
            await two.aclose()


async def test_sessions_wait_on_with_their_store_stopped_and_lose_nothing() -> None:
    async with _own_redis() as (url, proc), FakeDeerAPI(max_rps=40, retry_after=0.5) as fake:
        ids = [fake.add_generation(duration=0.5 + i % 5 * 0.3) for i in range(60)]

        async def worker(part: list[str]) -> dict[str, object]:
            async with deerluma.Session(
                api_key=fake.api_key, base_url=fake.url, rate_store=url
            ) as s:
                return dict(await s.wait_many(part))

        runs = asyncio.gather(worker(ids[::2]), worker(ids[1::2]))
        await asyncio.sleep(0.5)
        proc.kill()  # mid-run
        results = await asyncio.wait_for(runs, timeout=30)
    answered = {k: v for part in results for k, v in part.items()}
    assert sorted(answered) == sorted(ids)
    assert all(isinstance(v, deerluma.Generation) for v in answered.values())
