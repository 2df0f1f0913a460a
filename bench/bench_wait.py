"""Polling benchmark: deerluma's wait_until_completed beside a naive fixed 3 s loop.

Each scenario runs 100 tasks for each waiter against one FakeDeerAPI over
real sockets, at the same time and with the same task durations and biases,
with a fresh Session (no timing history) per scenario. Tasks start all at once
or arrive at random over a window (an app's steady stream), each waited on
from its creation. No-estimate scenarios use the gateway's newer body (no
`estimate_wait_seconds`, a zero `created_at`). Time is scaled (see --scale) so
the run is short; lags are in virtual seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable

import attrs

import deerluma
from deerluma.testing import FakeDeerAPI, ScaledClock

from .common import percentile, ratio

NAIVE_INTERVAL = 3.0


@attrs.frozen
class Scenario:
    name: str
    low: float
    high: float
    hinted: bool
    fault_rate: float = 0.0
    #: Tasks arrive at random over this many seconds (0: all at once).
    arrival: float = 0.0
    #: The issue's targets: (polls ratio, lag p95 ratio, product of both), None where unset.
    targets: tuple[float | None, float | None, float | None] = (None, None, None)


SCENARIOS = (
    Scenario("S (3-9 s, hinted)", 3, 9, True, targets=(1.0, 0.35, None)),
    Scenario("L (20-60 s, hinted)", 20, 60, True, targets=(0.35, 0.35, None)),
    Scenario("N1 (3-9 s, no estimate, all at once)", 3, 9, False, targets=(1.05, 1.05, None)),
    Scenario("N2 (20-60 s, no estimate, all at once)", 20, 60, False, targets=(1.0, 1.0, None)),
    Scenario(
        "T1 (3-9 s, no estimate, arriving over 30 s)",
        3,
        9,
        False,
        arrival=30,
        targets=(1.0, 1.0, 0.6),
    ),
    Scenario(
        "T2 (20-60 s, no estimate, arriving over 90 s)",
        20,
        60,
        False,
        arrival=90,
        targets=(1.0, 1.0, 0.6),
    ),
    Scenario("F (3-9 s, hinted, 15% faults)", 3, 9, True, fault_rate=0.15),
)


@attrs.define
class Outcome:
    polls: list[int] = attrs.Factory(list)
    lags: list[float] = attrs.Factory(list)
    lost: int = 0
    misreported: int = 0


async def naive_wait(
    session: deerluma.Session, task_id: str, sleep: Callable[[float], Awaitable[None]]
) -> deerluma.Generation:
    """What the Luma docs show: ask, sleep 3 s, ask again."""
    while True:
        g = await session.get_generation(task_id)
        if g.is_terminal:
            return g
        await sleep(NAIVE_INTERVAL)


async def run_scenario(
    scenario: Scenario, scale: float, tasks: int, seed: int
) -> dict[str, Outcome]:
    clock = ScaledClock(scale)
    rng = random.Random(seed)
    plans = [
        (
            rng.uniform(scenario.low, scenario.high),
            rng.uniform(0.7, 1.3),
            rng.uniform(0, scenario.arrival),
        )
        for _ in range(tasks)
    ]
    outcomes = {"deerluma": Outcome(), "naive": Outcome()}
    async with FakeDeerAPI(clock=clock, fault_rate=scenario.fault_rate, seed=seed) as fake:
        fake.record_requests = False
        async with deerluma.Session(
            api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep
        ) as session:

            async def one(kind: str, duration: float, bias: float, arrives: float) -> None:
                await clock.sleep(arrives)
                task_id = fake.add_generation(
                    f"{kind}-{uuid.uuid4()}",
                    duration=duration,
                    estimate=scenario.hinted,
                    estimate_bias=bias,
                    shape="web" if scenario.hinted else "new",
                )
                outcome = outcomes[kind]
                try:
                    if kind == "deerluma":
                        g = await session.wait_until_completed(task_id)
                    else:
                        g = await naive_wait(session, task_id, clock.sleep)
                except deerluma.DeerLumaError:
                    outcome.lost += 1
                    return
                seen = clock()
                if g.id != task_id or not g.is_completed:
                    outcome.misreported += 1
                outcome.polls.append(fake.polls[task_id])
                outcome.lags.append(seen - fake.finishes_at(task_id))

            await asyncio.gather(
                *(one(kind, *plan) for plan in plans for kind in ("deerluma", "naive"))
            )
    return outcomes


def table(name: str, outcomes: dict[str, Outcome]) -> dict[str, tuple[float, float, float]]:
    """Print each waiter's polls, lags and losses; return (polls, lag p95, lag p50) by waiter."""
    print(f"\n{name}")
    print(
        f"  {'waiter':<10} {'polls/task':>10} {'lag p50':>8} {'lag p95':>8}"
        f" {'lost':>5} {'wrong':>6}"
    )
    rows = {}
    for kind, o in outcomes.items():
        polls = sum(o.polls) / max(1, len(o.polls))
        p50, p95 = percentile(o.lags, 50), percentile(o.lags, 95)
        rows[kind] = (polls, p95, p50)
        print(
            f"  {kind:<10} {polls:>10.2f} {p50:>7.2f}s {p95:>7.2f}s {o.lost:>5} {o.misreported:>6}"
        )
    return rows


def report(scenario: Scenario, outcomes: dict[str, Outcome]) -> None:
    rows = table(scenario.name, outcomes)
    (polls, p95, _), (naive_polls, naive_p95, _) = rows["deerluma"], rows["naive"]
    polls_ratio, lag_ratio = polls / naive_polls, p95 / naive_p95
    line = f"  deerluma / naive: polls {ratio(polls, naive_polls)}, lag p95 {ratio(p95, naive_p95)}"
    line += f", product {polls_ratio * lag_ratio:.2f}"
    wanted = [
        f"{name} <= {limit:g}"
        for name, limit in zip(("polls", "lag", "product"), scenario.targets, strict=True)
        if limit is not None
    ]
    if wanted:
        met = all(  # as printed: two decimals (a plain loop's own cadence ties at 1.00)
            limit is None or round(value, 2) <= limit
            for value, limit in zip(
                (polls_ratio, lag_ratio, polls_ratio * lag_ratio), scenario.targets, strict=True
            )
        )
        line += f"   target {', '.join(wanted)}: {'met' if met else 'MISSED'}"
    print(line)


async def main(scale: float, tasks: int, seed: int, only: str | None) -> None:
    print(f"bench_wait: {tasks} tasks per waiter and scenario, time scaled x{scale:g}")
    for scenario in SCENARIOS:
        if only is None or scenario.name.startswith(only):
            report(scenario, await run_scenario(scenario, scale, tasks, seed))


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=10.0, help="virtual seconds per real second")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", help="run the scenarios whose name starts with this")
    args = parser.parse_args(argv)
    asyncio.run(main(args.scale, args.tasks, args.seed, args.only))


if __name__ == "__main__":
    cli()
