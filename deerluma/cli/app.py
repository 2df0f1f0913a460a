"""One run of the command: its Session, where output goes, and the live progress of a
batch."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .._batch import CONCURRENCY
from .._download import Asset, destination, into
from .._models import Generation
from .._session import Session
from ..exceptions import (
    DeerLumaError,
    DestinationExists,
    GenerationFailed,
    WaitTimeout,
)

if TYPE_CHECKING:
    from .._render import Row


class App:
    """One run of the command: where output goes and how the Session is made."""

    def __init__(self, args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> None:
        from rich.console import Console

        self.args = args
        self.out = stdout
        plain = bool(os.environ.get("NO_COLOR")) or getattr(args, "quiet", False)
        # NO_COLOR: no escape sequence at all (bold, and the live status line, too).
        self.console: Console = Console(
            file=stderr,
            stderr=True,
            color_system=None if plain else "auto",
            quiet=bool(getattr(args, "quiet", False)),
        )
        self.live = self.console.is_terminal and not plain
        self.quiet = bool(getattr(args, "quiet", False))
        self.clock: Callable[[], float] | None = None
        self.sleep: Callable[[float], Awaitable[None]] | None = None

    def session(self, *, max_rps: float | None = None) -> Session:
        return Session(
            api_key=self.args.api_key,
            base_url=self.args.base_url,
            timeout=self.args.request_timeout or 30.0,
            rate_store=self.args.rate_store,
            max_rps=max_rps,
            clock=self.clock,
            sleep=self.sleep,
        )

    def emit(self, record: dict[str, object]) -> None:
        from .._render import result_line

        print(result_line(record), file=self.out, flush=True)

    async def track(
        self,
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
            if row is not None and row.update(g) and not self.live:
                self.console.print(f"{row.task_id}: {g.state.value}", highlight=False)

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

        if not self.live:
            await follow()
            return rows
        table = progress_table(rows, title, session.rate)
        with Live(table, console=self.console, refresh_per_second=8) as live:
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
        self, session: Session, generation: Generation, folder: Path
    ) -> DeerLumaError | None:
        """Save one task's video into a --download folder; its error, if any, for its row.

        One file in the way or one refused link never stops the others.
        """
        overwrite = self.args.overwrite
        there = destination(into(folder), generation.id, "video")
        existed = there.exists()
        try:
            path = await self.save(
                session, generation, into(folder), overwrite=overwrite, skip_complete=True
            )
        except DestinationExists as exc:
            self.console.print(
                f"{exc.dest} exists and differs from the stored video; not replaced "
                "(--overwrite replaces it)",
                highlight=False,
            )
            return exc
        except DeerLumaError as exc:
            return exc
        if existed and not overwrite:
            self.console.print(f"{path} is already complete; skipped", highlight=False)
        else:
            self.console.print(f"saved {path}", highlight=False)
        return None

    async def save(
        self,
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
        if not self.live:
            return await download()
        columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            bar = progress.add_task(f"downloading {generation.id[:8]}", total=None)
            return await download(
                on_progress=lambda done, total: progress.update(bar, completed=done, total=total)
            )


def _last_seen(error: DeerLumaError | None) -> Generation | None:
    """The generation an error carries: the failed one, or the last state before a timeout."""
    if isinstance(error, GenerationFailed):
        return error.generation
    return error.last if isinstance(error, WaitTimeout) else None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
