"""run and status: durable jobs from the command line."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..exceptions import (
    DeerLumaError,
)
from ..jobs import LEDGER_FILE, JobResult, JobState, RunStats

if TYPE_CHECKING:
    pass
from .app import App, _is_terminal
from .errors import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT
from .waits import _read_text

#: A job's end, as an error type in JSON lines (the shape every command's errors have).
_JOB_ERRORS = {
    JobState.FAILED: "JobFailed",
    JobState.UNKNOWN: "CreateOutcomeUnknown",
    JobState.TIMED_OUT: "WaitTimeout",
}


def _job_line(result: JobResult) -> dict[str, object]:
    error = None
    if result.error is not None:
        kind = _JOB_ERRORS.get(result.state, "JobError")
        error = {"type": kind, "message": result.error}
    return {
        "key": result.key,
        "state": result.state.value,
        "task_id": result.task_id,
        "path": result.path,
        "error": error,
    }


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


def _run_summary(
    app: App, results: Sequence[JobResult], file: IO[str], *, stopped: bool = False
) -> int:
    """Counts by state, then each job that needs a person (not with -q); the exit code."""
    if app.quiet and file is not app.out:
        file = io.StringIO()
    counts: dict[str, int] = {}
    for result in results:
        counts[result.state.value] = counts.get(result.state.value, 0) + 1
    said = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    if stopped:
        print(f"stopped after {len(results)} jobs settled{': ' if said else ''}{said}", file=file)
    else:
        print(f"{len(results)} jobs: {said}", file=file)
    failed = [r for r in results if r.state is JobState.FAILED]
    unknown = [r for r in results if r.state is JobState.UNKNOWN]
    late = [r for r in results if r.state is JobState.TIMED_OUT]
    for r in failed:
        print(f"  failed: {r.key}: {r.error}", file=file)
    for r in unknown:
        print(f"  outcome unknown (may be charged): {r.key}: {r.error}", file=file)
    for r in late:
        print(f"  timed out: {r.key} ({r.task_id}): a re-run waits on it again", file=file)
    if unknown:
        print(
            "  a person should check these in the provider's dashboard; --resubmit-unknown "
            "creates them again",
            file=file,
        )
    if failed:
        print("  --retry-failed creates the failed ones again", file=file)
    if late:
        return EXIT_TIMEOUT
    return EXIT_FAILED if failed or unknown else EXIT_OK


async def cmd_status(app: App) -> int:
    from ..jobs import Ledger

    a = app.args
    if (a.out is None) == (a.ledger is None):
        raise ValueError("give a run's --out folder, or --ledger URL (one of them)")
    where = a.ledger or a.out
    if a.ledger is None and not (Path(a.out) / LEDGER_FILE).exists():
        raise ValueError(f"no ledger in {a.out}: was `deerluma run ... --out {a.out}` run?")
    async with await Ledger.open(where) as ledger:
        rows = await ledger.rows()
    results = [JobResult.of(row) for row in rows]
    if a.json:
        for result in results:
            app.emit(_job_line(result))
        _run_summary(app, results, app.console.file)
    else:
        _run_summary(app, results, app.out)
    sending = [r for r in rows if r.state is JobState.SUBMITTING]
    for row in sending:  # only a worker killed mid-create leaves these; a run reaps them
        print(
            f"  outcome unknown (may be charged): {row.key}: its worker stopped while sending "
            "its create (or is sending it now)",
            file=app.console.file if a.json else app.out,
        )
    return EXIT_OK
