"""The poll engine's step and the timing history, with plain numbers: no I/O, no clock."""

from __future__ import annotations

import itertools
import random

import pytest

from deerluma import Generation, GenerationState, PollPolicy, ServerError, WaitTimeout
from deerluma._engine import Engine, Step, Verdict
from deerluma._history import TimingHistory, plan_unhinted
from deerluma.exceptions import DeadlineExceeded, GenerationFailed, NotFoundError


def _gen(state: GenerationState = GenerationState.PROCESSING) -> Generation:
    return Generation(id="t", state=state)


def _engine(
    policy: PollPolicy | None = None, history: TimingHistory | None = None, started: float = 0.0
) -> Engine:
    return Engine(policy or PollPolicy(), started, random.Random(0), history)


def _learned(durations: list[float]) -> TimingHistory:
    history = TimingHistory()
    history.seed(durations)
    return history


def _poll_until_done(engine: Engine, duration: float) -> tuple[list[float], Step]:
    """Drive one task through the engine as a server finishing at `duration` would answer."""
    now, tracker, times = engine.started + engine.first_delay(may_skip=True), None, []
    while True:
        times.append(now - engine.started)
        state = GenerationState.COMPLETED if now - engine.started >= duration else None
        step, tracker = engine.seen(tracker, "t", now, _gen(state or GenerationState.PROCESSING))
        if step.verdict is not Verdict.SLEEP:
            return times, step
        now += step.delay


# -- the step --------------------------------------------------------------------


def test_a_terminal_answer_is_done_and_a_failed_one_carries_generation_failed() -> None:
    engine = _engine()
    step, tracker = engine.seen(None, "t", 0.0, _gen(GenerationState.COMPLETED))
    assert step.verdict is Verdict.DONE and step.result is not None and tracker is None
    step, _ = engine.seen(None, "t", 0.0, _gen(GenerationState.FAILED))
    assert step.verdict is Verdict.DONE and isinstance(step.error, GenerationFailed)
    assert step.emit is not None  # a watcher hears the failed state too


def test_an_unchanged_answer_is_not_emitted_again() -> None:
    engine = _engine()
    first, tracker = engine.seen(None, "t", 0.0, _gen())
    second, _ = engine.seen(tracker, "t", 3.0, _gen())
    assert first.emit is not None and second.emit is None
    assert second.verdict is Verdict.SLEEP


def test_a_fault_no_retry_can_fix_gives_up_with_it() -> None:
    missing = NotFoundError(404, message="no such task")
    step, _ = _engine().failed(None, "t", 0.0, missing)
    assert step.verdict is Verdict.GIVE_UP and step.error is missing


def test_transient_faults_back_off_until_too_many_in_a_row() -> None:
    engine = _engine(PollPolicy(max_consecutive_errors=2, jitter=0))
    busy = ServerError(502, message="bad gateway")
    delays, tracker = [], None
    for _ in range(3):
        step, tracker = engine.failed(tracker, "t", 0.0, busy)
        delays.append(step.delay)
    assert delays[:2] == [0.9, 1.8]
    assert step.verdict is Verdict.GIVE_UP and step.error is busy


def test_the_last_poll_comes_just_before_the_deadline_and_then_wait_timeout() -> None:
    engine = _engine(PollPolicy(timeout=10))
    times, step = _poll_until_done(engine, duration=10_000)
    assert times[-1] == pytest.approx(9.5)  # 0, 3, 6, 9, then the deadline's own poll
    assert times == pytest.approx([0.0, 3.0, 6.0, 9.0, 9.5])
    assert step.verdict is Verdict.GIVE_UP and isinstance(step.error, WaitTimeout)
    assert step.error.last is not None


@pytest.mark.parametrize("duration", [4.0, 9.2, 9.5])
def test_a_generation_done_before_the_last_poll_is_never_reported_as_timed_out(
    duration: float,
) -> None:
    engine = _engine(PollPolicy(timeout=10))
    _, step = _poll_until_done(engine, duration)
    assert step.verdict is Verdict.DONE


def test_initial_delay_is_cut_short_by_the_deadline() -> None:
    engine = _engine(PollPolicy(initial_delay=20, timeout=2))
    assert engine.first_delay() == pytest.approx(2 - 0.1)


def test_deadline_exceeded_during_a_poll_is_a_wait_timeout_with_the_last_state() -> None:
    engine = _engine(PollPolicy(timeout=60))
    _, tracker = engine.seen(None, "t", 0.0, _gen())
    step, _ = engine.failed(tracker, "t", 59.0, DeadlineExceeded("rate limit"))
    assert isinstance(step.error, WaitTimeout) and step.error.last is not None


# -- learning ----------------------------------------------------------------------


def test_with_history_a_wait_skips_the_ages_where_nothing_finishes() -> None:
    history = _learned([20.0 + i * 0.4 for i in range(100)])  # 20 to 60 s
    times, step = _poll_until_done(_engine(history=history), duration=41.0)
    assert step.verdict is Verdict.DONE
    assert times[0] == 0.0
    assert times[1] == pytest.approx(20.0 + 2.5)  # one interval past the earliest finish
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    assert all(gap == pytest.approx(PollPolicy().learned_interval) for gap in gaps)
    assert times[-1] - 41.0 <= PollPolicy().learned_interval


def test_a_skip_that_overshot_comes_back_down() -> None:
    # The first finishes seen were late by chance (24 s and up); generations really take 20 to
    # 60 s. A wait found done at its first poll after the skip says little of when it finished:
    # taken as "after the skipped ages", every such wait would confirm the overshoot.
    history = _learned([24.0 + i * 0.4 for i in range(100)])
    for _ in range(10):
        history.first_look(finished=False)
    rng, lags = random.Random(1), []
    for i in range(300):
        duration = rng.uniform(20, 60)
        times, _ = _poll_until_done(_engine(history=history, started=100.0 * i), duration)
        lags.append(times[-1] - duration)
    plan = history.plan(30_000.0, PollPolicy().learned_interval)
    assert plan is not None and plan.early < 22.5  # it stayed at 24.0 when confirmed
    assert sorted(lags[-100:])[94] < 3.0  # 4.9 s then: the 20-24 s ones were seen late


def test_learning_off_ignores_the_history() -> None:
    history = _learned([20.0 + i * 0.4 for i in range(100)])
    times, _ = _poll_until_done(_engine(PollPolicy(learn=False), history), duration=12.0)
    assert times == pytest.approx([0.0, 3.0, 6.0, 9.0, 12.0])


def test_expected_duration_is_a_prior_for_a_session_with_no_history() -> None:
    policy = PollPolicy(expected_duration=40)  # ±30 %: 28 to 52 s
    times, _ = _poll_until_done(_engine(policy, TimingHistory()), duration=35.0)
    assert times[:2] == pytest.approx([0.0, 28.0 + policy.learned_interval])
    assert times[-1] - 35.0 <= policy.learned_interval


def test_a_completed_wait_feeds_the_history_with_the_bounds_it_saw() -> None:
    history = TimingHistory()
    engine = _engine(history=history)
    _, tracker = engine.seen(None, "t", 0.0, _gen())
    _, tracker = engine.seen(tracker, "t", 3.0, _gen())
    assert len(history) == 0 and history.running == 1
    engine.seen(tracker, "t", 6.0, _gen(GenerationState.COMPLETED))
    assert history.durations == [4.5] and history.running == 0


def test_a_wait_that_ends_without_completing_teaches_nothing() -> None:
    history = TimingHistory()
    engine = _engine(PollPolicy(timeout=5), history)
    _poll_until_done(engine, duration=10_000)
    assert len(history) == 0 and history.running == 0


def test_the_history_is_bounded() -> None:
    history = TimingHistory(size=3)
    history.seed([1, 2, 3, 4, 5])
    assert history.durations == [3.0, 4.0, 5.0]
    history.clear()
    assert len(history) == 0
    with pytest.raises(ValueError, match="size"):
        TimingHistory(size=0)


def test_waits_that_begin_with_their_generations_skip_the_first_poll() -> None:
    history = _learned([20.0 + i * 0.4 for i in range(100)])
    for _ in range(10):
        history.first_look(finished=False)
    assert history.waits_start_young
    assert _engine(history=history).first_delay(may_skip=True) == pytest.approx(22.5)
    assert _engine(history=history).first_delay() == 0.0  # a batch looks at once
    history.first_look(finished=True)  # one wait on an old task in eleven: look at once again
    assert not history.waits_start_young


# -- the estimate ------------------------------------------------------------------


def test_plan_is_none_until_anything_was_seen_finishing() -> None:
    assert plan_unhinted([], [], now=100.0) is None


def test_plan_reads_where_finishes_begin_and_end() -> None:
    durations = [10.0 + i * 0.1 for i in range(101)]  # 10 to 20 s, evenly
    early, late, known = plan_unhinted(durations, [], now=0.0) or (0, 0, 0)
    assert early == pytest.approx(10.5, abs=0.11)
    assert late == pytest.approx(19.5, abs=0.11)
    assert known == late


def test_running_waits_count_as_still_unfinished_at_their_age() -> None:
    # Ten finished between 10 and 11 s, while ninety waits began 30 s ago and still run:
    # generations take longer than the finished ones alone suggest.
    durations = [10.0 + i * 0.1 for i in range(10)]
    running = [70.0] * 90
    plan = plan_unhinted(durations, running, now=100.0)
    assert plan is not None
    early, late, _ = plan
    assert early < 11.0
    assert late == float("inf")  # 95 % are not seen finishing: the history does not reach


def test_a_cohort_started_together_is_all_at_the_frontier() -> None:
    history = TimingHistory()
    history.seed([20.0 + i * 0.1 for i in range(10)])
    for _ in range(90):
        history.begin(0.0)  # ninety waits, all 25 s old
    plan = history.plan(25.0, step=2.5)
    assert plan is not None and plan.frontier == 1.0
