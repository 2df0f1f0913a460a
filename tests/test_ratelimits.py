"""Rate limits as new-api gateways enforce them, end to end over real sockets."""

from __future__ import annotations

import asyncio
import bisect
import socket

import pytest

import deerluma
from deerluma import RateLimitError, WaitTimeout
from deerluma.testing import FakeClock, FakeDeerAPI, Fault


def _session(fake: FakeDeerAPI, clock: FakeClock, **options: object) -> deerluma.Session:
    return deerluma.Session(
        api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep, **options
    )  # type: ignore[arg-type]


async def test_a_named_window_is_met_once_and_then_kept(clock: FakeClock) -> None:
    async with FakeDeerAPI(clock=clock, window_limit=40, window_minutes=1) as fake:
        ids = [fake.add_generation(duration=90, estimate=False, shape="new") for _ in range(20)]
        async with _session(fake, clock) as s:
            results = await s.wait_many(ids, timeout=600)
            rate = s.rate
    assert all(isinstance(g, deerluma.Generation) and g.is_completed for g in results.values())
    assert rate.window == (40, 60.0)
    # Met by the requests in flight at that moment (all 20 ids' polls go at one instant of a
    # fake clock), then kept: a Session that went on at its old pace would meet it hundreds
    # of times. (A fake clock moves while requests are in flight, so the server may date a
    # few of them seconds after they were sent, and count them in a later window than the
    # Session does: a handful more may meet it. Real time does not jump.)
    limited = [r.at for r in fake.requests if r.status == 429]
    assert 1 <= len(limited) <= 24
    ok = sorted(r.at for r in fake.requests if r.status == 200)
    for i, at in enumerate(ok):  # never more than the limit in any minute
        assert i - bisect.bisect_right(ok, at - 60) < 40


async def test_a_named_windows_429_says_the_limit_it_named(clock: FakeClock) -> None:
    async with FakeDeerAPI(clock=clock, window_limit=2) as fake:
        task_id = fake.add_generation(duration=60)
        async with _session(fake, clock, max_retries=0) as s:
            await s.get_generation(task_id)
            await s.get_generation(task_id)
            with pytest.raises(RateLimitError) as caught:
                await s.get_generation(task_id)
    error = caught.value
    assert (error.kind, error.limit, error.window, error.retry_after) == ("limit", 2, 60.0, None)
    assert "allows 2 requests per 60s" in str(error) and task_id in str(error)


async def test_an_upstream_saturated_429_delays_only_its_own_request(
    fake: FakeDeerAPI, clock: FakeClock
) -> None:
    task_id = fake.add_generation(duration=60)
    fake.inject(Fault.upstream_saturated(retry_after=2))
    async with _session(fake, clock) as s:
        g = await s.get_generation(task_id)
        rate = s.rate
    assert g.id == task_id
    assert rate.slow_start and rate.rps == 50  # not cut
    assert (rate.rate_limited, rate.not_ours) == (1, 1)
    assert clock.sleeps and clock.sleeps[0] >= 2.0  # its Retry-After, for it alone


async def test_a_batch_among_upstream_saturated_429s_loses_nothing_and_never_slows(
    clock: FakeClock,
) -> None:
    mix = (Fault.upstream_saturated(),)
    async with FakeDeerAPI(clock=clock, fault_rate=0.1, fault_mix=mix, seed=2) as fake:
        ids = [fake.add_generation(duration=5 + i % 7) for i in range(60)]
        async with _session(fake, clock) as s:
            results = await s.wait_many(ids)
            rate = s.rate
    assert all(isinstance(g, deerluma.Generation) for g in results.values())
    assert rate.not_ours == rate.rate_limited > 0
    assert rate.slow_start  # never a cut


async def test_an_upstream_error_message_says_slowing_down_will_not_help(
    fake: FakeDeerAPI, clock: FakeClock
) -> None:
    task_id = fake.add_generation(duration=60)
    fake.inject(Fault.upstream_saturated())
    async with _session(fake, clock, max_retries=0) as s:
        with pytest.raises(RateLimitError, match="slowing down will not help") as caught:
            await s.get_generation(task_id)
    assert caught.value.kind == "upstream"


async def test_a_batch_returns_at_its_deadline_whatever_retry_after_says(clock: FakeClock) -> None:
    async with FakeDeerAPI(clock=clock) as fake:
        ids = [fake.add_generation(duration=2) for _ in range(8)]
        fake.inject(*[Fault.rate_limit(30)] * 200)
        async with _session(fake, clock) as s:
            start = clock()
            results = await s.wait_many(ids, timeout=5)
    assert clock() - start <= 5 + 1e-6
    assert all(isinstance(r, WaitTimeout) for r in results.values())
    said = str(next(iter(results.values())))
    assert "HTTP 429" in said and "asked to wait 30s: a longer timeout lets it answer" in said


async def test_single_waits_return_at_their_deadlines_whatever_retry_after_says(
    clock: FakeClock,
) -> None:
    async with FakeDeerAPI(clock=clock) as fake:
        ids = [fake.add_generation(duration=2) for _ in range(30)]
        fake.inject(*[Fault.rate_limit(30)] * 500)
        async with _session(fake, clock) as s:
            start = clock()
            outcomes = await asyncio.gather(
                *(s.wait_until_completed(i, timeout=10) for i in ids), return_exceptions=True
            )
    assert clock() - start <= 10 + 1e-6
    assert all(isinstance(o, WaitTimeout) for o in outcomes)


async def test_two_sessions_of_one_key_hear_each_others_limit() -> None:
    # Real time: the file the Sessions share holds clock times of the machine's monotonic clock.
    async with FakeDeerAPI(window_limit=3) as fake:
        task_id = fake.add_generation(duration=60)
        async with (
            deerluma.Session(api_key=fake.api_key, base_url=fake.url, max_retries=0) as one,
            deerluma.Session(api_key=fake.api_key, base_url=fake.url, max_retries=0) as two,
        ):
            for _ in range(3):
                await one.get_generation(task_id)
            with pytest.raises(RateLimitError):
                await one.get_generation(task_id)
            await asyncio.sleep(0.01)  # the other reads the shared record every few ms
            with pytest.raises(TimeoutError):  # held back until the window has room
                await asyncio.wait_for(two.get_generation(task_id), timeout=0.3)
            assert two.rate.window == (3, 60.0)
    assert [r.status for r in fake.requests] == [200, 200, 200, 429]


async def test_a_wait_on_an_unreachable_server_says_so_when_it_times_out(clock: FakeClock) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with deerluma.Session(
        api_key="k", base_url=f"http://127.0.0.1:{port}", clock=clock, sleep=clock.sleep
    ) as s:
        with pytest.raises(WaitTimeout) as caught:
            await s.wait_until_completed("abc", timeout=20)
    said = str(caught.value)
    assert "never fetched" in said and "could not connect" in said
    assert "a longer wait will not help" in said
    assert isinstance(caught.value.failure, deerluma.TransportError)
