"""Rate limits as new-api gateways enforce them, each case beside a plain 3 s loop in the same run.

Default Session settings, no ``max_rps``; the fake server behaves as new-api
does (middleware/model-rate-limit.go, controller/relay.go):

(u) 5 % of answers are new-api's "upstream saturated" 429 (no Retry-After);
    300 tasks of 3-9 s with estimates, one batch;
(s) a mixed-fault soak: 15 % of answers faulted (502, 503, 429 with
    ``Retry-After: 1``, resets, truncated bodies, HTML pages); 500 tasks of 3 s;
(w) new-api's window: 600 successes per 60 s for the key, 429 naming it and no
    Retry-After; 200 tasks of 20-60 s, no estimate (on a clock 4x real time);
(f) 8 worker processes on one key, 1000 tasks of 3-9 s, a 100 req/s bucket
    with ``Retry-After: 1``: 429 share, and wall time over an oracle that polls
    each task once, at completion, within the limit. Then the same fleet on
    several machines (each worker with its own ``DEERLUMA_RATE_DIR`` and
    ``TMPDIR``: nothing on disk is shared): with no store (each machine alone),
    and sharing the rate through one Redis (``DEERLUMA_RATE_STORE``; a
    redis-server of the bench's own); 16 workers on 4 machines; and Redis
    killed 4 s into a run of 4 workers on 4 machines.

The plain loop is what people write first: per task, ``GET; sleep(3)`` until
terminal, whatever the answer. Lag is the time from a generation's completion
to the moment the caller learns of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator

import aiohttp
import attrs

import deerluma
from deerluma.testing import FakeDeerAPI, Fault, ScaledClock

from .bench_batch import blind_line, ideal_wall
from .common import percentile, ratio

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@attrs.frozen
class Run:
    """One side of a scenario: what the caller saw and what the server saw."""

    lags: list[float]
    lost: int
    requests: int
    throttled: int

    @property
    def p95(self) -> float:
        return percentile(self.lags, 95)

    @property
    def share(self) -> float:
        return 100 * self.throttled / max(1, self.requests)


def _report(name: str, plain: Run, ours: Run, targets: Iterable[tuple[str, bool]]) -> None:
    print(f"\n{name}")
    for label, run in (("plain loop", plain), ("deerluma", ours)):
        print(
            f"  {label:10}  lag p50 {percentile(run.lags, 50):6.2f}s  p95 {run.p95:6.2f}s"
            f"  requests {run.requests:6}  429s {run.share:5.1f} %  lost {run.lost}"
        )
    print(
        f"  deerluma / plain: lag p95 {ratio(ours.p95, plain.p95)},"
        f" requests {ratio(ours.requests, plain.requests)}"
    )
    for label, met in targets:
        print(f"  target {label}: {'met' if met else 'MISSED'}")


async def plain_loop(fake: FakeDeerAPI, ids: list[str], clock: Clock, sleep: Sleep) -> Run:
    """Per task: GET, and if not terminal (or not an answer at all), sleep 3 s and ask again."""
    lags: list[float] = []
    lost = 0
    url = f"{fake.url}/dream-machine/v1/generations/"
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with aiohttp.ClientSession(headers=headers) as http:

        async def one(task_id: str) -> None:
            nonlocal lost
            for _ in range(10_000):
                try:
                    async with http.get(url + task_id) as resp:
                        body = await resp.json(content_type=None) if resp.status == 200 else {}
                except (aiohttp.ClientError, ValueError, TimeoutError):
                    body = {}
                state = body.get("state") if isinstance(body, dict) else None
                if state in ("completed", "failed"):
                    lags.append(clock() - fake.finishes_at(task_id))
                    return
                await sleep(3.0)
            lost += 1

        await asyncio.gather(*(one(i) for i in ids))
    return _run(fake, lags, lost)


async def ours(fake: FakeDeerAPI, ids: list[str], clock: Clock, sleep: Sleep) -> Run:
    """One batch with default settings."""
    lags: list[float] = []
    lost = 0
    async with deerluma.Session(
        api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=sleep
    ) as s:
        async for r in s.as_completed(ids):
            if r.generation is None:
                lost += 1
                print(f"    lost {r.task_id}: {r.error}", file=sys.stderr)
                continue
            lags.append(clock() - fake.finishes_at(r.task_id))
    return _run(fake, lags, lost)


def _run(fake: FakeDeerAPI, lags: list[float], lost: int) -> Run:
    throttled = sum(1 for r in fake.requests if r.status == 429)
    return Run(lags, lost, len(fake.requests), throttled)


async def _side(
    side: Callable[[FakeDeerAPI, list[str], Clock, Sleep], Awaitable[Run]],
    make: Callable[[Clock], FakeDeerAPI],
    durations: list[float],
    speed: float,
    **generation: object,
) -> Run:
    clock = ScaledClock(speed)
    async with make(clock) as fake:
        ids = [fake.add_generation(duration=d, **generation) for d in durations]  # type: ignore[arg-type]
        return await side(fake, ids, clock, clock.sleep)


async def _both(
    make: Callable[[Clock], FakeDeerAPI],
    durations: list[float],
    speed: float = 1.0,
    **generation: object,
) -> tuple[Run, Run]:
    plain = await _side(plain_loop, make, durations, speed, **generation)
    mine = await _side(ours, make, durations, speed, **generation)
    return plain, mine


async def upstream(seed: int) -> None:
    rng = random.Random(seed)
    durations = [rng.uniform(3, 9) for _ in range(300)]
    mix = (Fault.upstream_saturated(),)

    def make(clock: Clock) -> FakeDeerAPI:
        return FakeDeerAPI(clock=clock, fault_rate=0.05, fault_mix=mix, seed=seed)

    plain, mine = await _both(make, durations)
    _report(
        "(u) 5 % upstream-saturated 429s; 300 tasks of 3-9 s with estimates, one batch",
        plain,
        mine,
        [
            ("lag p95 <= 0.5x plain", mine.p95 <= 0.5 * plain.p95),
            ("requests <= 1.05x plain", mine.requests <= 1.05 * plain.requests),
            ("nothing lost", mine.lost == 0),
        ],
    )


async def soak(seed: int) -> None:
    mix = (
        Fault.error(502),
        Fault.error(503, {"detail": "service unavailable"}),
        Fault.rate_limit(1),
        Fault.reset(),
        Fault.truncated(),
        Fault.html(502),
    )

    def make(clock: Clock) -> FakeDeerAPI:
        return FakeDeerAPI(clock=clock, fault_rate=0.15, fault_mix=mix, seed=seed)

    plain, mine = await _both(make, [3.0] * 500)
    _report(
        "(s) 15 % faulted answers (429 with Retry-After: 1 among them); 500 tasks of 3 s",
        plain,
        mine,
        [("lag p95 <= 1.0x plain", mine.p95 <= plain.p95), ("nothing lost", mine.lost == 0)],
    )


async def window(seed: int) -> None:
    rng = random.Random(seed)
    durations = [rng.uniform(20, 60) for _ in range(200)]

    def make(clock: Clock) -> FakeDeerAPI:
        return FakeDeerAPI(clock=clock, window_limit=600, window_minutes=1, seed=seed)

    plain, mine = await _both(make, durations, speed=4.0, estimate=False, shape="new")
    _report(
        "(w) new-api window, 600 per 60 s; 200 tasks of 20-60 s, no estimate (4x clock)",
        plain,
        mine,
        [
            ("429s < 1 %", mine.share < 1.0),
            ("lag p95 <= 1.0x plain", mine.p95 <= plain.p95),
            ("requests <= 0.3x plain", mine.requests <= 0.3 * plain.requests),
            ("nothing lost", mine.lost == 0),
        ],
    )


# -- (f): a fleet of worker processes on one key ------------------------------------------
# The generations start when every worker has started (imports on a small machine take a
# second or two, which is no part of what is measured): the parent says "start" to the
# server, then "go" to the workers.
async def _fleet_server(tasks: int, rps: float, seed: int) -> None:
    """Serve `tasks` generations (task-0 ...) of 3-9 s from "start"; at stdin's end, a tally."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    async with FakeDeerAPI(max_rps=rps, retry_after=1.0, seed=seed) as fake:
        print(fake.url, flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        for i in range(tasks):
            fake.add_generation(
                f"task-{i}", duration=rng.uniform(3, 9), estimate=False, shape="new"
            )
        start = fake.clock()
        print(json.dumps({"started": time.time()}), flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        limited = [r.at - start for r in fake.requests if r.status == 429]
        seconds = [0] * (1 + int(max(limited, default=0)))
        for at in limited:
            seconds[int(at)] += 1
        tally = {"requests": len(fake.requests), "throttled": len(limited), "by_second": seconds}
        print(json.dumps(tally), flush=True)


async def _fleet_worker(url: str, ids: list[str]) -> None:
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    async with deerluma.Session(api_key="fake-key-0123456789", base_url=url) as s:
        results = await s.wait_many(ids)
    lost = sum(1 for r in results.values() if not isinstance(r, deerluma.Generation))
    print(json.dumps({"lost": lost, "done": time.time()}), flush=True)


@attrs.frozen
class _FleetRun:
    requests: int
    throttled: int
    lost: int
    wall: float
    done: list[float]
    by_second: list[int]

    @property
    def share(self) -> float:
        return 100 * self.throttled / max(1, self.requests)


@contextlib.contextmanager
def _redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of the bench's own, on a free port (a run may kill it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen([*argv, "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):  # up within a second
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.01)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.kill()
        proc.wait()


def _fleet_once(
    workers: int,
    tasks: int,
    rps: float,
    seed: int,
    machines: int = 1,
    store: str | None = None,
    kill: Callable[[], None] | None = None,
) -> _FleetRun:
    """One run: `workers` processes spread over `machines` (each machine its own
    DEERLUMA_RATE_DIR and TMPDIR), sharing `store` if given; `kill` is called 4 s in."""
    python = sys.executable
    folders = [tempfile.mkdtemp(prefix=f"machine{m}-") for m in range(machines)]
    server = subprocess.Popen(
        [python, "-m", "bench.bench_gateway", "_server", str(tasks), str(rps), str(seed)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    share = [list(range(tasks))[w::workers] for w in range(workers)]
    envs = []
    for w in range(workers):
        env = dict(os.environ)
        if machines > 1:
            folder = folders[w % machines]
            env.update(DEERLUMA_RATE_DIR=os.path.join(folder, "rates"), TMPDIR=folder)
        if store is not None:
            env["DEERLUMA_RATE_STORE"] = store
        envs.append(env)
    procs = [
        subprocess.Popen(
            [python, "-m", "bench.bench_gateway", "_worker", url, *(f"task-{i}" for i in part)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for part, env in zip(share, envs, strict=True)
    ]
    for proc in procs:
        assert proc.stdout is not None
        proc.stdout.readline()  # "ready"
    server.stdin.write("start\n")
    server.stdin.flush()
    started = json.loads(server.stdout.readline())["started"]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    if kill is not None:
        time.sleep(4.0)
        kill()
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    tally = json.loads(server.communicate("")[0].strip().splitlines()[-1])
    done = sorted(o["done"] - started for o in outs)
    return _FleetRun(
        tally["requests"],
        tally["throttled"],
        sum(o["lost"] for o in outs),
        done[-1],
        done,
        tally["by_second"],
    )


def fleet(
    workers: int,
    tasks: int,
    rps: float,
    seed: int,
    runs: int = 3,
    *,
    machines: int = 1,
    redis: bool = False,
    kill: bool = False,
    target: float = 2.0,
) -> None:
    """`runs` runs of the same tasks (8 processes on a 2-core machine differ from run to run
    by more than the target's margin): each is printed, the targets are judged on the
    median."""
    rng = random.Random(seed)
    durations = [rng.uniform(3, 9) for _ in range(tasks)]
    ideal = ideal_wall(durations, rps)
    where = "one machine" if machines == 1 else f"{machines} machines"
    how = ", sharing one Redis" if redis else (", no store" if machines > 1 else "")
    killed = "; Redis killed 4 s in" if kill else ""
    print(
        f"\n(f) {workers} worker processes on {where}{how}{killed}; one key; {tasks} tasks of "
        f"3-9 s; {rps:g} req/s"
    )
    results = []
    for n in range(runs):
        with contextlib.ExitStack() as stack:
            store, proc = stack.enter_context(_redis_server()) if redis else (None, None)
            run = _fleet_once(
                workers, tasks, rps, seed, machines, store, proc.kill if kill and proc else None
            )
        results.append(run)
        print(
            f"  run {n + 1}: requests {run.requests} ({run.requests / tasks:.2f}/task), "
            f"429s {run.throttled} ({run.share:.2f} %), lost {run.lost}, "
            f"wall {run.wall:.2f}s ({ratio(run.wall, ideal)} the oracle); "
            f"workers done after {run.done[0]:.1f}-{run.done[-1]:.1f} s; "
            f"429s in each second {run.by_second}"
        )
    share = statistics.median(r.share for r in results)
    wall = statistics.median(r.wall for r in results)
    lost = sum(r.lost for r in results)
    print(
        f"  median of {runs}: 429s {share:.2f} %, wall {wall:.2f}s, oracle {ideal:.2f}s, "
        f"wall / oracle {ratio(wall, ideal)}"
    )
    print(blind_line(wall, durations, rps))
    if kill:
        print(f"  target every id answered, nothing lost: {'met' if not lost else 'MISSED'}")
        return
    if machines > 1 and not redis:
        print("  (each machine alone: the baseline the store is measured against)")
        return
    print(f"  target 429s < {target:g} %: {'met' if share < target else 'MISSED'}")
    if target == 2.0:
        print(f"  target wall <= 1.3x oracle: {'met' if wall <= 1.3 * ideal else 'MISSED'}")
    print(f"  target nothing lost: {'met' if not lost else 'MISSED'}")


def fleets(seed: int, workers: int, which: str) -> None:
    """The fleet rows: one machine; 8 machines alone, then sharing Redis; 16 on 4; a kill."""
    if "1" in which:
        fleet(workers, 1000, 100.0, seed)
    if "8" in which:
        fleet(8, 1000, 100.0, seed, machines=8)
        fleet(8, 1000, 100.0, seed, machines=8, redis=True)
    if "6" in which:
        fleet(16, 1000, 100.0, seed, machines=4, redis=True, target=2.5)
    if "k" in which:
        fleet(4, 1000, 100.0, seed, runs=1, machines=4, redis=True, kill=True)


async def main(args: argparse.Namespace) -> None:
    print("bench_gateway (default Sessions, no max_rps; beside a plain GET-sleep(3) loop)")
    chosen = set(args.only or "uswf")
    if "u" in chosen:
        await upstream(args.seed)
    if "s" in chosen:
        await soak(args.seed)
    if "w" in chosen:
        await window(args.seed)


def cli(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_server":
        asyncio.run(_fleet_server(int(argv[1]), float(argv[2]), int(argv[3])))
        return
    if argv and argv[0] == "_worker":
        asyncio.run(_fleet_worker(argv[1], argv[2:]))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", help="letters of the scenarios to run (default: uswf)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--fleets",
        default="186k",
        help="fleet rows: 1 one machine, 8 eight machines (alone, "
        "then Redis), 6 sixteen workers on 4, k Redis killed (default: all)",
    )
    args = parser.parse_args(argv)
    asyncio.run(main(args))
    if "f" in (args.only or "uswf"):
        fleets(args.seed, args.workers, args.fleets)


if __name__ == "__main__":
    cli()
