"""wait-many: ids from a file or stdin, JSON lines, resumable with --out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..exceptions import (
    DeerLumaError,
    DestinationError,
    GenerationFailed,
    WaitTimeout,
)

if TYPE_CHECKING:
    pass
from .app import App, _read_text
from .errors import exit_code_for
from .output import _last_seen


def _read_ids(source: str) -> list[str]:
    text = _read_text(source, "ids")
    ids = [line.strip() for line in text.splitlines()]
    return list(dict.fromkeys(i for i in ids if i and not i.startswith("#")))


#: Errors no later run can change (no such task, an id that cannot be one): finished too.
_PERMANENT_ERRORS = frozenset({"NotFoundError", "InvalidTaskId"})


def _finished_in(out: Path | None) -> tuple[set[str], list[int]]:
    """Ids a previous run's --out file already settled (completed, failed, or a permanent
    error), and the numbers of the lines that could not be read (cut short by a killed run).

    Timeouts and transient errors are tried again.
    """
    if out is None or not out.exists():
        return set(), []
    done = set()
    unread = []
    try:
        text = out.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DestinationError(f"cannot read {out}: {exc.strerror or exc}", dest=out) from exc
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            unread.append(number)
            continue
        if not isinstance(record, dict):
            unread.append(number)
            continue
        error = record.get("error")
        permanent = isinstance(error, dict) and error.get("type") in _PERMANENT_ERRORS
        if permanent or record.get("state") in ("completed", "failed"):
            done.add(str(record.get("task_id")))
    return done, unread


def _append_to(out: Path) -> TextIO:
    """Open --out to append records, each on a line of its own even after a cut-off one."""
    try:
        handle = out.open("a+", encoding="utf-8")
        if handle.tell():
            handle.seek(handle.tell() - 1)
            if handle.read(1) != "\n":
                handle.write("\n")  # a line cut midway: the next record starts afresh
        return handle
    except OSError as exc:
        raise DestinationError(f"cannot write {out}: {exc.strerror or exc}", dest=out) from exc


async def cmd_wait_many(app: App) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .output import generation_json, result_line

    ids = _read_ids(app.args.source)
    skipped, unread = _finished_in(app.args.out)
    todo = [i for i in ids if i not in skipped]
    if unread:
        lines = ", ".join(map(str, unread[:10])) + (", ..." if len(unread) > 10 else "")
        app.console.print(
            f"{app.args.out}: could not read line{'s' if len(unread) > 1 else ''} {lines} "
            "(cut short by an interrupted run?); their ids are tried again",
            highlight=False,
        )
    if skipped:
        app.console.print(f"skipping {len(ids) - len(todo)} ids already finished in {app.args.out}")
    out = _append_to(app.args.out) if app.args.out else app.out
    errors: list[DeerLumaError | None] = []
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=app.console, disable=not app.live) as progress:
            bar = progress.add_task("waiting", total=len(todo))
            async with app.session(max_rps=app.args.max_rps) as s:
                results = s.as_completed(
                    todo, concurrency=app.args.concurrency, timeout=app.args.timeout
                )
                async for r in results:
                    seen = r.generation or _last_seen(r.error)
                    record = generation_json(r.task_id, seen, r.error)
                    print(result_line(record), file=out, flush=True)
                    errors.append(r.error)
                    progress.advance(bar)
    finally:
        if out is not app.out:
            out.close()
    app.console.print(_summary(errors, len(ids) - len(todo)), highlight=False)
    return exit_code_for(errors)


def _summary(errors: Sequence[DeerLumaError | None], skipped: int) -> str:
    """One line for the end of a batch, on a terminal or not: what became of each id."""
    counts: dict[str, int] = {}
    for error in errors:
        kind = (
            "completed"
            if error is None
            else "failed"
            if isinstance(error, GenerationFailed)
            else "timed out"
            if isinstance(error, WaitTimeout)
            else type(error).__name__
        )
        counts[kind] = counts.get(kind, 0) + 1
    parts = [f"{count} {kind}" for kind, count in counts.items()]
    if skipped:
        parts.append(f"{skipped} finished before")
    return f"{len(errors) + skipped} ids: " + (", ".join(parts) or "nothing to do")
