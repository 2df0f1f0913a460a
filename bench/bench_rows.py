"""Gateways that serve their own rows: deerluma beside a plain 3 s loop, behind a refreshed row.

new-api and its forks answer a task's GET from their own database row, which a
background pass refreshes (service/task_polling.go): a pass walks the
unfinished rows, oldest first, `refresh_gap` seconds apart, then rests
`refresh` seconds. `FakeDeerAPI(refresh=..., refresh_gap=...)` is that
gateway. Each waiter gets its own fake, with the same tasks at the same times,
so neither one's rows lengthen the other's passes; both run at once in the same
process, with a fresh Session each (nothing learned). Each case runs in two
rounds (other tasks), pooled: a 40-task p95 is one lag. Lag counts from the
moment the row turned final: nobody can know sooner. Time is scaled (see
--scale); lags are in virtual seconds. The live rows of the same comparison are
`bench_wait`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Awaitable, Callable

import attrs

import deerluma
from deerluma.testing import FakeDeerAPI, ScaledClock

from .bench_wait import NAIVE_INTERVAL, Outcome, naive_wait, table

GAP = 0.05


@attrs.frozen
class Case:
    name: str
    tasks: int
    refresh: float
    hinted: bool
    batch: bool
    #: (polls ratio, lag p95 ratio, lag p50 ratio) at most, None where the issue sets none.
    targets: tuple[float | None, float | None, float | None]
    low: float = 20.0
    high: float = 60.0


CASES = (
    Case("R1 (40 single waits, hinted, 15 s refresh)", 40, 15.0, True, False, (0.5, 1.0, None)),
    Case("R2 (200 ids, one batch, hinted, 15 s refresh)", 200, 15.0, True, True, (0.5, 1.0, None)),
    Case("R3 (40 ids, one batch, hinted, 5 s refresh)", 40, 5.0, True, True, (0.8, 1.0, 0.5)),
    Case(
        "R4 (40 ids, one batch, no estimate, 15 s refresh)",
        40,
        15.0,
        False,
        True,
        (1.0, 1.05, None),
    ),
)


async def run_waiter(
    kind: str,
    case: Case,
    plans: list[tuple[float, float]],
    clock: ScaledClock,
) -> Outcome:
    outcome = Outcome()
    async with FakeDeerAPI(clock=clock, refresh=case.refresh, refresh_gap=GAP) as fake:
        fake.record_requests = False
        ids = [
            fake.add_generation(
                f"{kind}-{index}",
                duration=duration,
                estimate=case.hinted,
                estimate_bias=bias,
                shape="web" if case.hinted else "new",
            )
            for index, (duration, bias) in enumerate(plans)
        ]
        async with deerluma.Session(
            api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep
        ) as session:

            def seen(task_id: str, g: deerluma.Generation | None) -> None:
                if g is None:
                    outcome.lost += 1
                    return
                if g.id != task_id or not g.is_completed:
                    outcome.misreported += 1
                outcome.polls.append(fake.polls[task_id])
                outcome.lags.append(clock() - fake.shows_final_at(task_id))

            if kind == "deerluma" and case.batch:
                async for result in session.as_completed(ids):
                    seen(result.task_id, result.generation)
                return outcome

            async def one(task_id: str) -> None:
                wait: Callable[[], Awaitable[deerluma.Generation]]
                if kind == "deerluma":
                    wait = lambda: session.wait_until_completed(task_id)  # noqa: E731
                else:
                    wait = lambda: naive_wait(session, task_id, clock.sleep)  # noqa: E731
                try:
                    g = await wait()
                except deerluma.DeerLumaError:
                    seen(task_id, None)
                    return
                seen(task_id, g)

            await asyncio.gather(*(one(task_id) for task_id in ids))
    return outcome


def report(case: Case, outcomes: dict[str, Outcome]) -> None:
    rows = table(case.name, outcomes)
    ours, plain = rows["deerluma"], rows["naive"]
    ratios = tuple(a / b if b else float("nan") for a, b in zip(ours, plain, strict=True))
    names = ("polls", "lag p95", "lag p50")
    line = "  deerluma / naive: " + ", ".join(
        f"{name} {value:.2f}x" for name, value in zip(names, ratios, strict=True)
    )
    wanted = [
        f"{name} <= {limit:g}"
        for name, limit in zip(names, case.targets, strict=True)
        if limit is not None
    ]
    clean = all(not o.lost and not o.misreported for o in outcomes.values())
    met = clean and all(
        limit is None or round(value, 2) <= limit
        for value, limit in zip(ratios, case.targets, strict=True)
    )
    line += f"   target {', '.join(wanted)}, none lost: {'met' if met else 'MISSED'}"
    print(line)


async def run_case(case: Case, scale: float, seed: int) -> dict[str, Outcome]:
    rng = random.Random(seed)
    plans = [(rng.uniform(case.low, case.high), rng.uniform(0.7, 1.3)) for _ in range(case.tasks)]
    clock = ScaledClock(scale)
    ours, plain = await asyncio.gather(
        run_waiter("deerluma", case, plans, clock), run_waiter("naive", case, plans, clock)
    )
    return {"deerluma": ours, "naive": plain}


async def main(scale: float, seed: int, rounds: int, only: str | None) -> None:
    print(
        f"bench_rows: a gateway that serves its own rows ({GAP:g} s between rows in a pass),"
        f" deerluma beside a plain {NAIVE_INTERVAL:g} s loop, time scaled x{scale:g},"
        f" {rounds} rounds of each case (other tasks, a fresh Session each) pooled"
    )
    for case in CASES:
        if only is None or case.name.startswith(only):
            pooled = {"deerluma": Outcome(), "naive": Outcome()}
            for round_ in range(rounds):
                for kind, outcome in (await run_case(case, scale, seed + round_)).items():
                    pooled[kind].polls += outcome.polls
                    pooled[kind].lags += outcome.lags
                    pooled[kind].lost += outcome.lost
                    pooled[kind].misreported += outcome.misreported
            report(case, pooled)


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=10.0, help="virtual seconds per real second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each case, pooled")
    parser.add_argument("--only", help="run the cases whose name starts with this")
    args = parser.parse_args(argv)
    asyncio.run(main(args.scale, args.seed, args.rounds, args.only))


if __name__ == "__main__":
    cli()
