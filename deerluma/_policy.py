"""The polling policy: when to ask again, as data plus pure arithmetic.

Kept free of I/O so that tests drive it with plain numbers and a fake clock.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import attrs

from ._models import Generation
from .exceptions import RateLimitError, is_transient

__all__ = ["PollPolicy", "PollTracker", "Seconds", "to_seconds"]

Seconds = float | timedelta


def to_seconds(value: Seconds) -> float:
    """Accept a float of seconds or a timedelta."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds != seconds or seconds < 0:
        raise ValueError(f"a duration must be a non-negative number, got {value!r}")
    return seconds


def _optional_seconds(value: Seconds | None) -> float | None:
    return None if value is None else to_seconds(value)


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How `wait_until_completed` paces its polls; override any field per Session or per call.

    With a server estimate it sleeps until the earliest moment the generation
    could be done (the estimate may be off by `hint_error` either way), learns
    the estimate's bias from how it falls between polls, then closes in every
    `min_interval`. Without one it waits `settle_time`, then polls every
    `unhinted_interval`, which keeps detection lag below a fixed 3 s loop's.
    """

    #: Overall deadline in seconds (None: wait forever).
    timeout: float | None = attrs.field(default=900.0, converter=_optional_seconds)
    #: Pause before the first poll.
    initial_delay: float = attrs.field(default=0.0, converter=to_seconds)
    #: Spacing of polls once completion is due: bounds how late completion is noticed.
    min_interval: float = attrs.field(default=0.9, converter=to_seconds)
    #: The longest single sleep, whatever the estimate says.
    max_interval: float = attrs.field(default=60.0, converter=to_seconds)
    #: Spacing of polls when the server gives no estimate.
    unhinted_interval: float = attrs.field(default=2.8, converter=to_seconds)
    #: Without an estimate, no poll between the first and this many seconds of waiting.
    settle_time: float = attrs.field(default=15.0, converter=to_seconds)
    #: How far off `estimate_wait_seconds` may be, as a fraction (0.3 = ±30 %).
    hint_error: float = attrs.field(default=0.3)
    #: Sleeps are shortened by up to this fraction at random, so waiters never align.
    jitter: float = attrs.field(default=0.1)
    #: Polls failing in a row (after each request's own retries) before giving up.
    max_consecutive_errors: int = attrs.field(default=5)

    @hint_error.validator
    @jitter.validator
    def _fraction(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not 0 <= value < 1:
            raise ValueError(f"{attribute.name} must be in [0, 1), got {value!r}")

    @min_interval.validator
    def _positive(self, attribute: attrs.Attribute[float], value: float) -> None:
        if value <= 0:
            raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _utcnow() -> datetime:
    return datetime.now(UTC)


#: Bounds for the learned rate at which the estimate falls per real second.
_MIN_RATE = 0.2
_MAX_RATE = 5.0


class PollTracker:
    """What one waiter has seen so far, and from it, how long to sleep next."""

    __slots__ = ("_aged", "_anchor", "_last", "_rng", "_wall", "errors", "policy", "started")

    def __init__(
        self,
        policy: PollPolicy,
        started: float,
        rng: random.Random,
        wall: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.policy = policy
        self.started = started
        self.errors = 0
        self._rng = rng
        self._wall = wall
        self._aged = False
        self._anchor: tuple[float, float] | None = None
        self._last: tuple[float, float] | None = None

    def observe(self, now: float, generation: Generation) -> None:
        """Record a successful poll."""
        self.errors = 0
        if not self._aged and generation.created_at is not None:
            # A task created long ago is past its settle time already: count from
            # its creation, not from when we started waiting (skew only shortens it).
            self._aged = True
            age = (self._wall() - generation.created_at).total_seconds()
            if age > 0:
                self.started = min(self.started, now - age)
        estimate = generation.estimate_wait_seconds
        if estimate is None:
            self._anchor = self._last = None
            return
        point = (now, max(0.0, estimate))
        if self._anchor is None or point[1] > self._anchor[1]:
            self._anchor = point  # first estimate, or it went up: start learning afresh
        self._last = point

    def _fastest_rate(self) -> float:
        """The highest plausible speed at which the estimate runs down, per real second."""
        fastest = 1.0 + self.policy.hint_error
        if self._anchor is None or self._last is None:
            return fastest
        (t0, e0), (t1, e1) = self._anchor, self._last
        span = t1 - t0
        if span < self.policy.min_interval or e0 <= e1:
            return fastest
        rate = min(_MAX_RATE, max(_MIN_RATE, (e0 - e1) / span))
        return rate + 1.0 / span  # whole-second estimates: ±0.5 at each end

    def next_delay(self, now: float) -> float:
        """Seconds to sleep before the next poll, jittered and clamped."""
        policy = self.policy
        if self._last is not None:
            _, estimate = self._last
            earliest = max(0.0, estimate - 0.5) / self._fastest_rate()
            # A poll one interval after the earliest completion keeps the lag
            # within `min_interval` while saving the poll at the boundary.
            delay = earliest + policy.min_interval
        elif now - self.started < policy.settle_time:
            delay = max(policy.min_interval, self.started + policy.settle_time - now)
        else:
            delay = policy.unhinted_interval
        delay = min(delay, policy.max_interval) if math.isfinite(delay) else policy.min_interval
        return delay * (1.0 - policy.jitter * self._rng.random())

    def record_error(self, exc: BaseException) -> bool:
        """Count a failed poll; True when the waiter should give up and report `exc`."""
        self.errors += 1
        return not is_transient(exc) or self.errors > self.policy.max_consecutive_errors

    def error_delay(self, exc: BaseException | None = None) -> float:
        """Seconds to sleep after a failed poll (its request's own retries included).

        Grows with each failure in a row; a 429's Retry-After overrides it.
        """
        policy = self.policy
        backoff = min(policy.max_interval, policy.min_interval * 2.0 ** max(0, self.errors - 1))
        delay = backoff * (1.0 - policy.jitter * self._rng.random())
        retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
        return max(delay, retry_after or 0.0)
