"""The rate-limit gate on a fake clock: spacing, shared pauses, deadlines."""

from __future__ import annotations

import asyncio

import pytest

from deerluma import DeadlineExceeded
from deerluma._gate import RateGate
from deerluma.testing import FakeClock


def _gate(clock: FakeClock, max_rps: float | None = None) -> RateGate:
    return RateGate(max_rps, clock=clock, sleep=clock.sleep)


def test_a_free_gate_lets_requests_pass_without_waiting(clock: FakeClock) -> None:
    gate = _gate(clock)
    assert all(gate.try_pass() for _ in range(100))


async def test_max_rps_spaces_requests_evenly(clock: FakeClock) -> None:
    gate = _gate(clock, max_rps=4)
    start = clock()
    stamps = []
    for _ in range(5):
        await gate.acquire()
        stamps.append(clock() - start)
    assert stamps == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert not gate.try_pass()  # the next slot is still a quarter second away


async def test_concurrent_callers_queue_in_order(clock: FakeClock) -> None:
    gate = _gate(clock, max_rps=10)
    order: list[int] = []

    async def one(i: int) -> None:
        await gate.acquire()
        order.append(i)

    await asyncio.gather(*(one(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]


async def test_a_429_pauses_everyone_until_retry_after(clock: FakeClock) -> None:
    gate = _gate(clock)
    start = clock()
    assert gate.pause(7.0) == 7.0
    assert not gate.try_pass()
    await gate.acquire()
    assert clock() - start == pytest.approx(7.0)


def test_429s_without_retry_after_back_off_until_one_goes_through(clock: FakeClock) -> None:
    gate = _gate(clock)
    assert [gate.pause(None) for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    gate.clear_strikes()
    assert gate.pause(None) == 1.0
    assert gate.pause(10_000) == 60.0  # capped
    assert gate.rate_limited == 6


async def test_a_pause_past_the_deadline_raises_instead_of_waiting(clock: FakeClock) -> None:
    gate = _gate(clock)
    gate.pause(30.0)
    with pytest.raises(DeadlineExceeded, match="deadline"):
        await gate.acquire(deadline=clock() + 5.0)
    assert clock.sleeps == []


def test_max_rps_must_be_positive(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="max_rps"):
        _gate(clock, max_rps=0)
