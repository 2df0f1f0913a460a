"""run: a video for each job of a file, durably, with a live status line."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..exceptions import (
    ArgumentError,
    DeerLumaError,
)
from ..jobs import JobResult, JobState, RunStats

if TYPE_CHECKING:
    pass
from .app import App, _is_terminal, _read_text
from .output import _job_line, _run_summary


async def cmd_run(app: App) -> int:
    from ..jobs import load_jobs

    a = app.args
    text = await asyncio.to_thread(_read_text, a.jobs, "jobs")
    jobs = load_jobs(text.splitlines(), a.jobs)
    counts: dict[JobState, int] = {}
    settled: list[JobResult] = []
    stats = RunStats()
    started = time.monotonic()
    # Lines go to stdout unless it is the terminal that shows the status line.
    lines = a.json or not (app.live and _is_terminal(app.out))

    def line() -> str:
        elapsed = time.monotonic() - started
        return status_line(len(settled), len(jobs), counts, stats, elapsed)

    async with app.session() as s:
        runs = s.run(
            jobs,
            out=a.out,
            ledger=a.ledger,
            max_active=a.max_active,
            creates_in_flight=a.creates_in_flight,
            wait_timeout=a.wait_timeout,
            resubmit_unknown=a.resubmit_unknown,
            retry_failed=a.retry_failed,
            stats=stats,
        )
        with contextlib.ExitStack() as stack:
            status = stack.enter_context(app.console.status(line())) if app.live else None
            ticking = asyncio.ensure_future(_tick(status, line)) if status else None
            try:
                async with runs as results:
                    async for result in results:
                        settled.append(result)
                        counts[result.state] = counts.get(result.state, 0) + 1
                        if a.json:
                            app.emit(_job_line(result))
                        elif lines:
                            where = result.path or result.error or ""
                            print(f"{result.key}\t{result.state.value}\t{where}", file=app.out)
                        if status is not None:
                            status.update(line())
            except ArgumentError:  # refused before anything was sent: only why
                raise
            except (DeerLumaError, asyncio.CancelledError):  # stopped: what settled, then why
                if ticking is not None:
                    ticking.cancel()
                stack.close()
                _run_summary(app, settled, app.console.file, stopped=True)
                raise
            finally:
                if ticking is not None:
                    ticking.cancel()
    return _run_summary(app, settled, app.console.file)


def status_line(
    settled: int, total: int, counts: dict[JobState, int], stats: RunStats, elapsed: float
) -> str:
    """The run's status line: settled so far by state, what runs now (and whether creates
    are the bottleneck, naming the flag), jobs per minute, the time left."""
    rate = settled / max(1e-9, elapsed)
    left = total - settled
    eta = f", about {_duration(left / rate)} left" if rate > 0 and left else ""
    parts = [f"{n} {state.value}" for state, n in sorted(counts.items())]
    running = stats.active - stats.creating - stats.waiting_to_create
    now = [f"{stats.creating} creating", f"{max(0, running)} running"] if stats.active else []
    if stats.waiting_to_create:
        now.append(
            f"{stats.waiting_to_create} waiting to be created: creates are the bottleneck "
            "(--creates-in-flight)"
        )
    return (
        f"{settled}/{total} settled ({', '.join(parts + now) or 'starting'}); "
        f"{rate * 60:.1f} jobs/min{eta}"
    )


async def _tick(status: Any, line: Callable[[], str]) -> None:
    """The status line, kept fresh between results (jobs running, creates queued)."""
    while True:
        await asyncio.sleep(0.5)
        status.update(line())


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"
