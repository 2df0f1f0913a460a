"""One rate-limit gate per Session, shared by every request it sends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .exceptions import DeadlineExceeded

__all__ = ["RateGate"]

#: Pause after a 429 that carries no Retry-After; doubles while 429s keep coming.
_DEFAULT_PAUSE = 1.0
_MAX_PAUSE = 60.0


class RateGate:
    """Spaces requests to `max_rps` and holds everyone back after a 429.

    Without it, every poller discovers the rate limit on its own and backs off
    apart; with it, one 429 pauses the whole Session until Retry-After.
    """

    def __init__(
        self,
        max_rps: float | None,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        if max_rps is not None and max_rps <= 0:
            raise ValueError(f"max_rps must be positive, got {max_rps!r}")
        self._spacing = 1.0 / max_rps if max_rps else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._strikes = 0
        self.rate_limited = 0

    def try_pass(self) -> bool:
        """Take a turn if one is free right now (no pause, no queue); the common case."""
        now = self._clock()
        if now < self._paused_until or now < self._next_slot:
            return False
        self._next_slot = now + self._spacing
        return True

    async def acquire(self, deadline: float | None = None) -> None:
        """Wait for this request's turn; raise DeadlineExceeded rather than wait past `deadline`."""
        while True:
            now = self._clock()
            if now < self._paused_until:
                self._check(self._paused_until, now, deadline)
                await self._sleep(self._paused_until - now)
                continue
            slot = max(now, self._next_slot)
            self._check(slot, now, deadline)
            # Reserve the slot before sleeping so concurrent callers queue in order.
            self._next_slot = slot + self._spacing
            if slot > now:
                await self._sleep(slot - now)
                if self._clock() < self._paused_until:
                    continue  # a 429 arrived while we queued: wait it out too
            return

    @staticmethod
    def _check(start: float, now: float, deadline: float | None) -> None:
        if deadline is not None and start > deadline:
            raise DeadlineExceeded(
                f"waiting {start - now:.1f}s for the rate limit would pass the deadline"
            )

    def pause(self, retry_after: float | None) -> float:
        """Hold every request back after a 429; returns the pause in seconds."""
        self.rate_limited += 1
        if retry_after is None:
            seconds = min(_MAX_PAUSE, _DEFAULT_PAUSE * 2.0**self._strikes)
            self._strikes += 1
        else:
            seconds = min(_MAX_PAUSE, retry_after)
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        return seconds

    def clear_strikes(self) -> None:
        """A request went through: the next unexplained 429 starts from a short pause again."""
        self._strikes = 0
