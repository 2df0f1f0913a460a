"""Shared pieces of the benchmarks: a time-scaled clock and small statistics."""

from __future__ import annotations

import asyncio
import math
import time


class ScaledTime:
    """Virtual seconds that pass `scale` times faster than real ones.

    The fake server and every waiter use it, so a 60 s generation takes 6 real
    seconds at scale 10 while all requests still cross a real socket.
    """

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self._origin = time.monotonic()

    def __call__(self) -> float:
        return (time.monotonic() - self._origin) * self.scale

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.scale)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def ratio(ours: float, baseline: float) -> str:
    """ours ÷ baseline, printed."""
    return f"{ours / baseline:.2f}x" if baseline else "n/a"
