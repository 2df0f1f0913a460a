"""Shared pieces of the benchmarks: small statistics."""

from __future__ import annotations

import math


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
