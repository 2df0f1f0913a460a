"""Exit codes, and errors as the command line says them."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..exceptions import (
    DeadlineExceeded,
    DeerLumaError,
    DestinationError,
    GenerationFailed,
    InvalidTaskId,
    WaitTimeout,
)

if TYPE_CHECKING:
    pass
if TYPE_CHECKING:
    from .app import App


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_ERROR, EXIT_LOCAL = 0, 1, 2, 3, 4, 5
# 128 + SIGINT, 128 + SIGPIPE, 128 + SIGTERM, as shells report them
EXIT_INTERRUPTED, EXIT_PIPE, EXIT_TERMINATED = 130, 141, 143


EXIT_CODES = (
    "Exit codes: 0 ok, 1 a generation failed, 2 usage, 3 timeout, 4 API/auth/network error, "
    "5 local file error, 130 interrupted (Ctrl-C), 141 output closed early, 143 terminated "
    "(SIGTERM)."
)


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


def _report(app: App, exc: BaseException | str, hint: str = "") -> None:
    if app.args.verbose:
        app.console.print_exception()
    message = exc if isinstance(exc, str) else for_terminal(exc)
    text = f"deerluma: error: {message}" + (f" ({hint})" if hint else "")
    print(text, file=app.console.file)


#: The flag of each Python argument a library error can name (`ArgumentError.arguments`);
#: an argument with no flag keeps its Python spelling. "none" is the hint that None means
#: no deadline, which no flag can say.
FLAGS = {
    "none": "",
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
            "loop",
            "retry_failed",
            "creates_in_flight",
            "wait_timeout",
            "max_active",
        )
    },
}


def for_terminal(exc: BaseException) -> str:
    """An error of the library's as the command line says it: each argument it names, by its
    flag (from its structured fields, never its wording)."""
    if isinstance(exc, DeerLumaError):
        return exc.spelled(FLAGS)
    return str(exc)
