"""Gateways that serve their own rows: the learner on a fake clock, and waits end to end.

The unit tests drive the real poll engine with plain numbers against the same
row model as `FakeDeerAPI(refresh=...)`: no sockets, no sleeping. The end-to-end
tests run waits and batches over a real socket against the fake server.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import deerluma
from deerluma import Generation, GenerationState, PollPolicy
from deerluma._engine import Engine, PollTracker, Verdict
from deerluma._gateway import Kind, RowClock
from deerluma._history import TimingHistory
from deerluma._rows import Look, RowTrack
from deerluma._transport import request_sent
from deerluma.testing import FakeClock, FakeDeerAPI, ScaledClock
from deerluma.testing._server import _Gen, _RowTable

START = 1000.0
RTT = 0.03


def _gen(index: int, duration: float, bias: float, hinted: bool = True) -> _Gen:
    return _Gen(
        id=f"t{index}",
        prompt="",
        started=START,
        pending_for=duration * 0.2,
        duration=duration,
        failure_reason=None,
        estimate=hinted,
        estimate_bias=bias,
        shape="web",
        created_wall=datetime.now(UTC),
        video_bytes=0,
    )


def _generation(gen: _Gen, at: float) -> Generation:
    """What a GET shows of `gen` as of `at` (a live gateway: now; a refreshed one: its row)."""
    estimate = gen.estimate_at(at)
    return Generation(
        id=gen.id,
        state=GenerationState(gen.state(at)),
        estimate_wait_seconds=None if estimate is None else float(estimate),
        created_at=_wall(gen.started),
    )


#: The wall time at START on the fake clocks here (what created_at is read against).
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def _wall(at: float) -> datetime:
    return EPOCH + timedelta(seconds=at - START)


Shows = Callable[[_Gen, float], float]
"""As of which time a GET sent at a time shows a generation."""


def _drive(
    gens: list[_Gen],
    shows: Shows,
    rows: RowClock,
    *,
    policy: PollPolicy | None = None,
    batch: bool = False,
    ends: Callable[[_Gen], float] | None = None,
    start: float = START,
    holds: bool = True,
    sent_at: list[float] | None = None,
) -> tuple[list[int], list[float]]:
    """Wait on `gens` (single waits, or one batch) from `start` as a Session would; polls
    and lags, where lag counts from `ends(gen)` (when a GET first shows it ended). Without
    `holds`, a poll goes whenever it is due (`Engine.hold` is not asked); `sent_at` gets
    the time of each GET."""
    policy = policy or PollPolicy(timeout=None)
    history = TimingHistory()

    clock = [start]

    def engine() -> Engine:
        return Engine(policy, start, random.Random(0), history, lambda: _wall(clock[0]), rows=rows)

    shared = engine()
    engines = [shared if batch else engine() for _ in gens]
    trackers: list[PollTracker | None] = [None] * len(gens)
    polls, lags = [0] * len(gens), [math.nan] * len(gens)
    due = [(start, index) for index in range(len(gens))]
    while due:
        sent, index = heapq.heappop(due)
        later = engines[index].hold(trackers[index], sent) if holds else None
        if later is not None:  # held: nothing sent, asked again then (as a Session does)
            heapq.heappush(due, (later, index))
            continue
        gen = gens[index]
        if sent_at is not None:
            sent_at.append(sent)
        generation = _generation(gen, shows(gen, sent))
        polls[index] += 1
        now = clock[0] = sent + RTT
        step, trackers[index] = engines[index].seen(trackers[index], gen.id, now, generation, sent)
        if step.verdict is Verdict.SLEEP:
            heapq.heappush(due, (now + step.delay, index))
        else:
            assert step.result is not None and step.result.is_completed
            lags[index] = now - (ends(gen) if ends else gen.finishes_at())
    return polls, lags


def _live(gen: _Gen, at: float) -> float:
    return at


def _refreshed(table: _RowTable) -> Shows:
    def shows(gen: _Gen, at: float) -> float:
        table.advance(at)
        return table.refreshed_at[gen.id]

    return shows


def _rows_of(gens: list[_Gen], period: float, gap: float = 0.05, first: float = 7.0) -> _RowTable:
    table = _RowTable(period, gap)
    for gen in gens:
        table.add(gen)
    table._next_pass = START + first
    return table


def _batch(count: int, seed: int = 1, hinted: bool = True) -> list[_Gen]:
    rng = random.Random(seed)
    return [
        _gen(index, rng.uniform(20, 60), rng.uniform(0.7, 1.3), hinted) for index in range(count)
    ]


def _plain_loop(ends: list[float]) -> tuple[float, float]:
    """Mean polls and p95 lag of a loop looking every 3 s from the start."""
    looks = [math.ceil((end - START) / 3.0 - 1e-9) + 1 for end in ends]
    lags = sorted(START + (n - 1) * 3.0 - end for n, end in zip(looks, ends, strict=True))
    return sum(looks) / len(looks), lags[math.ceil(0.95 * len(lags)) - 1]


def _p95(values: list[float]) -> float:
    return sorted(values)[math.ceil(0.95 * len(values)) - 1]


# -- telling the kinds apart ------------------------------------------------------------


def test_a_live_gateway_is_told_live_and_waited_on_as_before() -> None:
    gens = _batch(20)
    rows = RowClock()
    polls, lags = _drive(gens, _live, rows)
    assert rows.kind(START + 60) is Kind.LIVE
    # As a Session that knows nothing of rows waits: the estimate, then closing in.
    plain_polls, plain_lags = _drive(
        gens, _live, RowClock(), policy=PollPolicy(timeout=None, refresh="live")
    )
    assert max(lags) <= max(plain_lags) + 0.5
    assert sum(polls) <= sum(plain_polls) + len(gens)  # at most the one look that told


def test_a_refreshed_gateway_is_told_and_its_period_learned() -> None:
    gens = _batch(40)
    table = _rows_of(gens, 15.0)
    rows = RowClock()
    polls, lags = _drive(gens, _refreshed(table), rows, ends=lambda g: table.final_at[g.id])
    assert rows.kind(START + 60) is Kind.REFRESHED
    # 15 s rest + a pass of up to 2 s (told a little short while a pass is seen in part)
    assert rows.period is not None and 12.5 <= rows.period <= 18.0
    mean_polls, plain_p95 = _plain_loop([table.final_at[g.id] for g in gens])
    assert sum(polls) / len(polls) <= 0.5 * mean_polls
    assert _p95(lags) <= plain_p95


def test_a_stale_estimate_counts_from_its_refresh_not_from_the_look() -> None:
    # A slow gateway (a pass a minute) refreshed the row 50 s before the first look, when 55 s
    # were left: the generation ends 5 s after the look, and its row shows it 10 s after.
    gen = _gen(0, 65.0, 1.0)
    gen.started = START - 60.0
    table = _rows_of([gen], 60.0, first=-50.0)
    ends = lambda g: table.final_at[g.id]  # noqa: E731

    def knowing() -> RowClock:  # a Session that met this gateway before
        rows = RowClock()
        rows.sign(START - 30.0, True)
        rows.measured(START - 50.0, 60.0)
        rows.refreshed(START - 50.0)
        return rows

    polls, lags = _drive([gen], _refreshed(table), knowing(), ends=ends)
    assert lags[0] <= 1.0 and polls[0] <= 6  # as a plain loop would, from the look on
    # Taken as measured at the look, the estimate would have put the next look 40 s on.
    table = _rows_of([gen], 60.0, first=-50.0)
    trusting = PollPolicy(timeout=None, refresh="live")
    _, lags = _drive([gen], _refreshed(table), knowing(), policy=trusting, ends=ends)
    assert lags[0] >= 20.0


def test_a_period_that_drifts_as_the_pass_shrinks_is_followed() -> None:
    # 200 rows 0.05 s apart, and new-api's 15 s rest after each pass: the first passes take
    # 10 s, later ones less as rows finish, so the period falls from 25 s towards 15 s.
    rng = random.Random(3)
    gens = [_gen(index, rng.uniform(20, 150), rng.uniform(0.7, 1.3)) for index in range(200)]
    table = _rows_of(gens, 15.0)
    rows = RowClock()
    said: list[float | None] = []  # the period the Session waits by as each pass begins
    shows = _refreshed(table)

    def watching(gen: _Gen, at: float) -> float:
        if len(table.began) > len(said):
            said.append(rows.period)
        return shows(gen, at)

    polls, lags = _drive(gens, watching, rows, batch=True, ends=lambda g: table.final_at[g.id])
    truths = [after - before for before, after in itertools.pairwise(table.began)]
    assert truths[0] - truths[-1] >= 6.0  # the gateway drifts as described
    # From the third pass on, the period the Session waits by is the one that comes next
    # (a pass seen in part is taken to end early: then a look comes early, never late).
    misses = sorted(
        abs(guess - truth)
        for guess, truth in zip(said[2:], truths[1:], strict=False)
        if guess is not None
    )
    assert len(misses) >= 4 and misses[len(misses) // 2] <= 1.5 and misses[-1] <= 5.0
    mean_polls, _ = _plain_loop([table.final_at[g.id] for g in gens])
    assert sum(polls) / len(polls) <= 0.5 * mean_polls
    assert _p95(lags) <= 5.0


def test_a_gateway_that_switches_kind_is_learned_again() -> None:
    rows = RowClock()
    first = _batch(20, seed=4)
    table = _rows_of(first, 15.0)
    _drive(first, _refreshed(table), rows, ends=lambda g: table.final_at[g.id])
    assert rows.kind(START + 70) is Kind.REFRESHED
    # The same Session later meets a live gateway (the user moved base_url, or the gateway
    # changed): its waits read it live again within a few minutes, then wait as on one.
    later = START + 400.0
    live = [_gen(index, 40.0, 1.0) for index in range(10)]
    for gen in live:
        gen.started = later
    _, lags = _drive(live, _live, rows, start=later)
    assert rows.kind(later + 60) is Kind.LIVE
    assert max(lags) <= 1.5
    # ... and back: a refreshed one is told at its first stale rows.
    again = START + 800.0
    refreshed = [_gen(index, 40.0, 1.0) for index in range(10)]
    for gen in refreshed:
        gen.started = again
    table = _rows_of(refreshed, 15.0, first=again - START + 5.0)
    _drive(refreshed, _refreshed(table), rows, ends=lambda g: table.final_at[g.id], start=again)
    assert rows.kind(again + 30) is Kind.REFRESHED


def test_rows_without_an_estimate_are_polled_as_a_plain_loop_would() -> None:
    gens = _batch(40, hinted=False)
    table = _rows_of(gens, 15.0)
    rows = RowClock()
    polls, lags = _drive(
        gens, _refreshed(table), rows, batch=True, ends=lambda g: table.final_at[g.id]
    )
    mean_polls, plain_p95 = _plain_loop([table.final_at[g.id] for g in gens])
    assert sum(polls) / len(polls) <= mean_polls * 1.01
    assert _p95(lags) <= plain_p95 * 1.05


def test_the_user_can_say_which_kind_the_gateway_is() -> None:
    rows = RowClock()
    assert rows.kind(START) is Kind.UNKNOWN
    assert rows.kind(START, 15.0) is Kind.REFRESHED and rows.period_for(15.0) == 15.0
    assert rows.kind(START, "live") is Kind.LIVE
    gens = _batch(20, seed=5)
    table = _rows_of(gens, 15.0)
    policy = PollPolicy(timeout=None, refresh=timedelta(seconds=15))
    polls, lags = _drive(
        gens, _refreshed(table), RowClock(), policy=policy, ends=lambda g: table.final_at[g.id]
    )
    mean_polls, plain_p95 = _plain_loop([table.final_at[g.id] for g in gens])
    assert sum(polls) / len(polls) <= 0.6 * mean_polls
    assert _p95(lags) <= plain_p95


def test_a_row_track_brackets_refreshes_between_looks() -> None:
    rows, track = RowClock(), RowTrack()
    track.look(rows, Look(0.0, 0.1, ("processing", 40.0, None), 40.0), None)
    track.look(rows, Look(3.0, 3.1, ("processing", 40.0, None), 40.0), None)  # same over 3 s
    assert rows.kind(3.1) is Kind.REFRESHED and track.refreshed_at is None
    track.look(rows, Look(4.0, 4.1, ("processing", 25.0, None), 25.0), 15.0)  # fell 15 in 1 s
    assert track.refreshed_at == pytest.approx(3.55)
    assert track.unfinished_at == pytest.approx(3.0)


@pytest.mark.parametrize("bad", [-1.0, 0.0, "often", math.inf, True])
def test_poll_policy_refuses_a_refresh_that_is_no_period(bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match="refresh"):
        PollPolicy(refresh=bad)  # type: ignore[arg-type]


# -- holding looks while the rows rest -------------------------------------------------


def _rests(table: _RowTable, gens: list[_Gen]) -> list[tuple[float, float]]:
    """When the rows rested: from the last refresh of each pass to the next pass."""
    rests = []
    for began, after in itertools.pairwise(table.began):
        rows = [
            g for g in gens if g.started <= began and table.final_at.get(g.id, math.inf) >= began
        ]
        rests.append((began + len(rows) * table.gap + 0.5, after))
    return rests


def test_waits_send_nothing_while_the_rows_rest_between_passes() -> None:
    # 200 ids, passes of up to 10 s and 15 s rests: a wait whose row showed a pass changes
    # only in the next; while the row refreshed first in that pass (the watch) shows no new
    # pass, the others hold their looks, and the rests go nearly quiet.
    counts = {}
    for holds in (True, False):
        gens = _batch(200, seed=6)
        table = _rows_of(gens, 15.0, first=15.0)
        sent: list[float] = []
        polls, lags = _drive(
            gens,
            _refreshed(table),
            RowClock(),
            batch=True,
            holds=holds,
            sent_at=sent,
            ends=lambda g: table.final_at[g.id],  # noqa: B023
        )
        rests = _rests(table, gens)
        counts[holds] = sum(1 for at in sent for low, high in rests if low <= at < high)
        mean_polls, plain_p95 = _plain_loop([table.final_at[g.id] for g in gens])
        if holds:
            assert sum(polls) / len(polls) <= 0.42 * mean_polls
            assert _p95(lags) <= plain_p95
    assert counts[True] <= 0.4 * counts[False]


def _held_setup() -> tuple[RowClock, object, object]:
    rows = RowClock()
    rows.sign(0.0, True)
    rows.refreshed(10.0)  # a pass, seen beginning at 10 s
    return rows, object(), object()


def test_the_row_refreshed_first_watches_and_vouches_for_the_others() -> None:
    rows, watch, other = _held_setup()
    assert rows.hold(other, 0, 12.0) is None  # no watch yet: it looks as planned
    # The row refreshed first in the pass watches, often only while others want to hold.
    assert rows.watch_duty(watch, 0.3, 12.5, planned=40.0) == pytest.approx(14.0)
    assert rows.watch_duty(object(), 0.8, 12.5, planned=40.0) == 40.0  # one watch is enough
    assert rows.hold(other, 0, 13.0) is None  # nothing vouched for yet
    rows.quiet(0, 14.0 - 0.3)  # the watch's row unchanged at 14 s: no pass began by 13.7 s
    later = rows.hold(other, 0, 14.1)
    assert later is not None and 14.1 < later <= 14.1 + 2.0
    assert rows.hold(watch, 0, 14.1) is None  # the watch itself looks
    assert rows.hold(other, 0, 14.0 + 3.0) is None  # its word is old: look
    assert rows.hold(other, 1, 14.1) is None  # a row of another pass
    # A row refreshed sooner in the pass takes the watch over.
    sooner = object()
    assert rows.watch_duty(sooner, 0.1, 14.2, planned=40.0) == pytest.approx(15.7)
    rows.quiet(0, 15.0)
    assert rows.hold(watch, 0, 15.1) is not None
    # A new pass began: whoever showed the last holds no more.
    rows.refreshed(35.0)
    assert rows.hold(other, 0, 35.5) is None


def test_passes_that_keep_no_order_hold_no_look() -> None:
    rows, watch, other = _held_setup()
    rows.watch_duty(watch, 0.3, 12.5, planned=40.0)
    rows.refreshed(35.0)  # the next pass
    rows.watch_duty(watch, 0.3, 36.0, planned=60.0)
    rows.quiet(1, 40.0)
    # A row refreshed 3 s into the first pass, and seen 1.5 s into the next: in order.
    rows.moved(0, 13.0, 1, 36.5)
    assert rows.hold(other, 1, 40.5) is not None
    # One refreshed by 10.5 s into the first, and no sooner than 8 s into the next: a pass
    # oldest first never brings a row later (rows ahead only leave), so these keep no order,
    # and the watch's word says nothing of the others.
    rows.moved(0, 10.5, 1, 43.0)
    assert rows.hold(other, 1, 43.5) is None


def _placed_by_its_estimate(born: float | None, fell: float) -> tuple[RowClock, RowTrack]:
    rows, watch, _ = _held_setup()
    track = RowTrack()
    track.born = born
    track.look(rows, Look(0.0, 0.1, ("pending", 40.0, None), 40.0), 15.0, 1.3)
    # 30 s later: refreshed somewhere in between, the look alone says.
    track.look(rows, Look(30.0, 30.1, ("processing", 40.0 - fell, None), 40.0 - fell), 15.0, 1.3)
    rows.watch_duty(watch, 0.2, 30.2, planned=50.0)
    rows.quiet(0, 30.0)
    return rows, track


def test_a_row_is_placed_in_a_pass_by_how_far_its_estimate_fell() -> None:
    # Created at 0 s with 40 s to go; at 30 s the row says 19: at most 1.3 s a second, 21 took
    # 16.2 s at least, so the refresh came after the pass seen at 10 s began: it holds.
    rows, track = _placed_by_its_estimate(born=0.0, fell=21.0)
    assert track.hold(rows, 30.5, 15.0) is not None
    # ... and not for ever: two periods after its refresh, it looks.
    rows.quiet(0, 61.0)
    assert track.hold(rows, 61.0, 15.0) is None
    # A fall of 5 could have come before that pass; with no creation time, nothing bounds it.
    rows, track = _placed_by_its_estimate(born=0.0, fell=5.0)
    assert track.hold(rows, 30.5, 15.0) is None
    rows, track = _placed_by_its_estimate(born=None, fell=21.0)
    assert track.hold(rows, 30.5, 15.0) is None


def _first_refreshed(fresh: bool) -> tuple[RowClock, RowTrack]:
    """Row Y, made at 0 s, first refreshed at 10 s (its looks bracket it); row X, made at
    0.5 s, changed by 30 s by less than its estimate says of when."""
    rows, watch, _ = _held_setup()
    y, x = RowTrack(), RowTrack()
    y.born, y.fresh = 0.0, fresh
    y.look(rows, Look(0.0, 0.1, ("pending", 40.0, None), 40.0), 15.0, 1.3)
    y.look(rows, Look(9.5, 9.6, ("pending", 40.0, None), 40.0), 15.0, 1.3)
    y.look(rows, Look(10.6, 10.7, ("processing", 30.0, None), 30.0), 15.0, 1.3)
    x.born, x.fresh = 0.5, True
    x.look(rows, Look(0.6, 0.7, ("pending", 40.0, None), 40.0), 15.0, 1.3)
    x.look(rows, Look(30.0, 30.1, ("processing", 38.0, None), 38.0), 15.0, 1.3)
    rows.watch_duty(watch, 0.2, 30.2, planned=50.0)
    rows.quiet(0, 30.0)
    return rows, x


def test_a_row_made_after_one_first_refreshed_in_a_pass_was_first_refreshed_there_too() -> None:
    # A pass refreshes every row made before it began: Y, made at 0 s and showing its first
    # row until the pass at 10 s, says no pass began in between; X, made at 0.5 s, was first
    # refreshed in that pass too (its estimate fell by 2 only: it says nothing of when).
    rows, x = _first_refreshed(fresh=True)
    assert x.hold(rows, 30.5, 15.0) is not None
    # Y's first look came long after it was made: it may have shown a row refreshed already.
    rows, x = _first_refreshed(fresh=False)
    assert x.hold(rows, 30.5, 15.0) is None


def test_rows_that_ended_before_a_row_bring_its_next_refresh_sooner() -> None:
    rows = RowClock()
    rows.sign(0.0, True)
    rows.refreshed(10.0)
    for at, ended in ((10.2, True), (10.4, True), (10.6, False), (10.8, False)):
        rows.placed(at, ended)
    rows.refreshed(35.0)
    rows.measured(35.0, 25.0)
    # A pass refreshes its rows one after the other: half of those before this one ended,
    # and left the passes, so it comes half its second into the pass sooner.
    assert rows.shift(11.0, 1) == pytest.approx(25.0 - 0.5)
    assert rows.shift(10.3, 1) == pytest.approx(25.0)  # too few before it to tell


class _Holding:
    def __init__(self, later: float) -> None:
        self.later = later

    def hold(self, now: float) -> float | None:
        return self.later


def test_a_held_look_never_passes_the_deadline() -> None:
    engine = Engine(PollPolicy(timeout=60.0), START, random.Random(0), None, rows=RowClock())
    holding = _Holding(START + 100.0)
    assert engine.hold(holding, START + 30.0) == pytest.approx(engine.final)  # type: ignore[arg-type]
    assert engine.hold(holding, engine.final) is None  # type: ignore[arg-type]
    assert engine.hold(None, START + 30.0) is None


# -- end to end, over a real socket ------------------------------------------------------


async def test_the_fake_serves_rows_refreshed_in_passes() -> None:
    clock = FakeClock()
    async with FakeDeerAPI(clock=clock, refresh=15.0, refresh_gap=1.0) as fake:
        first = fake.add_generation("a", duration=10.0)
        second = fake.add_generation("b", duration=40.0)
        async with deerluma.Session(api_key=fake.api_key, base_url=fake.url, clock=clock) as s:
            clock.advance(12.0)
            assert (await s.get_generation(first)).state is GenerationState.PENDING
            clock.advance(3.5)  # the pass began at 15 s: "a" at once, "b" a second later
            assert (await s.get_generation(first)).state is GenerationState.COMPLETED
            assert (await s.get_generation(second)).state is GenerationState.PENDING
            clock.advance(1.0)
            assert (await s.get_generation(second)).state is GenerationState.PROCESSING
        assert fake.shows_final_at(first) == pytest.approx(clock() - 16.5 + 15.0)
        assert fake.body_of(second)["estimate_wait_seconds"] == 24  # as of 16 s, not now


async def test_a_wait_behind_refreshed_rows_finds_the_refresh_that_holds_the_end() -> None:
    clock = FakeClock()
    async with FakeDeerAPI(clock=clock, refresh=15.0, refresh_gap=0.05) as fake:
        async with deerluma.Session(
            api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep
        ) as s:
            assert s.gateway == deerluma.GatewayView("unknown", None, measured=False)
            task_id = fake.add_generation(duration=50.0, estimate_bias=0.9)
            g = await s.wait_until_completed(task_id)
            assert s.gateway.kind == "refreshed"
        assert g.is_completed
        lag = clock() - fake.shows_final_at(task_id)
        assert 0 <= lag <= 3.0
        assert fake.polls[task_id] <= 20  # a plain 3 s loop: 22


async def test_a_batch_behind_refreshed_rows_reports_each_soon_after_its_row_ends() -> None:
    # Scaled real time (about 2 s): under a fake clock, a batch's polls in flight see the clock
    # jump by other polls' sleeps, which says nothing of a gateway.
    clock = ScaledClock(20)
    async with FakeDeerAPI(clock=clock, refresh=5.0, refresh_gap=0.05) as fake:
        rng, start = random.Random(2), clock()
        ids = [
            fake.add_generation(duration=rng.uniform(20, 40), estimate_bias=rng.uniform(0.8, 1.2))
            for _ in range(12)
        ]
        async with deerluma.Session(
            api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep
        ) as s:
            results = [result async for result in s.as_completed(ids)]
        assert len(results) == 12 and all(result.ok for result in results)
        # From the row turning final to the server's first answer showing it.
        lags = sorted(fake.completed_at[i] - fake.shows_final_at(i) for i in ids)
        assert lags[6] <= 1.5 and lags[-1] <= 5.5  # at worst a refresh late (and a loaded host)
        # A fresh Session learns the gateway on these few ids (its scouts and probes are a
        # good share of a dozen waits); beside a plain 3 s loop's polls:
        plain = sum(math.ceil((fake.shows_final_at(i) - start) / 3.0) + 1 for i in ids)
        assert sum(fake.polls.values()) <= 1.5 * plain


async def _waited_behind_rows(
    count: int, seed: int, wait: Callable[[deerluma.Session, list[str]], Awaitable[None]]
) -> tuple[FakeDeerAPI, list[str]]:
    """`count` generations of 20-60 s behind new-api's poller (15 s rest, 0.05 s between
    rows), waited on by `wait` with a fresh Session, in scaled time."""
    clock = ScaledClock(40)
    async with FakeDeerAPI(clock=clock, refresh=15.0, refresh_gap=0.05) as fake:
        rng = random.Random(seed)
        ids = [
            fake.add_generation(duration=rng.uniform(20, 60), estimate_bias=rng.uniform(0.8, 1.2))
            for _ in range(count)
        ]
        async with deerluma.Session(
            api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep
        ) as s:
            await wait(s, ids)
    return fake, ids


async def test_a_batch_behind_refreshed_rows_goes_quiet_while_they_rest() -> None:
    # 120 ids: passes of up to 6 s, then 15 s rests. Waits whose rows showed a pass hold
    # their looks while the watch sees no new one (without: 12-13 GETs a second of rest, and
    # 9 a task).
    async def batch(s: deerluma.Session, ids: list[str]) -> None:
        results = [result async for result in s.as_completed(ids)]
        assert len(results) == 120 and all(result.ok for result in results)

    fake, ids = await _waited_behind_rows(120, 7, batch)
    assert fake.rows is not None
    began, ends = fake.rows.began, [fake.shows_final_at(i) for i in ids]
    rests = [
        (start + sum(1 for end in ends if end >= start) * 0.05 + 0.5, after)
        for start, after in itertools.pairwise(began)
    ]
    gets = [r.at for r in fake.requests if r.method == "GET"]
    quiet = sum(1 for at in gets for low, high in rests if low <= at < high)
    assert quiet / sum(high - low for low, high in rests) <= 9.0
    assert sum(fake.polls.values()) / len(ids) <= 7.5


async def test_single_waits_behind_refreshed_rows_hold_their_looks_too() -> None:
    # 60 waits of their own, one Session: the waits' sleeps ask the engine before each GET
    # (without: about 7.8 GETs a wait here; a plain 3 s loop: about 16).
    async def each(s: deerluma.Session, ids: list[str]) -> None:
        done = await asyncio.gather(*(s.wait_until_completed(i) for i in ids))
        assert all(g.is_completed for g in done)

    fake, ids = await _waited_behind_rows(60, 8, each)
    assert sum(fake.polls.values()) / len(ids) <= 7.0
    lags = sorted(fake.completed_at[i] - fake.shows_final_at(i) for i in ids)
    assert lags[len(lags) // 2] <= 1.5 and lags[-4] <= 3.5


async def test_a_deadline_behind_refreshed_rows_still_ends_with_a_last_look() -> None:
    clock = FakeClock()
    async with FakeDeerAPI(clock=clock, refresh=15.0) as fake:
        async with deerluma.Session(
            api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep
        ) as s:
            task_id = fake.add_generation(duration=120.0)
            with pytest.raises(deerluma.WaitTimeout) as caught:
                await s.wait_until_completed(task_id, timeout=40.0)
        assert 39.0 <= clock() - 1000.0 <= 40.0 + 1e-6
        assert caught.value.last is not None


async def test_a_user_who_says_live_gets_no_row_learning() -> None:
    clock = FakeClock()
    async with FakeDeerAPI(clock=clock) as fake:
        async with deerluma.Session(
            api_key=fake.api_key,
            base_url=fake.url,
            clock=clock,
            sleep=clock.sleep,
            policy=PollPolicy(refresh="live"),
        ) as s:
            task_id = fake.add_generation(duration=40.0)
            await s.wait_until_completed(task_id)
        assert fake.polls[task_id] <= 6  # the estimate, trusted as live


def test_fake_refuses_a_refresh_that_is_no_period() -> None:
    with pytest.raises(ValueError, match="refresh"):
        FakeDeerAPI(refresh=0)
    with pytest.raises(ValueError, match="refresh_gap"):
        FakeDeerAPI(refresh=15, refresh_gap=-1)


def test_a_sync_session_shows_what_it_learned_of_its_gateway() -> None:
    with (
        FakeDeerAPI().in_thread() as fake,
        deerluma.SyncSession(api_key=fake.api_key, base_url=fake.url) as s,
    ):
        assert s.gateway.kind == "unknown" and s.gateway.period is None


async def test_a_look_held_by_the_rate_gate_counts_from_when_it_went_out() -> None:
    # A row is seen as of when its GET reached the gateway: a look the gate held back brackets
    # a refresh from then, not from when the wait asked.
    clock = FakeClock()
    async with (
        FakeDeerAPI(clock=clock) as fake,
        deerluma.Session(
            api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep, max_rps=1.0
        ) as s,
    ):
        task_id = fake.add_generation(duration=100.0)
        await s.get_generation(task_id)
        await s.get_generation(task_id)
        asked = clock()
        await s.get_generation(task_id)  # the gate holds it about a second
        assert request_sent.get() >= asked + 0.5


@settings(max_examples=500, deadline=None)
@example(  # looks at the same instant: a period of zero was measured, then divided by
    [
        (0.0, 0.0, "processing", None),
        (0.0, 0.0, "pending", None),
        (0.0, 0.0, "processing", None),
        (0.0, 1.0, "pending", None),
    ],
    None,
)
@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 40.0),  # seconds to the next look
            st.floats(0.0, 3.0),  # how late its answer comes
            st.sampled_from(["pending", "processing", "queued", "dreaming", "weird"]),
            st.one_of(st.none(), st.integers(0, 400).map(float)),  # the estimate, up or down
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([None, 5.0, 15.0, "live"]),
)
def test_any_answers_give_a_finite_next_look(looks: list[tuple], refresh: object) -> None:
    # Rows that jump back and forth, estimates that go up, answers that come late, states
    # nobody knows: the engine always names a sleep, never a crash or a negative one.
    rows = RowClock()
    for _ in range(3):
        rows.sign(START, True)  # a Session that believes its gateway serves rows
    policy = PollPolicy(timeout=None, refresh=refresh)  # type: ignore[arg-type]
    engine = Engine(policy, START, random.Random(0), TimingHistory(), rows=rows)
    tracker: PollTracker | None = None
    now = START
    for gap, late, state, estimate in looks:
        sent = now + gap
        now = sent + late
        generation = Generation(
            id="t",
            state=GenerationState(state) if state != "weird" else GenerationState.UNKNOWN,
            estimate_wait_seconds=estimate,
        )
        step, tracker = engine.seen(tracker, "t", now, generation, sent)
        assert step.verdict is Verdict.SLEEP
        assert 0.0 <= step.delay <= policy.max_interval and math.isfinite(step.delay)


def test_an_estimate_that_goes_up_is_no_measure_of_how_fast_it_falls() -> None:
    rows, track = RowClock(), RowTrack()
    track.look(rows, Look(0.0, 0.1, ("processing", 40.0, None), 40.0), 15.0)
    track.look(rows, Look(3.0, 3.1, ("processing", 40.0, None), 40.0), 15.0)
    track.look(rows, Look(4.0, 4.1, ("processing", 25.0, None), 25.0), 15.0)  # placed
    track.look(rows, Look(18.9, 19.0, ("processing", 25.0, None), 25.0), 15.0)
    # Queued again upstream: the row comes back with a longer wait (by one second, which
    # measured as a fall of nothing: the earliest end was divided by zero).
    track.look(rows, Look(19.5, 19.6, ("processing", 26.0, None), 26.0), 15.0)
    assert track.refreshed_at is not None
    assert track.fastest(0.3) == pytest.approx(1.3)
