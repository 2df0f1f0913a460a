"""Ctrl-C while the `deerluma` command is still importing: a quiet exit 130, no traceback.

The command's imports (aiohttp, attrs, cattrs, rich...) take about half a second;
a Ctrl-C in that time used to print an import traceback. Only when this process
is the command (the ``deerluma`` script, or ``python -m deerluma``) does the
package, as it is first imported, answer SIGINT with a plain exit; the command
restores Python's own handling (KeyboardInterrupt) once it starts.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["quiet_interrupt_while_starting", "restore_interrupt"]


def _is_the_command() -> bool:
    # ``python -m deerluma`` imports the package while argv[0] is still "-m".
    first = sys.argv[0] if sys.argv else ""
    return os.path.basename(first) in ("deerluma", "deerluma.exe") or first == "-m"


def _exit_quietly(signum: int, frame: object) -> None:
    os.write(2, b"interrupted\n")
    os._exit(130)


def quiet_interrupt_while_starting() -> None:
    """While the command imports: Ctrl-C exits 130 quietly (a library import: no effect)."""
    if _is_the_command() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_quietly)


def restore_interrupt() -> None:
    """The command has started: Ctrl-C is a KeyboardInterrupt again (asyncio handles it)."""
    if signal.getsignal(signal.SIGINT) is _exit_quietly:
        signal.signal(signal.SIGINT, signal.default_int_handler)


quiet_interrupt_while_starting()  # on import: the package imports this module first
