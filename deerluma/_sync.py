"""SyncSession: Session's methods as blocking calls, for scripts, notebooks and plugin hosts.

Every method runs the Session's own coroutine on a private event loop in a
daemon thread (`LoopThread`), so it works from a plain script and from a
thread whose loop is already running. The methods are not copied: each is
generated from Session's, with its signature and docstring.
"""

from __future__ import annotations

import functools
import inspect
import warnings
import weakref
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

import yarl

from ._callbacks import CallbackView
from ._gate import RateView
from ._gateway import GatewayView
from ._history import TimingHistory
from ._policy import PollPolicy, Seconds
from ._portal import LoopThread
from ._session import Session
from ._stream import Updates
from ._transport import Clock, Sleep

__all__ = ["NOT_MIRRORED", "SyncSession", "SyncUpdates"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Session's public names SyncSession deliberately has no same-named twin of, and why.
NOT_MIRRORED = {
    "aclose": "close() is the blocking twin",
    "callback_handler": "an aiohttp handler runs in an async app: use the async Session there",
    "callback_asgi": "an ASGI app runs in an async server: receive_callback is for views",
    "callback_token": "it guards callback_handler, which only the async Session has",
}


class SyncUpdates(Generic[T]):
    """What SyncSession's watch() and as_completed() return: a plain iterator.

    Use ``with s.as_completed(ids) as results:`` if you may stop early:
    leaving the block stops the polling at once (so does ``close()``, or the
    iterator being garbage-collected).
    """

    __slots__ = ("_closed", "_loop", "_portal", "_updates")

    def __init__(self, portal: LoopThread, updates: Updates[T]) -> None:
        self._portal = portal
        self._updates = updates
        self._closed = False
        self._loop = portal.epoch  # the private loop it runs on: a closed SyncSession ends it

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        if self._closed:
            raise StopIteration
        if self._loop != self._portal.epoch:
            self._closed = True
            raise RuntimeError("its SyncSession was closed: this iterator is over")
        try:
            return self._portal.call(self._updates.__anext__())
        except StopAsyncIteration:
            self._closed = True
            raise StopIteration from None

    def close(self) -> None:
        """Stop polling now; no request stays in flight."""
        if not self._closed:
            self._closed = True
            if self._loop == self._portal.epoch:  # its loop ended with the SyncSession: done
                self._portal.call(self._updates.aclose())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Abandoned after a `break`: stop its polling without blocking the collector.
        if not self._closed:
            self._closed = True
            self._portal.submit(self._updates.aclose())


def _blocking(
    method: Callable[Concatenate[Session, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[SyncSession, P], R]:
    """A SyncSession method that runs Session's coroutine method of the same name."""

    @functools.wraps(method)
    def call(self: SyncSession, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._portal.call(method(self.session, *args, **kwargs))

    return _mirroring(call, method, returns=None)


def _iterating(
    method: Callable[Concatenate[Session, P], Updates[T]],
) -> Callable[Concatenate[SyncSession, P], SyncUpdates[T]]:
    """A SyncSession method that wraps Session's `Updates`-returning method in a SyncUpdates."""

    @functools.wraps(method)
    def call(self: SyncSession, /, *args: P.args, **kwargs: P.kwargs) -> SyncUpdates[T]:
        # Arguments are checked here, in the caller's thread, as Session does.
        return SyncUpdates(self._portal, method(self.session, *args, **kwargs))

    return _mirroring(call, method, returns="Sync")


def _mirroring(call: F, method: Callable[..., object], *, returns: str | None) -> F:
    """Give `call` the signature of `method` as help() and notebooks show it: its own
    parameters (self a SyncSession's), returning what the blocking call returns."""
    signature = inspect.signature(method)
    annotation = signature.return_annotation
    if returns and isinstance(annotation, str):
        annotation = returns + annotation  # Updates[...] -> SyncUpdates[...]
    call.__signature__ = signature.replace(return_annotation=annotation)  # type: ignore[attr-defined]
    del call.__wrapped__  # type: ignore[attr-defined]  # not the coroutine's signature
    call.__mirrors__ = method  # type: ignore[attr-defined]
    return call


class SyncSession:
    """Session's methods as blocking calls: for scripts, notebooks, plugin hosts.

    ``with deerluma.SyncSession() as s: g = s.wait_until_completed(task_id)``.
    It takes Session's arguments (except ``session=``: the connection pool
    lives on its own event loop, in a daemon thread started at the first
    call) and its methods take the same arguments, return the same types and
    raise the same errors. It works from a plain script and from inside a
    running event loop (a notebook cell), whose thread it blocks. Ctrl-C
    cancels the call in flight, cleanly, and raises KeyboardInterrupt.
    ``watch`` and ``as_completed`` return plain iterators (`SyncUpdates`).
    Callbacks (``on_update``, ``on_progress``) run on the private loop's
    thread and must not call the SyncSession. ``close()`` (or leaving the
    ``with`` block) closes the connections and ends the thread; a later call
    starts them again.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: Seconds = 30.0,
        max_retries: int = 3,
        max_rps: float | None = None,
        policy: PollPolicy | None = None,
        sleep: Sleep | None = None,
        clock: Clock | None = None,
        rate_store: str | None = None,
    ) -> None:
        self.session = Session(
            api_key,
            base_url,
            timeout=timeout,
            max_retries=max_retries,
            max_rps=max_rps,
            policy=policy,
            sleep=sleep,
            clock=clock,
            rate_store=rate_store,
        )
        """The async Session underneath (its coroutines belong to the private loop)."""
        self._portal = LoopThread("deerluma-sync")
        # Forgotten without close(): the collector (or the interpreter's exit)
        # still closes the connections and ends the thread.
        self._finalizer = weakref.finalize(self, _shut_down, self._portal, self.session)

    def __repr__(self) -> str:
        return f"Sync{self.session!r}"

    def close(self) -> None:
        """Close the connections and end the private loop's thread."""
        _shut_down(self._portal, self.session)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        """The API's base URL this Session sends requests to."""
        return self.session.base_url

    @property
    def history(self) -> TimingHistory:
        """How long this Session's generations took (see Session.history)."""
        return self.session.history

    @property
    def rate(self) -> RateView:
        """The request rate sent at now, its cap, and the 429 count (see Session.rate)."""
        return self.session.rate

    @property
    def gateway(self) -> GatewayView:
        """How the gateway answers a GET, as learned (see Session.gateway)."""
        return self.session.gateway

    @property
    def rate_limited_count(self) -> int:
        """Deprecated: ``rate.rate_limited``, the 429 answers this Session has received."""
        warnings.warn(
            "SyncSession.rate_limited_count is deprecated; use SyncSession.rate.rate_limited",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.session.rate.rate_limited

    @property
    def policy(self) -> PollPolicy:
        """The default polling policy of this Session's waits."""
        return self.session.policy

    @policy.setter
    def policy(self, value: PollPolicy) -> None:
        self.session.policy = value

    @property
    def callbacks(self) -> CallbackView:
        """What callbacks did in this Session (see Session.callbacks)."""
        return self.session.callbacks

    def expect_callbacks(self, task_id: str) -> None:
        """Listen for callbacks on an id (see Session.expect_callbacks)."""
        self.session.expect_callbacks(task_id)

    def generation_url(self, task_id: str) -> yarl.URL:
        """The API URL of one generation (see Session.generation_url)."""
        return self.session.generation_url(task_id)

    # The one list of mirrored methods: each is Session's own, run to its end on the
    # private loop. A test fails when Session gains a public name missing here.
    get_generation = _blocking(Session.get_generation)
    """[Session.get_generation][deerluma.Session.get_generation], blocking."""
    wait_until_completed = _blocking(Session.wait_until_completed)
    """[Session.wait_until_completed][deerluma.Session.wait_until_completed], blocking."""
    wait_many = _blocking(Session.wait_many)
    """[Session.wait_many][deerluma.Session.wait_many], blocking."""
    download = _blocking(Session.download)
    """[Session.download][deerluma.Session.download], blocking."""
    create_generation = _blocking(Session.create_generation)
    """[Session.create_generation][deerluma.Session.create_generation], blocking."""
    extend_generation = _blocking(Session.extend_generation)
    """[Session.extend_generation][deerluma.Session.extend_generation], blocking."""
    generate = _blocking(Session.generate)
    """[Session.generate][deerluma.Session.generate], blocking."""
    watch = _iterating(Session.watch)
    """[Session.watch][deerluma.Session.watch], as a plain iterator (SyncUpdates)."""
    as_completed = _iterating(Session.as_completed)
    """[Session.as_completed][deerluma.Session.as_completed], as a plain iterator (SyncUpdates)."""
    run = _iterating(Session.run)
    """[Session.run][deerluma.Session.run], as a plain iterator (SyncUpdates)."""
    receive_callback = _blocking(Session.receive_callback)
    """[Session.receive_callback][deerluma.Session.receive_callback], blocking: for Flask
    and Django views (``s.receive_callback(request.get_data(), token=request.args.get(
    "token"))``)."""


def _shut_down(portal: LoopThread, session: Session) -> None:
    if not portal.running:
        return
    if portal.in_loop_thread():  # collected by a callback running on the loop itself
        portal.submit(_close_then_stop(portal, session))
        return
    try:
        portal.call(session._close_pool())
    finally:
        portal.stop()


async def _close_then_stop(portal: LoopThread, session: Session) -> None:
    try:
        await session._close_pool()
    finally:
        portal.stop()
