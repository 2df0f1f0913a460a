"""Evidence for the guarantees in docs/reliability.md: soak, cancellation, secrets, limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import traceback
from pathlib import Path

import aiohttp
import pytest

import deerluma
from deerluma import DecodeError, GenerationFailed, PollPolicy
from deerluma.testing import DEFAULT_FAULT_MIX, FakeClock, FakeDeerAPI, Fault

from .conftest import our_tasks

SOAK_FAULTS = (*DEFAULT_FAULT_MIX, Fault.rate_limit(1), Fault.error(503), Fault.latency(0.05))


def _everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            parts.extend(traceback.format_exception(record.exc_info[1]))
    return "\n".join(parts)


async def test_soak_500_tasks_with_15_percent_faults_loses_and_leaks_nothing(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rng = random.Random(8)
    async with FakeDeerAPI(clock=clock, fault_rate=0.15, fault_mix=SOAK_FAULTS, seed=8) as fake:
        truth: dict[str, bool] = {}
        for _ in range(500):
            fails = rng.random() < 0.1
            task_id = fake.add_generation(
                duration=rng.uniform(0, 40),
                estimate=rng.random() < 0.7,
                estimate_bias=rng.uniform(0.7, 1.3),
                failure_reason="moderation" if fails else None,
                shape=rng.choice(["web", "luma"]),
            )
            truth[task_id] = not fails
        async with deerluma.Session(
            api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep
        ) as s:
            results = await s.wait_many(list(truth), concurrency=32)
            session_repr = repr(s)
    assert list(results) == list(truth)  # every id exactly once, in order
    for task_id, outcome in results.items():
        if truth[task_id]:
            assert isinstance(outcome, deerluma.Generation), (task_id, outcome)
            assert outcome.id == task_id
            assert outcome.is_completed
        else:
            assert isinstance(outcome, GenerationFailed), (task_id, outcome)
            assert outcome.generation.id == task_id
    faulted = [r for r in fake.requests if r.fault]
    assert len(faulted) > 0.1 * len(fake.requests)  # the soak really was faulty
    key = fake.api_key
    assert key not in _everything_logged(caplog)
    assert key not in session_repr
    assert all(key not in str(o) and key not in repr(o) for o in results.values())
    for outcome in results.values():
        if isinstance(outcome, BaseException):  # the whole chain, causes included
            assert key not in "".join(traceback.format_exception(outcome))
    assert all(key not in r.path for r in fake.requests)


async def _cancel_at_random(coro: object, rng: random.Random, fake: FakeDeerAPI) -> None:
    task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
    while not fake.requests:
        await asyncio.sleep(0.001)
    await asyncio.sleep(rng.uniform(0, 0.05))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _acquired(session: deerluma.Session) -> int:
    connector = session._transport.http().connector
    assert connector is not None
    return len(connector._acquired)  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", range(6))
async def test_cancelling_anything_at_a_random_point_leaves_nothing_behind(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    policy = PollPolicy(unhinted_interval=0.01, learned_interval=0.01, min_interval=0.01)
    async with FakeDeerAPI(fault_rate=0.3, seed=seed, video_bytes=4 << 20) as fake:
        slow = [fake.add_generation(duration=1000, estimate=False) for _ in range(30)]
        done = fake.add_generation(duration=0)
        async with deerluma.Session(api_key=fake.api_key, base_url=fake.url, policy=policy) as s:
            watched = s.watch(slow[0])

            async def drain_watch() -> None:
                async for _ in watched:
                    pass

            async def drain_as_completed() -> None:
                async for _ in s.as_completed(slow, concurrency=8):
                    pass

            dest = tmp_path / "v.mp4"
            jobs = [
                s.wait_until_completed(slow[0]),
                drain_watch(),
                drain_as_completed(),
                s.wait_many(slow, concurrency=8),
                s.download(done, dest),
            ]
            for job in jobs:
                fake.requests.clear()
                await _cancel_at_random(job, rng, fake)
                await asyncio.sleep(0)
                assert our_tasks() == []
                assert _acquired(s) == 0  # no response left open
            await watched.aclose()
            assert not dest.exists() or dest.read_bytes() == fake.video_content(done)
            assert [p for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


async def test_a_redirect_to_another_host_never_carries_the_key(fake: FakeDeerAPI) -> None:
    async with FakeDeerAPI() as elsewhere:
        task_id = fake.add_generation(duration=0)
        fake.inject(Fault.redirect(f"{elsewhere.url}/dream-machine/v1/generations/{task_id}"))
        async with deerluma.Session(api_key=fake.api_key, base_url=fake.url) as s:
            with pytest.raises(deerluma.APIError, match="redirected") as info:
                await s.get_generation(task_id)
    assert info.value.status == 302
    assert not any(r.sent_authorization for r in elsewhere.requests)


async def test_storage_redirects_never_carry_the_key(
    fake: FakeDeerAPI, session: deerluma.Session, tmp_path: Path
) -> None:
    async with FakeDeerAPI() as cdn:
        task_id = fake.add_generation(duration=0)
        g = await session.get_generation(task_id)
        assert g.video is not None
        assert g.video.download_url is not None
        fake.inject_storage(Fault.redirect(f"{cdn.url}/storage/x/video.mp4?X-Amz-Signature=no"))
        # The CDN refuses the bogus link; the SDK asks for a fresh one and succeeds.
        path = await session.download(g, tmp_path / "v.mp4")
    assert path.read_bytes() == fake.video_content(task_id)
    assert [r.status for r in cdn.requests] == [403]
    assert not any(r.sent_authorization for r in cdn.requests)


async def test_an_endless_chunked_body_is_refused_without_reading_it_whole(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    task_id = fake.add_generation(duration=0)
    fake.inject(Fault.oversized(64 << 20))
    with pytest.raises(DecodeError, match="larger than"):
        await session.get_generation(task_id)
    while fake.in_flight:  # the server notices the hang-up after a moment
        await asyncio.sleep(0.01)
    assert len(fake.requests) == 1  # not retried: it would only be refused again


async def test_borrowed_pool_survives_every_failure_mode(
    fake: FakeDeerAPI, clock: FakeClock
) -> None:
    task_id = fake.add_generation(duration=0)
    fake.inject(Fault.reset(), Fault.cut(), Fault.truncated(), Fault.html(), Fault.error(503))
    async with aiohttp.ClientSession() as http:
        async with deerluma.Session(
            api_key=fake.api_key, base_url=fake.url, session=http, max_retries=5, sleep=clock.sleep
        ) as s:
            assert (await s.get_generation(task_id)).is_completed
        assert not http.closed
