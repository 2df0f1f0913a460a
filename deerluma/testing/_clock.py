"""Clocks for FakeDeerAPI and a Session: one that moves only when told, one that runs fast."""

from __future__ import annotations

import asyncio
import time

__all__ = ["FakeClock", "ScaledClock"]


class FakeClock:
    """A clock that only moves when told; its `sleep` moves it instead of waiting.

    Give ``clock=fake_clock`` to FakeDeerAPI and ``clock=fake_clock,
    sleep=fake_clock.sleep`` to a Session, and waiting costs no real time.
    """

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._now += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        """Record the sleep, move time forward, and let other tasks run."""
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


class ScaledClock:
    """Virtual seconds that pass `speed` times faster than real ones.

    Share one between FakeDeerAPI and a Session (``clock=c, sleep=c.sleep``)
    and a 60 s generation takes 60/speed real seconds, every request still
    crossing a real socket: for demos and benchmarks.
    """

    def __init__(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed!r}")
        self.speed = speed
        self._origin = time.monotonic()

    def __call__(self) -> float:
        return (time.monotonic() - self._origin) * self.speed

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of virtual time."""
        await asyncio.sleep(seconds / self.speed)
