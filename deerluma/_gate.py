"""One rate gate per Session: it owns every pause, and learns the API's rate limit from 429s.

The shape is botocore's adaptive retry mode and TCP's congestion control: a
client-side token rate, spaced evenly; a slow start that grows it while the
Session wants more and the server has not objected; on a 429, a
multiplicative cut from the rate the server actually accepted lately (once
per congestion: 429s for requests sent before the cut, or within a moment of
it, do not cut again), then a CUBIC regrowth towards that rate. Two Sessions
sharing a key each back off on their own 429s and so settle to a fair share
(AIMD). A ``max_rps`` given by the user is a hard cap on top.

Two measurements keep the 429s few where the server allows bursts (a token
bucket holding a second's worth, say). Slow start grows the rate by half, once
every eight round trips, so when the bucket runs dry the rate is not far past
the limit and only a few requests are in flight to meet it. And from the
second cut on, the rate is what the server took between two 429s: its bucket
was empty at both, so the refills after a Retry-After pause, and the bursts
that drained them, are all counted.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import math
from collections.abc import Awaitable, Callable

import attrs

from .exceptions import DeadlineExceeded

__all__ = ["RateGate", "RateView"]

#: The rate a new Session starts at, in requests per second (no crawl: most limits are higher).
_START = 50.0
#: The bucket holds this many seconds' worth of requests: a few may go at once, the rest evenly.
_BURST = 0.2
#: Slow start grows the rate by `_GROWTH` once per `_ROUNDS` round trips (at least `_STEP`
#: seconds) of being held back by it without a 429: gentler than TCP's doubling per round
#: trip, because every request in flight when a server's burst allowance runs out comes
#: back a 429, and a far API has many in flight.
_STEP = 0.05
_ROUNDS = 8
_GROWTH = 1.5
#: Never below this rate, however many 429s: a trickle still finds out when the server recovers.
_FLOOR = 0.5
#: The multiplicative cut on a 429, and CUBIC's growth constant (botocore's values).
_BETA = 0.7
_CUBIC = 0.4
#: The send rate is measured over this window (seconds), or its last quarter when that holds
#: this many requests.
_WINDOW = 1.0
_ENOUGH = 8
#: Slow start reads the rate of successes off this many latest ones.
_LATEST = 32
#: After a cut, 429s within this many round trips are the same congestion (the requests sent
#: meanwhile met the same empty bucket); round trips are smoothed by this weight.
_SETTLE = 4
#: A cut measures what the server took since the previous cut when that was at most this
#: many seconds ago, and goes no deeper at once than this share of the rate (a Session that
#: sat out a Retry-After while others took the refill measures next to nothing).
_MEASURED = 10.0
_DEEPEST = 0.6
_SMOOTHING = 0.2
#: A whole token, give or take the rounding of clock arithmetic.
_ONE = 1.0 - 1e-9
#: A Retry-After longer than this is taken as this (a caller's deadline caps it further).
_MAX_PAUSE = 60.0


@attrs.frozen
class RateView:
    """What a Session's rate gate knows, for logs and progress displays."""

    #: The rate the gate lets requests through at now, per second.
    rps: float
    #: The user's hard cap (``Session(max_rps=...)``), or None when the rate is learned.
    max_rps: float | None
    #: How many 429 answers this Session has received.
    rate_limited: int
    #: True until the first 429: the rate grows by half every few round trips while the
    #: Session wants more.
    slow_start: bool


class RateGate:
    """Spaces requests to a learned (or capped) rate and holds everyone back after a 429."""

    def __init__(
        self,
        max_rps: float | None,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        if max_rps is not None and not (max_rps > 0 and math.isfinite(max_rps)):
            raise ValueError(f"max_rps must be a positive number, got {max_rps!r}")
        self._cap = max_rps
        self._clock = clock
        self._sleep = sleep
        self._rate = max_rps or _START
        self._slow_start = max_rps is None
        self._w_max = 0.0  # CUBIC: the rate that was too much
        self._k = 0.0  # CUBIC: seconds from a cut back to `_w_max`
        self._cut_at = -math.inf  # clock time of the last cut
        self._born = clock()
        self._grown_at = self._born  # clock time of the last slow-start step
        self._held_back = False  # a request waited for its slot since the last step
        self._tokens = self._rate * _BURST if self._slow_start else 1.0
        self._refilled_at = clock()
        self._paused_until = -math.inf
        self._sent: collections.deque[float] = collections.deque()  # send times, lately
        self._ok: collections.deque[float] = collections.deque()  # answer times of successes
        self._rtt = 0.0  # seconds from send to answer, smoothed
        self._served = 0  # successes, all told
        self._served_at_cut = 0  # ... when the last cut came
        self._queue: collections.deque[asyncio.Future[float]] = collections.deque()
        self._dispatcher: asyncio.Future[None] | None = None
        self.rate_limited = 0

    @property
    def view(self) -> RateView:
        """The current rate, cap and 429 count."""
        return RateView(self._rate, self._cap, self.rate_limited, self._slow_start)

    def try_pass(self) -> float | None:
        """Take a turn if one is free right now (no pause, no queue): the common case.

        Returns the send time to hand back with the answer, or None when the
        caller must `acquire`.
        """
        now = self._clock()
        if self._queue or now < self._paused_until or self._refill(now) < _ONE:
            self._held_back = True
            return None
        self._take(now)
        return now

    async def acquire(self, deadline: float | None = None) -> float:
        """Wait for this request's turn; raise DeadlineExceeded rather than wait past `deadline`.

        Returns the send time to hand back with the answer (see `answered`).
        Waiters queue in order; one dispatcher lets them through at the rate
        of the moment, so a cut (or a step up) applies to everyone queued.
        """
        turn = self.try_pass()
        if turn is not None:
            return turn
        now = self._clock()
        start = max(now, self._paused_until)
        self._check(start + (len(self._queue) + 1 - self._tokens) / self._rate, now, deadline)
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        if self._dispatcher is None:
            self._dispatcher = asyncio.ensure_future(self._dispatch())
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._tokens += 1.0  # granted as we were cancelled: give the turn back
            if not any(not w.done() for w in self._queue) and self._dispatcher is not None:
                self._dispatcher.cancel()
                self._dispatcher = None
            raise

    async def _dispatch(self) -> None:
        """Let queued waiters through, one token each, at the current rate and pauses."""
        queue = self._queue
        try:
            while queue:
                if queue[0].done():  # its caller was cancelled
                    queue.popleft()
                    continue
                now = self._clock()
                if now < self._paused_until:
                    await self._sleep(self._paused_until - now)
                    continue
                tokens = self._refill(now)
                if tokens < _ONE:
                    await self._sleep((1.0 - tokens) / self._rate)
                    continue
                self._take(now)
                queue.popleft().set_result(now)
        finally:
            if self._dispatcher is asyncio.current_task():
                self._dispatcher = None

    def _refill(self, now: float) -> float:
        """Tokens in the bucket at `now`: it refills at the rate, up to a fifth of a second's.

        Once a limit is known (the user's ``max_rps``, or a 429 seen) it holds
        one: requests are spread evenly, never sent in bursts.
        """
        capacity = max(1.0, self._rate * _BURST) if self._slow_start else 1.0
        self._tokens = min(capacity, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now
        return self._tokens

    def _take(self, slot: float) -> None:
        self._tokens -= 1.0
        _stamp(self._sent, slot)

    @staticmethod
    def _check(start: float, now: float, deadline: float | None) -> None:
        if deadline is not None and start > deadline:
            raise DeadlineExceeded(
                f"waiting {start - now:.1f}s for the rate limit would pass the deadline"
            )

    def _latest_rate(self) -> float:
        """Successes per second over the last few of them: quick to follow a ramp."""
        ok = self._ok
        if len(ok) < _ENOUGH:
            return 0.0
        first = ok[-min(len(ok), _LATEST)]
        return (min(len(ok), _LATEST) - 1) / max(ok[-1] - first, 1e-6)

    @staticmethod
    def _rate_of(stamps: collections.deque[float], now: float, whole: bool = False) -> float:
        """Events per second lately, from their clock times.

        Over the last quarter window when it holds enough events to tell (a
        rate that just grew is not averaged away), else (or when `whole`)
        over the whole window: steadier, where a moment of 429s would mislead.
        """
        _forget_old(stamps, now)
        recent = len(stamps) - bisect.bisect_left(stamps, now - _WINDOW / 4)
        if recent >= _ENOUGH and not whole:
            return recent / (_WINDOW / 4)
        return len(stamps) / _WINDOW

    def answered(self, sent: float) -> None:
        """A request sent at `sent` went through: the rate may grow."""
        now = self._clock()
        _stamp(self._ok, now)
        self._served += 1
        self._rtt += (max(0.0, now - sent) - self._rtt) * _SMOOTHING
        if self._slow_start:
            if self._held_back and now - self._grown_at >= max(_STEP, _ROUNDS * self._rtt):
                # Grow, but never past twice what the server has taken lately.
                self._set_rate(max(self._rate, min(_GROWTH * self._rate, 2 * self._latest_rate())))
                self._grown_at, self._held_back = now, False
            return
        # CUBIC: back to the rate that was too much after `_k` seconds, then beyond, slowly;
        # never more than twice what the Session sends (idle Sessions do not inflate it).
        cubic = _CUBIC * (now - self._cut_at - self._k) ** 3 + self._w_max
        self._set_rate(min(cubic, max(self._rate, 2 * self._rate_of(self._sent, now))))

    def throttled(self, sent: float, retry_after: float | None) -> float:
        """A request sent at `sent` got a 429; returns how long everyone now pauses.

        One cut per burst: 429s for requests sent before the last cut were
        already accounted for. Retry-After holds every request back (capped);
        without it, the cut rate alone spaces the next ones.
        """
        self.rate_limited += 1
        now = self._clock()
        if sent > self._cut_at and now >= self._cut_at + _SETTLE * self._rtt:
            limit, rate = self._limit(now)
            self._slow_start = False
            self._w_max = limit
            self._k = (max(0.0, limit - rate) / _CUBIC) ** (1 / 3)
            self._cut_at, self._served_at_cut = now, self._served
            self._set_rate(rate)
        pause = 1.0 / self._rate if retry_after is None else min(_MAX_PAUSE, retry_after)
        self._paused_until = max(self._paused_until, now + pause)
        # No burst when the pause ends: one request, then the (new) rate.
        self._tokens, self._refilled_at = min(self._tokens, 1.0), max(now, self._refilled_at)
        return pause

    def _limit(self, now: float) -> tuple[float, float]:
        """At a new congestion: the rate that proved too much, and the rate to go on at."""
        since, served = now - self._cut_at, self._served - self._served_at_cut
        if since <= _MEASURED and served >= _ENOUGH:
            # The server's bucket was empty at the last cut and is now: what it took from
            # this Session in between is its limit (this Session's share of it). Go on at
            # that rate, and let CUBIC probe beyond it.
            limit = min(self._rate, max(served / since, _DEEPEST * self._rate))
            return limit, limit
        # First congestion (or long after the last): what the server took lately is its
        # limit, near enough; regrow towards it. Not below one cut of what was sent (a burst
        # after a quiet spell), nor, when a pause fell in the window (then "lately" took
        # next to nothing), of the rate itself. A rate far above what was ever sent (slow
        # start's overshoot) is no floor. A Session younger than the window has counted
        # over its own age only.
        span = _WINDOW / max(1e-3, min(_WINDOW, now - self._born))
        taken = self._rate_of(self._ok, now, whole=True) * span
        paused = self._paused_until > now - _WINDOW
        tried = self._rate if paused else self._rate_of(self._sent, now, whole=True) * span
        limit = min(self._rate, max(taken, _BETA * tried))
        return limit, _BETA * limit

    def _set_rate(self, rate: float) -> None:
        self._rate = max(_FLOOR, rate if self._cap is None else min(rate, self._cap))


def _stamp(stamps: collections.deque[float], now: float) -> None:
    """Note an event at `now` in a window of recent ones."""
    stamps.append(now)
    _forget_old(stamps, now)


def _forget_old(stamps: collections.deque[float], now: float) -> None:
    """Drop the events that fell out of the window."""
    while stamps and stamps[0] < now - _WINDOW:
        stamps.popleft()
