"""The `deerluma` command: get, wait, wait-many, download, create, and a keyless demo.

Exit codes: 0 success, 1 a generation failed, 2 usage error, 3 timeout,
4 API, authentication or network error, 5 a local file error, 130
interrupted, 141 output closed early (a pipe into `head`, say).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO

from . import __version__
from ._batch import CONCURRENCY
from ._create import ASPECT_RATIOS, CreateOptions
from ._download import Asset, destination, into
from ._models import Generation
from ._policy import seconds_of
from ._session import Session
from .exceptions import (
    ConfigurationError,
    DeadlineExceeded,
    DeerLumaError,
    DestinationError,
    DestinationExists,
    GenerationFailed,
    InvalidTaskId,
    WaitTimeout,
)
from .jobs import LEDGER_FILE, WAIT_TIMEOUT, JobResult, JobsFileError, JobState, RunStats

if TYPE_CHECKING:
    from rich.console import Console

    from ._render import Row

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_ERROR, EXIT_LOCAL = 0, 1, 2, 3, 4, 5
# 128 + SIGINT, 128 + SIGPIPE, 128 + SIGTERM, as shells report them
EXIT_INTERRUPTED, EXIT_PIPE, EXIT_TERMINATED = 130, 141, 143
EXIT_CODES = (
    "Exit codes: 0 ok, 1 a generation failed, 2 usage, 3 timeout, 4 API/auth/network error, "
    "5 local file error, 130 interrupted (Ctrl-C), 141 output closed early, 143 terminated "
    "(SIGTERM)."
)
ASSET_CHOICES = ("video", "video_raw", "thumbnail", "last_frame")

log = logging.getLogger("deerluma")


def exit_code_for(errors: Iterable[DeerLumaError | None]) -> int:
    """The worst outcome decides: a local file error beats an API error, which beats a
    timeout, which beats a failed generation."""
    code = EXIT_OK
    for error in errors:
        if error is None:
            continue
        if isinstance(error, GenerationFailed):
            code = max(code, EXIT_FAILED)
        elif isinstance(error, WaitTimeout | DeadlineExceeded):
            code = max(code, EXIT_TIMEOUT)
        elif isinstance(error, DestinationError):
            code = max(code, EXIT_LOCAL)
        elif isinstance(error, InvalidTaskId):  # a mistake in the command, as in `get`
            code = max(code, EXIT_USAGE)
        else:
            code = max(code, EXIT_ERROR)
    return code


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """--api-key, --base-url and -v, accepted before the command and after it (as aws does).

    After the command they default to SUPPRESS, so an unset one never hides one set before.
    """
    unset = None if defaults else argparse.SUPPRESS
    parser.add_argument("--api-key", default=unset, help="API key (default: $DEERAPI_API_KEY)")
    parser.add_argument(
        "--base-url", default=unset, help="API base URL (default: $DEERAPI_BASE_URL or DeerAPI)"
    )
    parser.add_argument(
        "--rate-store",
        default=unset,
        metavar="URL",
        help="share the key's rate with Sessions on other machines: redis://host:6379/0 "
        "(default: $DEERLUMA_RATE_STORE, else this machine's Sessions only)",
    )
    parser.add_argument(
        "--request-timeout",
        type=_positive_seconds,
        default=unset,
        metavar="SECONDS",
        help="one request's limit, connecting to the last byte (default 30)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="print results and errors only: no progress, no summaries",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="debug logging, tracebacks",
    )


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    example: str,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=f"example: {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, defaults=False)
    return parser


def _count(text: str) -> int:
    """--tasks: a whole number from 1 to the demo's prompts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= len(_DEMO_PROMPTS):
        raise argparse.ArgumentTypeError(f"must be 1 to {len(_DEMO_PROMPTS)}, got {value}")
    return value


_RATIOS_HELP = "width:height, one of " + ", ".join(sorted(ASPECT_RATIOS))


def _batch_options(parser: argparse.ArgumentParser, *, timeout: int) -> None:
    """The options wait and wait-many share: a deadline, and how hard to poll."""
    parser.add_argument(
        "--timeout", type=float, default=float(timeout), help=f"seconds (default {timeout})"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=CONCURRENCY,
        help=f"polls in flight at most (default {CONCURRENCY})",
    )
    parser.add_argument(
        "--max-rps",
        type=float,
        help="a hard cap on requests per second (default: learned from the API's 429s)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deerluma",
        description="Dream Machine (Luma) video generation through DeerAPI.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"deerluma {__version__}")
    _global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = _command(
        commands,
        "demo",
        "try everything against a built-in fake server (no key, no network)",
        "deerluma demo --tasks 5 --speed 4",
    )
    demo.add_argument(
        "--tasks", type=_count, default=20, help="simulated generations, 1-24 (default 20)"
    )
    demo.add_argument("--out", type=Path, help="folder for the downloaded video (default: temp)")
    demo.add_argument("--speed", type=float, default=1.0, help="run simulated time N times faster")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="only serve the fake, until Ctrl-C, and print how to point the other commands "
        "at it (to try run, status, wait-many... with no key)",
    )
    demo.add_argument(
        "--duration",
        type=float,
        help="with --serve: seconds each generation takes (default 5)",
    )
    demo.add_argument(
        "--port",
        type=_port,
        default=0,
        help="with --serve: the port to listen on, on 127.0.0.1 (default: a free one)",
    )
    demo.add_argument(
        "--refresh",
        type=float,
        help="with --serve: answer from rows refreshed every S seconds, as new-api does "
        "(default: answer live)",
    )

    get = _command(commands, "get", "show one generation", "deerluma get TASK_ID --json")
    get.add_argument("task_id", metavar="ID", help="the task id")
    get.add_argument(
        "--json", action="store_true", help="print the generation's body as the API sent it"
    )
    get.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds for the whole call, retries included (default 60)",
    )

    wait = _command(
        commands,
        "wait",
        "wait for generations, with live progress",
        "deerluma wait ID1 ID2 --download videos/ --timeout 600",
    )
    wait.add_argument("task_ids", nargs="+", metavar="ID", help="task ids to wait for")
    _batch_options(wait, timeout=900)
    wait.add_argument(
        "--download", type=Path, metavar="DIR", help="save each finished video into DIR"
    )
    wait.add_argument(
        "--overwrite", action="store_true", help="replace videos already in the --download DIR"
    )
    wait.add_argument(
        "--json",
        action="store_true",
        help='one JSON line per task: {"task_id", "state", "error", "generation"}',
    )

    many = _command(
        commands,
        "wait-many",
        "wait for ids read one per line; resumable with --out",
        "deerluma wait-many --from ids.txt --out results.jsonl",
    )
    many.add_argument(
        "--from", dest="source", default="-", metavar="FILE", help="ids, one per line ('-': stdin)"
    )
    _batch_options(many, timeout=3600)
    many.add_argument(
        "--json",
        action="store_true",
        help="print JSON lines (what wait-many always prints; accepted for scripts)",
    )
    many.add_argument(
        "--out",
        type=Path,
        help="append JSON lines here; a re-run skips ids it already settled (completed, "
        "failed, not found, invalid) and tries timeouts and transient errors again",
    )

    download = _command(
        commands,
        "download",
        "save a finished generation's file",
        "deerluma download TASK_ID videos/ --asset thumbnail",
    )
    download.add_argument("task_id", metavar="ID", help="the task id")
    # A str, not a Path: Path drops the trailing "/" that says "a folder".
    download.add_argument("dest", help="a file, or a folder (existing, or ending in /): DIR/ID.mp4")
    download.add_argument(
        "--asset", choices=ASSET_CHOICES, default="video", help="which file (default video)"
    )
    download.add_argument("--overwrite", action="store_true", help="replace an existing file")

    create = _command(
        commands,
        "create",
        "start a generation",
        'deerluma create "a deer in a misty forest" --aspect-ratio 16:9 --wait --download .',
    )
    create.add_argument("prompt", help="what the video shows")
    _generation_options(create)
    create.add_argument("--start-image", metavar="URL", help="an image for the first frame")

    extend = _command(
        commands,
        "extend",
        "start a generation that continues an earlier one's video",
        'deerluma extend TASK_ID "the deer walks into the light" --wait --download .',
    )
    extend.add_argument("task_id", metavar="ID", help="the generation to continue")
    extend.add_argument("prompt", help="what happens next")
    _generation_options(extend)

    run = _command(
        commands,
        "run",
        "make a video for each job of a JSON-lines file, durably: re-run to continue",
        "deerluma run jobs.jsonl --out videos/ --max-active 10",
    )
    run.add_argument(
        "jobs",
        metavar="JOBS.jsonl",
        help='one job per line: {"key": "clip-001", "prompt": "...", ...create options}',
    )
    run.add_argument("--out", type=Path, required=True, metavar="DIR", help="videos: DIR/KEY.mp4")
    run.add_argument(
        "--ledger",
        metavar="URL",
        help="postgresql://... to share the jobs among workers (default: a SQLite file in DIR)",
    )
    run.add_argument(
        "--max-active",
        type=_positive_int,
        default=10,
        metavar="N",
        help="generations running at once, across all workers (default 10)",
    )
    run.add_argument(
        "--creates-in-flight",
        type=_positive_int,
        default=1,
        metavar="N",
        help="creates sent at once by this worker (default 1, the safe choice: a kill leaves "
        "at most N jobs whose outcome is unknown)",
    )
    run.add_argument(
        "--wait-timeout",
        type=_positive_seconds,
        default=WAIT_TIMEOUT,
        metavar="SECONDS",
        help=f"a generation not ended by then is reported timed out and its slot freed; a "
        f"re-run waits on it again (default {WAIT_TIMEOUT:g})",
    )
    run.add_argument(
        "--resubmit-unknown",
        action="store_true",
        help="create again the jobs whose earlier create may have gone through (may be charged "
        "twice)",
    )
    run.add_argument(
        "--retry-failed", action="store_true", help="create again the jobs whose generation failed"
    )
    run.add_argument("--json", action="store_true", help="one JSON line per job as it settles")

    status = _command(
        commands,
        "status",
        "show a durable run's jobs: counts by state, and those that need a person",
        "deerluma status videos/",
    )
    status.add_argument("out", nargs="?", type=Path, metavar="DIR", help="a run's --out folder")
    status.add_argument("--ledger", metavar="URL", help="a postgresql://... ledger instead")
    status.add_argument("--json", action="store_true", help="one JSON line per job")
    return parser


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be seconds > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, like 0.0.0.0:8080, got {value!r}")
    return host.strip("[]"), int(port)


def _generation_options(create: argparse.ArgumentParser) -> None:
    """The options create and extend share."""
    create.add_argument(
        "--aspect-ratio", choices=sorted(ASPECT_RATIOS), metavar="W:H", help=_RATIOS_HELP
    )
    create.add_argument(
        "--loop", action="store_true", default=None, help="make the video loop seamlessly"
    )
    create.add_argument("--model", help="the model to use (the gateway's default if unset)")
    create.add_argument("--resolution", help="e.g. 720p")
    create.add_argument("--duration", help="e.g. 5s")
    create.add_argument("--end-image", metavar="URL", help="an image for the last frame")
    create.add_argument("--callback-url", metavar="URL", help="the API calls it on each change")
    create.add_argument(
        "--callback-listen",
        type=_host_port,
        metavar="HOST:PORT",
        help="receive the API's callbacks here while waiting (implies --wait); they must reach "
        "it: give its public address as --callback-url if it is not HOST:PORT itself",
    )
    create.add_argument("--wait", action="store_true", help="wait until it is finished")
    create.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait (default 900)"
    )
    create.add_argument(
        "--download", type=Path, metavar="DIR", help="save the video (implies --wait)"
    )
    create.add_argument(
        "--overwrite", action="store_true", help="replace a video already in the --download DIR"
    )
    create.add_argument("--json", action="store_true", help="print JSON instead of a table")


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
        from ._render import result_line

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

        from ._render import Row, progress_table

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


async def cmd_get(app: App) -> int:
    from ._render import generation_fields, print_generation, result_line

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
    from ._render import generation_json, summary_table

    ids = list(dict.fromkeys(app.args.task_ids))
    async with app.session(max_rps=app.args.max_rps) as s:
        rows = await app.track(s, ids, timeout=app.args.timeout, concurrency=app.args.concurrency)
        if app.args.download:
            for row in rows:
                if row.error is None and row.generation is not None:
                    row.error = await app.save_row(s, row.generation, app.args.download)
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

    from ._render import generation_json, result_line

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


def _last_seen(error: DeerLumaError | None) -> Generation | None:
    """The generation an error carries: the failed one, or the last state before a timeout."""
    if isinstance(error, GenerationFailed):
        return error.generation
    return error.last if isinstance(error, WaitTimeout) else None


async def cmd_download(app: App) -> int:
    async with app.session() as s:
        g = await s.get_generation(app.args.task_id)
        path = await app.save(
            s, g, app.args.dest, asset=app.args.asset, overwrite=app.args.overwrite
        )
    print(path, file=app.out)
    return EXIT_OK


async def cmd_create(app: App) -> int:
    from ._render import generation_json

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
            (row,) = await app.track(s, [g.id], timeout=a.timeout, callbacks=listening)
            g, error = row.generation or g, row.error
            if error is None and a.download:
                error = await app.save_row(s, g, a.download)
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


async def cmd_demo(app: App) -> int:
    from ._render import summary_table
    from .testing import FakeDeerAPI, ScaledClock

    duration, refresh = app.args.duration, app.args.refresh
    if app.args.serve:
        duration = 5.0 if duration is None else duration
        return await _serve_fake(
            app,
            seconds_of("--duration", duration, zero=True),
            None if refresh is None else seconds_of("--refresh", refresh),
            app.args.port,
        )
    if duration is not None:
        raise ValueError("--duration goes with --serve (the demo's generations take 3-13 s)")
    if refresh is not None:
        raise ValueError("--refresh goes with --serve (the demo's fake answers live)")
    prompts = _DEMO_PROMPTS[: app.args.tasks]

    def script(body: Any) -> dict[str, object]:
        index = prompts.index(body["prompt"]) if body["prompt"] in prompts else 0
        fails = index in (5, 13)
        return {
            "duration": 3.0 + (index * 7 % 11),
            "estimate": index % 4 != 3,  # some gateways send no estimate
            "estimate_bias": (0.8, 1.0, 1.25)[index % 3],
            "failure_reason": "prompt flagged by moderation" if fails else None,
            "pending_for": 1.0,
        }

    app.console.print(
        "[bold]deerluma demo[/]: a fake DeerAPI on this machine; no key, no network, no cost."
    )
    clock = ScaledClock(app.args.speed)
    app.clock, app.sleep = clock, clock.sleep
    async with FakeDeerAPI(create_script=script, clock=clock) as fake:
        app.args.api_key, app.args.base_url = fake.api_key, fake.url
        async with app.session() as s:
            created = await asyncio.gather(*(s.create_generation(p) for p in prompts))
            ids = [g.id for g in created]
            rows = await app.track(s, ids, timeout=60, labels=prompts, title="generations")
            done = next((r.generation for r in rows if r.error is None), None)
            if done is not None:
                with contextlib.ExitStack() as stack:
                    folder = app.args.out
                    if folder is None:  # nothing left behind in the temp dir: --out keeps it
                        temporary = tempfile.TemporaryDirectory(prefix="deerluma-demo-")
                        folder = Path(stack.enter_context(temporary))
                    path = await app.save(s, done, into(folder))
                    size = path.stat().st_size
                    kept = "" if app.args.out else "; removed again at exit (--out DIR keeps it)"
                    app.console.print(f"downloaded one result to {path} ({size} bytes){kept}")
    app.console.print(summary_table(rows))
    failed = exit_code_for(r.error for r in rows)
    # Two generations fail on purpose: that is the demo working, not the command failing.
    return EXIT_OK if failed == EXIT_FAILED else failed


async def _serve_fake(app: App, duration: float, refresh: float | None, port: int) -> int:
    """Serve a fake DeerAPI on this machine (real time: each generation takes `duration`
    seconds; rows refreshed every `refresh` seconds, if given) until Ctrl-C; print the two
    variables that point every other command at it."""
    from .testing import FakeDeerAPI

    async with FakeDeerAPI(
        create_duration=duration, refresh=refresh, refresh_gap=0.05, port=port
    ) as fake:
        fake.record_requests = False  # it may serve for hours
        print(
            f"a fake DeerAPI serves at {fake.url} (no network, no cost); Ctrl-C stops it.\n"
            "In another shell:\n"
            f"  export DEERAPI_BASE_URL={fake.url} DEERAPI_API_KEY={fake.api_key}\n"
            '  echo \'{"key": "clip-001", "prompt": "a deer"}\' > jobs.jsonl\n'
            "  deerluma run jobs.jsonl --out videos/",
            file=app.out,
            flush=True,
        )
        await asyncio.Event().wait()  # until Ctrl-C
    return EXIT_OK


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
    from .jobs import load_jobs

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
        rate = len(settled) / max(1e-9, time.monotonic() - started)
        left = len(jobs) - len(settled)
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
            f"{len(settled)}/{len(jobs)} settled ({', '.join(parts + now) or 'starting'}); "
            f"{rate * 60:.1f} jobs/min{eta}"
        )

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


async def _tick(status: Any, line: Callable[[], str]) -> None:
    """The status line, kept fresh between results (jobs running, creates queued)."""
    while True:
        await asyncio.sleep(0.5)
        status.update(line())


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


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
    from .jobs import Ledger

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


_DEMO_PROMPTS = [
    "a deer walking through a misty forest at dawn",
    "waves rolling over black sand, slow motion",
    "a paper boat drifting down a rainy street",
    "timelapse of clouds over a mountain ridge",
    "a hummingbird hovering at a red flower",
    "neon city street in the rain, cyberpunk",
    "a cup of coffee steaming on a wooden table",
    "northern lights over a frozen lake",
    "a cat stretching in a sunbeam",
    "lanterns rising into a night sky",
    "a river delta seen from above, golden hour",
    "a lighthouse in a storm",
    "cherry blossoms falling in a quiet temple garden",
    "an astronaut planting a flag on a red planet",
    "a fox curling up in fresh snow",
    "dust motes in a library's light",
    "a hot air balloon over vineyards",
    "koi fish circling in a pond",
    "a train crossing a stone viaduct",
    "fireworks reflected in a harbour",
    "a snail crossing a mossy log",
    "sand dunes shifting in the wind",
    "a violinist on an empty stage",
    "rain on a tin roof, close up",
]

_COMMANDS: dict[str, Callable[[App], Coroutine[Any, Any, int]]] = {
    "demo": cmd_demo,
    "get": cmd_get,
    "wait": cmd_wait,
    "wait-many": cmd_wait_many,
    "download": cmd_download,
    "create": cmd_create,
    "extend": cmd_create,
    "run": cmd_run,
    "status": cmd_status,
}


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run the command line; returns the exit code."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    try:
        import rich  # noqa: F401 - the CLI needs the `cli` extra
    except ImportError:
        print("deerluma: the command line needs rich: pip install 'deerluma[cli]'", file=stderr)
        return EXIT_USAGE
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has already printed the usage error or help
        return int(exc.code or 0)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s")
    app = App(args, stdout, stderr)
    try:
        return asyncio.run(_until_terminated(_COMMANDS[args.command](app)))
    except KeyboardInterrupt:
        print("interrupted", file=stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        print("terminated", file=stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:  # the reader went away (`| head -1`): stop quietly, as Unix tools do
        _quiet(stdout)
        return EXIT_PIPE
    except FileExistsError as exc:  # said for a terminal: the flag, not the Python argument
        where = getattr(exc, "dest", None) or exc.filename or str(exc).split(" exists")[0]
        # Only where the command has the flag (one rule: a flag a message names exists).
        hint = "the --overwrite flag replaces it" if hasattr(args, "overwrite") else ""
        _report(app, f"{where} exists", hint)
        return EXIT_USAGE
    except ConfigurationError as exc:
        if exc.missing_key:
            _report(app, "no API key: pass --api-key or set $DEERAPI_API_KEY")
            return EXIT_ERROR
        _report(app, exc)  # a key that cannot be sent, an unsafe --base-url
        return EXIT_USAGE
    except JobsFileError as exc:  # names the file's keys (aspect_ratio), not flags
        _report(app, exc, flags=False)
        return EXIT_USAGE
    except ValueError as exc:  # bad arguments, found before anything was sent
        _report(app, exc)
        return EXIT_USAGE
    except DeerLumaError as exc:
        _report(app, exc)
        return exit_code_for([exc])
    except OSError as exc:  # a file of ours (--out, a full disk): not the API's doing
        where = f"{exc.filename}: " if exc.filename else ""
        _report(app, f"{where}{exc.strerror or exc}")
        return EXIT_LOCAL


class _Terminated(Exception):
    """SIGTERM (docker stop, systemd) stopped the command, as Ctrl-C would."""


async def _until_terminated(command: Coroutine[Any, Any, int]) -> int:
    """Run `command`; SIGTERM cancels it as Ctrl-C does (its cleanup runs: a durable run
    gives creates in flight their grace), then raises _Terminated."""
    import signal

    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # Windows; a thread
        loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await command
    except asyncio.CancelledError:
        if terminated:
            raise _Terminated from None
        raise
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGTERM)


def _quiet(stdout: TextIO) -> None:
    """Send what is left for a closed stdout nowhere (Python would complain at exit)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())


def _report(app: App, exc: BaseException | str, hint: str = "", *, flags: bool = True) -> None:
    if app.args.verbose:
        app.console.print_exception()
    message = for_terminal(str(exc)) if flags else str(exc)
    text = f"deerluma: error: {message}" + (f" ({hint})" if hint else "")
    print(text, file=app.console.file)


#: The library's messages name Python arguments; on a terminal they are the flags.
_FLAGS = {
    "Session(max_rps=...)": "--max-rps",
    "loop=True": "--loop",
    "overwrite=True": "--overwrite",
    "retry_failed=True": "--retry-failed",
    " (None: no deadline)": "",
    **{
        name: "--" + name.replace("_", "-")
        for name in (
            "max_rps",
            "base_url",
            "api_key",
            "aspect_ratio",
            "start_image",
            "end_image",
            "callback_url",
            "concurrency",
            "timeout",
        )
    },
}
_FLAG_PATTERN = re.compile(
    "|".join(
        re.escape(name) if not name.isidentifier() else rf"(?<![\w-]){name}(?!\w)"
        for name in sorted(_FLAGS, key=len, reverse=True)
    )
)


def for_terminal(message: str) -> str:
    """A message of the library's, with each Python argument it names given as its flag."""
    return _FLAG_PATTERN.sub(lambda match: _FLAGS[match.group(0)], message)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
