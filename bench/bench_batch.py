"""Batch benchmark: learning an unknown rate limit, throughput, memory.

No run sets ``max_rps``: the Session must find the limit by itself. Against a
FakeDeerAPI that answers 429 beyond its limit (burst: one second's worth):

(a) 1,000 tasks of 3-9 s, `wait_many` at concurrency 64, server 100 req/s,
    429 with ``Retry-After: 1`` and (a2) without Retry-After;
(c) 300 concurrent `wait_until_completed` calls, server 50 req/s;
(d) two Sessions (as two processes of one app) sharing a 100 req/s limit;
(e) a wrong key with 1,000 ids: requests sent;
(b) 10,000 completed ids, concurrency 64, server in its own process, bodies
    with distinct ``created_at``: wait_many results/s / a bare aiohttp loop
    (``await r.json()``, check ``state``), best of six rounds in ABBA order;
(m) memory per waiting id with 10,000 waiting.

Each prints lost / misreported, the 429 share, and wall time / the oracle's
ideal (one request per task at its completion, no faster than the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import random
import time
import tracemalloc
from collections.abc import Awaitable, Callable

import aiohttp

import deerluma
from deerluma import PollPolicy
from deerluma.testing import FakeDeerAPI

from ._server import server_process
from .common import abba, ratio

KEY = "fake-key-0123456789"  # FakeDeerAPI's default


def ideal_wall(completions: list[float], rps: float) -> float:
    """One request per task exactly when it completes, no faster than the limit."""
    t = 0.0
    for c in sorted(completions):
        t = max(c, t + 1 / rps)
    return t


def blind_wall(completions: list[float], rps: float) -> float:
    """The floor for a poller that does not know when each task completes (all began at 0 s,
    `completions` in the order they were created) and sends at the limit's rate: every
    unconfirmed task looked at in turn, one every 1/rps seconds from 0 s. On average no order
    does better (a look at time t finds a task done at best as often as a first look does);
    only a burst the server allows beyond its rate, saved for the end, could."""
    turns = collections.deque(completions)
    t = last = 0.0
    while turns:
        completion = turns.popleft()
        if t >= completion:
            last = t
        else:
            turns.append(completion)
        t += 1 / rps
    return last


def blind_line(wall: float, completions: list[float], rps: float) -> str:
    """How far the wall is from the floor of a poller that does not know completion times."""
    blind, ideal = blind_wall(completions, rps), ideal_wall(completions, rps)
    return (
        f"  floor for a poller blind to completion times {blind:.2f}s ({ratio(blind, ideal)}"
        f" the oracle); wall / that floor {ratio(wall, blind)}"
    )


def _tally(
    name: str,
    fake: FakeDeerAPI,
    results: dict[str, deerluma.Generation | deerluma.DeerLumaError],
    durations: list[float],
    rps: float,
    wall: float,
    targets: tuple[float, float],
) -> None:
    lost = sum(1 for r in results.values() if not isinstance(r, deerluma.Generation))
    wrong = sum(
        1
        for k, r in results.items()
        if isinstance(r, deerluma.Generation) and (r.id != k or not r.is_completed)
    )
    limited = sum(1 for r in fake.requests if r.status == 429)
    share = 100 * limited / max(1, len(fake.requests))
    ideal = ideal_wall(durations, rps)
    max_share, max_wall = targets
    met = share < max_share and wall / ideal <= max_wall and not lost and not wrong
    print(f"\n{name}")
    print(
        f"  lost {lost}, misreported {wrong}, requests {len(fake.requests)} "
        f"({len(fake.requests) / max(1, len(results)):.2f}/task), 429s {limited} ({share:.2f} %)"
    )
    print(
        f"  wall {wall:.2f}s, ideal {ideal:.2f}s, wall / ideal {ratio(wall, ideal)}"
        f"   target 429s < {max_share:g} %, wall <= {max_wall:g}x: {'met' if met else 'MISSED'}"
    )
    print(blind_line(wall, durations, rps))


async def _batch(tasks: int, rps: float, seed: int, retry_after: float | bool) -> None:
    rng = random.Random(seed)
    durations = [rng.uniform(3, 9) for _ in range(tasks)]
    async with FakeDeerAPI(max_rps=rps, seed=seed, retry_after=retry_after) as fake:
        started = time.monotonic()
        ids = [fake.add_generation(duration=d, estimate=False, shape="new") for d in durations]
        async with deerluma.Session(api_key=fake.api_key, base_url=fake.url) as s:
            results = await s.wait_many(ids, concurrency=64)
        wall = time.monotonic() - started
    header = "Retry-After: 1" if retry_after is not False else "no Retry-After"
    name = f"(a) {tasks} tasks of 3-9 s, wait_many, server {rps:g} req/s, 429 with {header}"
    targets = (1.0, 1.3) if retry_after is not False else (2.0, 1.4)
    _tally(name, fake, results, durations, rps, wall, targets)


async def _singles(tasks: int, rps: float, seed: int) -> None:
    rng = random.Random(seed)
    durations = [rng.uniform(3, 9) for _ in range(tasks)]
    async with FakeDeerAPI(max_rps=rps, seed=seed, retry_after=1.0) as fake:
        started = time.monotonic()
        ids = [fake.add_generation(duration=d, estimate=False, shape="new") for d in durations]
        async with deerluma.Session(api_key=fake.api_key, base_url=fake.url) as s:

            async def one(task_id: str) -> deerluma.Generation | deerluma.DeerLumaError:
                try:
                    return await s.wait_until_completed(task_id)
                except deerluma.DeerLumaError as exc:
                    return exc

            outcomes = await asyncio.gather(*(one(i) for i in ids))
        wall = time.monotonic() - started
    results = dict(zip(ids, outcomes, strict=True))
    name = f"(c) {tasks} concurrent wait_until_completed, server {rps:g} req/s"
    _tally(name, fake, results, durations, rps, wall, (2.0, float("inf")))


async def _shared(tasks: int, rps: float, seed: int) -> None:
    rng = random.Random(seed)
    durations = [rng.uniform(3, 9) for _ in range(2 * tasks)]
    async with FakeDeerAPI(max_rps=rps, seed=seed, retry_after=1.0) as fake:
        started = time.monotonic()
        ids = [fake.add_generation(duration=d, estimate=False, shape="new") for d in durations]
        halves = (ids[:tasks], ids[tasks:])
        walls: list[float] = []

        async def app(part: list[str]) -> dict[str, deerluma.Generation | deerluma.DeerLumaError]:
            async with deerluma.Session(api_key=fake.api_key, base_url=fake.url) as s:
                done = await s.wait_many(part, concurrency=64)
            walls.append(time.monotonic() - started)
            return done

        first, second = await asyncio.gather(*(app(part) for part in halves))
        wall = time.monotonic() - started
    results = {**first, **second}
    name = f"(d) two Sessions of {tasks} tasks each sharing a server of {rps:g} req/s"
    _tally(name, fake, results, durations, rps, wall, (2.0, 1.5))
    per = [tasks / w for w in walls]
    fair = min(per) / max(per)
    print(
        f"  per Session: {per[0]:.0f} and {per[1]:.0f} tasks/s, slower / faster {fair:.2f}"
        f"   target > 0.33: {'met' if fair > 1 / 3 else 'MISSED'}"
    )


async def _wrong_key(tasks: int) -> None:
    async with FakeDeerAPI() as fake:
        ids = [fake.add_generation(duration=0) for _ in range(tasks)]
        async with deerluma.Session(api_key="not-the-key", base_url=fake.url) as s:
            results = await s.wait_many(ids, concurrency=64)
    auth = sum(isinstance(r, deerluma.AuthenticationError) for r in results.values())
    met = len(fake.requests) <= 50 and auth == tasks
    print(f"\n(e) a wrong key, {tasks} ids")
    print(
        f"  requests sent {len(fake.requests)}, ids reporting AuthenticationError {auth}"
        f"   target <= 50 requests, all ids: {'met' if met else 'MISSED'}"
    )


async def bare_loop(url: str, key: str, ids: list[str], concurrency: int) -> int:
    """The baseline: aiohttp, a semaphore and gather; no retries, no typed decoding."""
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:

        async def one(task_id: str) -> bool:
            async with gate, http.get(f"{url}/dream-machine/v1/generations/{task_id}") as resp:
                return (await resp.json())["state"] == "completed"

        return sum(await asyncio.gather(*(one(i) for i in ids)))


async def _rounds(rounds: int, runs: dict[str, Callable[[], Awaitable[int]]]) -> dict[str, float]:
    """Best results/s of each run, interleaved round by round so that noise hits all alike."""
    best = dict.fromkeys(runs, 0.0)
    for round_ in range(rounds):
        for name, run in abba(round_, runs):
            started = time.perf_counter()
            done = await run()
            best[name] = max(best[name], done / (time.perf_counter() - started))
    return best


async def throughput(count: int, concurrency: int, rounds: int = 6) -> None:
    print(f"\n(b) {count} completed ids, concurrency {concurrency}, best of {rounds} rounds")
    ids = [f"task-{i}" for i in range(count)]
    with server_process(count, 0.0) as url:
        async with deerluma.Session(api_key=KEY, base_url=url) as s:

            async def ours() -> int:
                results = await s.wait_many(ids, concurrency=concurrency)
                return sum(isinstance(g, deerluma.Generation) for g in results.values())

            best = await _rounds(
                rounds, {"bare": lambda: bare_loop(url, KEY, ids, concurrency), "ours": ours}
            )
    share = best["ours"] / best["bare"]
    print(
        f"  server in another process: bare aiohttp {best['bare']:,.0f} results/s, "
        f"wait_many {best['ours']:,.0f} results/s, wait_many / bare {share:.2f}x"
        f"   target >= 0.8x: {'met' if share >= 0.8 else 'MISSED'}"
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
            while polled < count and not batch.done():  # noqa: ASYNC110 - a progress probe
                await asyncio.sleep(0.05)
            if batch.done():  # an id gave up (a loaded machine's timeouts): say so, not hang
                ended = batch.result().values()
                lost = [e for e in ended if not isinstance(e, deerluma.Generation)]
                print(f"\n(m) the batch ended early: {len(lost)} ids gave up ({lost[:1]})")
                return
            gc.collect()
            during = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            batch.cancel()
            await asyncio.gather(batch, return_exceptions=True)
    per_task = (during - before) / count
    print(f"\n(m) {count} ids waiting, each polled once and holding its last Generation")
    print(f"  {per_task / 1024:.2f} KiB per waiting task (target < 5 KiB)")


async def main(args: argparse.Namespace) -> None:
    print("bench_batch (no max_rps anywhere: the Session finds the limit)")
    await _batch(args.tasks, args.rps, args.seed, retry_after=1.0)
    await _batch(args.tasks, args.rps, args.seed, retry_after=False)
    await _singles(300, 50.0, args.seed)
    await _shared(args.tasks // 2, args.rps, args.seed)
    await _wrong_key(1000)
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
