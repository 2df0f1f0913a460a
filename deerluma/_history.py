"""How long this Session's generations take: a bounded record, and the next poll it suggests.

`plan_unhinted` is pure: it reads sorted numbers and returns ages, so tests
drive it with plain lists.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ._policy import Seconds, to_seconds

__all__ = ["Plan", "TimingHistory", "plan_unhinted"]

#: Below this many generations at risk, a survival estimate is noise: stop reading it there.
_MIN_AT_RISK = 4
#: The share of completions a schedule may notice late: lag is judged at p95.
_EDGE = 0.05
#: First polls that must have found generations still running before a first poll is skipped.
_YOUNG_EVIDENCE = 10
#: A skip assumes that nothing finishes younger than the age it skipped to. A generation found
#: finished at the first poll after a skip is recorded as finishing after this share less than
#: that age: else a skip that overshot (the first few finishes seen were late by chance) would
#: be confirmed by every wait after it, and never come back down.
_SKIP_SLACK = 0.05


class Plan(NamedTuple):
    """What the history says about ages at which generations finish."""

    #: By this age 5 % have finished: nothing need be polled younger.
    early: float
    #: By this age 95 % have finished (inf: the history does not reach that far).
    late: float
    #: The age up to which the history holds.
    known: float
    #: The share of running waits within one poll of `known` or past it (at the frontier).
    frontier: float

    @property
    def floor(self) -> float:
        """The age after which a generation found finished at the first poll after a skip to
        `early` is recorded as finishing (see `_SKIP_SLACK`)."""
        return self.early * (1 - _SKIP_SLACK)


class TimingHistory:
    """How long this Session's generations took, and the ages of those it still waits on.

    Every wait and batch of a Session feeds one history and reads it: a
    finished generation adds its duration (from ``created_at`` when the
    server sends a real one, else from when waiting began); a wait in progress
    counts as "still running at this age", so generations that are still
    running pull the picture towards longer durations instead of being ignored.
    Bounded: only the latest `size` durations are kept.
    """

    def __init__(self, size: int = 512) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size!r}")
        # (lower, upper): seen running at age `lower`, seen finished at age `upper`
        self._done: deque[tuple[float, float]] = deque(maxlen=size)
        self._sorted: tuple[list[float], list[float], float] | None = None
        self._origins: list[float] = []  # clock times at which running waits' generations began
        self._first_looks = [0, 0]  # first polls that found the generation [running, finished]

    def __len__(self) -> int:
        return len(self._done)

    def __repr__(self) -> str:
        return f"TimingHistory({len(self._done)} durations, {len(self._origins)} running)"

    def seed(self, durations: Iterable[Seconds]) -> None:
        """Add durations known from elsewhere (an earlier run, say) as if seen finishing."""
        for duration in durations:
            seconds = to_seconds(duration)
            self.record(seconds, seconds)

    def clear(self) -> None:
        """Forget every duration (waits in progress are still counted)."""
        self._done.clear()
        self._sorted = None

    @property
    def running(self) -> int:
        """How many waits are in progress (their generations count as unfinished so far)."""
        return len(self._origins)

    @property
    def durations(self) -> list[float]:
        """The recorded durations in seconds (each its bounds' midpoint), shortest first."""
        return sorted((lower + upper) / 2 for lower, upper in self._done)

    def record(self, lower: float, upper: float) -> None:
        """A generation finished between the ages `lower` and `upper`."""
        if 0 <= lower <= upper:
            self._done.append((lower, upper))
            self._sorted = None

    def _bounds(self) -> tuple[list[float], list[float], float]:
        """Lower bounds and upper bounds, sorted, and the earliest midpoint."""
        if self._sorted is None:
            if not self._done:
                return [], [], math.inf
            self._sorted = (
                sorted(lower for lower, _ in self._done),
                sorted(upper for _, upper in self._done),
                min((lower + upper) / 2 for lower, upper in self._done),
            )
        return self._sorted

    def first_look(self, finished: bool) -> None:
        """A wait's first poll found the generation finished (or not)."""
        self._first_looks[finished] += 1

    @property
    def waits_start_young(self) -> bool:
        """Whether this Session's waits begin as their generations do (right after creating them).

        Then a first poll at age zero finds nothing and can be skipped; one
        wait on an old task in twenty is enough to keep it.
        """
        running, finished = self._first_looks
        return running >= _YOUNG_EVIDENCE and finished * 20 <= running

    def begin(self, origin: float) -> None:
        """A wait on a generation that began at clock time `origin` is in progress."""
        bisect.insort(self._origins, origin)

    def end(self, origin: float) -> None:
        """That wait is over (finished, given up or cancelled)."""
        index = bisect.bisect_left(self._origins, origin)
        if index < len(self._origins) and self._origins[index] == origin:
            del self._origins[index]

    def plan(self, now: float, step: float) -> Plan | None:
        """Where finishes begin and end, at clock time `now`, for polls `step` seconds apart.

        `early` is read off the bounds each generation was last seen running
        at, `late` and `known` off those it was first seen finished at, so
        that polls too sparse to say when a generation finished err towards
        looking early rather than late. See `plan_unhinted`.
        """
        lowers, uppers, earliest = self._bounds()
        start = plan_unhinted(lowers, self._origins, now)
        end = plan_unhinted(uppers, self._origins, now)
        if start is None or end is None:
            return None
        known = end[2]
        # Running waits whose next poll would land past anything seen finish: a stream's
        # first few, or (a batch started at once) all of them.
        older = bisect.bisect_right(self._origins, now - (known - step / 4))
        # The earliest finish seen bounds `early`: after a skip, polls only ever see later
        # ones, so a skip that overshoots must not teach the next to overshoot further.
        early = min(start[0], earliest)
        return Plan(early, end[1], known, older / max(1, len(self._origins)))


def plan_unhinted(
    durations: Sequence[float],
    running_origins: Sequence[float],
    now: float,
) -> tuple[float, float, float] | None:
    """Where the history says generations finish: ``(early, late, known)`` ages, or None.

    A Kaplan-Meier estimate over the finished `durations` (sorted), with the
    waits still running (their generations began at the sorted clock times
    `running_origins`; `now` is the clock) counted as censored: they lasted at
    least their age so far, so a batch of slow generations is not mistaken for
    a fast one by its first finishers. `early` and `late` are the ages by
    which 5 % and 95 % have finished (`late` is ``inf`` where the history does
    not reach that far); `known` is the age up to which the estimate holds.
    None when too little is known to place even the first 5 %.
    """
    total = len(durations)
    survival = 1.0
    early = late = None
    known = 0.0
    for index, duration in enumerate(durations):
        at_risk = total - index + bisect.bisect_right(running_origins, now - duration)
        if at_risk < _MIN_AT_RISK:
            break
        survival *= 1.0 - 1.0 / at_risk
        known = duration
        if early is None and survival <= 1.0 - _EDGE:
            early = duration
        if survival <= _EDGE:
            late = duration
            break
    if early is None:
        return None
    return early, math.inf if late is None else late, known
