"""Batch benchmark: wait_many under a rate limit, its throughput, and its memory.

(a) 1,000 tasks of 3-9 s against a server limited to 100 requests/s: lost,
    misreported, 429 share, and wall time / the oracle's ideal.
(b) 10,000 completed ids, concurrency 64: wait_many results/s / a bare
    aiohttp + asyncio.gather loop in the same run.
(c) memory per waiting task with 10,000 waiting (tracemalloc, server in
    another process).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import time
import tracemalloc

import aiohttp

import deerluma
from deerluma import PollPolicy
from deerluma.testing import FakeDeerAPI

from ._server import server_process
from .common import ratio

KEY = "fake-key-0123456789"  # FakeDeerAPI's default


def ideal_wall(completions: list[float], rps: float) -> float:
    """One request per task exactly when it completes, no faster than the limit."""
    t = 0.0
    for c in sorted(completions):
        t = max(c, t + 1 / rps)
    return t


async def rate_limited(tasks: int, rps: float, seed: int) -> None:
    rng = random.Random(seed)
    durations = [rng.uniform(3, 9) for _ in range(tasks)]
    async with FakeDeerAPI(max_rps=rps, seed=seed) as fake:
        started = time.monotonic()
        ids = {
            fake.add_generation(duration=d, estimate_bias=rng.uniform(0.7, 1.3)): d
            for d in durations
        }
        async with deerluma.Session(api_key=fake.api_key, base_url=fake.url, max_rps=rps) as s:
            results = await s.wait_many(ids, concurrency=64)
        wall = time.monotonic() - started
    lost = sum(1 for r in results.values() if not isinstance(r, deerluma.Generation))
    wrong = sum(
        1
        for k, r in results.items()
        if isinstance(r, deerluma.Generation) and (r.id != k or not r.is_completed)
    )
    limited = sum(1 for r in fake.requests if r.status == 429)
    ideal = ideal_wall(durations, rps)
    print(f"\n(a) {tasks} tasks of 3-9 s, server limit {rps:g} req/s, Session(max_rps={rps:g})")
    print(
        f"  lost {lost}, misreported {wrong}, requests {len(fake.requests)} "
        f"({len(fake.requests) / tasks:.2f}/task), "
        f"429s {limited} ({100 * limited / len(fake.requests):.2f} %)"
    )
    print(f"  wall {wall:.2f}s, ideal {ideal:.2f}s, wall / ideal {ratio(wall, ideal)}")


async def bare_loop(url: str, key: str, ids: list[str], concurrency: int) -> int:
    """The baseline: aiohttp, a semaphore and gather; no retries, no decoding into types."""
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:

        async def one(task_id: str) -> bool:
            async with gate, http.get(f"{url}/dream-machine/v1/generations/{task_id}") as resp:
                return json.loads(await resp.read())["state"] == "completed"

        return sum(await asyncio.gather(*(one(i) for i in ids)))


async def _best_of(rounds: int, url: str, ids: list[str], concurrency: int) -> tuple[float, float]:
    """Best results/s of the bare loop and of wait_many, alternating so noise hits both."""
    bare = ours = 0.0
    async with deerluma.Session(api_key=KEY, base_url=url) as s:
        for _ in range(rounds):
            started = time.perf_counter()
            done = await bare_loop(url, KEY, ids, concurrency)
            bare = max(bare, done / (time.perf_counter() - started))
            started = time.perf_counter()
            results = await s.wait_many(ids, concurrency=concurrency)
            ok = sum(isinstance(g, deerluma.Generation) for g in results.values())
            ours = max(ours, ok / (time.perf_counter() - started))
    return bare, ours


async def throughput(count: int, concurrency: int, rounds: int = 5) -> None:
    print(f"\n(b) {count} completed ids, concurrency {concurrency}, best of {rounds}")
    async with FakeDeerAPI() as fake:
        fake.record_requests = False
        ids = [fake.add_generation(f"task-{i}", duration=0) for i in range(count)]
        bare, ours = await _best_of(rounds, fake.url, ids, concurrency)
    print(
        f"  server in this process: bare aiohttp+gather {bare:,.0f} results/s, "
        f"wait_many {ours:,.0f} results/s, wait_many / bare {ratio(ours, bare)}"
    )
    with server_process(count, 0.0) as url:
        bare, ours = await _best_of(rounds, url, ids, concurrency)
    print(
        f"  server in another process (client-bound): bare {bare:,.0f} results/s, "
        f"wait_many {ours:,.0f} results/s, wait_many / bare {ratio(ours, bare)}"
    )


async def memory(count: int) -> None:
    ids = [f"task-{i}" for i in range(count)]
    polled = 0
    with server_process(count, 10_000.0) as url:

        async def counting_fetch(task_id: str, deadline: float | None) -> deerluma.Generation:
            nonlocal polled
            g = await fetch(task_id, deadline)
            polled += 1
            return g

        policy = PollPolicy(unhinted_interval=3600, learned_interval=3600, timeout=None)
        async with deerluma.Session(api_key=KEY, base_url=url, policy=policy) as s:
            fetch = s._fetch
            s._fetch = counting_fetch  # type: ignore[method-assign]
            await s.get_generation(ids[0])  # warm the pool and the converter
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            batch = asyncio.create_task(s.wait_many(ids, concurrency=64))
            while polled < count:  # noqa: ASYNC110 - a benchmark's progress probe
                await asyncio.sleep(0.05)
            gc.collect()
            during = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            batch.cancel()
            await asyncio.gather(batch, return_exceptions=True)
    per_task = (during - before) / count
    print(f"\n(c) {count} ids waiting, each polled once and holding its last Generation")
    print(f"  {per_task / 1024:.2f} KiB per waiting task (target < 5 KiB)")


async def main(args: argparse.Namespace) -> None:
    print("bench_batch")
    await rate_limited(args.tasks, args.rps, args.seed)
    await throughput(args.throughput, 64)
    await memory(args.memory)


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rps", type=float, default=100.0)
    parser.add_argument("--throughput", type=int, default=10_000)
    parser.add_argument("--memory", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(main(parser.parse_args(argv)))


if __name__ == "__main__":
    cli()
