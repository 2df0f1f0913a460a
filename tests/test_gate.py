"""The rate gate on a fake clock: spacing, slow start, cuts on 429s, regrowth, pauses, deadlines."""

from __future__ import annotations

import asyncio

import pytest

from deerluma import DeadlineExceeded
from deerluma._gate import RateGate
from deerluma._peers import MemoryPeers, PeerEvent, Sender
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


def test_after_a_lull_a_fifth_of_a_seconds_worth_goes_at_once(clock: FakeClock) -> None:
    # A round of polls falling due together, at a rate slow start grew to 400 req/s: a fifth
    # of a second's worth goes at once, the rest at the rate.
    gate = _gate(clock)
    _drive(clock, [gate], None, 0.5)
    rate = gate.view.rps
    assert rate >= 400 and gate.view.slow_start
    clock.advance(1.0)
    passed = 0
    while gate.try_pass() is not None:
        passed += 1
    assert abs(passed - 0.2 * rate) <= 1
    for _ in range(10):
        assert gate.try_pass() is None
        clock.advance(1 / rate)
        assert gate.try_pass() is not None


async def test_an_idle_session_does_not_inflate_its_rate(clock: FakeClock) -> None:
    gate = _gate(clock)
    for _ in range(20):
        gate.answered(await gate.acquire())
        await clock.sleep(1.0)  # one request a second: never held back
    assert gate.view.rps == 50


def _crowd(gate: RateGate, sent: float, count: int = 3, retry_after: float | None = None) -> None:
    """Plain 429s for requests sent at `sent`: what meeting a limit in slow start looks like."""
    for _ in range(count):
        gate.throttled(sent, _plain(retry_after))


def test_a_crowd_of_429s_cuts_the_rate_from_what_the_server_took(clock: FakeClock) -> None:
    gate = _gate(clock)
    _drive(clock, [gate], None, 0.5)  # slow start overshoots far past what was sent
    reached, taken = gate.view.rps, len(gate.control.meter.sent) / 0.5  # per second
    assert reached >= 200 and reached > 2 * taken
    _crowd(gate, clock())
    # Cut from what the server took over the last second, not one step below the rate that
    # slow start had reached: an overshoot is not walked down one 429 burst at a time.
    assert 0.7 * 0.7 * taken <= gate.view.rps <= 0.7 * taken * (1 + 1e-6)
    assert not gate.view.slow_start and gate.rate_limited == 3


def test_a_lone_429_after_slow_start_delays_only_its_own_request(clock: FakeClock) -> None:
    gate, server = _gate(clock), _Server(100, clock())
    _drive(clock, [gate], server, 10.0)
    assert not gate.view.slow_start
    clock.advance(5.0)
    _drive(clock, [gate], None, 0.5)  # a quiet spell: no 429 among the latest answers
    before = gate.view.rps
    judged = gate.throttled(clock(), _plain(1.0))
    assert judged.kind is ThrottleKind.RATE
    assert gate.view.rps == before and gate.pause_left() == 0.0


async def test_a_burst_of_429s_already_in_flight_cuts_once(clock: FakeClock) -> None:
    gate = _gate(clock)
    in_flight = [await gate.acquire() for _ in range(20)]
    _crowd(gate, in_flight[0])
    after_one = gate.view.rps
    assert after_one < 50
    for sent in in_flight[1:]:
        gate.throttled(sent, _plain())  # sent before the cut: the same congestion
    assert gate.view.rps == after_one
    assert gate.rate_limited == 22


def test_the_rate_settles_under_the_servers_limit_with_few_429s(clock: FakeClock) -> None:
    gate, server = _gate(clock), _Server(100, clock())
    _drive(clock, [gate], server, 60.0)
    assert 80 * 60 <= server.served <= 100 * 60 + server.burst
    assert server.throttled < 0.015 * server.served


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
    # overstates the limit; between two 429s (the bucket empty at both) it does not.
    gate, server = _gate(clock), _Server(100, clock(), burst=1.0, retry_after=1.0)
    cuts: list[float] = []
    throttled = gate.throttled

    def noting(sent: float, throttle: Throttle) -> Throttle:
        before = gate.view.rps
        judged = throttled(sent, throttle)
        if gate.view.rps < before:
            cuts.append(gate.view.rps)
        return judged

    gate.throttled = noting  # type: ignore[method-assign]
    _drive(clock, [gate], server, 30.0, rtt=0.01)
    assert len(cuts) >= 4
    assert all(85 <= rps <= 120 for rps in cuts[3:]), cuts
    assert server.throttled < 0.01 * server.served
    assert server.served >= 90 * 30


def _share(clock: FakeClock, gates: list[RateGate], seconds: float) -> tuple[_Server, list[int]]:
    """Drive `gates` against one 100 req/s server; what it took from each."""
    server = _Server(100, clock())
    served = dict.fromkeys(gates, 0)
    answer = server.answer

    def counting(gate: RateGate, sent: float) -> None:
        before = server.served
        answer(gate, sent)
        served[gate] += server.served - before

    server.answer = counting  # type: ignore[method-assign]
    _drive(clock, gates, server, seconds)
    return server, list(served.values())


def test_two_sessions_sharing_a_limit_settle_to_a_fair_share(clock: FakeClock) -> None:
    # Two machines on one key: neither hears of the other's 429s.
    server, served = _share(clock, [_gate(clock), _gate(clock)], 60.0)
    assert min(served) > max(served) / 3  # neither starves
    assert server.served >= 75 * 60
    assert server.throttled < 0.03 * server.served


def test_sessions_of_one_key_that_hear_each_other_meet_fewer_429s(clock: FakeClock) -> None:
    board: list[PeerEvent] = []
    gates = [
        RateGate(None, clock=clock, sleep=clock.sleep, peers=MemoryPeers(board)) for _ in range(8)
    ]
    server, served = _share(clock, gates, 30.0)
    assert server.throttled < 0.02 * server.served
    assert server.served >= 80 * 30
    assert min(served) > max(served) / 4

    alone = [_gate(clock) for _ in range(8)]  # the same, each on its own
    clock.advance(100.0)
    lonely, _ = _share(clock, alone, 30.0)
    assert lonely.throttled > 2 * server.throttled


def test_the_last_session_sending_on_a_key_takes_up_the_whole_limit(clock: FakeClock) -> None:
    # Four workers of one key; three end. The fourth goes on at the key's whole limit at
    # once, not at its quarter of it (nor CUBIC's slow probing from there).
    board: list[PeerEvent] = []
    sending: dict[int, Sender] = {}
    gates = [
        RateGate(None, clock=clock, sleep=clock.sleep, peers=MemoryPeers(board, sending))
        for _ in range(4)
    ]
    server, _ = _share(clock, gates, 20.0)
    last = gates[0]
    before = last.view.rps
    assert before < 40  # its share
    for gate in gates[1:]:  # they end, and give up their slots
        del sending[gate.peers.me]
    served = server.served
    _drive(clock, [last], server, 3.0)
    assert server.served - served >= 80 * 3 - 0.5 * before  # from its next beat on
    assert last.view.rps >= 85


async def test_a_burst_of_429s_with_retry_after_pauses_everyone_capped(clock: FakeClock) -> None:
    gate = _gate(clock)
    start = clock()
    _crowd(gate, clock(), retry_after=7.0)
    assert gate.pause_left() == 7.0
    assert gate.try_pass() is None
    await gate.acquire()
    assert clock() - start == pytest.approx(7.0)
    fresh = _gate(clock)
    _crowd(fresh, clock(), retry_after=10_000)
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
    _crowd(gate, clock(), retry_after=30.0)
    with pytest.raises(DeadlineExceeded, match="deadline"):
        await gate.acquire(deadline=clock() + 5.0)
    assert clock.sleeps == []


async def test_a_pause_that_starts_while_queued_lets_go_at_the_deadline(clock: FakeClock) -> None:
    # Queued behind the rate, then everyone is told to wait 30 s: each waiter is let go at its
    # own deadline, not held until the pause ends.
    board: list[PeerEvent] = []
    gate = RateGate(1, clock=clock, sleep=clock.sleep, peers=MemoryPeers(board))
    gate.try_pass()
    start = clock()
    waiters = [asyncio.ensure_future(gate.acquire(deadline=start + d)) for d in (3.0, 8.0)]
    await asyncio.sleep(0)
    MemoryPeers(board).publish(PeerEvent(0, 0, start, pause_until=start + 30.0))  # another's
    # Each is let go when its deadline comes: 27 s and 22 s before the pause ends.
    for waiter, left in zip(waiters, ("27.0s", "22.0s"), strict=True):
        with pytest.raises(DeadlineExceeded, match=f"deadline came .* [(]{left} of pause left"):
            await waiter
    assert clock.sleeps == pytest.approx([3.0, 5.0])


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_max_rps_must_be_a_positive_number(clock: FakeClock, bad: float) -> None:
    with pytest.raises(ValueError, match="max_rps"):
        _gate(clock, max_rps=bad)
