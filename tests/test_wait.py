"""wait_until_completed and watch, end to end on the fake server with a fake clock."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from datetime import timedelta

import pytest

import deerluma
from deerluma import (
    GenerationFailed,
    GenerationState,
    NotFoundError,
    PollPolicy,
    ServerError,
    WaitTimeout,
)
from deerluma.testing import FakeClock, FakeDeerAPI, Fault

from .conftest import our_tasks


async def test_wait_returns_completed_generation_soon_after_it_finishes(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    task_id = fake.add_generation(duration=40, estimate_bias=0.8)
    g = await session.wait_until_completed(task_id)
    assert g.is_completed and g.id == task_id
    assert 0 <= clock() - fake.finishes_at(task_id) <= session.policy.min_interval
    # A plain 3 s loop polls 14 times; a fresh Session's long wait may look again after 3 s,
    # twice, while it learns whether its gateway serves rows (docs/waiting.md).
    assert fake.polls[task_id] <= 8


async def test_wait_raises_generation_failed_with_reason(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    task_id = fake.add_generation(duration=8, failure_reason="prompt rejected by moderation")
    with pytest.raises(GenerationFailed, match="prompt rejected by moderation") as info:
        await session.wait_until_completed(task_id)
    assert info.value.generation.state is GenerationState.FAILED
    assert info.value.generation.failure_reason == "prompt rejected by moderation"
    assert info.value.task_id == task_id


async def test_wait_timeout_carries_last_state_and_never_sleeps_past_deadline(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    task_id = fake.add_generation(duration=10_000, pending_for=0)
    start = clock()
    with pytest.raises(WaitTimeout) as info:
        await session.wait_until_completed(task_id, timeout=timedelta(seconds=95))
    assert isinstance(info.value, TimeoutError)
    assert info.value.last is not None and info.value.last.state is GenerationState.PROCESSING
    assert info.value.task_id == task_id
    # The last poll comes just before the deadline (time for its answer), never after it.
    assert 95.0 - 0.5 <= clock() - start <= 95.0


async def test_long_retry_after_is_capped_by_the_deadline(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    task_id = fake.add_generation(duration=10_000)
    fake.inject(*[Fault.rate_limit(3 * 3600)] * 10)
    start = clock()
    with pytest.raises(WaitTimeout):
        await session.wait_until_completed(task_id, timeout=30)
    assert clock() - start <= 30.0


async def test_on_update_hears_each_change_sync_and_async(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    task_id = fake.add_generation(duration=20, pending_for=5)
    seen: list[GenerationState] = []
    heard_async: list[str] = []

    async def record_async(g: deerluma.Generation) -> None:
        heard_async.append(g.id)

    await session.wait_until_completed(task_id, on_update=lambda g: seen.append(g.state))
    assert seen[0] is GenerationState.PENDING
    assert GenerationState.PROCESSING in seen
    assert seen[-1] is GenerationState.COMPLETED
    other = fake.add_generation(duration=3)
    await session.wait_until_completed(other, on_update=record_async)
    assert heard_async and set(heard_async) == {other}


async def test_a_slow_reader_does_not_put_the_next_poll_off(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    # Each poll's time is planned when the poll is judged: a caller that takes a second over
    # every change it is handed gets the same polls at the same times as one that takes none.
    async def polls(reader_takes: float) -> list[float]:
        task_id = fake.add_generation(duration=20, pending_for=5, estimate=False, shape="new")
        start = clock()
        async with session.watch(task_id) as updates:
            async for _ in updates:
                await clock.sleep(reader_takes)
        return [r.at - start for r in fake.requests if task_id in r.path]

    quick, slow = await polls(0.0), await polls(1.0)
    assert len(quick) >= 3
    assert slow == pytest.approx(quick, abs=1e-6)


async def test_watch_yields_changes_and_ends_with_failed_state_without_raising(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    task_id = fake.add_generation(duration=15, failure_reason="out of credits")
    states = [g.state async for g in session.watch(task_id)]
    assert states[0] is GenerationState.PENDING
    assert states[-1] is GenerationState.FAILED
    assert len(states) <= fake.polls[task_id]


async def test_watch_can_be_left_early_and_closed(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    task_id = fake.add_generation(duration=100)
    async with session.watch(task_id) as updates:
        async for g in updates:
            assert g.state is GenerationState.PENDING
            break
    assert fake.polls[task_id] == 1


async def test_unknown_state_keeps_polling_and_warns_once(
    fake: FakeDeerAPI, session: deerluma.Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="deerluma")
    fake.serve_raw("odd", json.dumps({"id": "odd", "state": "upscaling"}).encode())
    polls = 0

    def finish_after_three(g: deerluma.Generation) -> None:
        nonlocal polls
        polls += 1

    async def flip() -> None:
        while len(fake.requests) < 3:
            await asyncio.sleep(0)
        fake.serve_raw("odd", json.dumps({"id": "odd", "state": "completed"}).encode())

    flipper = asyncio.create_task(flip())
    g = await session.wait_until_completed("odd", on_update=finish_after_three)
    await flipper
    assert g.is_completed
    assert len(fake.requests) >= 3
    warnings = [r for r in caplog.records if "does not know" in r.getMessage()]
    assert len(warnings) == 1 and "upscaling" in warnings[0].getMessage()


async def test_transient_faults_during_a_wait_are_ridden_out(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    task_id = fake.add_generation(duration=30)
    fake.inject(
        Fault.error(502), Fault.reset(), Fault.truncated(), Fault.html(), Fault.rate_limit(2)
    )
    fake.inject(*[Fault.error(503)] * 6)  # more than one request's retry budget
    g = await session.wait_until_completed(task_id)
    assert g.is_completed


async def test_retry_after_overrides_the_next_poll_sleep(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    task_id = fake.add_generation(duration=5)
    fake.inject(*[Fault.rate_limit(25)] * 4)  # exhaust the first poll's own retries
    await session.wait_until_completed(task_id)
    assert max(clock.sleeps) >= 25


async def test_not_found_during_wait_raises_at_once(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    with pytest.raises(NotFoundError):
        await session.wait_until_completed("never-created")
    assert len(fake.requests) == 1


async def test_persistent_server_errors_give_up_after_the_error_budget(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    task_id = fake.add_generation(duration=30)
    fake.inject(*[Fault.error(502)] * 1000)
    policy = PollPolicy(max_consecutive_errors=2)
    with pytest.raises(ServerError):
        await session.wait_until_completed(task_id, policy=policy)
    assert len(fake.requests) == 3 * 4  # three polls of four attempts each


async def test_session_policy_is_the_default_and_per_call_policy_wins(
    fake: FakeDeerAPI, clock: FakeClock
) -> None:
    task_id = fake.add_generation(duration=10_000)
    async with deerluma.Session(
        api_key=fake.api_key,
        base_url=fake.url,
        clock=clock,
        sleep=clock.sleep,
        policy=PollPolicy(timeout=50),
    ) as s:
        start = clock()
        with pytest.raises(WaitTimeout):
            await s.wait_until_completed(task_id)
        assert 49.5 <= clock() - start <= 50
        start = clock()
        with pytest.raises(WaitTimeout):
            await s.wait_until_completed(task_id, policy=PollPolicy(timeout=7))
        assert 6.65 <= clock() - start <= 7


async def test_cancelling_a_wait_stops_at_once_and_leaves_nothing_behind(
    fake: FakeDeerAPI,
) -> None:
    task_id = fake.add_generation(duration=10_000, estimate=False)
    fake.inject(Fault.latency(0.0), Fault.latency(0.5))  # the second poll hangs in flight
    policy = PollPolicy(unhinted_interval=0.01, learned_interval=0.01, min_interval=0.01)
    async with deerluma.Session(api_key=fake.api_key, base_url=fake.url, policy=policy) as s:
        waiter = asyncio.create_task(s.wait_until_completed(task_id))
        while fake.polls[task_id] < 1:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # now the second poll is in flight
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert our_tasks() == []
        # The Session is still usable after a cancelled wait.
        done = fake.add_generation(duration=0)
        assert (await s.get_generation(done)).is_completed


async def test_a_generation_done_before_the_deadline_is_returned_not_timed_out(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    # The gateway's newer body: no estimate, zero created_at. Polls at 0 and 3 s find it
    # running; the last poll, just before the 5 s deadline, finds it done.
    task_id = fake.add_generation(duration=4, estimate=False, shape="new")
    start = clock()
    g = await session.wait_until_completed(task_id, timeout=5)
    assert g.is_completed
    assert 4 <= clock() - start <= 5


async def test_a_session_learns_how_long_its_generations_take(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    rng = random.Random(3)

    async def wait_one() -> int:
        task_id = fake.add_generation(duration=rng.uniform(40, 50), estimate=False, shape="new")
        await session.wait_until_completed(task_id)
        return fake.polls[task_id]

    plain = [await wait_one() for _ in range(4)]
    learned = [await wait_one() for _ in range(30)]
    assert len(session.history) == 34
    assert min(plain) >= 14  # nothing learned yet: every 3 s from the start, like a plain loop
    # Then: nothing before ~40 s, every 2.5 s after; and once ten waits have shown that this
    # Session's waits start with their generations, not even the poll at 0 s. (The first poll
    # after the skip lands about where 5 % have finished, near 40 s: 4 polls, 5 for the
    # longest.)
    assert max(learned[-10:]) <= 5
    assert sum(learned) / len(learned) < 0.4 * sum(plain) / len(plain)


async def test_a_seeded_history_or_an_expected_duration_helps_from_the_first_wait(
    fake: FakeDeerAPI, clock: FakeClock
) -> None:
    task_id = fake.add_generation(duration=45, estimate=False, shape="new")
    other = fake.add_generation(duration=45, estimate=False, shape="new")
    async with deerluma.Session(
        api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep
    ) as s:
        s.history.seed([40.0 + i / 10 for i in range(100)])  # what an earlier run learned
        await s.wait_until_completed(task_id)
        await s.wait_until_completed(other, policy=PollPolicy(expected_duration=45, learn=False))
    assert fake.polls[task_id] <= 5
    assert fake.polls[other] <= 5


async def test_watch_never_goes_back_to_the_create_answer_after_a_fresher_look(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    fake.create_duration = 20.0
    created = await session.create_generation("a deer")
    assert created.state is GenerationState.PENDING
    await clock.sleep(4.5)  # past the pending part (a fifth), within FRESH of the create
    seen = await session.get_generation(created.id)
    assert seen.state is GenerationState.PROCESSING
    async with session.watch(created.id) as updates:
        first = await updates.__anext__()
    assert first.state is GenerationState.PROCESSING  # not the create answer's "pending"
