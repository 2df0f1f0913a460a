"""The errors deerluma raises; every one is a DeerLumaError.

Each message says what happened, to which task id, and what to do about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import Generation

__all__ = [
    "APIError",
    "AuthenticationError",
    "ConfigurationError",
    "CreateOutcomeUnknown",
    "DeadlineExceeded",
    "DecodeError",
    "DeerLumaError",
    "DestinationError",
    "DestinationExists",
    "DownloadError",
    "GenerationFailed",
    "InvalidTaskId",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "TransportError",
    "WaitTimeout",
    "is_transient",
]


class DeerLumaError(Exception):
    """Base class of every error deerluma raises."""

    task_id: str | None = None


class APIError(DeerLumaError):
    """The API answered with an error status.

    `status` is the HTTP status, `code` the gateway's error code if it sent
    one, `message` its explanation, `body_excerpt` a short preview of the body.
    """

    def __init__(
        self,
        status: int,
        code: str | None = None,
        message: str = "",
        body_excerpt: str = "",
        *,
        task_id: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.body_excerpt = body_excerpt
        self.task_id = task_id
        where = f" for task {task_id!r}" if task_id else ""
        code_part = f" [{code}]" if code else ""
        super().__init__(f"HTTP {status}{where}: {message}{code_part}{self._advice()}")

    def _advice(self) -> str:
        return ""


class AuthenticationError(APIError):
    """401/403: the API key is missing, wrong, or not allowed to do this."""

    def _advice(self) -> str:
        return " (check the API key: argument api_key or $DEERAPI_API_KEY)"


class NotFoundError(APIError):
    """404: no generation has this task id (or the path is wrong)."""

    def _advice(self) -> str:
        return " (check the task id and the base url)"


class RateLimitError(APIError):
    """429: too many requests; `retry_after` is the server's requested pause in seconds."""

    def __init__(
        self,
        status: int = 429,
        code: str | None = None,
        message: str = "",
        body_excerpt: str = "",
        *,
        retry_after: float | None = None,
        task_id: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(status, code, message, body_excerpt, task_id=task_id)

    def _advice(self) -> str:
        after = f" after {self.retry_after:g}s" if self.retry_after is not None else " later"
        return f" (slow down; retry{after} or set Session(max_rps=...))"


class ServerError(APIError):
    """5xx: the API or a proxy in front of it failed; usually transient."""

    def _advice(self) -> str:
        return " (a server-side fault; retry later)"


class TransportError(DeerLumaError):
    """The request did not complete: connection reset, DNS failure, or timeout.

    `request_sent` is False only when the request certainly never reached the
    server (the connection could not be opened).
    """

    def __init__(
        self, message: str, *, task_id: str | None = None, request_sent: bool = True
    ) -> None:
        self.task_id = task_id
        self.request_sent = request_sent
        super().__init__(message)


class InvalidTaskId(DeerLumaError, ValueError):
    """The task id cannot be a generation id (empty, whitespace, `/`, `..`); nothing was sent."""

    def __init__(self, task_id: str, problem: str) -> None:
        self.task_id = task_id
        super().__init__(f"invalid task id {task_id[:80]!r}: {problem}")


class ConfigurationError(DeerLumaError):
    """The Session is not set up to make requests (for example, no API key)."""


class DeadlineExceeded(DeerLumaError, TimeoutError):
    """A wait's deadline passed before a request could be made or finished.

    Waits report it as WaitTimeout (with this as its ``__cause__``); no
    public call raises it directly.
    """


class DecodeError(DeerLumaError):
    """The body is not a generation: bad JSON, an HTML page, wrong types, or another id.

    `transient` is True where the cause is likely a passing proxy fault (a cut
    or HTML body, another task's body), so asking again may succeed.
    """

    def __init__(
        self,
        message: str,
        *,
        body_excerpt: str = "",
        task_id: str | None = None,
        transient: bool = False,
    ) -> None:
        self.body_excerpt = body_excerpt
        self.task_id = task_id
        self.transient = transient
        if task_id and repr(task_id) not in message:
            message = f"{message} (task {task_id!r})"
        super().__init__(message)


class GenerationFailed(DeerLumaError):
    """The generation ended in state failed; see `generation.failure_reason`."""

    def __init__(self, generation: Generation) -> None:
        self.generation = generation
        self.task_id = generation.id
        reason = generation.failure_reason or "no reason given"
        super().__init__(f"generation {generation.id!r} failed: {reason}")


class WaitTimeout(DeerLumaError, TimeoutError):
    """The deadline passed before the generation finished; `last` is the last state seen."""

    def __init__(self, task_id: str, last: Generation | None, timeout: float | None = None) -> None:
        self.task_id = task_id
        self.last = last
        self.timeout = timeout
        seen = f"last state {last.state.value}" if last is not None else "never fetched"
        after = f" after {timeout:g}s" if timeout is not None else ""
        super().__init__(
            f"generation {task_id!r} not finished{after} ({seen}); wait again with a longer timeout"
        )


class CreateOutcomeUnknown(DeerLumaError):
    """A create request was sent but its answer was lost: it may or may not exist.

    Creating costs money, so deerluma never resends it blindly; list your
    generations or retry knowingly.
    """

    def __init__(self, message: str) -> None:
        super().__init__(
            f"{message}; the generation may or may not have been created, "
            "so it was not retried automatically"
        )


class DownloadError(DeerLumaError):
    """A download could not be completed; nothing was left at the destination."""

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        self.task_id = task_id
        super().__init__(message)


class DestinationError(DownloadError, OSError):
    """The file could not be written where asked (a folder that is a file, a full or
    read-only disk); `dest` and the message name the destination, never a temporary file."""

    def __init__(self, message: str, *, task_id: str | None = None, dest: object = None) -> None:
        DownloadError.__init__(self, message, task_id=task_id)
        self.dest = dest


class DestinationExists(DestinationError, FileExistsError):
    """The destination file exists and overwriting was not asked for."""


_RETRYABLE_STATUS = frozenset({500, 502, 503, 504})


def is_transient(exc: BaseException) -> bool:
    """Whether asking the same GET again may well succeed (a fault, not an answer)."""
    if isinstance(exc, ServerError):
        return exc.status in _RETRYABLE_STATUS
    if isinstance(exc, DecodeError):
        return exc.transient
    return isinstance(exc, TransportError | RateLimitError)
