"""The policy's validation and one wait's pacing (PollTracker), as pure arithmetic."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import pytest

from deerluma import (
    Generation,
    GenerationState,
    NotFoundError,
    RateLimitError,
    ServerError,
)
from deerluma._engine import PollTracker
from deerluma._policy import PollPolicy


def _gen(estimate: float | None) -> Generation:
    return Generation(id="t", state=GenerationState.PROCESSING, estimate_wait_seconds=estimate)


def _simulate(
    duration: float, bias: float, policy: PollPolicy, *, hinted: bool = True, seed: int = 0
) -> tuple[int, float]:
    """Polls used and detection lag for one task, as a server with whole-second estimates."""
    now, polls = 0.0, 0
    tracker = PollTracker(policy, now, random.Random(seed))
    while True:
        polls += 1
        if now >= duration:
            return polls, now - duration
        estimate = round((duration - now) * bias) if hinted else None
        tracker.observe(now, _gen(estimate))
        now += tracker.next_delay(now)


@pytest.mark.parametrize("bias", [0.7, 0.85, 1.0, 1.15, 1.3])
@pytest.mark.parametrize("duration", [3.0, 5.5, 9.0, 20.0, 37.3, 60.0, 240.0])
def test_hinted_wait_notices_completion_within_one_interval(bias: float, duration: float) -> None:
    policy = PollPolicy()
    polls, lag = _simulate(duration, bias, policy)
    assert 0 <= lag <= policy.min_interval
    assert polls <= 7


def test_hinted_wait_uses_far_fewer_polls_than_a_fixed_loop() -> None:
    rng = random.Random(7)
    ours = naive = 0
    for seed in range(300):
        duration, bias = rng.uniform(20, 60), rng.uniform(0.7, 1.3)
        ours += _simulate(duration, bias, PollPolicy(), seed=seed)[0]
        naive += int(duration // 3) + 2
    assert ours < 0.35 * naive


def test_unhinted_wait_with_nothing_learned_polls_like_a_plain_loop() -> None:
    policy = PollPolicy()
    for seed in range(50):
        polls, lag = _simulate(20 + seed, 1.0, policy, hinted=False, seed=seed)
        assert lag <= policy.unhinted_interval
        assert polls == math.ceil((20 + seed) / policy.unhinted_interval) + 1


def test_without_estimate_or_history_the_next_poll_is_one_plain_interval_away() -> None:
    policy = PollPolicy()
    tracker = PollTracker(policy, 100.0, random.Random(0))
    tracker.observe(100.0, _gen(None))
    assert tracker.next_delay(100.0) == policy.unhinted_interval


def test_first_estimate_sleeps_to_its_earliest_plausible_end_plus_one_interval() -> None:
    policy = PollPolicy(jitter=0)
    tracker = PollTracker(policy, 0.0, random.Random(0))
    tracker.observe(0.0, _gen(40))
    assert tracker.next_delay(0.0) == pytest.approx(39.5 / 1.3 + policy.min_interval)


def test_learned_bias_moves_the_next_poll_to_the_true_end() -> None:
    policy = PollPolicy(jitter=0)
    tracker = PollTracker(policy, 0.0, random.Random(0))
    tracker.observe(0.0, _gen(28))  # the server says 28 s, but it is 40 s away (bias 0.7)
    tracker.observe(20.0, _gen(14))
    delay = tracker.next_delay(20.0)
    assert 20.0 + delay == pytest.approx(40.0, abs=1.5)


def test_estimate_going_up_restarts_learning() -> None:
    policy = PollPolicy(jitter=0)
    tracker = PollTracker(policy, 0.0, random.Random(0))
    tracker.observe(0.0, _gen(10))
    tracker.observe(5.0, _gen(30))  # requeued: the old slope means nothing
    assert tracker.next_delay(5.0) == pytest.approx(29.5 / 1.3 + policy.min_interval)


def test_sleeps_are_capped_and_jitter_only_shortens_them() -> None:
    policy = PollPolicy(max_interval=20, jitter=0.2)
    tracker = PollTracker(policy, 0.0, random.Random(3))
    tracker.observe(0.0, _gen(3600))
    delays = [tracker.next_delay(0.0) for _ in range(200)]
    assert all(16.0 <= d <= 20.0 for d in delays)
    assert len(set(delays)) > 100


def test_error_delay_grows_with_faults_and_leaves_429s_to_the_rate_gate() -> None:
    policy = PollPolicy(jitter=0, max_consecutive_errors=3)
    tracker = PollTracker(policy, 0.0, random.Random(0))
    busy = ServerError(502, message="bad gateway")
    assert not tracker.record_error(busy)
    first = tracker.error_delay(busy)
    assert not tracker.record_error(busy)
    assert not tracker.record_error(busy)
    assert tracker.error_delay(busy) == 4 * first
    slow = RateLimitError(429, message="slow", retry_after=30.0)
    assert not any(tracker.record_error(slow) for _ in range(10))  # 429s never use up the budget
    assert tracker.error_delay(slow) == policy.min_interval  # the gate holds the next one back
    assert tracker.record_error(busy)  # the fourth fault in a row: give up


def test_a_client_error_gives_up_at_once() -> None:
    tracker = PollTracker(PollPolicy(), 0.0, random.Random(0))
    assert tracker.record_error(NotFoundError(404, message="no such task"))


def test_policy_accepts_timedelta_and_rejects_nonsense() -> None:
    assert PollPolicy(timeout=timedelta(minutes=2)).timeout == 120.0
    assert PollPolicy(timeout=None).timeout is None
    with pytest.raises(ValueError, match="hint_error"):
        PollPolicy(hint_error=1.5)
    with pytest.raises(ValueError, match="min_interval"):
        PollPolicy(min_interval=0)
    # Zero and below say the same thing; a bool is no length of time.
    for nonsense in (-1, 0):
        with pytest.raises(ValueError, match="timeout must be more than 0 seconds"):
            PollPolicy(timeout=nonsense)
    with pytest.raises(TypeError, match="timeout must be a number of seconds"):
        PollPolicy(timeout=True)
    with pytest.raises(ValueError, match="initial_delay must be 0 or more seconds"):
        PollPolicy(initial_delay=-1)


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"max_interval": 0}, "max_interval must be more than 0 seconds"),
        ({"unhinted_interval": 0}, "unhinted_interval must be more than 0 seconds"),
        ({"learned_interval": 0}, "learned_interval must be more than 0 seconds"),
        ({"min_interval": 5, "max_interval": 2}, "must not exceed max_interval"),
        ({"timeout": 0}, "timeout must be more than 0 seconds"),
        ({"timeout": float("inf")}, "None: no deadline"),
        ({"unhinted_interval": float("inf")}, "finite"),
        ({"initial_delay": float("nan")}, "initial_delay must be a finite number"),
        ({"expected_duration": 0}, "expected_duration must be more than 0 seconds"),
        ({"max_consecutive_errors": -1}, "whole number"),
        ({"max_consecutive_errors": 1.5}, "whole number"),
    ],
)
def test_policy_refuses_values_that_would_busy_loop_or_never_end(
    fields: dict[str, float], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        PollPolicy(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("estimate", [float("nan"), float("inf"), -5.0])
def test_nonsense_estimates_never_make_a_nonsense_sleep(estimate: float) -> None:
    policy = PollPolicy()
    tracker = PollTracker(policy, 0.0, random.Random(0))
    tracker.observe(0.0, _gen(estimate))
    delay = tracker.next_delay(0.0)
    assert 0 < delay <= policy.max_interval


def test_a_real_created_at_dates_the_generation() -> None:
    from datetime import UTC, datetime, timedelta

    created = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    now_wall = created + timedelta(minutes=5)
    tracker = PollTracker(PollPolicy(), 100.0, random.Random(0), wall=lambda: now_wall)
    tracker.observe(100.0, Generation(id="t", state=GenerationState.PROCESSING, created_at=created))
    assert tracker.origin == pytest.approx(100.0 - 300.0)


def test_a_server_clock_ahead_of_ours_never_makes_a_generation_younger_than_its_wait() -> None:
    from datetime import UTC, datetime, timedelta

    now_wall = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    tracker = PollTracker(PollPolicy(), 100.0, random.Random(0), wall=lambda: now_wall)
    future = Generation(
        id="t", state=GenerationState.PENDING, created_at=now_wall + timedelta(minutes=1)
    )
    tracker.observe(100.0, future)
    assert tracker.origin == 100.0
