"""Session: the public facade. The HTTP exchange and its retries live in `_transport`."""

from __future__ import annotations

import functools
import os
import secrets
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, Unpack
from urllib.parse import quote

import aiohttp
import attrs
import yarl

from ._batch import CONCURRENCY, BatchResult, batch_as_completed
from ._callbacks import (
    CallbackAnswer,
    CallbackApp,
    CallbackHub,
    CallbackView,
    make_handler,
    receive,
)
from ._callbacks import Handler as CallbackHandler
from ._create import CreateOptions, build_create_body
from ._decode import decode_generation
from ._download import Asset, Downloads, OnProgress, download_generation
from ._gate import RateView
from ._gateway import GatewayView, RowClock
from ._history import TimingHistory
from ._models import Generation
from ._peers import peers_for
from ._policy import PollPolicy, Seconds, seconds_of
from ._stream import Updates
from ._transport import Clock, Sleep, Transport
from ._validate import check_api_key, check_base_url, check_batch, check_task_id, check_whole
from ._wait import Created, OnUpdate, Poller, wait_for, watch_generation
from .exceptions import (
    CreateOutcomeUnknown,
    DeadlineExceeded,
    DecodeError,
    DeerLumaError,
    DestinationExists,
    ServerError,
    TransportError,
    is_transient,
)

if TYPE_CHECKING:
    from .jobs import Job, JobResult, Ledger, RunStats

__all__ = ["DEFAULT_BASE_URL", "Session"]

T = TypeVar("T")


DEFAULT_BASE_URL = "https://api.deerapi.com"
GENERATIONS_PATH = ("dream-machine", "v1", "generations")


PolicyTimeout = Seconds | EllipsisType | None
"""A wait's `timeout`: seconds (or a timedelta); ``...``, the policy's; None, no deadline."""


def _never_sent(exc: BaseException) -> bool:
    return isinstance(exc, TransportError) and not exc.request_sent


class Session:
    """An async client for DeerAPI's Dream Machine endpoints.

    Use it as ``async with deerluma.Session() as s:``; one Session shares one
    connection pool and one rate-limit gate across every call and waiter.

    :param api_key: the key; None reads ``$DEERAPI_API_KEY`` (missing: an error at the first
        request, never at construction).
    :param base_url: the API's address; None reads ``$DEERAPI_BASE_URL``, else DeerAPI's.
        Plain http is refused except to loopback.
    :param session: an ``aiohttp.ClientSession`` to borrow (it is never closed here).
    :param timeout: seconds (or a timedelta) one request may take.
    :param max_retries: retries of one request on transient faults.
    :param max_rps: a hard cap on requests per second, shared by everything this Session sends;
        None learns the API's limit from its 429s (see ``rate``).
    :param policy: the default PollPolicy of waits and batches.
    :param sleep: injectable ``asyncio.sleep`` (tests pass a fake clock's).
    :param clock: injectable monotonic clock, in seconds.
    :param rate_store: where Sessions of this key share its rate: ``"redis://host:6379/0"``
        for Sessions on any machine (the ``redis`` extra), ``"file"`` for this machine's,
        ``"off"``; None reads ``$DEERLUMA_RATE_STORE``, else ``"file"`` (docs/batch.md).
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: Seconds = 30.0,
        max_retries: int = 3,
        max_rps: float | None = None,
        policy: PollPolicy | None = None,
        sleep: Sleep | None = None,
        clock: Clock | None = None,
        rate_store: str | None = None,
    ) -> None:
        key = check_api_key(api_key if api_key is not None else os.environ.get("DEERAPI_API_KEY"))
        self._base = check_base_url(
            base_url or os.environ.get("DEERAPI_BASE_URL") or DEFAULT_BASE_URL
        )
        check_whole("max_retries", max_retries, 0)
        self._collection = self._base.joinpath(*GENERATIONS_PATH)
        self._collection_text = str(self._collection).rstrip("/")
        seconds = seconds_of("timeout", timeout)
        self._transport = Transport(
            key,
            session=session,
            timeout=seconds,
            max_retries=max_retries,
            max_rps=max_rps,
            sleep=sleep,
            clock=clock,
            # Sessions of one key hear of each other's 429s (on this machine through a file,
            # or on any through `rate_store`); only on the machine's monotonic clock.
            peers=None if clock is not None else peers_for(str(self._base), key, rate_store),
        )
        self._clock = self._transport.clock
        self._history = TimingHistory()
        self._rows = RowClock()  # what the gateway's answers say of its rows
        self._callbacks = CallbackHub(self._clock)
        self._created = Created()
        self._callback_token = secrets.token_urlsafe(24)
        self.policy = policy or PollPolicy()
        """The default polling policy of this Session's waits."""

    def __repr__(self) -> str:
        return f"Session(base_url={str(self._base)!r}, api_key={self._transport.key!r})"

    @property
    def base_url(self) -> str:
        """The API's base URL this Session sends requests to."""
        return str(self._base)

    @property
    def history(self) -> TimingHistory:
        """How long this Session's generations took; every wait and batch reads and feeds it.

        ``s.history.seed([42.0, 55.5])`` starts a new Session off with what an
        earlier run learned (``s.history.durations``).
        """
        return self._history

    @property
    def gateway(self) -> GatewayView:
        """How the gateway answers a GET, as this Session learned from the answers: "live"
        (it asks Luma each time) or "refreshed" (it serves its own rows, refreshed every
        `period` seconds, as new-api does), or "unknown". See docs/waiting.md."""
        return self._rows.view(self._clock())

    @property
    def rate(self) -> RateView:
        """The request rate this Session sends at now, its cap, its 429s, and a named limit.

        Without ``max_rps`` the rate is learned: it starts at 50/s, grows
        while more is wanted, is cut when 429s about this key's rate crowd,
        and grows back gently; a limit the gateway names is followed. 429s
        that are not about the rate (``not_ours``) delay only their request.
        See docs/batch.md.
        """
        return self._transport.gate.view

    @property
    def callbacks(self) -> CallbackView:
        """What callbacks did in this Session: received, delivered first, missed, reliability."""
        return self._callbacks.view

    def callback_handler(self, *, secret: str | None = None) -> CallbackHandler:
        """An aiohttp handler that receives Luma's callbacks and wakes this Session's waits.

        Mount it in your own app (``app.router.add_post("/luma-callback",
        s.callback_handler())``) and pass its public URL as ``callback_url``
        when creating. A callback is only a hint: a terminal one wakes the
        waits on its id, which confirm with one GET, so a forged body never
        completes a wait.

        Requests must carry a token as the URL's ``token`` query parameter;
        others get 403. By default it is this Session's own (`callback_token`),
        which create_generation adds to every ``callback_url`` it sends that
        carries none; pass `secret` to use yours (then put ``?token=SECRET``
        in your callback URLs). Only callbacks for ids this Session listens
        for are kept (others are answered and dropped), so made-up ids cannot
        crowd out real ones. Bodies over 4 MiB get 413, malformed ones 400.
        """
        return make_handler(self._callbacks, self._secret(secret))

    async def receive_callback(
        self, body: bytes | str, *, token: str | None = None, secret: str | None = None
    ) -> CallbackAnswer:
        """Take one callback as any web framework hands it over: the raw `body`, and the
        ``token`` parameter of its URL. Answer the sender with the result's ``.status``
        and ``.body`` (JSON): 200 (or 200 "ignored": not an id this Session waits for),
        400 (not a generation), 403 (wrong or missing token), 413 (over 4 MiB). The same
        verdicts as `callback_handler`'s and `callback_asgi`'s: one place decides.

        FastAPI::

            @app.post("/luma-callback")
            async def luma(request: Request) -> Response:
                answer = await s.receive_callback(
                    await request.body(), token=request.query_params.get("token")
                )
                return Response(answer.body, answer.status, media_type="application/json")
        """
        raw = body.encode() if isinstance(body, str) else bytes(body)
        return receive(self._callbacks, self._secret(secret).encode(), raw, token)

    def callback_asgi(self, *, secret: str | None = None) -> CallbackApp:
        """An ASGI app that receives callbacks, to mount in FastAPI or Starlette
        (``app.mount("/luma-callback", s.callback_asgi())``), Quart, or Django's ASGI:
        POST only, the token in the URL's ``token`` parameter, bodies read up to 4 MiB.
        Its verdicts are `receive_callback`'s."""
        return CallbackApp(self._callbacks, self._secret(secret))

    def _secret(self, secret: str | None) -> str:
        if secret is not None and not secret:
            raise ValueError("secret must be a non-empty string (or None: this Session's token)")
        return secret or self._callback_token

    @property
    def callback_token(self) -> str:
        """The token this Session's callback handler asks for by default (random, per Session)."""
        return self._callback_token

    def expect_callbacks(self, task_id: str) -> None:
        """Listen for callbacks on an id this Session did not create with a callback_url."""
        self._callbacks.expect(check_task_id(task_id))

    @property
    def rate_limited_count(self) -> int:
        """Deprecated: ``rate.rate_limited``, the 429 answers this Session has received."""
        warnings.warn(
            "Session.rate_limited_count is deprecated; use Session.rate.rate_limited",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._transport.gate.rate_limited

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool, unless it was borrowed; the Session is done after that."""
        await self._transport.aclose()

    async def _close_pool(self) -> None:
        """Close the connection pool but leave the Session usable (SyncSession's close: its
        private loop starts again when it is used later)."""
        await self._transport.aclose(final=False)

    def generation_url(self, task_id: str) -> yarl.URL:
        """The API URL of one generation; the id is checked and always quoted.

        A task id that is not a string is a TypeError, an unsafe one an
        InvalidTaskId, before anything is sent.
        """
        quoted = quote(check_task_id(task_id), safe="")
        return yarl.URL(f"{self._collection_text}/{quoted}", encoded=True)

    async def get_generation(self, task_id: str, *, timeout: Seconds | None = None) -> Generation:
        """Fetch one generation by task id, retrying transient faults (up to `max_retries`).

        `timeout` (seconds, or a timedelta) bounds the whole call, retries
        included: past it, DeadlineExceeded says how long it tried, how many
        times, and what the last try met. None: each request is bounded by the
        Session's `timeout`, and the retries by `max_retries`.
        """
        check_task_id(task_id)
        generation: Generation = await self._bounded(
            "get_generation", timeout, lambda deadline: self._fetch(task_id, deadline), task_id
        )
        self._created.seen(generation, self._clock())
        return generation

    async def _bounded(
        self,
        what: str,
        timeout: Seconds | None,
        call: Callable[[float | None], Awaitable[T]],
        task_id: str | None = None,
    ) -> T:
        """Run `call(deadline)` within `timeout`; a failure says how long and how often."""
        seconds = None if timeout is None else seconds_of("timeout", timeout)
        start = self._clock()
        deadline = None if seconds is None else start + seconds
        try:
            return await call(deadline)
        except DeerLumaError as exc:
            elapsed = self._clock() - start
            tries = f"{exc.attempts} attempt{'s' if exc.attempts != 1 else ''}"
            if seconds is not None and (
                isinstance(exc, DeadlineExceeded)
                or (is_transient(exc) and exc.attempts <= self._transport.max_retries)
            ):
                # Stopped by the timeout, not by the retry budget.
                error = DeadlineExceeded(
                    f"{what} gave up after {elapsed:.1f}s ({{timeout}}={seconds:g}s, {tries}): "
                    f"{exc}",
                    task_id=task_id,
                    arguments={"timeout": "timeout"},
                )
                error.attempts = exc.attempts
                raise error from exc
            if isinstance(exc, TransportError) and exc.attempts > 1:
                lost = TransportError(
                    f"{exc} ({tries} over {elapsed:.1f}s)",
                    task_id=exc.task_id,
                    request_sent=exc.request_sent,
                )
                lost.attempts = exc.attempts
                raise lost from exc
            raise

    async def _fetch(self, task_id: str, deadline: float | None) -> Generation:
        """Like get_generation, but no retry sleeps past `deadline` (a `clock` time)."""
        url = self.generation_url(task_id)
        # The first attempt inline (what `_get` does, for retries), with nothing
        # allocated for the retry path: batch polling lives here, and every layer
        # and object per request costs a measurable share of a local request (and
        # of GC time: each coroutine of a request in flight is scanned by every
        # young collection).
        try:
            resp = await self._transport.exchange("GET", url, deadline=deadline, task_id=task_id)
            return decode_generation(resp.status, resp.headers, resp.body, task_id=task_id)
        except Exception as exc:
            if not is_transient(exc):
                raise
            first_failure = exc
        return await self._transport.with_retries(
            functools.partial(self._get, url, task_id, deadline),
            deadline=deadline,
            retry_on=is_transient,
            first_failure=first_failure,
        )

    async def _get(self, url: yarl.URL, task_id: str, deadline: float | None) -> Generation:
        resp = await self._transport.exchange("GET", url, deadline=deadline, task_id=task_id)
        return decode_generation(resp.status, resp.headers, resp.body, task_id=task_id)

    def _poller(self) -> Poller:
        transport = self._transport
        return Poller(
            self._fetch,
            self._clock,
            transport.sleep,
            transport.rng,
            self._history,
            self._callbacks,
            self._created,
            transport.wall,
            self._rows,
        )

    def _listens(self, task_id: str, *, callbacks: bool | None) -> bool:
        if callbacks:
            self._callbacks.expect(task_id)
        return callbacks is not False and self._callbacks.expects(task_id)

    def _policy_for(self, timeout: PolicyTimeout, policy: PollPolicy | None) -> PollPolicy:
        chosen = policy or self.policy
        if timeout is ...:
            return chosen
        return attrs.evolve(chosen, timeout=timeout)

    def watch(
        self,
        task_id: str,
        *,
        timeout: PolicyTimeout = ...,
        policy: PollPolicy | None = None,
        callbacks: bool | None = None,
    ) -> Updates[Generation]:
        """Yield the generation each time its state (or estimate) changes, ending when terminal.

        A failed generation is yielded, not raised. Use ``async with
        s.watch(id) as updates:`` if you may stop iterating early: leaving the
        block stops the polling at once. `callbacks`: see wait_until_completed.
        """
        check_task_id(task_id)
        listen = self._listens(task_id, callbacks=callbacks)
        chosen = self._policy_for(timeout, policy)
        return Updates(watch_generation(self._poller(), task_id, chosen, listen=listen))

    async def wait_until_completed(
        self,
        task_id: str,
        *,
        timeout: PolicyTimeout = ...,
        policy: PollPolicy | None = None,
        on_update: OnUpdate | None = None,
        callbacks: bool | None = None,
    ) -> Generation:
        """Poll until the generation is terminal; return it completed or raise.

        Raises GenerationFailed (with the generation and its failure_reason) if
        it failed, and WaitTimeout (carrying the last state seen) when
        `timeout` seconds pass first (left as ``...``, the policy's timeout;
        None, no deadline). `on_update` (sync or async) hears every
        change. Transient faults are retried; cancelling stops at once.

        `callbacks`: None (the default) listens for callbacks on ids this
        Session created with a ``callback_url``; True listens on this id too;
        False never does. A listening wait is woken by a callback and
        confirms it with one GET; it polls less while callbacks prove
        reliable, and as usual when they go missing (see callback_handler).
        """
        async with self.watch(
            task_id, timeout=timeout, policy=policy, callbacks=callbacks
        ) as updates:
            return await wait_for(updates, on_update)

    def as_completed(
        self,
        task_ids: Iterable[str],
        *,
        concurrency: int = CONCURRENCY,
        timeout: PolicyTimeout = ...,
        policy: PollPolicy | None = None,
        on_update: OnUpdate | None = None,
        callbacks: bool | None = None,
    ) -> Updates[BatchResult]:
        """Yield one BatchResult per distinct task id as soon as it is terminal.

        `concurrency` bounds requests in flight, not ids waiting: ten thousand
        ids cost about 1.3 KiB each. One id's error never stops the others; a bad
        id is reported as InvalidTaskId without a request. Polls share this
        Session's rate-limit gate. `on_update` (sync or async) hears every
        change of every id, as in wait_until_completed. Use ``async with
        s.as_completed(ids) as results:`` if you may stop iterating early.
        `callbacks`: as in wait_until_completed, for each id.
        """
        ids = check_batch(task_ids, concurrency)  # argument mistakes raise here, not mid-batch
        listen = None
        if callbacks or (callbacks is None and self._callbacks.active):
            listen = functools.partial(self._listens, callbacks=callbacks)
        batch = batch_as_completed(
            self._poller(),
            ids,
            concurrency=concurrency,
            policy=self._policy_for(timeout, policy),
            on_update=on_update,
            listen=listen,
        )
        return Updates(batch)

    async def wait_many(
        self,
        task_ids: Iterable[str],
        *,
        concurrency: int = CONCURRENCY,
        timeout: PolicyTimeout = ...,
        policy: PollPolicy | None = None,
        on_update: OnUpdate | None = None,
        callbacks: bool | None = None,
    ) -> dict[str, Generation | DeerLumaError]:
        """Wait for all of `task_ids`; map each distinct id to its Generation or its error.

        The arguments are as_completed's; the dict keeps the order of `task_ids`.
        """
        ids = check_batch(task_ids, concurrency)
        outcomes: dict[str, Generation | DeerLumaError] = {}
        batch = self.as_completed(
            ids,
            concurrency=concurrency,
            timeout=timeout,
            policy=policy,
            on_update=on_update,
            callbacks=callbacks,
        )
        async with batch as results:
            async for result in results:
                outcomes[result.task_id] = result.error or result.unwrap()
        return {task_id: outcomes[task_id] for task_id in ids}

    async def download(
        self,
        generation: Generation | str,
        dest: str | os.PathLike[str],
        *,
        asset: Asset = "video",
        overwrite: bool = False,
        skip_complete: bool = False,
        on_progress: OnProgress | None = None,
    ) -> Path:
        """Save an asset of a completed generation (or task id) to `dest`; return the path.

        `asset` is "video" (the presigned download_url when there is one),
        "video_raw", "thumbnail" or "last_frame". `dest` may be a folder (an
        existing one, or a string ending in "/"): the file is then named after
        the task and asset (``<id>.mp4``, ``<id>-thumbnail.jpg``). The file
        streams to a temporary name beside `dest` and is renamed only when
        complete, so `dest` never holds a partial file; an expired link is
        refreshed once; the API key is never sent to the storage host.
        `on_progress(done_bytes, total_bytes | None)` may be sync or async.
        A file already at the destination raises DestinationExists, unless
        `overwrite` (replace it) or `skip_complete` (keep it, without
        downloading, when it is as long as the stored file: a re-run after a
        finished download). A failed generation raises GenerationFailed;
        file problems raise DestinationError (an OSError too) naming `dest`.
        """
        return await download_generation(
            Downloads(self._transport, self.get_generation),
            generation,
            dest,
            asset=asset,
            overwrite=overwrite,
            on_progress=on_progress,
            skip_complete=skip_complete,
        )

    def run(
        self,
        jobs: Iterable[Job | Mapping[str, Any]],
        *,
        out: str | os.PathLike[str],
        ledger: Ledger | str | os.PathLike[str] | None = None,
        max_active: int = 10,
        creates_in_flight: int = 1,
        wait_timeout: Seconds | None = 3600.0,
        resubmit_unknown: bool = False,
        retry_failed: bool = False,
        stats: RunStats | None = None,
    ) -> Updates[JobResult]:
        """Make each job's video, durably: yield each job's JobResult as it settles.

        `jobs` are `Job`s or mappings (``{"key": ..., "prompt": ..., **create
        options}``; without a key, a digest of the request). Videos land as
        ``OUT/<key>.mp4``; an `out` that cannot be written raises
        DestinationError before anything is sent. The `ledger` (a `Ledger`, a
        ``postgresql://`` URL, a folder or file; None: a SQLite file in `out`)
        records each state change before the next step, so a run that stops,
        however it stops, continues where it was when run again, and never
        creates a job twice. A run works only on the jobs it is given: several
        lists may share a ledger. A key already sent with another request
        raises JobConflict before anything is sent (a job never sent takes its
        edited request; with `retry_failed`, a failed one too).

        A create whose answer never got recorded is UNKNOWN (it may have been
        charged) and is sent again only with `resubmit_unknown`; failed
        generations are created again only with `retry_failed`. At most
        `max_active` generations run at once (across every worker on the
        ledger), and at most `creates_in_flight` creates are in flight per
        worker (a kill leaves at most that many UNKNOWN). A generation not ended
        within `wait_timeout` is TIMED_OUT (a re-run waits on it again). When
        the API cannot be reached, refuses the key, or a create gets no answer,
        the run stops with that error, leaving what it did not send NEW.
        `stats` (a `RunStats`) shows what the run is doing while it goes.
        Several workers (processes, machines) on one ledger share the jobs.
        See docs/jobs.md.
        """
        from .jobs import run_jobs

        bound = None if wait_timeout is None else seconds_of("wait_timeout", wait_timeout)
        return Updates(
            run_jobs(
                _JobsClient(self),
                jobs,
                ledger=ledger,
                out=out,
                max_active=max_active,
                creates_in_flight=creates_in_flight,
                wait_timeout=bound,
                resubmit_unknown=resubmit_unknown,
                retry_failed=retry_failed,
                stats=stats,
            )
        )

    async def create_generation(
        self, prompt: str, *, timeout: Seconds | None = None, **options: Unpack[CreateOptions]
    ) -> Generation:
        """Start a generation; returns it (usually pending). Never resent blindly.

        Options are those of `CreateOptions` (aspect_ratio, loop, model,
        resolution, duration, start_image, end_image, callback_url), checked
        before sending. Only a request that certainly never left (the
        connection could not be opened) is retried; when the answer is lost
        after sending, CreateOutcomeUnknown says the generation may or may
        not exist. `timeout` bounds the whole call, as in get_generation
        (past it with nothing sent: DeadlineExceeded; once sent: unknown).
        """
        body = build_create_body(prompt, **options)
        return await self._bounded(
            "create_generation", timeout, functools.partial(self._create, body)
        )

    async def extend_generation(
        self,
        task_id: str,
        prompt: str,
        *,
        timeout: Seconds | None = None,
        **options: Unpack[CreateOptions],
    ) -> Generation:
        """Start a new generation that continues `task_id`'s video (no start_image)."""
        body = build_create_body(prompt, extend=task_id, **options)
        return await self._bounded(
            "extend_generation", timeout, functools.partial(self._create, body)
        )

    async def generate(
        self,
        prompt: str,
        *,
        timeout: PolicyTimeout = ...,
        policy: PollPolicy | None = None,
        on_update: OnUpdate | None = None,
        callbacks: bool | None = None,
        **options: Unpack[CreateOptions],
    ) -> Generation:
        """Create a generation, then wait until it is completed (see wait_until_completed).

        `on_update` hears the create answer first, then every change.
        """
        created = await self.create_generation(prompt, **options)
        return await self.wait_until_completed(
            created.id, timeout=timeout, policy=policy, on_update=on_update, callbacks=callbacks
        )

    async def _create(self, body: Mapping[str, object], deadline: float | None) -> Generation:
        url = self._collection
        callback_url = body.get("callback_url")
        if isinstance(callback_url, str) and callback_url:
            body = {**body, "callback_url": self._with_token(callback_url)}

        async def attempt() -> Generation:
            resp = await self._transport.exchange("POST", url, json_body=body, deadline=deadline)
            return decode_generation(resp.status, resp.headers, resp.body)

        try:
            created = await self._transport.with_retries(
                attempt, deadline=deadline, retry_on=_never_sent
            )
        except TransportError as exc:
            if not exc.request_sent:
                raise  # it never left: certainly nothing was created
            raise CreateOutcomeUnknown(f"the answer to a create request was lost: {exc}") from exc
        except (ServerError, DecodeError) as exc:
            raise CreateOutcomeUnknown(f"a create request failed after sending: {exc}") from exc
        now = self._clock()
        self._created.add(created, now)
        if callback_url:
            self._callbacks.expect(created.id, now)
        return created

    def _with_token(self, callback_url: str) -> str:
        """The callback URL with this Session's token, unless it carries a token already."""
        url = yarl.URL(callback_url)
        if "token" in url.query:
            return callback_url
        return str(url.update_query(token=self._callback_token))


class _JobsClient:
    """What a durable run needs of a Session (`jobs.Client`): create, wait, download."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def create(self, request: Mapping[str, Any]) -> Generation:
        options = dict(request)
        prompt = str(options.pop("prompt"))
        return await self._session.create_generation(prompt, **options)

    async def wait(self, task_id: str, timeout: float | None) -> Generation:
        return await self._session.wait_until_completed(task_id, timeout=timeout)

    async def download(self, target: Generation | str, path: Path) -> Path:
        try:
            return await self._session.download(target, path, skip_complete=True)
        except DestinationExists:  # ours, from before, but not the whole video
            return await self._session.download(target, path, overwrite=True)
