"""Where callbacks, the poll engine and batches meet: one poll step, one rule for each."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

import deerluma
from deerluma._wait import NOT_FOUND_GRACE
from deerluma.testing import FakeClock, FakeDeerAPI


async def test_a_task_created_moments_ago_that_answers_404_is_looked_for_again(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    fake.unknown_after_create = 10.0  # the gateway knows it only 10 s after its create
    one = await session.create_generation("a deer")
    assert (await session.wait_until_completed(one.id)).is_completed
    two, three = [await session.create_generation("a deer") for _ in range(2)]
    results = await session.wait_many([two.id, three.id])
    assert all(isinstance(g, deerluma.Generation) and g.is_completed for g in results.values())
    assert any(r.status == 404 for r in fake.requests)


async def test_a_404_is_final_at_once_for_ids_not_created_here_and_after_the_grace(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    made_elsewhere = "0b7a0d4e-1c1f-4b8e-9d4a-123456789abc"
    start = clock()
    with pytest.raises(deerluma.NotFoundError):
        await session.wait_until_completed(made_elsewhere)
    assert clock() - start < 1
    fake.unknown_after_create = 1000.0
    created = await session.create_generation("a deer")
    start = clock()
    with pytest.raises(deerluma.NotFoundError):
        await session.wait_until_completed(created.id)
    assert NOT_FOUND_GRACE <= clock() - start <= NOT_FOUND_GRACE + 1
    results = await session.wait_many([created.id])  # past the grace: at once
    assert isinstance(results[created.id], deerluma.NotFoundError)


async def test_an_on_update_that_raises_ends_the_batch_and_its_waits(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    ids = [fake.add_generation(duration=30) for _ in range(3)]

    def boom(generation: deerluma.Generation) -> None:
        raise ValueError("a bug in the caller's callback")

    async def drain() -> None:
        async with session.as_completed(ids, on_update=boom) as results:
            async for _ in results:
                pass

    with pytest.raises(ValueError, match="callback"):
        await drain()
    assert session.history.running == 0
    with pytest.raises(ValueError, match="callback"):
        await session.wait_many(ids, on_update=boom)
    assert session.history.running == 0
    with pytest.raises(ValueError, match="callback"):
        await session.wait_until_completed(ids[0], on_update=boom)
    assert session.history.running == 0


async def test_ages_are_measured_on_the_injected_clock_not_real_time(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    task_id = fake.add_generation(duration=600)
    clock.advance(500)  # 500 fake seconds after its creation, a few real milliseconds
    await session.wait_until_completed(task_id)
    # Its age at the first look came from created_at on the fake wall clock: it took 600 s
    # (recorded as the middle of its last two looks; on the real clock it would read ~100 s).
    (took,) = session.history.durations
    assert 550 <= took <= 605


def test_the_wall_clock_follows_an_injected_clock() -> None:
    clock = FakeClock()
    s = deerluma.Session(api_key="k", base_url="http://127.0.0.1:1", clock=clock)
    before = s._transport.wall()
    clock.advance(3600)
    assert s._transport.wall() - before == timedelta(hours=1)
    assert abs(before - datetime.now(UTC)) < timedelta(seconds=5)


@pytest.fixture
def threaded(clock: FakeClock) -> Iterator[FakeDeerAPI]:
    with FakeDeerAPI(clock=clock).in_thread() as server:
        yield server


def test_an_iterator_closed_after_its_sync_session_starts_no_loop_again(
    threaded: FakeDeerAPI, clock: FakeClock
) -> None:
    task_id = threaded.add_generation(duration=60)
    s = deerluma.SyncSession(
        api_key=threaded.api_key, base_url=threaded.url, clock=clock, sleep=clock.sleep
    )
    updates = s.watch(task_id)
    assert next(updates).id == task_id
    other = s.watch(task_id)
    s.close()
    assert not s._portal.running
    updates.close()
    assert not s._portal.running  # it did not start the loop thread again
    with pytest.raises(RuntimeError, match="closed"):
        next(other)
    assert not s._portal.running
    assert s.get_generation(task_id).id == task_id  # the SyncSession itself starts again
    s.close()


async def test_every_change_reaches_on_update_once_in_waits_and_batches_alike(
    fake: FakeDeerAPI, session: deerluma.Session
) -> None:
    task_id = fake.add_generation(duration=20, pending_for=5)
    single: list[deerluma.GenerationState] = []
    batch: list[deerluma.GenerationState] = []
    await asyncio.gather(
        session.wait_until_completed(task_id, on_update=lambda g: single.append(g.state)),
        session.wait_many([task_id], on_update=lambda g: batch.append(g.state)),
    )
    assert single[0] is deerluma.GenerationState.PENDING
    assert single[-1] is deerluma.GenerationState.COMPLETED
    assert [s for i, s in enumerate(single) if not i or s != single[i - 1]] == [
        s for i, s in enumerate(batch) if not i or s != batch[i - 1]
    ]


def test_every_type_in_a_public_signature_can_be_imported_from_deerluma() -> None:
    import inspect
    import re

    elsewhere = {"Any", "Iterable", "Mapping", "None", "Path", "PathLike", "URL", "Unpack"}
    named: set[str] = set()
    for cls in (deerluma.Session, deerluma.SyncSession):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_"):
                continue
            function = getattr(member, "fget", None) or getattr(member, "_method", member)
            for annotation in getattr(function, "__annotations__", {}).values():
                named |= set(re.findall(r"\b[A-Z][A-Za-z]+\b", str(annotation)))
    assert {"CreateOptions", "Asset", "OnUpdate", "OnProgress"} <= named
    assert named - elsewhere - set(deerluma.__all__) == set()


async def test_generate_takes_the_policy_and_callbacks_that_waits_take(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    heard: list[deerluma.GenerationState] = []
    fake.create_duration = 30.0
    start = clock()
    with pytest.raises(deerluma.WaitTimeout):
        await session.generate(
            "a deer",
            policy=deerluma.PollPolicy(timeout=10),
            callbacks=False,
            on_update=lambda g: heard.append(g.state),
        )
    assert clock() - start <= 10 + 1e-6  # the policy's deadline, not the default 900 s
    assert heard[0] is deerluma.GenerationState.PENDING  # the create answer, heard first


async def test_a_create_answer_long_before_the_wait_is_not_taken_as_its_first_look(
    fake: FakeDeerAPI, session: deerluma.Session, clock: FakeClock
) -> None:
    created = await session.create_generation("a deer")  # pending
    clock.advance(3600)  # an hour later: done long ago
    seen: list[deerluma.GenerationState] = []
    g = await session.wait_until_completed(created.id, on_update=lambda g: seen.append(g.state))
    assert g.is_completed and seen == [deerluma.GenerationState.COMPLETED]  # polled at once
