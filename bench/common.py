"""Shared pieces of the benchmarks: small statistics, and the ABBA order of rounds."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


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


def abba(round_: int, runs: Mapping[str, T]) -> list[tuple[str, T]]:
    """The runs in ABBA order (reversed every other round): warming up or slowing down
    during a benchmark favours none of them."""
    order = list(runs.items())
    return order if round_ % 2 == 0 else order[::-1]
