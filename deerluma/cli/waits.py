"""get, wait, wait-many, download, create and extend: the commands about generations."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .._create import CreateOptions
from .._session import Session
from ..exceptions import (
    DeerLumaError,
    DestinationError,
    GenerationFailed,
    WaitTimeout,
)

if TYPE_CHECKING:
    from .._render import Row
from .app import App, _is_terminal
from .errors import EXIT_OK, exit_code_for
from .progress import _last_seen, save, save_row, track


async def cmd_get(app: App) -> int:
    from .._render import generation_fields, print_generation, result_line

    async with app.session() as s:
        g = await s.get_generation(app.args.task_id, timeout=app.args.timeout)
    if app.args.json:  # the generation itself, as sent: like gh api or kubectl -o json
        print(result_line(dict(g.raw)), file=app.out, flush=True)
    elif not _is_terminal(app.out):  # piped: plain "field<TAB>value" lines a script can read
        for field, value in generation_fields(g):
            print(f"{field}\t{value}", file=app.out)
    else:
        from rich.console import Console

        plain = bool(os.environ.get("NO_COLOR"))
        print_generation(Console(file=app.out, color_system=None if plain else "auto"), g)
    return EXIT_OK


async def cmd_wait(app: App) -> int:
    from .._render import generation_json, summary_table

    ids = list(dict.fromkeys(app.args.task_ids))
    async with app.session(max_rps=app.args.max_rps) as s:
        rows = await track(app, s, ids, timeout=app.args.timeout, concurrency=app.args.concurrency)
        if app.args.download:
            for row in rows:
                if row.error is None and row.generation is not None:
                    row.error = await save_row(app, s, row.generation, app.args.download)
    for row in rows:
        if app.args.json:
            app.emit(generation_json(row.task_id, row.generation, row.error))
        else:
            print(_plain(row), file=app.out)
    if not app.args.json:
        app.console.print(summary_table(rows))
    return exit_code_for(row.error for row in rows)


def _plain(row: Row) -> str:
    g = row.generation
    if row.error is not None:
        return f"{row.task_id}\t{type(row.error).__name__}\t{row.error}"
    url = g.video.download_url or g.video.url if g is not None and g.video else ""
    return f"{row.task_id}\tcompleted\t{url}"


def _read_text(source: str, what: str) -> str:
    """A file's text ('-': stdin); a file that cannot be read is a usage mistake, named."""
    name = "stdin" if source == "-" else source
    try:
        return sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:  # a usage mistake, not a network error
        raise ValueError(f"cannot read {what} from {name}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"cannot read {what} from {name}: not UTF-8 text (byte {exc.start})"
        ) from exc


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

    from .._render import generation_json, result_line

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


async def cmd_download(app: App) -> int:
    async with app.session() as s:
        g = await s.get_generation(app.args.task_id)
        path = await save(
            app, s, g, app.args.dest, asset=app.args.asset, overwrite=app.args.overwrite
        )
    print(path, file=app.out)
    return EXIT_OK


async def cmd_create(app: App) -> int:
    from .._render import generation_json

    a = app.args
    options: CreateOptions = {
        "aspect_ratio": a.aspect_ratio,
        "loop": a.loop,
        "model": a.model,
        "resolution": a.resolution,
        "duration": a.duration,
        "end_image": a.end_image,
        "callback_url": a.callback_url,
    }
    async with app.session() as s, contextlib.AsyncExitStack() as stack:
        if a.callback_listen:
            options["callback_url"] = await stack.enter_async_context(
                _receiver(s, a.callback_listen, a.callback_url)
            )
        if a.command == "extend":
            g = await s.extend_generation(a.task_id, a.prompt, **options)
        else:
            options["start_image"] = a.start_image
            g = await s.create_generation(a.prompt, **options)
        app.console.print(f"created {g.id}", highlight=False)
        error: DeerLumaError | None = None
        if a.wait or a.download or a.callback_listen:
            listening = bool(a.callback_listen)
            (row,) = await track(app, s, [g.id], timeout=a.timeout, callbacks=listening)
            g, error = row.generation or g, row.error
            if error is None and a.download:
                error = await save_row(app, s, g, a.download)
    if a.json:
        app.emit(generation_json(g.id, g, error))
    else:
        print(g.id if error is None else f"{g.id}\t{type(error).__name__}\t{error}", file=app.out)
    return exit_code_for([error])


@contextlib.asynccontextmanager
async def _receiver(
    session: Session, listen: tuple[str, int], public: str | None
) -> AsyncIterator[str]:
    """Serve the Session's callback handler on `listen` while the block runs; yield its URL.

    A random token in the URL keeps others' POSTs out.
    """
    import secrets

    import yarl
    from aiohttp import web

    token = secrets.token_urlsafe(16)
    app = web.Application()
    app.router.add_post("/deerluma-callback", session.callback_handler(secret=token))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        host, port = listen
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ValueError(
                f"--callback-listen: cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
        if public is None:
            bound_host, bound_port = runner.addresses[0][:2]
            public = f"http://{bound_host}:{bound_port}/deerluma-callback"
        yield str(yarl.URL(public).update_query(token=token))
    finally:
        await runner.cleanup()
