"""All the command line prints, in one place: generations as rich tables on a terminal and
plain text elsewhere, JSON lines, a batch's live table, downloads with a bar, and what run
and status say about jobs. rich (the `cli` extra) is imported where it draws."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .._batch import CONCURRENCY
from .._download import Asset, destination, into
from .._gate import RateView
from .._models import Generation, GenerationState
from .._session import Session
from ..exceptions import DeerLumaError, DestinationExists, GenerationFailed, WaitTimeout
from ..jobs import JobResult, JobState
from .errors import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT

if TYPE_CHECKING:  # rich, the `cli` extra, is imported where it draws
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .app import App

__all__ = [
    "Row",
    "generation_json",
    "print_generation",
    "progress_table",
    "result_line",
    "summary_table",
]

_STYLES = {
    GenerationState.COMPLETED: "green",
    GenerationState.FAILED: "red",
    GenerationState.PENDING: "yellow",
    GenerationState.QUEUED: "yellow",
    GenerationState.PROCESSING: "cyan",
    GenerationState.DREAMING: "cyan",
    GenerationState.UNKNOWN: "magenta",
}


class Row:
    """What the live table knows about one task."""

    __slots__ = ("error", "finished", "generation", "label", "seen_at", "started", "task_id")

    def __init__(self, task_id: str, label: str = "") -> None:
        self.task_id = task_id
        self.label = label
        self.generation: Generation | None = None
        self.error: DeerLumaError | None = None
        self.started = time.monotonic()
        self.seen_at = self.started
        self.finished: float | None = None

    def update(self, generation: Generation) -> bool:
        """Record a newer view; True when its state changed."""
        before, self.generation = self.generation, generation
        self.seen_at = time.monotonic()
        return before is None or before.state is not generation.state

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def status(self) -> Text:
        from rich.text import Text

        if self.error is not None:
            if self.generation is not None and self.generation.state is GenerationState.FAILED:
                return Text("failed", style="red")
            return Text(type(self.error).__name__, style="red")
        if self.generation is None:
            return Text("starting", style="dim")
        state = self.generation.state
        return Text(state.value, style=_STYLES[state])

    def detail(self) -> str:
        g = self.generation
        if self.error is not None:
            reason = g.failure_reason if g is not None and g.failure_reason else str(self.error)
            return reason[:60]
        if g is None:
            return ""
        if g.estimate_wait_seconds is not None:
            # Count down between polls: the waiter sleeps until the estimate runs out.
            left = max(0.0, g.estimate_wait_seconds - (time.monotonic() - self.seen_at))
            return f"~{left:.0f}s left"
        if isinstance(g.queue_state, Mapping) and "position" in g.queue_state:
            return f"queue position {g.queue_state['position']}"
        return ""


def progress_table(rows: Iterable[Row], title: str = "", rate: RateView | None = None) -> Table:
    """One row per task: id, state, estimate or queue position, elapsed time.

    With `rate`, a footer says how fast the Session is sending and how many 429s it got.
    """
    caption = None
    if rate is not None:
        how = "capped" if rate.max_rps is not None else "learned"
        caption = f"{rate.rps:.0f} requests/s ({how}), {rate.rate_limited} rate-limited"
    from rich.table import Table

    table = Table(title=title or None, caption=caption, expand=False)
    table.add_column("task")
    table.add_column("state")
    table.add_column("estimate / reason")
    table.add_column("elapsed", justify="right")
    for row in rows:
        name = row.label or row.task_id
        table.add_row(name[:44], row.status(), row.detail(), f"{row.elapsed:5.1f}s")
    return table


def summary_table(rows: Iterable[Row]) -> Table:
    """The closing tally: how many completed, failed, or errored, and how long it took."""
    rows = list(rows)
    completed = sum(1 for r in rows if r.error is None and r.generation is not None)
    failed = sum(
        1 for r in rows if r.generation is not None and r.generation.state is GenerationState.FAILED
    )
    other = len(rows) - completed - failed
    slowest = max((r.elapsed for r in rows), default=0.0)
    from rich.table import Table

    table = Table(title="summary")
    for name in ("tasks", "completed", "failed", "errors", "longest wait"):
        table.add_column(name, justify="right")
    table.add_row(str(len(rows)), str(completed), str(failed), str(other), f"{slowest:.1f}s")
    return table


def generation_json(
    task_id: str, generation: Generation | None, error: DeerLumaError | None
) -> dict[str, object]:
    """One JSON-ready record per task: what the CLI writes with --json and to --out."""
    record: dict[str, object] = {
        "task_id": task_id,
        "state": generation.state.value if generation is not None else None,
        "error": None if error is None else {"type": type(error).__name__, "message": str(error)},
    }
    if generation is not None:
        record["generation"] = dict(generation.raw)
    return record


def result_line(record: Mapping[str, object]) -> str:
    """A record as one JSON line."""
    return json.dumps(record, ensure_ascii=False, default=str)


def generation_fields(generation: Generation) -> list[tuple[str, str]]:
    """One generation as (field, value) pairs: what `get` shows, as a table or as lines."""
    fields = [("id", generation.id), ("state", generation.state.value)]
    for name in ("prompt", "created_at", "estimate_wait_seconds", "failure_reason"):
        value = getattr(generation, name)
        if value is not None:
            fields.append((name, str(value)))
    for name in ("video", "video_raw", "thumbnail", "last_frame"):
        media = getattr(generation, name)
        # The link to fetch, as `wait` prints it: the presigned download_url when there is one.
        url = media and (getattr(media, "download_url", None) or media.url)
        if url:
            size = f" ({media.width}x{media.height})" if media.width and media.height else ""
            fields.append((name, f"{url}{size}"))
    return fields


def print_generation(console: Console, generation: Generation) -> None:
    """A readable view of one generation."""
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, title=generation.id)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in generation_fields(generation)[1:]:
        shown = Text(value, style=_STYLES[generation.state]) if name == "state" else value
        table.add_row(name.replace("_", " "), shown)
    console.print(table)


async def track(
    app: App,
    session: Session,
    task_ids: Sequence[str],
    *,
    timeout: float,
    concurrency: int = CONCURRENCY,
    labels: Sequence[str] = (),
    title: str = "",
    callbacks: bool = False,
) -> list[Row]:
    """Wait for the tasks as one batch, with a live table on stderr; return the rows.

    `callbacks`: a receiver of ours (--callback-listen) hears the API's
    callbacks; otherwise a --callback-url's calls go elsewhere, so plain polling.
    """
    from rich.live import Live

    rows = [Row(t, labels[i] if i < len(labels) else "") for i, t in enumerate(task_ids)]
    by_id = {row.task_id: row for row in rows}

    def heard(g: Generation) -> None:
        row = by_id.get(g.id)
        if row is not None and row.update(g) and not app.live:
            app.console.print(f"{row.task_id}: {g.state.value}", highlight=False)

    async def follow() -> None:
        batch = session.as_completed(
            task_ids,
            concurrency=concurrency,
            timeout=timeout,
            on_update=heard,
            callbacks=None if callbacks else False,
        )
        async with batch as results:
            async for result in results:
                row = by_id[result.task_id]
                row.error = result.error
                row.generation = result.generation or _last_seen(result.error)
                row.finished = time.monotonic()

    if not app.live:
        await follow()
        return rows
    table = progress_table(rows, title, session.rate)
    with Live(table, console=app.console, refresh_per_second=8) as live:
        job = asyncio.ensure_future(follow())
        try:
            while not job.done():
                live.update(progress_table(rows, title, session.rate))
                await asyncio.wait([job], timeout=0.125)
            live.update(progress_table(rows, title, session.rate))
            await job
        finally:
            job.cancel()
    return rows


async def save_row(
    app: App, session: Session, generation: Generation, folder: Path
) -> DeerLumaError | None:
    """Save one task's video into a --download folder; its error, if any, for its row.

    One file in the way or one refused link never stops the others.
    """
    overwrite = app.args.overwrite
    there = destination(into(folder), generation.id, "video")
    existed = there.exists()
    try:
        path = await save(
            app, session, generation, into(folder), overwrite=overwrite, skip_complete=True
        )
    except DestinationExists as exc:
        app.console.print(
            f"{exc.dest} exists and differs from the stored video; not replaced "
            "(--overwrite replaces it)",
            highlight=False,
        )
        return exc
    except DeerLumaError as exc:
        return exc
    if existed and not overwrite:
        app.console.print(f"{path} is already complete; skipped", highlight=False)
    else:
        app.console.print(f"saved {path}", highlight=False)
    return None


async def save(
    app: App,
    session: Session,
    generation: Generation,
    dest: str | Path,
    *,
    asset: Asset = "video",
    overwrite: bool = False,
    skip_complete: bool = False,
) -> Path:
    """Download with a progress bar on a terminal."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TransferSpeedColumn,
    )

    download = functools.partial(
        session.download,
        generation,
        dest,
        asset=asset,
        overwrite=overwrite,
        skip_complete=skip_complete,
    )
    if not app.live:
        return await download()
    columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=app.console, transient=True) as progress:
        bar = progress.add_task(f"downloading {generation.id[:8]}", total=None)
        return await download(
            on_progress=lambda done, total: progress.update(bar, completed=done, total=total)
        )


def _last_seen(error: DeerLumaError | None) -> Generation | None:
    """The generation an error carries: the failed one, or the last state before a timeout."""
    if isinstance(error, GenerationFailed):
        return error.generation
    return error.last if isinstance(error, WaitTimeout) else None


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
