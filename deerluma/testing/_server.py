"""FakeDeerAPI itself: the aiohttp.web app, its scripted generations, callbacks and records."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import random
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import aiohttp
import attrs
from aiohttp import web

from .._engine import wall_of
from .._portal import LoopThread
from ._faults import DEFAULT_FAULT_MIX, FAULT_KEY, RANGE_KEY, Fault, cut

__all__ = ["FakeDeerAPI", "SeenRequest", "SentCallback"]

_API = "/dream-machine/v1/generations"
_CDN = "https://storage.cdn-luma.com/fake"
#: How often (real seconds) the fake checks whether a callback is due: it follows any clock.
_CALLBACK_TICK = 0.002


@attrs.frozen
class SentCallback:
    """One state change the fake called back about: `status` None when it was lost."""

    task_id: str
    state: str
    at: float
    status: int | None


@attrs.frozen
class SeenRequest:
    """What the fake server recorded about one request."""

    method: str
    path: str
    authorized: bool
    sent_authorization: bool
    status: int
    fault: str | None
    at: float


@attrs.define
class _Gen:
    id: str
    prompt: str
    started: float
    pending_for: float
    duration: float
    failure_reason: str | None
    estimate: bool
    estimate_bias: float
    shape: str
    created_wall: datetime
    video_bytes: int
    request: Mapping[str, object] | None = None
    has_video: bool = True

    def state(self, now: float) -> str:
        elapsed = now - self.started
        if elapsed >= self.duration:
            return "failed" if self.failure_reason else "completed"
        return "pending" if elapsed < self.pending_for else "processing"

    def finishes_at(self) -> float:
        return self.started + self.duration

    def estimate_at(self, now: float) -> int | None:
        """`estimate_wait_seconds` as of `now`: whole seconds, skewed by the bias, while it runs."""
        if not self.estimate or self.state(now) not in ("pending", "processing"):
            return None
        return round((self.finishes_at() - now) * self.estimate_bias)


class _RowTable:
    """A gateway's own rows, as new-api and its forks keep them (service/task_polling.go).

    A GET shows a task's row as of its last refresh. A pass over the unfinished rows,
    oldest first and at most `_PASS_LIMIT`, refreshes them one after the other, `gap`
    seconds apart; the next pass starts `period` seconds after one ends (new-api sleeps
    after each), so the cadence drifts as the pass grows or shrinks; with `ticker`, every
    `period` seconds (or at once, when a pass took longer). Passes are played lazily up to
    the clock a request reads: no background task, so any clock drives it.
    """

    _PASS_LIMIT = 1000

    def __init__(
        self,
        period: float,
        gap: float,
        *,
        ticker: bool = False,
        shuffle: random.Random | None = None,
    ) -> None:
        self.period = period
        self.gap = gap
        self.ticker = ticker
        self.shuffle = shuffle  # each pass in its own order (a gateway that keeps none)
        self.refreshed_at: dict[str, float] = {}
        self.final_at: dict[str, float] = {}
        self._gens: dict[str, _Gen] = {}  # in creation order
        self._next_pass: float | None = None
        self._pass: deque[tuple[float, _Gen]] = deque()
        #: When each pass began.
        self.began: list[float] = []

    def add(self, gen: _Gen) -> None:
        """A task was created: its row shows it as created until a pass reaches it."""
        self._gens[gen.id] = gen
        self._apply(gen.started, gen)
        if self._next_pass is None:
            self._next_pass = gen.started + self.period

    def advance(self, now: float) -> None:
        """Play every refresh up to `now`."""
        while True:
            while self._pass and self._pass[0][0] <= now:
                at, gen = self._pass.popleft()
                self._apply(at, gen)
                if not self._pass:
                    self._next_pass = (
                        max(at, self.began[-1] + self.period) if self.ticker else at + self.period
                    )
            if self._pass or self._next_pass is None or self._next_pass > now:
                return
            start = self._next_pass
            self.began.append(start)
            due = [
                gen
                for gen in self._gens.values()
                if gen.started <= start and gen.id not in self.final_at
            ][: self._PASS_LIMIT]
            if self.shuffle is not None:
                self.shuffle.shuffle(due)
            self._pass.extend((start + index * self.gap, gen) for index, gen in enumerate(due))
            if not due:
                self._next_pass = start + self.period

    def _apply(self, at: float, gen: _Gen) -> None:
        self.refreshed_at[gen.id] = at
        if gen.state(at) in ("completed", "failed"):
            self.final_at[gen.id] = at


class FakeDeerAPI:
    """An aiohttp.web fake of DeerAPI's Dream Machine endpoints (see the module docs)."""

    def __init__(
        self,
        *,
        api_key: str = "fake-key-0123456789",
        clock: Callable[[], float] | None = None,
        max_rps: float | None = None,
        burst: float | None = None,
        retry_after: float | bool = True,
        fault_rate: float = 0.0,
        fault_mix: Iterable[Fault] = DEFAULT_FAULT_MIX,
        seed: int = 0,
        link_ttl: float = 3600.0,
        create_duration: float = 5.0,
        create_script: Callable[[Mapping[str, object]], Mapping[str, object]] | None = None,
        video_bytes: int = 64 * 1024,
        callback_loss: float = 0.0,
        callback_duplicates: float = 0.0,
        window_limit: int | None = None,
        window_minutes: int = 1,
        window_counts_failures: bool = False,
        unknown_after_create: float = 0.0,
        refresh: float | None = None,
        refresh_gap: float = 0.0,
        create_latency: float | tuple[float, float] = 0.0,
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.clock: Callable[[], float] = clock or time.monotonic
        self.max_rps = max_rps
        self.burst = burst if burst is not None else (max_rps or 0.0)
        self.retry_after = retry_after
        self.fault_rate = fault_rate
        self.fault_mix = tuple(fault_mix)
        self.link_ttl = link_ttl
        self.create_duration = create_duration
        self.create_script = create_script
        #: Seconds a create takes to answer (a range: drawn for each), real time: a real
        #: gateway's POST waits for the upstream's answer (about a second).
        self.create_latency = create_latency
        self.port = port  # 0: a free one
        self.video_bytes = video_bytes
        self.requests: list[SeenRequest] = []
        self.polls: Counter[str] = Counter()
        self.completed_at: dict[str, float] = {}
        self.created: list[Mapping[str, object]] = []
        self.record_requests = True
        self.callback_loss = callback_loss
        self.callback_duplicates = callback_duplicates
        self.callbacks: list[SentCallback] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._random = random.Random(seed)
        self._gens: dict[str, _Gen] = {}
        self._raw: dict[str, bytes] = {}
        self._faults: deque[Fault] = deque()
        self._storage_faults: deque[Fault] = deque()
        self.window_limit = window_limit
        self.window_minutes = window_minutes
        self.window_counts_failures = window_counts_failures
        self.unknown_after_create = unknown_after_create
        self._window_log: deque[float] = deque()  # the latest `window_limit` counted requests
        self._bucket = float(self.burst)
        self._bucket_time = self.clock()
        self._links: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self._callback_due: list[tuple[float, int, str, str]] = []
        self._callback_order = itertools.count()
        self._callback_wake = asyncio.Event()
        self._callback_tasks: set[asyncio.Task[None]] = set()
        self._callback_http: aiohttp.ClientSession | None = None
        self._dispatching = False
        self._site_url = ""
        self._wall = wall_of(self.clock)  # moves with `clock`, as a Session's does
        if refresh is not None and not refresh > 0:
            raise ValueError(f"refresh must be more than 0 seconds, got {refresh!r}")
        if not refresh_gap >= 0:
            raise ValueError(f"refresh_gap must be 0 or more seconds, got {refresh_gap!r}")
        #: The gateway's own rows (None: every GET reads the upstream live).
        self.rows = None if refresh is None else _RowTable(refresh, refresh_gap)

    # -- lifecycle ---------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[Self]:
        """Serve from an event loop in a daemon thread: for tests of blocking code.

        ``with FakeDeerAPI().in_thread() as fake:`` in a plain (non-async)
        test, then point a ``deerluma.SyncSession`` at ``fake.url``.
        """
        portal = LoopThread("deerluma-fake")
        try:
            portal.call(self.start())
            yield self
        finally:
            # Left open until the interpreter exits, its thread is frozen already.
            if not sys.is_finalizing():
                try:
                    portal.call(self.close())
                finally:
                    portal.stop()

    async def start(self) -> None:
        """Listen on 127.0.0.1, on `port` (0: a free one)."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get(_API + "/{task_id}", self._get)
        app.router.add_post(_API, self._create)
        app.router.add_get("/storage/{task_id}/{asset}", self._storage)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        sockets = self._runner.addresses
        host, port = sockets[0][:2]
        self._site_url = f"http://{host}:{port}"

    async def close(self) -> None:
        """Stop listening, stop calling back, and drop open connections."""
        tasks, self._callback_tasks = self._callback_tasks, set()
        self._dispatching = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._callback_http is not None:
            await self._callback_http.close()
            self._callback_http = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        """The base URL to give a Session."""
        if not self._site_url:
            raise RuntimeError("FakeDeerAPI is not started; use it as `async with`")
        return self._site_url

    # -- scripting ---------------------------------------------------------
    def add_generation(
        self,
        task_id: str | None = None,
        *,
        duration: float = 10.0,
        pending_for: float | None = None,
        failure_reason: str | None = None,
        estimate: bool = True,
        estimate_bias: float = 1.0,
        prompt: str = "a deer walking through a misty forest",
        shape: str = "web",
        video_bytes: int | None = None,
        request: Mapping[str, object] | None = None,
        created_at: datetime | None = None,
        video: bool = True,
    ) -> str:
        """Add a generation that starts now and finishes after `duration` seconds; return its id.

        `estimate_bias` skews `estimate_wait_seconds` (1.3 = reports 30 % too long);
        `created_at` overrides the creation time its body shows; `video=False` completes it
        with no video (as a gateway sometimes answers).
        """
        task_id = task_id or str(uuid.uuid4())
        self._gens[task_id] = _Gen(
            id=task_id,
            prompt=prompt,
            started=self.clock(),
            pending_for=duration * 0.2 if pending_for is None else pending_for,
            duration=duration,
            failure_reason=failure_reason,
            estimate=estimate,
            estimate_bias=estimate_bias,
            shape=shape,
            created_wall=self._wall() if created_at is None else created_at,
            video_bytes=self.video_bytes if video_bytes is None else video_bytes,
            request=request,
            has_video=video,
        )
        if self.rows is not None:
            self.rows.add(self._gens[task_id])
        return task_id

    def finishes_at(self, task_id: str) -> float:
        """The clock time at which `task_id` reaches its terminal state."""
        return self._gens[task_id].finishes_at()

    def shows_final_at(self, task_id: str) -> float:
        """The clock time from which a GET shows `task_id` terminal: when its row turned
        final (a gateway that serves its own rows), else when the generation ended.
        Call it once the task was seen terminal."""
        if self.rows is None:
            return self.finishes_at(task_id)
        self.rows.advance(self.clock())
        return self.rows.final_at[task_id]

    def inject(self, *faults: Fault) -> None:
        """Apply these faults, in order, to the next API requests (one each)."""
        self._faults.extend(faults)

    def serve_raw(self, task_id: str, body: bytes) -> None:
        """Answer GETs of `task_id` with exactly these bytes (a recorded body, say)."""
        self._raw[task_id] = body

    def inject_storage(self, *faults: Fault) -> None:
        """Apply these faults, in order, to the next storage (download) requests."""
        self._storage_faults.extend(faults)

    def body_of(self, task_id: str) -> dict[str, object]:
        """The JSON body the server would send for `task_id` right now."""
        return self._body(self._gens[task_id], self._as_of(task_id))

    def _as_of(self, task_id: str) -> float:
        """The clock time that a GET of `task_id` shows: now, or when its row was refreshed."""
        now = self.clock()
        if self.rows is None:
            return now
        self.rows.advance(now)
        return self.rows.refreshed_at[task_id]

    def video_content(self, task_id: str, asset: str = "video") -> bytes:
        """The bytes the storage route serves for one asset."""
        gen = self._gens[task_id]
        return _content(f"{task_id}/{asset}", gen.video_bytes)

    # -- request handling ----------------------------------------------------
    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], object],
    ) -> web.StreamResponse:
        fault: Fault | None = None
        if request.path.startswith(_API):
            if self._faults:
                fault = self._faults.popleft()
            elif self.fault_rate and self._random.random() < self.fault_rate:
                fault = self._random.choice(self.fault_mix)
        elif self._storage_faults:
            fault = self._storage_faults.popleft()
        sent_auth = "Authorization" in request.headers
        authorized = request.headers.get("Authorization") == f"Bearer {self.api_key}"
        arrived = self.clock()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        status = 499  # nginx's "client closed request", if the handler is cancelled
        try:
            response = await self._answer(request, handler, fault, authorized)
            status = response.status
        finally:
            self.in_flight -= 1
            if request.path.startswith(_API) and status != 499:
                self._count_in_window(status)
            if self.record_requests:
                kind = fault.kind if fault else None
                self.requests.append(
                    SeenRequest(
                        request.method, request.path, authorized, sent_auth, status, kind, arrived
                    )
                )
        return response

    async def _answer(
        self,
        request: web.Request,
        handler: Callable[[web.Request], object],
        fault: Fault | None,
        authorized: bool,
    ) -> web.StreamResponse:
        if request.path.startswith(_API):
            if not authorized:
                return _json_error(401, "invalid api key", "invalid_api_key")
            if self.window_limit and not self._window_allows():
                return self._window_refusal()
            if self.max_rps and not self._take_token():
                headers = {}
                if self.retry_after is not False:
                    wait = 1 / self.max_rps if self.retry_after is True else self.retry_after
                    headers["Retry-After"] = f"{wait:.3f}"
                return web.Response(
                    status=429,
                    body=b'{"error": {"message": "too many requests", "type": "rate_limit"}}',
                    content_type="application/json",
                    headers=headers,
                )
        if fault is not None:
            answer = await fault.respond(request)
            if answer is not None:
                return answer
        response = await handler(request)  # type: ignore[misc]
        assert isinstance(response, web.StreamResponse)
        return response

    def _window_allows(self) -> bool:
        """new-api's model request rate limit: a request passes while fewer than
        `window_limit` were counted, or the oldest of the latest that many is a whole
        window old (its Redis handler, middleware/model-rate-limit.go)."""
        assert self.window_limit
        log = self._window_log
        if len(log) < self.window_limit:
            return True
        return int(self.clock() - log[0]) >= self.window_minutes * 60

    def _count_in_window(self, status: int) -> None:
        """Count an answered API request: successes only, or every one ("total" variant)."""
        if self.window_limit and (status < 400 or self.window_counts_failures):
            self._window_log.append(self.clock())
            while len(self._window_log) > self.window_limit:
                self._window_log.popleft()

    def _window_refusal(self) -> web.Response:
        """new-api's 429 for the window limit: the limit named, no Retry-After."""
        minutes, limit = self.window_minutes, self.window_limit
        if self.window_counts_failures:
            message = (
                f"您已达到总请求数限制：{minutes}分钟内最多请求{limit}次，"
                "包括失败次数，请检查您的请求是否正确"
            )
        else:
            message = f"您已达到请求数限制：{minutes}分钟内最多请求{limit}次"
        request_id = f"{self._random.getrandbits(64):016x}"
        body = {
            "error": {"message": f"{message} (request id: {request_id})", "type": "new_api_error"}
        }
        return web.json_response(body, status=429, dumps=_dumps_utf8)

    def _take_token(self) -> bool:
        assert self.max_rps
        now = self.clock()
        self._bucket = min(self.burst, self._bucket + (now - self._bucket_time) * self.max_rps)
        self._bucket_time = now
        if self._bucket >= 1.0:
            self._bucket -= 1.0
            return True
        return False

    async def _get(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        if task_id in self._raw:
            return web.Response(body=self._raw[task_id], content_type="application/json")
        gen = self._gens.get(task_id)
        if gen is None:
            return web.json_response(
                {"detail": {"reason": f"generation {task_id} not found", "code": "not_found"}},
                status=404,
            )
        self.polls[task_id] += 1
        now = self.clock()
        if gen.request is not None and now < gen.started + self.unknown_after_create:
            # As some gateways do for a task created moments ago.
            return _json_error(404, "task_not_exist", "task_not_exist")
        if request.get(FAULT_KEY) == "wrong_id":
            other = next((g for g in self._gens.values() if g.id != task_id), gen)
            return web.json_response(self._body(other, self._as_of(other.id)))
        body = self._body(gen, self._as_of(task_id))
        if body["state"] in ("completed", "failed"):
            self.completed_at.setdefault(task_id, now)
        return await _send_json(request, body)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        try:
            payload = await request.json()
        except ValueError:
            return _json_error(400, "request body is not JSON", "invalid_request")
        if not isinstance(payload, dict) or not str(payload.get("prompt") or "").strip():
            return web.json_response({"detail": "prompt is required"}, status=400)
        self.created.append(payload)
        script = self.create_script(payload) if self.create_script else {}
        task_id = self.add_generation(
            prompt=payload["prompt"],
            request=payload,
            **{"duration": self.create_duration, **script},  # type: ignore[arg-type]
        )
        gen = self._gens[task_id]
        latency = self.create_latency
        if isinstance(latency, tuple):
            latency = self._random.uniform(*latency)
        if latency > 0:  # made upstream; the answer is on its way
            await asyncio.sleep(latency)
        callback_url = payload.get("callback_url")
        if isinstance(callback_url, str):
            if gen.pending_for < gen.duration:
                self._call_back_at(gen.started + gen.pending_for, task_id, callback_url)
            self._call_back_at(gen.finishes_at(), task_id, callback_url)
        body = self._body(gen, self.clock())
        body["request"] = payload
        body["media_request"] = None
        return await _send_json(request, body)

    # -- callbacks -----------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_tasks.discard)

    def _call_back_at(self, due: float, task_id: str, url: str) -> None:
        if not self._dispatching:  # started by the first callback_url
            self._dispatching = True
            self._spawn(self._dispatch_callbacks())
        heapq.heappush(self._callback_due, (due, next(self._callback_order), task_id, url))
        self._callback_wake.set()

    async def _dispatch_callbacks(self) -> None:
        """POST each state change to its callback_url when the clock reaches it (any clock)."""
        while True:
            await self._callback_wake.wait()
            self._callback_wake.clear()
            while self._callback_due:
                if self._callback_due[0][0] > self.clock():
                    await asyncio.sleep(_CALLBACK_TICK)
                    continue
                due, _, task_id, url = heapq.heappop(self._callback_due)
                # Just past the change: the body shows the new state, whatever the rounding.
                body = self._body(self._gens[task_id], due + 1e-6)
                if self._random.random() < self.callback_loss:
                    self.callbacks.append(SentCallback(task_id, str(body["state"]), due, None))
                    continue
                copies = 2 if self._random.random() < self.callback_duplicates else 1
                for _ in range(copies):
                    self._spawn(self._post_callback(url, task_id, body, due))

    async def _post_callback(
        self, url: str, task_id: str, body: Mapping[str, object], due: float
    ) -> None:
        """Luma's delivery: a JSON POST with a 5 s timeout, retried up to 3 times."""
        if self._callback_http is None:
            self._callback_http = aiohttp.ClientSession()
        status: int | None = None
        for attempt in range(4):
            try:
                async with self._callback_http.post(
                    url, json=body, timeout=aiohttp.ClientTimeout(total=5)
                ) as resp:
                    status = resp.status
                    if resp.status < 300:
                        break
            except (aiohttp.ClientError, TimeoutError):
                status = None
            await asyncio.sleep(0.05 * 2**attempt)
        self.callbacks.append(SentCallback(task_id, str(body["state"]), due, status))

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        if "Authorization" in request.headers:
            return web.Response(
                status=400,
                text="<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism "
                "allowed</Message></Error>",
                content_type="application/xml",
            )
        signature = request.query.get("X-Amz-Signature", "")
        issued = self._links.get(signature)
        if issued is None or self.clock() - issued > self.link_ttl:
            return web.Response(
                status=403,
                text="<Error><Code>AccessDenied</Code><Message>Request has expired</Message>"
                "</Error>",
                content_type="application/xml",
            )
        task_id, asset = request.match_info["task_id"], request.match_info["asset"]
        gen = self._gens.get(task_id)
        if gen is None:
            return web.Response(status=404)
        key, size = f"{task_id}/{asset.split('.')[0]}", gen.video_bytes
        start = _range_start(request.headers.get("Range"), size)
        if start is None:  # as S3 does: the total, so a client can tell it has it all
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        if request.get(FAULT_KEY) is None:  # streamed: a video of any size, never all in memory
            return await _stream(request, key, size, start)
        content = _content(key, size)
        status = 206 if start else 200
        headers = {"Accept-Ranges": "bytes", "Content-Type": "video/mp4"}
        said = True
        if start and request.get(FAULT_KEY) == "misranged":
            moved = request.get(RANGE_KEY)
            start, said = (start, False) if moved is None else (moved, True)
        if start and said:
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        part = content[start:]
        if request.get(FAULT_KEY) == "cut":
            return await cut(request, part, status, headers)
        return web.Response(status=status, body=part, headers=headers)

    # -- bodies ----------------------------------------------------------------
    def _link(self, gen: _Gen, asset: str, ext: str) -> str:
        issued = self.clock()
        signature = hashlib.sha256(f"{gen.id}/{asset}/{issued}".encode()).hexdigest()
        self._links[signature] = issued
        stamp = self._wall().strftime("%Y%m%dT%H%M%SZ")
        return (
            f"{self.url}/storage/{gen.id}/{asset}.{ext}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Date={stamp}&X-Amz-Expires={int(self.link_ttl)}"
            f"&X-Amz-SignedHeaders=host&X-Amz-Signature={signature}"
        )

    def _body(self, gen: _Gen, now: float) -> dict[str, object]:
        state = gen.state(now)
        estimate = gen.estimate_at(now)
        done = state == "completed"
        if gen.shape == "luma":
            return {
                "id": gen.id,
                "generation_type": "video",
                "state": "dreaming" if state == "processing" else state,
                "failure_reason": gen.failure_reason if state == "failed" else None,
                "created_at": gen.created_wall.isoformat().replace("+00:00", "Z"),
                "assets": {
                    "video": self._link(gen, "video", "mp4") if done else None,
                    "image": self._link(gen, "thumbnail", "jpg") if done else None,
                    "progress_video": None,
                },
                "model": "ray-2",
                "request": gen.request or {"prompt": gen.prompt},
            }
        if gen.shape == "new":
            return self._new_body(gen, state, done)
        return {
            "id": gen.id,
            "liked": None,
            "state": state,
            "video": {
                "url": f"{_CDN}/{gen.id}_watermarked.mp4",
                "width": 752,
                "height": 1360,
                "download_url": self._link(gen, "video", "mp4"),
            }
            if done and gen.has_video
            else None,
            "prompt": gen.prompt,
            "thumbnail": self._media(gen, "thumbnail", "jpg") if done else None,
            "video_raw": self._media(gen, "video_raw", "mp4") if done else None,
            "created_at": gen.created_wall.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "last_frame": self._media(gen, "last_frame", "jpg") if done else None,
            "queue_state": None,
            "estimate_wait_seconds": estimate,
            "failure_reason": gen.failure_reason if state == "failed" else None,
        }

    def _new_body(self, gen: _Gen, state: str, done: bool) -> dict[str, object]:
        """The gateway's newer body: no prompt, estimate or queue, and a zero created_at."""
        video: dict[str, object] | None = None
        thumbnail: dict[str, object] | None = None
        if done:
            video = {**self._media(gen, "video", "mp4"), "duration": 5.04}
            video["download_url"] = video["url"]
            palette = {"colors": ["#112233", "#445566"], "dominant": "#112233"}
            thumbnail = {**self._media(gen, "thumbnail", "jpg"), "palette": palette}
        return {
            "id": gen.id,
            "state": state,
            "media_type": "video",
            "video": video,
            "thumbnail": thumbnail,
            "video_raw": None,
            "last_frame": None,
            "created_at": "0001-01-01T00:00:00Z",
            "failure_reason": gen.failure_reason if state == "failed" else None,
        }

    def _media(self, gen: _Gen, asset: str, ext: str) -> dict[str, object]:
        return {"url": self._link(gen, asset, ext), "width": 752, "height": 1360}


#: A stored file's bytes repeat a block of this size (its own for each file): any size
#: can be made, and served, without holding it all.
_BLOCK = 1 << 20


def _block(key: str, size: int) -> bytes:
    return random.Random(key).randbytes(min(size, _BLOCK))


def _content(key: str, size: int) -> bytes:
    block = _block(key, size)
    return (block * (size // _BLOCK + 1))[:size] if size > _BLOCK else block


async def _stream(request: web.Request, key: str, size: int, start: int) -> web.StreamResponse:
    """The file from `start` on, written a piece at a time."""
    headers = {"Accept-Ranges": "bytes", "Content-Type": "video/mp4"}
    if start:
        headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
    response = web.StreamResponse(status=206 if start else 200, headers=headers)
    response.content_length = size - start
    await response.prepare(request)
    block, at = memoryview(_block(key, size)), start
    while at < size:
        offset = at % len(block)
        piece = block[offset : offset + min(len(block) - offset, size - at)]
        await response.write(piece)
        at += len(piece)
    await response.write_eof()
    return response


def _range_start(header: str | None, size: int) -> int | None:
    if not header:
        return 0
    unit, _, spec = header.partition("=")
    start_text, _, _ = spec.partition("-")
    if unit.strip() != "bytes" or not start_text.isdigit() or int(start_text) >= size:
        return None
    return int(start_text)


def _dumps_utf8(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _json_error(status: int, message: str, code: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}},
        status=status,
    )


async def _send_json(request: web.Request, body: Mapping[str, object]) -> web.StreamResponse:
    raw = json.dumps(body).encode()
    if request.get(FAULT_KEY) == "truncated":
        raw = raw[: len(raw) // 2]
    elif request.get(FAULT_KEY) == "cut":
        return await cut(request, raw, 200, {"Content-Type": "application/json"})
    return web.Response(body=raw, content_type="application/json")
