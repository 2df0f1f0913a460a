"""The command line's arguments: one parser, each command's own flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .. import __version__
from .._batch import CONCURRENCY
from .._create import ASPECT_RATIOS
from ..jobs import WAIT_TIMEOUT

if TYPE_CHECKING:
    pass
from .demo import _DEMO_PROMPTS
from .errors import EXIT_CODES

ASSET_CHOICES = ("video", "video_raw", "thumbnail", "last_frame")


T = TypeVar("T")


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool, sends: bool = True) -> None:
    """--api-key, --base-url, ... and -q, -v: accepted before the command and after it (as
    aws does); after a command that sends nothing (`status`, `demo`), only -q and -v.

    After the command they default to SUPPRESS, so an unset one never hides one set before.
    """
    unset = None if defaults else argparse.SUPPRESS
    if sends:
        _network_options(parser, unset)
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


def _network_options(parser: argparse.ArgumentParser, unset: object) -> None:
    """The options of commands that talk to the API."""
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


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    example: str,
    *,
    sends: bool = True,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=f"example: {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, defaults=False, sends=sends)
    return parser


def _count(text: str) -> int:
    """--tasks: a whole number from 1 to the demo's prompts."""
    value = _parsed(text, int, "a whole number")
    _within(1 <= value <= len(_DEMO_PROMPTS), f"must be 1 to {len(_DEMO_PROMPTS)}, got {value}")
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
        sends=False,
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
        sends=False,
    )
    status.add_argument("out", nargs="?", type=Path, metavar="DIR", help="a run's --out folder")
    status.add_argument("--ledger", metavar="URL", help="a postgresql://... ledger instead")
    status.add_argument("--json", action="store_true", help="one JSON line per job")
    return parser


def _parsed(text: str, convert: Callable[[str], T], expected: str) -> T:
    """`text` as a number, or the one message every numeric flag gives when it is not."""
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _within(ok: bool, message: str) -> None:
    if not ok:
        raise argparse.ArgumentTypeError(message)


def _port(text: str) -> int:
    value = _parsed(text, int, "a port number")
    _within(0 <= value <= 65535, f"a port is 0 to 65535, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    value = _parsed(text, float, "seconds")
    _within(0 < value < float("inf"), f"must be seconds > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _parsed(text, int, "a whole number")
    _within(value >= 1, f"must be at least 1, got {value}")
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
