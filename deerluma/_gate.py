"""One rate gate per Session: it owns every pause, and lets requests through at the rate
the controller (`deerluma._control`) learns from answers and 429s.

The gate is the asynchronous part: a token bucket spacing requests at the
rate of the moment, a queue of waiters in order, the Session-wide pauses the
controller asks for, a window's room when the gateway named a limit, and
each waiter's deadline (no request is held past it, whenever a pause
starts). A ``max_rps`` given by the user is a hard cap on top.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import math
from collections.abc import Awaitable, Callable

import attrs

from ._control import Controller
from ._peers import Peers
from ._throttle import Throttle, ThrottleKind
from .exceptions import ArgumentError, DeadlineExceeded

__all__ = ["Bucket", "RateGate", "RateView"]

#: While the rate is being found, the bucket holds this many seconds' worth of requests.
_BURST = 0.2
#: A whole token, give or take the rounding of clock arithmetic.
_ONE = 1.0 - 1e-9


@attrs.frozen
class RateView:
    """What a Session's rate gate knows, for logs and progress displays."""

    #: The rate the gate lets requests through at now, per second.
    rps: float
    #: The user's hard cap (``Session(max_rps=...)``), or None when the rate is learned.
    max_rps: float | None
    #: How many 429 answers this Session has received, of every kind.
    rate_limited: int
    #: True until the first 429 about our rate: the rate grows by half every few round
    #: trips while the Session wants more.
    slow_start: bool
    #: 429s the gateway sent because its upstream was saturated, or that slowing down did
    #: not make rarer: they delayed only their own requests.
    not_ours: int = 0
    #: The limit the gateway named, ``(requests, seconds)``, once a 429 named one.
    window: tuple[int, float] | None = None


class Bucket:
    """A token bucket: it refills at the rate of the moment, up to a capacity (botocore's
    TokenBucket, with the rate and capacity given at each look)."""

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.refilled_at = now

    def level(self, now: float, rate: float, capacity: float) -> float:
        """Tokens at `now`, refilled at `rate` since the last look, at most `capacity`."""
        self.tokens = min(capacity, self.tokens + (now - self.refilled_at) * rate)
        self.refilled_at = now
        return self.tokens

    def take(self) -> None:
        """One request goes."""
        self.tokens -= 1.0

    def give_back(self) -> None:
        """A turn taken and not used (its waiter was cancelled as it was granted)."""
        self.tokens += 1.0

    def no_burst(self, now: float | None = None) -> None:
        """At most one request at once from here (a cut, a pause heard, one that ends at
        `now`); the refill counts from `now` when given."""
        self.tokens = min(self.tokens, 1.0)
        if now is not None:
            self.refilled_at = max(now, self.refilled_at)


class RateGate:
    """Spaces requests to the controller's rate, holds them through its pauses, within deadlines."""

    def __init__(
        self,
        max_rps: float | None,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        peers: Peers | None = None,
    ) -> None:
        if max_rps is not None and not (max_rps > 0 and math.isfinite(max_rps)):
            raise ArgumentError(
                f"{{max_rps}} must be a positive number, got {max_rps!r}",
                ["max_rps"],
                value=max_rps,
            )
        self._clock = clock
        self._sleep = sleep
        self.control = Controller(max_rps, clock())
        #: Where the other Sessions of the key are heard (this gate alone talks to it).
        self.peers = peers or Peers()
        self._shared = self.peers.shared
        self._held_back = False  # a request waited for its slot since slow start's last step
        # No burst at first where others of the key may be starting too, unseen as yet.
        self._bucket = Bucket(1.0 if self.peers.cold else self._capacity(), clock())
        self._queue: collections.deque[asyncio.Future[float]] = collections.deque()
        # The queued waiters' deadlines, soonest first (done ones leave when they come up).
        self._deadlines: list[tuple[float, int, asyncio.Future[float]]] = []
        self._order = itertools.count()
        self._dispatcher: asyncio.Future[None] | None = None
        self.rate_limited = 0

    @property
    def view(self) -> RateView:
        """The current rate, cap, 429 counts and named limit."""
        control = self.control
        window = control.window
        counts = control.counts
        return RateView(
            control.rate,
            control.cap,
            self.rate_limited,
            control.slow_start,
            counts[ThrottleKind.UPSTREAM] + counts[ThrottleKind.STRAY],
            None if window is None else (window.limit, window.window),
        )

    def try_pass(self) -> float | None:
        """Take a turn if one is free right now (no pause, no queue): the common case.

        Returns the send time to hand back with the answer, or None when the
        caller must `acquire`.
        """
        now = self._clock()
        if self._shared:
            self._listen(now)
        if self._queue or self._wait(now) > 0:  # the one admission test (`_wait`)
            self._held_back = True
            return None
        self._take(now)
        return now

    async def acquire(self, deadline: float | None = None) -> float:
        """Wait for this request's turn; raise DeadlineExceeded rather than wait past `deadline`.

        Returns the send time to hand back with the answer (see `answered`).
        Waiters queue in order; one dispatcher lets them through at the rate
        of the moment, so a cut, a pause or a step up applies to everyone
        queued, and a waiter whose deadline comes first is let go at once.
        """
        turn = self.try_pass()
        if turn is not None:
            return turn
        now = self._clock()
        control = self.control
        start = max(now, control.paused_until)
        ahead = len(self._queue) + 1 - self._bucket.tokens
        self._check(start + ahead / control.rate, now, deadline)
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, next(self._order), waiter))
        if self._dispatcher is None:
            self._dispatcher = asyncio.ensure_future(self._dispatch())
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._bucket.give_back()  # granted as we were cancelled
            if not any(not w.done() for w in self._queue) and self._dispatcher is not None:
                self._dispatcher.cancel()
                self._dispatcher = None
            raise

    async def _dispatch(self) -> None:
        """Let queued waiters through, one token each; let go those whose deadline came."""
        queue = self._queue
        try:
            while queue:
                now = self._clock()
                if self._shared:
                    self._listen(now)
                self._expire(now)
                while queue and queue[0].done():  # cancelled, or let go at its deadline
                    queue.popleft()
                if not queue:
                    break
                wait = self._wait(now)
                if wait > 0:
                    soonest = self._deadlines[0][0] if self._deadlines else math.inf
                    await self._sleep(max(0.0, min(wait, soonest - now)))
                    continue
                self._take(now)
                queue.popleft().set_result(now)
        finally:
            if self._dispatcher is asyncio.current_task():
                self._dispatcher = None

    def _expire(self, now: float) -> None:
        """Let go, with DeadlineExceeded, every waiter whose deadline came before its turn."""
        deadlines = self._deadlines
        while deadlines and (deadlines[0][2].done() or deadlines[0][0] <= now):
            _, _, waiter = heapq.heappop(deadlines)
            if waiter.done():
                continue  # granted, or cancelled
            left = max(0.0, self.control.paused_until - now)
            waiter.set_exception(
                DeadlineExceeded(
                    "the deadline came while waiting for the rate limit"
                    + (f" ({left:.1f}s of pause left)" if left else "")
                )
            )

    def _wait(self, now: float) -> float:
        """Seconds from `now` until a request may go: pauses, the window's room, a token."""
        control = self.control
        if now < control.paused_until:
            return control.paused_until - now
        window = control.window
        if window is not None:
            room = window.room_at(control.meter, now)
            if room > now:
                return room - now
        tokens = self._bucket.level(now, control.rate, self._capacity())
        return 0.0 if tokens >= _ONE else (1.0 - tokens) / control.rate

    def _capacity(self) -> float:
        """How many requests may go at once: a fifth of a second's worth while the rate is
        being found, a share of the window's allowance under a named limit, else one
        (requests spread evenly)."""
        control = self.control
        if control.slow_start:
            return max(1.0, control.rate * _BURST)
        if control.window is not None:
            return control.window.burst
        return 1.0

    def _take(self, slot: float) -> None:
        self._bucket.take()
        self.control.sending(slot)

    @staticmethod
    def _check(start: float, now: float, deadline: float | None) -> None:
        if deadline is not None and start > deadline:
            raise DeadlineExceeded(
                f"waiting {start - now:.1f}s for the rate limit would pass the deadline"
            )

    def answered(self, sent: float) -> None:
        """A request sent at `sent` went through: the rate may grow."""
        if self.control.answered(self._clock(), sent, self._held_back):
            self._held_back = False  # slow start took a step

    def throttled(self, sent: float, throttle: Throttle) -> Throttle:
        """A request sent at `sent` got a 429; returns it judged by the controller.

        A 429 about our rate cuts the rate (once per congestion) and may pause
        everyone (Retry-After, or a named window until it has room); one that
        is not about our rate changes nothing here: its request alone waits.
        """
        self.rate_limited += 1
        now = self._clock()
        judged = self.control.throttled(now, sent, throttle)
        self._tell()
        if judged.ours:
            self._bucket.no_burst(now)  # when a pause ends: one request, then the (new) rate
        return judged

    def _listen(self, now: float) -> None:
        """Hear what other Sessions of this key met: their 429s as evidence, their cuts; how
        many send, and what those that stopped freed."""
        peers, control = self.peers, self.control
        event, ticks = peers.news(now, control.pace)
        control.fleet = peers.fleet()
        control.freed += peers.take_freed()
        if control.share_start(now):
            self._bucket.no_burst()
        if ticks:
            control.heard_429s(now, ticks)
        if event is not None:
            control.heard(now, event)
            self._tell()
            self._bucket.no_burst(now)

    def _tell(self) -> None:
        """Tell the other Sessions of the key what the controller has for them."""
        events, ticks = self.control.news()
        for _ in range(ticks):
            self.peers.tick()
        for event in events:
            self.peers.publish(event)

    async def aclose(self) -> None:
        """Let go of what hearing the others takes (a file, a connection); reopened if used."""
        await self.peers.aclose()

    def pause_left(self) -> float:
        """Seconds until everyone may send again (0: no pause)."""
        return max(0.0, self.control.paused_until - self._clock())
