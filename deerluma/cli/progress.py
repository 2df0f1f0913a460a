"""A batch's live progress on a terminal (a table of rows), and downloads with a bar."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._batch import CONCURRENCY
from .._download import Asset, destination, into
from .._models import Generation
from .._session import Session
from ..exceptions import DeerLumaError, DestinationExists, GenerationFailed, WaitTimeout

if TYPE_CHECKING:
    from .._render import Row
    from .app import App


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

    from .._render import Row, progress_table

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
