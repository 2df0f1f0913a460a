"""The HTTP exchange with the API: auth, rate gate, per-request timeout, body cap, retries.

Session is the public facade over it; downloads use the pool and the retry
loop too, through `Transport` alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import NamedTuple, TypeVar

import aiohttp
import yarl
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
)
from tenacity.stop import stop_base

from ._control import MAX_PAUSE
from ._decode import MAX_BODY_BYTES, decode_generation
from ._engine import utcnow, wall_of
from ._gate import RateGate
from ._peers import Peers
from ._throttle import Throttle, ThrottleKind
from .exceptions import (
    ConfigurationError,
    DeadlineExceeded,
    DecodeError,
    DeerLumaError,
    RateLimitError,
    TransportError,
)

__all__ = ["Clock", "RawResponse", "Sleep", "StopBefore", "Transport", "request_sent"]

#: When this task's latest request left the rate gate (clock time): a caller that measured
#: when it asked reads here when the request really went out (the gate may have held it).
request_sent: ContextVar[float] = ContextVar("deerluma_request_sent", default=-math.inf)

log = logging.getLogger("deerluma")

#: Per-request retries back off from this, doubling up to the max, plus up to this at random.
_FIRST_BACKOFF = 0.25
_MAX_BACKOFF = 8.0

#: The kinds of 429 the rate gate answers for the whole Session.
_OURS = frozenset({ThrottleKind.LIMIT.value, ThrottleKind.RATE.value})

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


class _Secret:
    """Holds the API key so that no repr, str or log line can show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


class _Headers(dict[str, str]):
    """Request headers carrying the key: shown redacted by repr (debuggers, tracebacks)."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: <redacted>" for k in self) + "}"


class RawResponse(NamedTuple):
    """What one HTTP exchange produced, read whole (within the body cap)."""

    status: int
    headers: Mapping[str, str]  # case-insensitive (aiohttp's CIMultiDictProxy)
    body: bytes


class StopBefore(stop_base):
    """Stop retrying when the next sleep would end past `deadline` (a clock time)."""

    def __init__(self, deadline: float | None, clock: Clock) -> None:
        self._deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        upcoming = retry_state.upcoming_sleep or 0.0
        return self._deadline is not None and self.clock() + upcoming >= self._deadline


class Transport:
    """One Session's connection pool, key, rate gate and retry budget.

    The pool is borrowed (never closed here) or owned (made on first use,
    closed by `aclose`).
    """

    def __init__(
        self,
        key: str | None,
        *,
        session: aiohttp.ClientSession | None,
        timeout: float,
        max_retries: int,
        max_rps: float | None,
        sleep: Sleep | None,
        clock: Clock | None,
        peers: Peers | None = None,
    ) -> None:
        self._key = _Secret(key) if key else None
        self._headers: _Headers | None = None  # built once: one less object per request
        self.timeout = timeout
        """Seconds one request may take."""
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_retries = max_retries
        self._borrowed = session
        self._owned: aiohttp.ClientSession | None = None
        self._owned_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.sleep: Sleep = sleep or asyncio.sleep
        self.clock: Clock = clock or time.monotonic
        self.wall = utcnow if clock is None else wall_of(clock)
        """The wall clock: the real one, or one that moves with an injected `clock`."""
        self.gate = RateGate(max_rps, clock=self.clock, sleep=self.sleep, peers=peers)
        self.rng = random.Random()

    @property
    def key(self) -> _Secret | None:
        """The API key, redacted in every repr."""
        return self._key

    async def aclose(self, *, final: bool = True) -> None:
        """Close the connection pool, unless it was borrowed from the caller.

        Not `final`: the next request opens a new pool (SyncSession, whose private
        loop starts again when used after close).
        """
        self._closed = self._closed or final
        await self.gate.aclose()  # reopened if used again
        if self._owned is not None:
            owned, self._owned, self._owned_loop = self._owned, None, None
            await owned.close()

    def http(self) -> aiohttp.ClientSession:
        """The connection pool (the borrowed one, or ours, made on first use).

        A closed Session refuses, as does one first used in another event loop (each
        ``asyncio.run`` makes a new one): its pool belongs to that loop.
        """
        if self._closed:
            raise ConfigurationError(
                "this Session is closed: make a new one (async with deerluma.Session() as s: ...)"
            )
        if self._borrowed is not None:
            return self._borrowed
        loop = asyncio.get_running_loop()
        if self._owned is None:
            self._owned, self._owned_loop = aiohttp.ClientSession(), loop
        elif self._owned_loop is not loop:
            raise ConfigurationError(
                "this Session was first used in another event loop (another asyncio.run?): "
                "make one Session inside each, with async with deerluma.Session() as s: ..."
            )
        return self._owned

    def _auth_headers(self) -> dict[str, str]:
        if self._headers is None:
            if self._key is None:
                raise ConfigurationError(
                    "no API key: pass Session(api_key=...) or set $DEERAPI_API_KEY",
                    missing_key=True,
                )
            self._headers = _Headers(
                {"Authorization": f"Bearer {self._key.reveal()}", "Accept": "application/json"}
            )
        return self._headers

    async def exchange(
        self,
        method: str,
        url: yarl.URL,
        *,
        json_body: Mapping[str, object] | None = None,
        deadline: float | None = None,
        task_id: str | None = None,
    ) -> RawResponse:
        """One HTTP exchange with the API: gate, auth, timeout, body cap; no retries."""
        request_headers = self._auth_headers()
        sent = self.gate.try_pass()
        if sent is None:
            sent = await self.gate.acquire(deadline)
        request_sent.set(sent)
        timeout = self.timeout
        client_timeout = self._client_timeout
        if deadline is not None:
            remaining = deadline - self.clock()
            if remaining <= 0:
                # aiohttp reads a total of 0 as "no timeout": never send past the deadline.
                raise DeadlineExceeded(f"the deadline passed before a request{_about(task_id)}")
            if remaining < timeout:
                timeout = remaining
                client_timeout = aiohttp.ClientTimeout(total=remaining)
        try:
            async with self.http().request(
                method,
                url,
                headers=request_headers,
                json=json_body,
                allow_redirects=False,
                timeout=client_timeout,
                raise_for_status=False,  # a borrowed session's default must not hide our errors
            ) as resp:
                length = resp.content_length
                if length is not None and length <= MAX_BODY_BYTES:  # inline: no coroutine
                    body = await resp.read()
                else:
                    body = await _read_capped(resp, task_id)
                headers = resp.headers
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise client_failure(exc, url.host, timeout, task_id=task_id) from exc
        if log.isEnabledFor(logging.DEBUG):  # the hot path of big batches: no call when off
            log.debug("%s %s -> %d (%d bytes)", method, url, status, len(body))
        if status != 429:
            self.gate.answered(sent)
            return RawResponse(status, headers, body)
        try:
            decode_generation(status, headers, body, task_id=task_id)
        except RateLimitError as exc:
            # The gate owns Session-wide pauses; it judges which kind of 429 this was.
            judged = self.gate.throttled(sent, Throttle.of(exc))
            exc.judged(judged.kind.value)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "429 (%s) from %s; %.1f requests/s from now on, everyone pausing %.2fs",
                    exc.kind,
                    url.host,
                    self.gate.view.rps,
                    self.gate.pause_left(),
                )
            raise
        raise AssertionError("unreachable: a 429 always decodes to RateLimitError")

    def retrying(
        self, *, deadline: float | None, retry_on: Callable[[BaseException], bool]
    ) -> AsyncRetrying:
        """The per-request retry loop: bounded by max_retries and never sleeping past `deadline`."""

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            # Exponential with jitter (tenacity's wait_exponential_jitter, whose arguments
            # differ between the versions we support).
            backoff = min(_MAX_BACKOFF, _FIRST_BACKOFF * 2.0 ** (state.attempt_number - 1))
            backoff += self.rng.uniform(0.0, _FIRST_BACKOFF)
            if isinstance(exc, RateLimitError):
                # Retry-After holds back the request that got it. A 429 about our rate needs
                # nothing more (the gate spaces or pauses everyone); one that is not backs off.
                asked = min(MAX_PAUSE, exc.retry_after or 0.0)
                return asked if exc.kind in _OURS else max(asked, backoff)
            return backoff

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info(
                "attempt %d failed (%s); retrying in %.2fs",
                state.attempt_number,
                exc,
                state.upcoming_sleep,
            )

        return AsyncRetrying(
            stop=stop_any(
                stop_after_attempt(self.max_retries + 1), StopBefore(deadline, self.clock)
            ),
            wait=wait,
            retry=retry_if_exception(retry_on),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    async def with_retries(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        deadline: float | None,
        retry_on: Callable[[BaseException], bool],
        first_failure: Exception | None = None,
    ) -> T:
        """Run `call`, retrying the failures `retry_on` accepts, per `retrying()`.

        The first attempt goes inline: the retry machinery is set up only when
        it fails. `first_failure` is an attempt the caller already made and
        lost: it counts against the budget and is waited out like any other.
        """
        if first_failure is None:
            try:
                return await call()
            except Exception as exc:
                if not retry_on(exc):
                    raise
                first_failure = exc
        tried = 0
        try:
            async for attempt in self.retrying(deadline=deadline, retry_on=retry_on):
                with attempt:
                    tried = attempt.retry_state.attempt_number
                    if first_failure is not None and tried == 1:
                        raise first_failure
                    return await call()
        except DeerLumaError as exc:
            exc.attempts = max(exc.attempts, tried)
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")


def _about(task_id: str | None) -> str:
    return f" (task {task_id!r})" if task_id else ""


async def _read_capped(resp: aiohttp.ClientResponse, task_id: str | None) -> bytes:
    """A body of no announced size, or of one over the cap (`exchange` reads the others)."""
    if resp.content_length is not None:
        raise DecodeError(
            f"the server announced a {resp.content_length}-byte body; refusing to read it",
            task_id=task_id,
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise DecodeError(
                f"the body is larger than {MAX_BODY_BYTES} bytes; refusing it", task_id=task_id
            )
        chunks.append(chunk)
    return b"".join(chunks)


def client_failure(
    exc: TimeoutError | aiohttp.ClientError,
    host: str | None,
    timeout: float,
    *,
    task_id: str | None = None,
) -> TransportError:
    """What an aiohttp failure (or a timeout) talking to `host` means, as a TransportError:
    one mapping for the API and for storage alike."""
    about = _about(task_id)
    if isinstance(exc, TimeoutError):
        return TransportError(
            f"no answer from {host} within {timeout:.3g}s{about}", task_id=task_id
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransportError(
            f"could not connect to {host}{about}: {exc.os_error or exc}",
            task_id=task_id,
            request_sent=False,
        )
    return TransportError(
        f"connection to {host} failed{about}: {type(exc).__name__}: {exc}", task_id=task_id
    )
