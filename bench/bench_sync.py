"""SyncSession against the async Session: the blocking facade must cost (almost) nothing.

10,000 already-finished ids, fetched by ``SyncSession.wait_many`` and by the
async ``Session.wait_many`` from a plain ``asyncio.run``, interleaved round
by round against one server in another process. Target: sync >= 0.9x async.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import deerluma

from ._server import server_process
from .common import abba

KEY = "fake-key-0123456789"


def _completed(results: dict[str, deerluma.Generation | deerluma.DeerLumaError]) -> int:
    return sum(isinstance(g, deerluma.Generation) and g.is_completed for g in results.values())


def run(count: int, concurrency: int, rounds: int) -> None:
    print(f"bench_sync: {count} completed ids, concurrency {concurrency}, best of {rounds} rounds")
    ids = [f"task-{i}" for i in range(count)]
    with server_process(count, 0.0) as url:

        async def async_once() -> int:
            async with deerluma.Session(api_key=KEY, base_url=url) as s:
                return _completed(await s.wait_many(ids, concurrency=concurrency))

        def sync_once() -> int:
            with deerluma.SyncSession(api_key=KEY, base_url=url) as s:
                return _completed(s.wait_many(ids, concurrency=concurrency))

        runs: dict[str, Callable[[], int]] = {
            "async": lambda: asyncio.run(async_once()),
            "sync": sync_once,
        }
        best = dict.fromkeys(runs, 0.0)
        for round_ in range(rounds):
            for name, once in abba(round_, runs):
                started = time.perf_counter()
                done = once()
                assert done == count, f"{name}: {done} of {count} completed"
                best[name] = max(best[name], done / (time.perf_counter() - started))
    share = best["sync"] / best["async"]
    print(
        f"  async wait_many {best['async']:,.0f} results/s, "
        f"SyncSession.wait_many {best['sync']:,.0f} results/s, sync / async {share:.2f}x"
        f"   target >= 0.9x: {'met' if share >= 0.9 else 'MISSED'}"
    )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    run(args.count, args.concurrency, args.rounds)


if __name__ == "__main__":
    cli()
