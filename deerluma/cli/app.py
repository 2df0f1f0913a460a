"""One run of the command: its Session, where output goes, and the live progress of a
batch."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .._session import Session

if TYPE_CHECKING:
    pass


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
        from .output import result_line

        print(result_line(record), file=self.out, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


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
