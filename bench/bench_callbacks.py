"""Callbacks benchmark: waits that callbacks wake, with polling as the safety net.

40 creates of 8-16 s generations (no estimate), all at once, each with a
`callback_url` pointing at the Session's own `callback_handler()` mounted in
an aiohttp app, every wait over real sockets against FakeDeerAPI. Two runs,
one Session, no setting changed between them: callbacks all delivered (20 %
duplicated), then 30 % of callbacks lost. Beside them, the same waits with
no callbacks (plain polling) for the baseline. Time is scaled; lags are in
virtual seconds (from the generation's completion to the wait returning it).
"""

from __future__ import annotations

import argparse
import asyncio
import random

import attrs
from aiohttp import web

import deerluma
from deerluma.testing import FakeDeerAPI, ScaledClock

from .common import percentile

TASKS = 40


@attrs.frozen
class Run:
    name: str
    loss: float
    duplicates: float
    callbacks: bool = True
    #: Targets: GETs per task, lag p95 (virtual seconds).
    targets: tuple[float, float] | None = None


RUNS = (
    Run("all delivered, 20% duplicated", 0.0, 0.2, targets=(3.5, 0.5)),
    Run("30% of callbacks lost", 0.3, 0.0, targets=(6.0, 3.5)),
    Run("no callbacks (baseline: polling only)", 0.0, 0.0, callbacks=False),
)


async def _receiver(session: deerluma.Session) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/luma-callback", session.callback_handler(secret="s3cret"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}/luma-callback?token=s3cret"


async def one_run(
    session: deerluma.Session, fake: FakeDeerAPI, clock: ScaledClock, run: Run, url: str
) -> bool:
    fake.callback_loss, fake.callback_duplicates = run.loss, run.duplicates
    fake.polls.clear()
    before = session.callbacks
    options = {"callback_url": url} if run.callbacks else {}

    async def one() -> tuple[str, float, bool]:
        g = await session.generate("a deer", timeout=120, **options)  # type: ignore[arg-type]
        return g.id, clock(), g.is_completed

    outcomes = await asyncio.gather(*(one() for _ in range(TASKS)), return_exceptions=True)
    done = [o for o in outcomes if isinstance(o, tuple) and o[2]]
    lost = TASKS - len(done)
    early = sum(at < fake.finishes_at(task_id) for task_id, at, _ in done)
    lags = [at - fake.finishes_at(task_id) for task_id, at, _ in done]
    gets = sum(fake.polls.values()) / TASKS
    p95 = percentile(lags, 95)
    view = session.callbacks
    line = (
        f"  {run.name:<38} lost {lost}, early {early}, GETs/task {gets:.2f}, "
        f"lag p50 {percentile(lags, 50):.2f}s p95 {p95:.2f}s"
    )
    if run.callbacks:
        line += (
            f"  [polls found {view.delivered - before.delivered} states announced, "
            f"{view.missed - before.missed} not; reliability now {view.reliability:.2f}]"
        )
    met = True
    if run.targets is not None:
        max_gets, max_p95 = run.targets
        met = lost == 0 and early == 0 and gets <= max_gets and p95 <= max_p95
        line += (
            f"\n  {'':<38} target 0 lost, 0 early, <= {max_gets} GETs/task, "
            f"p95 <= {max_p95}s: {'met' if met else 'MISSED'}"
        )
    print(line)
    return met


async def main(args: argparse.Namespace) -> None:
    print(
        f"bench_callbacks: {TASKS} creates of 8-16 s, no estimate, all at once; "
        f"time x{args.speed}; virtual seconds"
    )
    clock = ScaledClock(args.speed)
    rng = random.Random(args.seed)

    def script(_: object) -> dict[str, object]:
        return {"duration": rng.uniform(8, 16), "estimate": False, "shape": "new"}

    async with FakeDeerAPI(clock=clock, create_script=script, seed=args.seed) as fake:
        fake.record_requests = False

        def new_session() -> deerluma.Session:
            return deerluma.Session(
                api_key=fake.api_key, base_url=fake.url, clock=clock, sleep=clock.sleep
            )

        for title, runs in (
            ("one Session, default settings, these runs in a row:", RUNS[:2]),
            ("a fresh Session for each:", RUNS[:2]),
            ("a fresh Session:", RUNS[2:]),
        ):
            print(title)
            session = new_session()
            runner, url = await _receiver(session)
            try:
                for run in runs:
                    if title.startswith("a fresh") and run is not runs[0]:
                        await runner.cleanup()
                        await session.aclose()
                        session = new_session()
                        runner, url = await _receiver(session)
                    await one_run(session, fake, clock, run, url)
            finally:
                await runner.cleanup()
                await session.aclose()


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--speed", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(main(parser.parse_args(argv)))


if __name__ == "__main__":
    cli()
