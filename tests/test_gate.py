"""The rate gate on a fake clock: spacing, slow start, cuts on 429s, regrowth, pauses."""

from __future__ import annotations

import asyncio

import pytest

from deerluma import DeadlineExceeded
from deerluma._gate import RateGate
from deerluma._throttle import Throttle, ThrottleKind
from deerluma.testing import FakeClock


def _gate(clock: FakeClock, max_rps: float | None = None) -> RateGate:
    return RateGate(max_rps, clock=clock, sleep=clock.sleep)


def _plain(retry_after: float | None = None) -> Throttle:
    """A plain 429 ("too many requests"), with or without Retry-After."""
    return Throttle(ThrottleKind.RATE, retry_after=retry_after)


class _Server:
    """A limit of `rps` requests per second, as a token bucket holding `burst` seconds of it."""

    def __init__(
        self, rps: float, start: float, burst: float = 0.1, retry_after: float | None = None
    ) -> None:
        self.rps, self.burst, self.retry_after = rps, rps * burst, retry_after
        self.tokens, self.at = self.burst, start
        self.throttled = self.served = 0

    def take(self, sent: float) -> bool:
        """Whether a request arriving at `sent` gets through."""
        self.tokens = min(self.burst, self.tokens + (sent - self.at) * self.rps)
        self.at = sent
        if self.tokens < 1:
            self.throttled += 1
            return False
        self.tokens -= 1
        self.served += 1
        return True

    def answer(self, gate: RateGate, sent: float) -> None:
        if self.take(sent):
            gate.answered(sent)
        else:
            gate.throttled(sent, _plain(self.retry_after))


def _drive(
    clock: FakeClock,
    gates: list[RateGate],
    server: _Server | None,
    seconds: float,
    rtt: float = 0.0,
) -> None:
    """Each gate's Session wants to send all the time; time moves in 1 ms ticks.

    With `rtt`, each answer arrives that long after its request, which the
    server judges as it is sent.
    """
    flying: list[tuple[float, RateGate, float, bool]] = []
    for _ in range(int(seconds * 1000)):
        now = clock()
        for answer in [a for a in flying if a[0] <= now]:
            flying.remove(answer)
            _, gate, sent, ok = answer
            if ok:
                gate.answered(sent)
            else:
                gate.throttled(sent, _plain(server.retry_after if server else None))
        for gate in gates:
            while (sent := gate.try_pass()) is not None:
                if rtt:
                    flying.append((sent + rtt, gate, sent, server is None or server.take(sent)))
                elif server is None:
                    gate.answered(sent)
                else:
                    server.answer(gate, sent)
        clock.advance(0.001)


def test_a_new_gate_lets_requests_pass_at_once(clock: FakeClock) -> None:
    gate = _gate(clock)
    assert gate.try_pass() == clock()
    assert gate.view.slow_start and gate.view.rps == 50


async def test_max_rps_spaces_requests_evenly_and_caps_the_rate(clock: FakeClock) -> None:
    gate = _gate(clock, max_rps=4)
    start = clock()
    stamps = []
    for _ in range(5):
        stamps.append(await gate.acquire() - start)
        gate.answered(stamps[-1] + start)
    assert stamps == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert gate.try_pass() is None  # the next slot is still a quarter second away
    assert gate.view.rps == 4 and gate.view.max_rps == 4


async def test_concurrent_callers_queue_in_order(clock: FakeClock) -> None:
    gate = _gate(clock, max_rps=10)
    order: list[int] = []

    async def one(i: int) -> None:
        await gate.acquire()
        order.append(i)

    await asyncio.gather(*(one(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]


def test_slow_start_grows_while_held_back_until_the_first_429(clock: FakeClock) -> None:
    gate = _gate(clock)
    _drive(clock, [gate], None, 0.5)
    assert gate.view.rps >= 50 * 2**3
    assert gate.view.slow_start


async def test_an_idle_session_does_not_inflate_its_rate(clock: FakeClock) -> None:
    gate = _gate(clock)
    for _ in range(20):
        gate.answered(await gate.acquire())
        await clock.sleep(1.0)  # one request a second: never held back
    assert gate.view.rps == 50


def test_a_429_cuts_the_rate_from_what_the_server_took(clock: FakeClock) -> None:
    gate = _gate(clock)
    _drive(clock, [gate], None, 0.5)  # slow start overshoots far past what was sent
    reached, taken = gate.view.rps, len(gate.control.meter.sent) / 0.5  # all sent (and taken), per second
    assert reached >= 200 and reached > 2 * taken
    gate.throttled(clock(), _plain())
    # Cut from what the server took over the last second, not one step below the rate that
    # slow start had reached: an overshoot is not walked down one 429 burst at a time.
    assert 0.7 * 0.7 * taken <= gate.view.rps <= 0.7 * taken * (1 + 1e-6)
    assert not gate.view.slow_start and gate.rate_limited == 1


def test_a_429_just_after_a_pause_cuts_one_step_of_the_rate(clock: FakeClock) -> None:
    gate, server = _gate(clock), _Server(100, clock())
    _drive(clock, [gate], server, 5.0)
    gate.throttled(clock(), _plain(1.0))  # Retry-After: everyone pauses a second
    clock.advance(1.5)
    before = gate.view.rps
    gate.throttled(clock(), _plain())  # the server took next to nothing lately: that was the pause
    assert 0.7 * 0.7 * before <= gate.view.rps <= 0.7 * before


async def test_a_burst_of_429s_already_in_flight_cuts_once(clock: FakeClock) -> None:
    gate = _gate(clock)
    in_flight = [await gate.acquire() for _ in range(20)]
    gate.throttled(in_flight[0], _plain())
    after_one = gate.view.rps
    for sent in in_flight[1:]:
        gate.throttled(sent, _plain())  # sent before the cut: the same congestion
    assert gate.view.rps == after_one
    assert gate.rate_limited == 20


def test_the_rate_settles_under_the_servers_limit_with_few_429s(clock: FakeClock) -> None:
    gate, server = _gate(clock), _Server(100, clock())
    _drive(clock, [gate], server, 60.0)
    assert 80 * 60 <= server.served <= 100 * 60 + server.burst
    assert server.throttled < 0.01 * server.served


def test_slow_start_meets_a_servers_burst_allowance_with_few_requests_in_flight(
    clock: FakeClock,
) -> None:
    # A second's worth of burst hides the limit from slow start; whatever is in flight when
    # it runs out comes back a 429. Growing by half every eight round trips keeps that little.
    gate, server = _gate(clock), _Server(100, clock(), burst=1.0)
    _drive(clock, [gate], server, 5.0, rtt=0.03)
    assert not gate.view.slow_start
    assert server.throttled <= 20  # doubling every two round trips: 46


def test_later_cuts_go_on_at_what_the_server_took_between_two_429s(clock: FakeClock) -> None:
    # Retry-After pauses let a one-second bucket fill up again, so "what was taken lately"
    # overstates the limit; between two 429s (the bucket empty at both) it does not. The
    # first cuts go at most 0.6x at once, so it takes two or three to get there.
    gate, server = _gate(clock), _Server(100, clock(), burst=1.0, retry_after=1.0)
    cuts: list[float] = []
    throttled = gate.throttled

    def noting(sent: float, throttle: Throttle) -> Throttle:
        before = gate.view.rps
        judged = throttled(sent, throttle)
        if gate.view.rps != before:
            cuts.append(gate.view.rps)
        return judged

    gate.throttled = noting  # type: ignore[method-assign]
    _drive(clock, [gate], server, 30.0, rtt=0.01)
    assert len(cuts) >= 4
    assert all(90 <= rps <= 115 for rps in cuts[3:]), cuts
    assert server.throttled < 0.01 * server.served
    assert server.served >= 90 * 30


def test_two_sessions_sharing_a_limit_settle_to_a_fair_share(clock: FakeClock) -> None:
    a, b = _gate(clock), _gate(clock)
    server = _Server(100, clock())
    served = {a: 0, b: 0}
    answer = server.answer

    def counting(gate: RateGate, sent: float) -> None:
        before = server.served
        answer(gate, sent)
        served[gate] += server.served - before

    server.answer = counting  # type: ignore[method-assign]
    _drive(clock, [a, b], server, 60.0)
    assert min(served.values()) > max(served.values()) / 3  # neither starves
    assert server.served >= 75 * 60
    assert server.throttled < 0.02 * server.served


async def test_retry_after_pauses_everyone_and_is_capped(clock: FakeClock) -> None:
    gate = _gate(clock)
    start = clock()
    gate.throttled(clock(), _plain(7.0))
    assert gate.pause_left() == 7.0
    assert gate.try_pass() is None
    await gate.acquire()
    assert clock() - start == pytest.approx(7.0)
    fresh = _gate(clock)
    fresh.throttled(clock(), _plain(10_000))
    assert fresh.pause_left() == 60.0


async def test_429s_without_retry_after_never_pause_for_long(clock: FakeClock) -> None:
    gate = _gate(clock)
    pauses = []
    for _ in range(50):
        gate.throttled(await gate.acquire(), _plain())
        pauses.append(gate.pause_left())
    assert max(pauses) <= 2.0  # one slot at the floor rate, not a doubling into minutes


async def test_a_pause_past_the_deadline_raises_instead_of_waiting(clock: FakeClock) -> None:
    gate = _gate(clock)
    gate.throttled(clock(), _plain(30.0))
    with pytest.raises(DeadlineExceeded, match="deadline"):
        await gate.acquire(deadline=clock() + 5.0)
    assert clock.sleeps == []


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_max_rps_must_be_a_positive_number(clock: FakeClock, bad: float) -> None:
    with pytest.raises(ValueError, match="max_rps"):
        _gate(clock, max_rps=bad)
