"""The errors deerluma raises; every one is a DeerLumaError.

Each message says what happened, to which task id, and what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import Generation

__all__ = [
    "APIError",
    "ArgumentError",
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
    """Base class of every error deerluma raises.

    `attempts` is how many times the request was tried (retries included)
    before this error was final.
    """

    task_id: str | None = None
    attempts: int = 1
    #: Where the message names arguments (see ArgumentError): its template, with ``{name}``
    #: for each, and how Python spells each; None: the message names none.
    template: str | None = None
    arguments: Mapping[str, str] = {}

    def spelled(self, spelling: Mapping[str, str]) -> str:
        """The message, each argument it names spelled as `spelling` says (else as Python
        does): how the command line names its flags without rewriting messages."""
        if self.template is None:
            return str(self)
        text = self.template
        for name, python in self.arguments.items():
            text = text.replace("{" + name + "}", spelling.get(name, python))
        return text

    def __reduce__(self) -> tuple[object, ...]:
        # Exceptions pickle as cls(*args), which our constructors do not take (the message is
        # built from their fields): come back as the same error, fields and message alike.
        return _restore, (type(self), self.args, dict(self.__dict__))


def _restore(
    cls: type[DeerLumaError], args: tuple[object, ...], state: dict[str, object]
) -> DeerLumaError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


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
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f" for task {self.task_id!r}" if self.task_id else ""
        code_part = f" [{self.code}]" if self.code else ""
        return f"HTTP {self.status}{where}: {self.message}{code_part}{self._advice()}"

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
    """429: too many requests; `retry_after` is the server's requested pause in seconds.

    `kind` says which kind of 429 it was (see docs/batch.md): ``"limit"`` (the
    gateway named this key's limit, `limit` requests per `window` seconds),
    ``"rate"`` (a plain 429, taken as this Session's rate), ``"upstream"`` (the
    gateway's upstream is saturated: not about your rate) or ``"stray"`` (a
    plain 429 that slowing down did not make rarer).
    """

    def __init__(
        self,
        status: int = 429,
        code: str | None = None,
        message: str = "",
        body_excerpt: str = "",
        *,
        retry_after: float | None = None,
        task_id: str | None = None,
        kind: str = "rate",
        limit: int | None = None,
        window: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        self.kind = kind
        self.limit = limit
        self.window = window
        super().__init__(status, code, message, body_excerpt, task_id=task_id)

    def judged(self, kind: str) -> None:
        """The Session judged this 429 to be of another kind: say so in the message."""
        if kind != self.kind:
            self.kind = kind
            self.args = (self._describe(),)

    def _advice(self) -> str:
        after = f"after {self.retry_after:g}s" if self.retry_after is not None else "later"
        if self.kind == "limit" and self.limit is not None and self.window is not None:
            return (
                f" (the gateway allows {self.limit} requests per {self.window:g}s for this key;"
                " the Session now paces to that and resumes when the window has room)"
            )
        if self.kind == "upstream":
            return (
                " (the gateway's upstream is saturated: not about your request rate, so"
                f" slowing down will not help; only this request waits; retry {after})"
            )
        if self.kind == "stray":
            return (
                " (a 429 that slowing down did not make rarer: not about your request rate;"
                f" only this request waits; retry {after})"
            )
        return (
            f" (too fast for this key: the Session slowed down; retry {after}, or set a"
            " lower max_rps: --max-rps on the command line)"
        )


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


class ArgumentError(DeerLumaError, ValueError):
    """An argument that cannot be right, found before anything was sent.

    Structured, so that a caller can name the arguments its own way (the
    command line says ``--max-rps`` where Python says ``max_rps``):
    `arguments` maps each argument the message names (its Python name) to
    how the message spells it (``max_rps``, ``loop=True``), `template` has a
    ``{name}`` where each goes, and `value` is the value refused, if one was.
    """

    def __init__(
        self,
        template: str,
        arguments: Mapping[str, str] | Sequence[str] = (),
        *,
        value: object = None,
    ) -> None:
        self.template = template
        self.arguments = (
            dict(arguments) if isinstance(arguments, Mapping) else {a: a for a in arguments}
        )
        self.value = value
        super().__init__(self.spelled({}))


class ConfigurationError(ArgumentError):
    """The Session cannot make requests as set up: no API key, a key that cannot go in a
    header, an unsafe base_url, or a Session closed (or made in another event loop).

    `missing_key` is True when what is missing is the API key itself.
    """

    def __init__(
        self,
        template: str,
        arguments: Mapping[str, str] | Sequence[str] = (),
        *,
        value: object = None,
        missing_key: bool = False,
    ) -> None:
        self.missing_key = missing_key
        super().__init__(template, arguments, value=value)


class DeadlineExceeded(DeerLumaError, TimeoutError):
    """A deadline passed before a request could be made or finished.

    `get_generation(timeout=)` and `create_generation(timeout=)` raise it
    (saying how long they tried, how many times, and what the last try met);
    waits report it as WaitTimeout, with this as its ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: str | None = None,
        arguments: Mapping[str, str] | None = None,
    ) -> None:
        self.task_id = task_id
        if arguments:  # `message` is a template naming them
            self.template, self.arguments = message, dict(arguments)
            message = self.spelled({})
        super().__init__(message)


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
    """The deadline passed before the generation finished; `last` is the last state seen.

    `failure` is what went wrong with the latest polls, if anything did (a 429, an
    unreachable server, ...): the message says it, and whether a longer wait would help.
    """

    def __init__(
        self,
        task_id: str,
        last: Generation | None,
        timeout: float | None = None,
        failure: BaseException | None = None,
        elapsed: float | None = None,
    ) -> None:
        self.task_id = task_id
        self.last = last
        self.timeout = timeout
        self.failure = failure
        seen = f"last state {last.state.value}" if last is not None else "never fetched"
        after = f" after {timeout:g}s" if timeout is not None else ""
        if timeout is not None and elapsed is not None and elapsed < 0.9 * timeout:
            # Given up early: no poll could come back before the deadline.
            after = f" within {timeout:g}s, given up after {elapsed:.1f}s"
        because = f"; the latest poll: {_short(failure)}" if failure is not None else ""
        super().__init__(
            f"generation {task_id!r} not finished{after} ({seen}{because}); {_advice(failure)}"
        )


def _short(failure: BaseException) -> str:
    text = str(failure) or type(failure).__name__
    return text if len(text) <= 240 else text[:239] + "…"


def _advice(failure: BaseException | None) -> str:
    """What a longer wait would or would not change, given what went wrong."""
    if isinstance(failure, RateLimitError) and failure.retry_after is not None:
        return f"the server asked to wait {failure.retry_after:g}s: a longer timeout lets it answer"
    if isinstance(failure, TransportError) and not failure.request_sent:
        return "the server could not be reached: a longer wait will not help until it can be"
    if isinstance(failure, ServerError | DecodeError):
        return "the server kept failing: try again later"
    return "wait again with a longer timeout"


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
