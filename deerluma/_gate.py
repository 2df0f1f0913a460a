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

from ._control import SENDING, Answered, Controller, Decision, Event, Heard, RateView, Throttled
from ._peers import Peers
from ._throttle import Throttle
from .exceptions import ArgumentError, DeadlineExceeded

__all__ = ["Bucket", "RateGate", "RateView"]

#: A whole token, give or take the rounding of clock arithmetic.
_ONE = 1.0 - 1e-9


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

    def no_burst(self, now: float = -math.inf) -> None:
        """At most one request at once from here (a cut, a pause heard, one that ends at
        `now`); the refill counts from `now` when that is later than the last refill."""
        self.tokens = min(self.tokens, 1.0)
        self.refilled_at = max(now, self.refilled_at)


class RateGate:
    """Spaces requests to the controller's rate, holds them through its pauses, within deadlines.

    The gate tells the controller every event (a send, an answer, a 429, what the other
    Sessions said) and applies the `Decision` that comes back; it reads nothing else of it.
    """

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
        self._fleet: int | None = None  # how many send on the key, as last heard
        # No burst at first where others of the key may be starting too, unseen as yet.
        self._decided = self.control.current(clock())  # the latest decision
        self._bucket = Bucket(1.0 if self.peers.cold else self._decided.capacity, clock())
        self._queue: collections.deque[asyncio.Future[float]] = collections.deque()
        # The queued waiters' deadlines, soonest first (done ones leave when they come up).
        self._deadlines: list[tuple[float, int, asyncio.Future[float]]] = []
        self._order = itertools.count()
        self._dispatcher: asyncio.Future[None] | None = None
        self.rate_limited = 0

    @property
    def view(self) -> RateView:
        """The current rate, cap, 429 counts and named limit."""
        return self.control.view(self.rate_limited)

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
        start = max(now, self._decided.paused_until)
        ahead = len(self._queue) + 1 - self._bucket.tokens
        self._check(start + ahead / self._decided.rate, now, deadline)
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
            left = max(0.0, self._decided.paused_until - now)
            waiter.set_exception(
                DeadlineExceeded(
                    "the deadline came while waiting for the rate limit"
                    + (f" ({left:.1f}s of pause left)" if left else "")
                )
            )

    def _wait(self, now: float) -> float:
        """Seconds from `now` until a request may go: pauses, the window's room, a token."""
        decision = self._decided
        if now < decision.paused_until:
            return decision.paused_until - now
        if decision.room_at > now:
            return decision.room_at - now
        tokens = self._bucket.level(now, decision.rate, decision.capacity)
        return 0.0 if tokens >= _ONE else (1.0 - tokens) / decision.rate

    def _take(self, slot: float) -> None:
        self._bucket.take()
        self._decide(SENDING, slot)

    def _decide(self, event: Event, now: float) -> Decision:
        """Tell the controller of `event`; apply what it decides: the bucket, and what to tell
        the other Sessions of the key."""
        decision = self._decided = self.control.decide(event, now)
        if decision.drain_from is not None:
            self._bucket.no_burst(decision.drain_from)
        for _ in range(decision.ticks):
            self.peers.tick()
        for event_ in decision.publish:
            self.peers.publish(event_)
        return decision

    @staticmethod
    def _check(start: float, now: float, deadline: float | None) -> None:
        if deadline is not None and start > deadline:
            raise DeadlineExceeded(
                f"waiting {start - now:.1f}s for the rate limit would pass the deadline"
            )

    def answered(self, sent: float) -> None:
        """A request sent at `sent` went through: the rate may grow."""
        if self._decide(Answered(sent, self._held_back), self._clock()).stepped:
            self._held_back = False

    def throttled(self, sent: float, throttle: Throttle) -> Throttle:
        """A request sent at `sent` got a 429; returns it judged by the controller.

        A 429 about our rate cuts the rate (once per congestion) and may pause
        everyone (Retry-After, or a named window until it has room); one that
        is not about our rate changes nothing here: its request alone waits.
        """
        self.rate_limited += 1
        judged = self._decide(Throttled(sent, throttle), self._clock()).judged
        assert judged is not None
        return judged

    def _listen(self, now: float) -> None:
        """Hear what other Sessions of this key met: their 429s as evidence, their cuts; how
        many send, and what those that stopped freed."""
        peers = self.peers
        event, ticks = peers.news(now, self.control.pace)
        fleet, freed = peers.fleet(), peers.take_freed()
        if event is None and not ticks and not freed and fleet == self._fleet:
            return  # nothing new (the common case, at every request): the decision stands
        self._fleet = fleet
        self._decide(Heard(fleet, freed, ticks, event), now)

    async def aclose(self) -> None:
        """Let go of what hearing the others takes (a file, a connection); reopened if used."""
        await self.peers.aclose()

    def pause_left(self) -> float:
        """Seconds until everyone may send again (0: no pause)."""
        return max(0.0, self._decided.paused_until - self._clock())
