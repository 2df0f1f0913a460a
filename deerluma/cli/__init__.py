"""The `deerluma` command: get, wait, wait-many, download, create, run, status, and a
keyless demo. Each command is a coroutine of its own module (`get`, `wait`, `wait_many`,
`download`, `create`, `run`, `status`, `demo`); `parser` makes the arguments, `app` the
Session, `output` all that is printed (tables, JSON lines, progress, job summaries),
`errors` the exit codes and how errors are said.

Exit codes: 0 success, 1 a generation failed, 2 usage error, 3 timeout,
4 API, authentication or network error, 5 a local file error, 130
interrupted, 141 output closed early (a pipe into `head`, say), 143
terminated (SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO

from ..exceptions import ConfigurationError, DeerLumaError
from ..jobs import JobsFileError
from .app import App
from .create import cmd_create
from .demo import cmd_demo
from .download import cmd_download
from .errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_LOCAL,
    EXIT_PIPE,
    EXIT_TERMINATED,
    EXIT_USAGE,
    _report,
    exit_code_for,
)
from .get import cmd_get
from .parser import _parser
from .run import cmd_run
from .status import cmd_status
from .wait import cmd_wait
from .wait_many import cmd_wait_many

__all__ = ["main", "run"]


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
    from .._starting import restore_interrupt

    restore_interrupt()
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
    # The library's warnings (a rate store out of reach, a state it does not know) reach the
    # person at the terminal; a library logs them, and only an application shows them.
    warnings = _Warnings(stderr)
    if not args.verbose:
        logging.getLogger("deerluma").addHandler(warnings)
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
        _report(app, exc)
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
    finally:
        logging.getLogger("deerluma").removeHandler(warnings)


class _Warnings(logging.StreamHandler):  # type: ignore[type-arg]
    """The library's warnings, one line each on the command's stderr."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.setLevel(logging.WARNING)
        self.setFormatter(logging.Formatter("deerluma: %(message)s"))


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


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
