"""The rate controller and its parts with plain numbers: each kind of 429, and peers."""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path

import pytest

from deerluma._control import (
    SENDING,
    Answered,
    Controller,
    Decision,
    Heard,
    Meter,
    Throttled,
    Trial,
    Verdict,
    WindowBudget,
)
from deerluma._gate import RateGate, RateView
from deerluma._peers import FilePeers, MemoryPeers, PeerEvent, Peers, Sender, peers_for
from deerluma._throttle import Throttle, ThrottleKind
from deerluma.testing import FakeClock

from .test_gate import _drive, _Server

UPSTREAM = Throttle(ThrottleKind.UPSTREAM)
PLAIN = Throttle(ThrottleKind.RATE)


def _window(limit: int = 600, window: float = 60.0) -> Throttle:
    return Throttle(ThrottleKind.LIMIT, limit, window)


def _cut_in(control: Controller, now: float) -> Decision:
    """Leave slow start as a limit met would: a crowd of plain 429s."""
    for _ in range(3):
        decision = control.decide(Throttled(now, PLAIN), now)
    return decision


def _sent_and_answered(control: Controller, sent: float, now: float) -> Decision:
    control.decide(SENDING, sent)
    return control.decide(Answered(sent, held_back=True), now)


def test_upstream_429s_change_neither_the_rate_nor_the_pause() -> None:
    control = Controller(None, 0.0)
    for i in range(50):
        decision = control.decide(Throttled(float(i), UPSTREAM), float(i))
        assert decision.judged is not None and decision.judged.kind is ThrottleKind.UPSTREAM
        assert decision.drain_from is None and decision.publish == () and decision.ticks == 0
    assert decision.rate == 50 and decision.capacity == 50 * 0.2  # slow start's burst
    assert decision.paused_until == -float("inf")
    assert control.view(50) == RateView(50.0, None, 50, True, not_ours=50)


def test_a_named_window_sets_the_rate_and_pauses_until_the_window_has_room() -> None:
    control = Controller(None, 0.0)
    for i in range(600):  # the whole allowance in the first 12 seconds, as slow start spends it
        control.decide(SENDING, i * 0.02)
    decision = control.decide(Throttled(11.99, _window()), 12.0)
    assert decision.judged is not None and decision.judged.kind is ThrottleKind.LIMIT
    assert not control.view(1).slow_start and control.view(1).window == (600, 60.0)
    assert decision.rate == pytest.approx(0.95 * 600 / 60)
    # The oldest 5 % of those requests (sent by 0.6 s) must leave the window before one more
    # fits: counted in quarter seconds, with a twentieth of a second to spare.
    assert 60.0 + 0.6 <= decision.paused_until <= 60.0 + 0.6 + 0.25 + 0.06
    assert decision.drain_from == 12.0  # when the pause ends: one request, then the rate
    assert decision.capacity == pytest.approx(0.25 * 0.95 * 600)  # a share of the allowance
    (told,) = decision.publish  # the others of the key are told of the window
    assert (told.limit, told.window, told.pause_until) == (600, 60.0, decision.paused_until)


def test_a_named_window_with_others_on_the_key_shrinks_to_our_share() -> None:
    meter = Meter(0.0)
    for i in range(100):
        meter.sending(i * 0.1)
    budget = WindowBudget.named(_window(), meter, 10.0)
    assert budget.budget == pytest.approx(0.95 * 100)  # the gateway said full: ours is 100
    assert budget.rate(10.0) == pytest.approx(95 / 60)
    assert budget.rate(10.0 + 3 * 60) == pytest.approx((95 + 3 * 30) / 60)  # quiet windows
    assert budget.rate(10.0 + 60 * 60) == pytest.approx(0.95 * 600 / 60)  # never past the limit


class _SlidingLog:
    """new-api's window: at most `limit` successes in any `window` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.log: deque[float] = deque()
        self.throttled = self.served = 0

    def take(self, sent: float) -> bool:
        if len(self.log) >= self.limit and int(sent - self.log[0]) < self.window:
            self.throttled += 1
            return False
        self.log.append(sent)
        if len(self.log) > self.limit:
            self.log.popleft()
        self.served += 1
        return True


def test_a_session_under_a_named_window_meets_it_once(clock: FakeClock) -> None:
    gate, server = RateGate(None, clock=clock, sleep=clock.sleep), _SlidingLog(120, 60.0)
    for _ in range(40_000):  # 200 s in 5 ms ticks; the Session always wants to send
        while (sent := gate.try_pass()) is not None:
            if server.take(sent):
                gate.answered(sent)
            else:
                gate.throttled(sent, _window(120, 60.0))
        clock.advance(0.005)
    assert server.throttled <= 2  # the first window, spent by slow start, and nothing after
    assert server.served >= 0.9 * 120 * 200 / 60
    assert gate.view.window == (120, 60.0)


def test_plain_429s_that_slowing_down_does_not_make_rarer_become_stray(clock: FakeClock) -> None:
    class Flaky(_Server):
        """A server with room to spare that answers 4 % of requests 429 anyway."""

        def __init__(self, seed: int) -> None:
            super().__init__(1000, clock())
            self.rng = random.Random(seed)

        def take(self, sent: float) -> bool:
            if self.rng.random() < 0.04:
                self.throttled += 1
                return False
            self.served += 1
            return True

    served = []
    for seed in range(1, 6):
        gate, server = RateGate(None, clock=clock, sleep=clock.sleep), Flaky(seed)
        _drive(clock, [gate], server, 20.0)
        assert gate.control.noise > 0.0
        assert gate.view.not_ours > 0.5 * gate.rate_limited
        served.append(server.served)
    # The rate did not crawl; now and then a trial keeps a wrong cut, and CUBIC takes long to
    # grow back from it (docs/batch.md: a known weakness), so: in most runs.
    assert sorted(served)[2] >= 100 * 20


def test_a_cut_followed_by_no_429s_stands(clock: FakeClock) -> None:
    gate, server = RateGate(None, clock=clock, sleep=clock.sleep), _Server(100, clock())
    _drive(clock, [gate], server, 30.0)
    assert gate.control.noise == 0.0
    assert gate.view.not_ours == 0
    assert 70 <= gate.view.rps <= 130


def _tell(told: list[Decision], peers: Peers) -> None:
    """What the gate does with what a controller decided to tell the other Sessions."""
    for decision in told:
        for _ in range(decision.ticks):
            peers.tick()
        for event in decision.publish:
            peers.publish(event)


def test_a_cut_heard_from_another_session_cuts_here_too() -> None:
    board: list[PeerEvent] = []
    ours, theirs = Controller(None, 0.0), Controller(None, 0.0)
    our_peers, their_peers = MemoryPeers(board), MemoryPeers(board)
    for i in range(100):
        _sent_and_answered(ours, i * 0.01, i * 0.01 + 0.001)
    told = [theirs.decide(Throttled(1.0, PLAIN), 1.0) for _ in range(3)]
    assert [(d.ticks, len(d.publish)) for d in told] == [(1, 0), (1, 0), (1, 1)]
    assert board == []  # the controller does no I/O: what it has to tell goes by the gate
    _tell(told, their_peers)
    event, ticks = our_peers.news(1.0)
    assert event is not None and ticks == 3
    decision = ours.decide(Heard(1, event=event), 1.0)
    assert not ours.view(0).slow_start and decision.rate < 100
    assert decision.drain_from == 1.0 and decision.publish == ()  # not told again
    assert their_peers.news(1.0) == (None, 0)  # not told of its own


def test_a_window_heard_from_another_session_pauses_here_too() -> None:
    board: list[PeerEvent] = []
    ours, theirs = Controller(None, 0.0), Controller(None, 0.0)
    _tell([theirs.decide(Throttled(5.0, _window(60, 60.0)), 5.0)], MemoryPeers(board))
    event, _ = MemoryPeers(board).news(5.0)
    assert event is not None and event.limit == 60
    decision = ours.decide(Heard(1, event=event), 5.0)
    assert ours.view(0).window == (60, 60.0) and decision.paused_until >= 5.0
    assert decision.rate <= 60 / 60


def test_sessions_share_their_429s_through_a_file(tmp_path: Path) -> None:
    path = str(tmp_path / "rates" / "k.rate")
    one, two = FilePeers(path), FilePeers(path)
    assert two.news(0.0) == (None, 0)  # no file yet
    one.tick()
    one.tick()
    one.publish(PeerEvent(0, 0, 10.0, 11.0))
    event, ticks = two.news(1.0)  # the file appeared: looked for again a second later
    assert ticks == 2 and event is not None
    assert (event.at, event.pause_until, event.limit) == (10.0, 11.0, 0)
    assert two.news(1.0) == (None, 0)  # read at most every few milliseconds
    assert two.news(2.0) == (None, 0)  # nothing new
    assert one.news(2.0) == (None, 0)  # not told of its own
    one.close()
    two.close()


def test_the_shared_file_is_named_by_a_digest_never_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEERLUMA_RATE_DIR", str(tmp_path))
    peers = peers_for("https://api.example", "sk-secret-key-123")
    assert isinstance(peers, FilePeers)
    peers.publish(PeerEvent(0, 0, 1.0, 2.0))
    (written,) = tmp_path.iterdir()
    assert "secret" not in written.name and b"secret" not in written.read_bytes()
    assert type(peers_for("https://api.example", None)) is Peers
    monkeypatch.setenv("DEERLUMA_RATE_DIR", "off")
    assert type(peers_for("https://api.example", "sk-secret-key-123")) is Peers


def test_a_session_that_joins_late_takes_old_429s_as_history(tmp_path: Path) -> None:
    path = str(tmp_path / "k.rate")
    first = FilePeers(path)
    first.tick()
    first.publish(PeerEvent(0, 0, 10.0, 11.0))  # a pause long over
    late = FilePeers(path)
    assert late.news(20.0) == (None, 0)
    first.publish(PeerEvent(0, 0, 30.0, 35.0))
    event, ticks = late.news(30.5)
    assert event is not None and event.pause_until == 35.0 and ticks == 0
    joining = FilePeers(path)  # while that pause still runs: it concerns the newcomer too
    event, _ = joining.news(31.0)
    assert event is not None and event.pause_until == 35.0


async def test_a_closed_session_lets_go_of_the_shared_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deerluma

    monkeypatch.setenv("DEERLUMA_RATE_DIR", str(tmp_path))
    async with deerluma.Session(api_key="k", base_url="https://api.example") as s:
        peers = s._transport.gate.peers
        assert isinstance(peers, FilePeers)
        peers.publish(PeerEvent(0, 0, 1.0, 2.0))  # opens (and makes) the file
        assert peers._fd is not None
    assert peers._fd is None


def test_a_pause_heard_from_another_session_is_capped() -> None:
    ours = Controller(None, 0.0)
    decision = ours.decide(Heard(1, event=PeerEvent(1, 7, 10.0, pause_until=1e12)), 10.0)
    assert decision.paused_until == 10.0 + 60.0


def test_sessions_sending_on_a_key_count_each_other_through_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "k.rate")
    one, two, idle = FilePeers(path), FilePeers(path), FilePeers(path)
    assert one.fleet() == 1
    one.news(100.0)
    two.news(100.0)
    one.news(100.5)  # marks again (at most every quarter second), and counts
    assert (one.fleet(), two.fleet()) == (2, 2)  # `idle` never sent: not counted
    two.close()  # a Session that ends gives up its slot at once
    one.news(101.0)
    assert one.fleet() == 1
    two = FilePeers(path)
    two.news(101.0)
    one.news(110.0)  # `two` sent nothing for 9 s: no longer counted
    assert one.fleet() == 1
    for peers in (one, two, idle):
        peers.close()


def test_what_sessions_that_stopped_sent_goes_to_the_busy_ones_left() -> None:
    sending = {n: Sender(n, 10.0, sent=13.0, rate=13.5) for n in (1, 2)}  # two others, busy
    held, light = MemoryPeers([], sending), MemoryPeers([], sending)
    held.pace = lambda now: (12.0, 12.5)  # sends as fast as its rate lets it
    light.pace = lambda now: (1.0, 12.5)  # sends less than its rate would let it
    held.news(10.0)
    light.news(10.0)
    assert light.fleet() == 4 and held.freed == light.freed == 0
    del sending[1]  # one ended
    sending[2] = Sender(2, 10.3, sent=13.0, rate=13.5)
    held.news(10.3)
    light.news(10.3)
    assert held.fleet() == light.fleet() == 3
    # What it sent is free, shared by the two busy ones left (2 and `held`).
    assert held.freed == pytest.approx(13.0 / 2)
    assert light.freed == 0
    light.news(12.9)
    held.news(13.0)  # 2 was killed (it stopped marking its slot): its part comes too
    assert held.fleet() == 2
    assert held.freed == pytest.approx(13.0 / 2 + 13.0 / 1)


def test_a_session_polling_now_and_then_frees_nothing_as_it_comes_and_goes() -> None:
    # A worker waiting on one long generation polls every 3 s: out of the count after 2 s
    # without a request, back at its next poll. It never used a share of the key that the
    # busy one could take up; taking it each time would inflate the busy one's rate.
    sending: dict[int, Sender] = {}
    held = MemoryPeers([], sending)
    held.pace = lambda now: (40.0, 41.0)
    for poll in range(20):
        now = 3.0 * poll
        sending[7] = Sender(7, now, sent=1.0, rate=50.0)  # it polls: in the count again
        for beat in range(12):
            held.news(now + 0.25 * beat)
    assert held.freed == 0


def test_sessions_tell_each_other_their_pace_through_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "k.rate")
    one, two = FilePeers(path), FilePeers(path)
    one.pace = lambda now: (20.0, 20.0)
    two.pace = lambda now: (30.0, 31.0)
    one.news(100.0)
    two.news(100.0)
    one.news(100.5)
    assert (one.fleet(), one.freed) == (2, 0)
    two.close()
    one.news(101.0)
    assert (one.fleet(), one.freed) == (1, 30.0)
    one.close()


def test_a_slot_that_is_no_pace_frees_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "k.rate")
    one, two = FilePeers(path), FilePeers(path)
    one.pace = lambda now: (20.0, 20.0)
    two.pace = lambda now: (float("nan"), 31.0)  # as a file written by something else reads
    two.news(100.0)
    one.news(100.0)
    two.close()
    one.news(100.5)
    assert (one.fleet(), one.freed) == (1, 0)
    one.close()


def test_a_busy_session_takes_up_what_sessions_that_stopped_sent() -> None:
    control = Controller(None, 0.0)
    _cut_to_w_max(control)
    rate, w_max = control.rate, control.cubic.w_max
    assert control.decide(Heard(1, freed=20.0), 2.5).rate == rate  # taken up as it sends
    decision = control.decide(Answered(2.49, held_back=True), 2.5)
    assert decision.rate == pytest.approx(rate + 20.0, rel=0.02)
    assert control.cubic.w_max == pytest.approx(w_max + 20.0)
    assert control.freed == 0
    starting = Controller(None, 0.0)  # slow start finds its own way
    starting.decide(Heard(1, freed=20.0), 0.5)
    assert starting.decide(Answered(0.49, held_back=False), 0.5).rate == 50
    assert starting.freed == 0


def _cut_to_w_max(control: Controller) -> float:
    """Leave slow start at about 100 req/s, then cut; returns when CUBIC is back at the peak."""
    for i in range(200):
        _sent_and_answered(control, i * 0.01, i * 0.01 + 0.001)
    _cut_in(control, 2.0)
    return control.cubic.peak_at - 2.0


def test_sessions_sending_on_one_key_probe_beyond_the_limit_as_one_would() -> None:
    # Back to the rate that was too much as fast as a lone Session; beyond it, each of 8
    # Sessions probes 8 times slower, so the key's rate probes its limit as one Session's would.
    lone = Controller(None, 0.0)
    alone = _cut_to_w_max(lone)
    sending = {n: Sender(n, 2.0) for n in range(1, 8)}  # seven others sent lately
    fleet, peers = Controller(None, 0.0), MemoryPeers([], sending)
    peers.news(2.0)
    fleet.decide(Heard(peers.fleet()), 2.0)  # as the gate tells it
    in_fleet = _cut_to_w_max(fleet)
    assert in_fleet == pytest.approx(alone)
    assert fleet.cubic.c == pytest.approx(lone.cubic.c / 8)
    # When the others stop, it probes on as a lone Session, from where it is: no jump.
    sending.clear()
    peers.news(3.0)
    before = fleet.decide(Heard(peers.fleet()), 3.0).rate
    assert fleet.decide(Answered(2.99, held_back=True), 3.0).rate == pytest.approx(before, rel=0.05)
    assert fleet.cubic.c == pytest.approx(lone.cubic.c)


def test_a_torn_record_or_slot_is_never_taken_for_one(tmp_path: Path) -> None:
    path = str(tmp_path / "k.rate")
    one, two = FilePeers(path), FilePeers(path)
    one.publish(PeerEvent(0, 0, 10.0, 11.0))
    one.pace = lambda now: (5.0, 6.0)
    one.news(10.0)  # marks its slot
    with open(path, "r+b") as file:  # a writer cut halfway: half the record is new bytes
        file.seek(20)
        file.write(b"\xff" * 16)
        file.seek(128 + 10)  # and its slot
        file.write(b"\xff" * 8)
    assert two.news(11.0) == (None, 0)  # read again, still torn: no news rather than nonsense
    assert two.fleet() == 1  # the torn slot counts as free
    one.publish(PeerEvent(0, 0, 12.0, 13.0))  # whole again
    event, _ = two.news(12.5)
    assert event is not None and event.pause_until == 13.0


def test_a_lock_held_by_a_stopped_session_never_holds_the_others(tmp_path: Path) -> None:
    import fcntl
    import time

    path = str(tmp_path / "k.rate")
    one, two = FilePeers(path), FilePeers(path)
    one.publish(PeerEvent(0, 0, 1.0, 2.0))
    with open(path, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a Session stopped (Ctrl-Z) while it wrote
        started = time.perf_counter()
        two.publish(PeerEvent(0, 0, 3.0, 4.0))  # skipped, not waited for
        two.tick()
        assert time.perf_counter() - started < 0.1
    two.publish(PeerEvent(0, 0, 5.0, 6.0))
    event, _ = one.news(5.5)
    assert event is not None and event.pause_until == 6.0


def test_a_session_never_closed_lets_go_of_its_file_when_collected(tmp_path: Path) -> None:
    import gc
    import os

    peers = FilePeers(str(tmp_path / "k.rate"))
    peers.publish(PeerEvent(0, 0, 1.0, 2.0))
    fd = peers._fd
    assert fd is not None
    del peers
    gc.collect()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # closed


def test_cubic_regrows_to_the_rate_that_was_too_much_then_probes_beyond() -> None:
    from deerluma._control import Cubic

    lone, shared = Cubic(), Cubic()
    lone.aim(w_max=100.0, rate=70.0, now=10.0, fleet=1)
    shared.aim(w_max=100.0, rate=70.0, now=10.0, fleet=4)
    assert lone.peak_at == shared.peak_at == pytest.approx(10.0 + (30.0 / 0.4) ** (1 / 3))
    assert lone.rate_at(10.0) == pytest.approx(70.0)  # from where the cut left it
    assert lone.rate_at(lone.peak_at) == pytest.approx(100.0)
    assert lone.rate_at(lone.peak_at - 1) == shared.rate_at(shared.peak_at - 1)  # back alike
    beyond = lone.peak_at + 2.0
    assert lone.rate_at(beyond) - 100.0 == pytest.approx(4 * (shared.rate_at(beyond) - 100.0))


def test_the_bucket_refills_at_the_rate_up_to_its_capacity() -> None:
    from deerluma._gate import Bucket

    bucket = Bucket(tokens=2.0, now=0.0)
    bucket.take()
    bucket.take()
    assert bucket.level(0.5, rate=10.0, capacity=3.0) == pytest.approx(3.0)  # capped
    bucket.take()
    assert bucket.level(0.6, rate=10.0, capacity=3.0) == pytest.approx(3.0)
    bucket.no_burst(now=1.0)  # at most one at once, and the refill counts from 1.0
    assert bucket.level(1.0, rate=10.0, capacity=3.0) == pytest.approx(1.0)
    bucket.take()
    bucket.give_back()
    assert bucket.tokens == pytest.approx(1.0)


def _answers(trial: Trial, throttled: str, start: float = 1.0, gap: float = 0.01) -> float:
    """Answers to requests sent after the cut, one per `gap` seconds: "x" a 429, "." one that
    went through. Returns the clock time of the last."""
    now = start
    for mark in throttled:
        now += gap
        trial.answer(now - 0.005, mark == "x", settle=0.0)
    return now


def test_a_cut_followed_by_next_to_no_429s_was_about_our_rate() -> None:
    trial = Trial(1.0, before=0.04)  # 4 % of the answers before it were 429s
    now = _answers(trial, "." * 40)
    assert trial.verdict(now) is Verdict.GOES_ON  # as few answers as 4 % would show in twice
    now = _answers(trial, "." * 35, now)  # 75: enough to see 3 of them at 4 %
    assert trial.verdict(now) is Verdict.OURS


def test_a_cut_followed_by_scattered_429s_as_common_as_before_is_undone() -> None:
    trial = Trial(1.0, before=0.04)
    now = _answers(trial, ("." * 24 + "x") * 3)
    assert (trial.answers, trial.throttled, trial.close) == (75, 3, 0)
    assert trial.share == pytest.approx(0.04)
    assert trial.verdict(now) is Verdict.STRAY


def test_429s_close_together_after_a_cut_are_a_limit_met_again() -> None:
    trial = Trial(1.0, before=0.04)
    now = _answers(trial, "." * 70 + "x.x.x")
    assert (trial.throttled, trial.close) == (3, 2)
    assert trial.verdict(now) is Verdict.OURS


def test_429s_still_many_after_a_cut_ask_for_a_deeper_one_at_once() -> None:
    trial = Trial(1.0, before=0.04)
    now = _answers(trial, ".x" * 10)  # half of 20: far more than twice the share before
    assert trial.verdict(now) is Verdict.DEEPER


def test_a_trial_too_quiet_to_tell_leaves_the_cut_standing() -> None:
    trial = Trial(1.0, before=0.04)
    now = _answers(trial, "." * 5, gap=1.0)  # five answers in five seconds
    assert trial.verdict(now) is Verdict.STANDS


def test_answers_to_requests_sent_before_the_cut_settled_are_not_counted() -> None:
    trial = Trial(1.0, before=0.04)
    for sent in (0.5, 1.0, 1.01, 1.02):  # before, at, and within 0.02 s of the cut
        trial.answer(sent, True, settle=0.02)
    assert (trial.answers, trial.throttled) == (0, 0)
    trial.answer(1.03, True, settle=0.02)
    assert (trial.answers, trial.throttled) == (1, 1)


def test_sessions_launched_together_share_the_start_rate() -> None:
    control = Controller(None, 0.0)
    decision = control.decide(Heard(4), 0.5)  # three more Sessions began sending on the key
    assert decision.rate == pytest.approx(50 / 4)
    assert decision.drain_from == -float("inf")  # no burst, the refill counted as it was
    assert control.decide(Heard(4), 0.6).drain_from is None  # once
    late = Controller(None, 0.0)  # a Session already sending when others join: its own way
    assert late.decide(Heard(4), 2.0).rate == 50


def test_the_meter_reads_rates_off_the_last_second_and_sends_off_quarter_second_slots() -> None:
    meter = Meter(0.0)
    for i in range(40):  # 40 requests a second, for a second
        meter.sending(i * 0.025)
    assert meter.rate_of_sent(0.99, whole=True) == 40
    assert meter.rate_of_sent(0.99) == 10 / 0.25  # the last quarter holds enough to tell
    for i in range(10):  # then 10 in 50 ms: the last quarter follows the ramp, the whole less so
        meter.sending(1.0 + i * 0.005)
    assert meter.rate_of_sent(1.055) == 17 / 0.25  # 7 of the steady ones, and the 10
    assert meter.rate_of_sent(1.055, whole=True) == 47  # the first 3 are older than 1 s
    # Sends are counted by quarter-second slots: from a time within a slot, a little more.
    assert meter.sends_since(0.5) == meter.sends_since(0.6) == 30
    assert meter.sends_since(1.0) == 10
    assert [count for _, count in meter.slots_since(0.4)] == [10, 10, 10, 10]  # 0.25 s on


def test_the_meter_smooths_round_trips_and_reads_the_latest_successes() -> None:
    meter = Meter(0.0)
    meter.success(1.1, sent=1.0)
    assert meter.rtt == pytest.approx(0.2 * 0.1)
    assert meter.latest_rate() == 0.0  # fewer than 8 successes: nothing to read yet
    for i in range(1, 16):
        meter.success(1.1 + i * 0.01, sent=1.1)
    assert meter.served == 16
    assert meter.latest_rate() == pytest.approx(15 / 0.15)  # 16 successes over 0.15 s
