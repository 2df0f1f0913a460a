"""Callbacks: unsigned hints that wake waits, and how reliable they proved in this Session.

A callback is never a result. A terminal one wakes the waits on its id,
which confirm with one GET; a non-terminal one is passed on as progress.
Polling stays the safety net: while callbacks prove reliable it is spread
out, and when they go missing it returns to the normal schedule.

Reliability is counted by the polls a callback did not prompt, once per
state of an id this Session listens for: finding a state a callback
announced before counts it delivered, finding one no callback announced
counts it missed. Callbacks alone (forged ones included) can never thin out
the polling.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from ._decode import decode_generation
from ._models import Generation, GenerationState
from .exceptions import DeerLumaError

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "MAX_CALLBACK_BYTES",
    "CallbackAnswer",
    "CallbackApp",
    "CallbackHub",
    "CallbackView",
    "Listening",
    "make_handler",
    "receive",
    "sleep_or_wake",
]

#: Callback bodies larger than this are refused (413).
MAX_CALLBACK_BYTES = 4 << 20
#: Ids remembered (states announced, hints pending); the oldest are forgotten first.
_MEMORY = 16384
#: The share of waits whose completion may be noticed late (by polling) that the stretch allows.
_LATE_SHARE = 0.05
#: Polls are spread out at most this many times the normal schedule.
_MAX_STRETCH = 8.0
#: Reliability is judged on this many recent poll findings (about one batch's worth): when
#: callbacks start going missing, polling returns to normal whatever came before.
_WINDOW = 50
#: An id that has heard no callback this many times later than the latest first callback
#: lately (from creation) is polled at once: its callbacks may be going missing.
_ONSET_MARGIN = 1.5
_ONSETS = 32

Listener = Callable[[], None]
Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]
"""An aiohttp request handler (what `Session.callback_handler` returns)."""


@attrs.frozen
class CallbackView:
    """What this Session's callbacks did so far (``Session.callbacks``)."""

    #: Callbacks accepted by the handler (duplicates included).
    received: int
    #: States a poll found that a callback had announced before.
    delivered: int
    #: States a poll found that no callback had announced (lost, or late).
    missed: int
    #: Terminal callbacks that a confirming poll contradicted (forged, or stale).
    refuted: int
    #: The share of recent poll findings a callback had announced (0.5 with none yet).
    reliability: float


class _Record:
    __slots__ = (
        "announced",
        "counted",
        "created",
        "expected",
        "heard",
        "listeners",
        "progress",
        "terminal",
        "terminal_seq",
    )

    def __init__(self) -> None:
        self.expected = False
        self.heard = False  # any callback at all arrived for it
        self.announced: set[GenerationState] = set()  # states a callback reported
        self.counted: set[GenerationState] = set()  # states already counted as delivered or missed
        self.terminal = False  # a terminal callback awaits its confirming poll
        self.terminal_seq = 0  # terminal callbacks so far
        self.progress: Generation | None = None  # the latest non-terminal callback
        self.created: float | None = None  # the clock time this Session created it
        self.listeners: list[Listener] = []


class CallbackHub:
    """Per Session: which ids expect callbacks, what they said, and how reliable they were."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._recent: deque[bool] = deque(maxlen=_WINDOW)  # poll findings: announced or not
        self._onsets: deque[float] = deque(maxlen=_ONSETS)  # ages at a first callback
        self.received = 0
        self.delivered = 0
        self.missed = 0
        self.refuted = 0

    def _record(self, task_id: str) -> _Record:
        record = self._records.get(task_id)
        if record is None:
            record = self._records[task_id] = _Record()
            while len(self._records) > _MEMORY:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(task_id)
        return record

    @property
    def view(self) -> CallbackView:
        """A snapshot of the counts."""
        return CallbackView(
            self.received, self.delivered, self.missed, self.refuted, self.reliability
        )

    @property
    def reliability(self) -> float:
        """The share of recent poll findings a callback had announced (0.5 with none yet)."""
        return (sum(self._recent) + 1) / (len(self._recent) + 2)

    def stretch(self) -> float:
        """How many times the normal poll spacing to wait, given the reliability.

        A completion whose callback is lost is noticed by the next poll; with
        polls `k` times apart, a share ``loss * (1 - 1/k)`` of waits notice
        later than one normal interval. Keep it under `_LATE_SHARE`.
        """
        loss = 1.0 - self.reliability
        if loss <= _LATE_SHARE:
            return _MAX_STRETCH
        return min(_MAX_STRETCH, 1.0 / (1.0 - _LATE_SHARE / loss))

    def expect(self, task_id: str, created: float | None = None) -> None:
        """Callbacks will come for `task_id` (created at clock time `created` with a
        callback_url, say)."""
        record = self._record(task_id)
        record.expected = True
        if created is not None:
            record.created = created

    @property
    def active(self) -> bool:
        """Whether any id was ever marked or called back about (else nothing listens)."""
        return bool(self._records)

    def expects(self, task_id: str) -> bool:
        """Whether waits on `task_id` listen for callbacks."""
        record = self._records.get(task_id)
        return record is not None and record.expected

    def listen(self, task_id: str, listener: Listener) -> Callable[[], None]:
        """Call `listener` on every callback for `task_id`; returns the function that stops it."""
        listeners = self._record(task_id).listeners
        listeners.append(listener)

        def stop() -> None:
            if listener in listeners:
                listeners.remove(listener)

        return stop

    def probe_at(self, task_id: str) -> float:
        """When to poll an id this Session created that has heard no callback (inf: never).

        Ids created together hear their first callback at similar ages; one
        that stays silent well past the others may be losing its callbacks.
        """
        record = self._records.get(task_id)
        if record is None or record.heard or record.created is None or not self._onsets:
            return math.inf
        return record.created + max(self._onsets) * _ONSET_MARGIN

    def hint(self, task_id: str) -> tuple[bool, Generation | None]:
        """Whether a terminal callback awaits confirmation, and the latest progress callback."""
        record = self._records.get(task_id)
        if record is None:
            return False, None
        return record.terminal, record.progress

    def deliver(self, generation: Generation) -> bool:
        """A callback said this (untrusted): remember it and wake the waits on its id.

        Only ids this Session listens for are remembered (returns whether it
        was one): made-up ids cannot crowd out the real ones.
        """
        record = self._records.get(generation.id)
        if record is None or not record.expected:
            return False
        self._records.move_to_end(generation.id)
        self.received += 1
        if not record.heard:
            record.heard = True
            if record.created is not None:
                self._onsets.append(self._clock() - record.created)
        record.announced.add(generation.state)
        if generation.is_terminal:
            record.terminal = True
            record.terminal_seq += 1
        else:
            record.progress = generation
        for listener in tuple(record.listeners):
            listener()
        return True

    def terminal_seq(self, task_id: str) -> int:
        """How many terminal callbacks `task_id` had (read before a poll is sent)."""
        record = self._records.get(task_id)
        return 0 if record is None else record.terminal_seq

    def observed(self, task_id: str, generation: Generation, *, confirming: bool, seq: int) -> None:
        """A poll (trusted) sent when `terminal_seq` was `seq` saw `generation`.

        Its state counts as announced or missed, unless the poll was
        `confirming` a terminal callback: it was sent because a callback
        came, and would make callbacks look more reliable. A terminal hint
        newer than the poll stays for the next one.
        """
        record = self._records.get(task_id)
        if record is None or not record.expected:
            return
        state = generation.state
        if not confirming and state not in record.counted and state is not GenerationState.PENDING:
            record.counted.add(state)
            announced = state in record.announced
            self._recent.append(announced)
            if announced:
                self.delivered += 1
            else:
                self.missed += 1
        if record.terminal_seq != seq:
            return  # a terminal callback came while this poll was out: it needs its own
        if record.terminal and not generation.is_terminal:
            self.refuted += 1  # a terminal callback the server contradicts: ignore it
        record.terminal = False
        if record.progress is not None and record.progress.state is state:
            record.progress = None


class Listening:
    """One wait's use of callbacks for one id: when its next poll is due, what is new.

    The engine plans each poll; this spreads the plan out by the hub's
    stretch (re-read whenever asked), brings it forward for an id silent past
    its probe time, and keeps track of the progress callbacks passed on.
    """

    __slots__ = ("_progress_seen", "hub", "planned_delay", "planned_from", "spread", "task_id")

    def __init__(self, hub: CallbackHub, task_id: str, started: float) -> None:
        self.hub = hub
        self.task_id = task_id
        self.planned_from = started  # when the engine's plan was made
        self.planned_delay = 0.0  # and the delay it asked for
        self.spread = False  # only a successful poll's plan is spread out, never a backoff
        self._progress_seen: Generation | None = None

    def plan(self, now: float, delay: float, *, spread: bool) -> None:
        """The engine asked for the next poll `delay` seconds after `now`."""
        self.planned_from, self.planned_delay, self.spread = now, delay, spread

    def due(self, final: float) -> float:
        """The clock time of the next poll (never past `final`, the last one's)."""
        hub = self.hub
        probe = hub.probe_at(self.task_id)
        if probe <= self.planned_from:
            # Polled since it fell silent: no more probes, and no spreading out either.
            return min(self.planned_from + self.planned_delay, final)
        stretch = hub.stretch() if self.spread else 1.0
        return min(self.planned_from + self.planned_delay * stretch, probe, final)

    def tick(self, min_interval: float) -> float:
        """At most this long between looks at `due()` (the reliability may change meanwhile)."""
        return max(self.planned_delay, min_interval)

    def sending(self) -> tuple[bool, int]:
        """Before a poll: whether it confirms a terminal callback, and the hint's sequence."""
        return self.hub.hint(self.task_id)[0], self.hub.terminal_seq(self.task_id)

    def news(self) -> bool:
        """A terminal callback, or a progress callback not yet passed on."""
        terminal, progress = self.hub.hint(self.task_id)
        return terminal or (progress is not None and progress is not self._progress_seen)

    def take_progress(self) -> Generation | None:
        """A progress callback to pass on without a request (None: poll instead)."""
        terminal, progress = self.hub.hint(self.task_id)
        if terminal or progress is None or progress is self._progress_seen:
            return None
        self._progress_seen = progress
        return progress

    def observed(self, generation: Generation, sent: tuple[bool, int]) -> None:
        """A poll saw `generation`; `sent` is what `sending()` said before it went."""
        confirming, seq = sent
        self.hub.observed(self.task_id, generation, confirming=confirming, seq=seq)


async def sleep_or_wake(
    sleep: Callable[[float], Awaitable[None]], seconds: float, wake: asyncio.Event
) -> None:
    """Sleep `seconds` (with the injected sleep), or less if `wake` is set first."""
    if wake.is_set():
        return
    sleeper = asyncio.ensure_future(sleep(seconds))
    waker = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()


@attrs.frozen
class CallbackAnswer:
    """What to answer a callback's sender: `status` (200, 400, 403, 413) and a JSON `body`."""

    status: int
    body: bytes
    content_type: str = "application/json"

    @property
    def json(self) -> dict[str, object]:
        """The body, parsed."""
        parsed: dict[str, object] = json.loads(self.body)
        return parsed


def _answer(status: int, payload: dict[str, object]) -> CallbackAnswer:
    return CallbackAnswer(status, json.dumps(payload, separators=(",", ":")).encode())


def _refuse(status: int, message: str) -> CallbackAnswer:
    return _answer(status, {"error": {"message": message}})


TOO_LARGE = _refuse(413, f"a callback body is at most {MAX_CALLBACK_BYTES} bytes")
WRONG_TOKEN = _refuse(403, "wrong or missing token")


def admits(expected: bytes, token: str | None) -> bool:
    """Whether a callback's `token` (its URL's ``token`` parameter) is the one asked for."""
    return hmac.compare_digest((token or "").encode(), expected)


def receive(hub: CallbackHub, expected: bytes, body: bytes, token: str | None) -> CallbackAnswer:
    """The one place that judges a callback: its token, its size, its body; a generation of
    an id this Session waits for is delivered to `hub`. Every web framework's door (the
    aiohttp handler, the ASGI app, `Session.receive_callback`) answers what this says."""
    if not admits(expected, token):
        return WRONG_TOKEN
    if len(body) > MAX_CALLBACK_BYTES:
        return TOO_LARGE
    try:
        generation = decode_generation(200, {"Content-Type": "application/json"}, bytes(body))
    except DeerLumaError as exc:
        return _refuse(400, f"not a generation: {exc}")
    if not hub.deliver(generation):  # not an id this Session waits for: nothing kept
        return _answer(200, {"ok": True, "ignored": "not an id this Session waits for"})
    return _answer(200, {"ok": True})


def make_handler(hub: CallbackHub, secret: str) -> Handler:
    """An aiohttp request handler that feeds callbacks to `hub` (through `receive`)."""
    from aiohttp import web  # the server half of aiohttp only for those who receive callbacks

    expected = secret.encode()

    def respond(answer: CallbackAnswer) -> web.Response:
        return web.Response(
            status=answer.status, body=answer.body, content_type=answer.content_type
        )

    async def handle(request: web.Request) -> web.StreamResponse:
        token = request.query.get("token")
        if not admits(expected, token):  # before reading a byte of it
            return respond(WRONG_TOKEN)
        if request.content_length is not None and request.content_length > MAX_CALLBACK_BYTES:
            return respond(TOO_LARGE)
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_CALLBACK_BYTES:
                return respond(TOO_LARGE)
        return respond(receive(hub, expected, bytes(body), token))

    return handle


_Message = dict[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


class CallbackApp:
    """An ASGI app that receives callbacks (what `Session.callback_asgi` returns): mount it
    in FastAPI or Starlette, Quart, or Django's ASGI. POST only; the token is the URL's
    ``token`` parameter; its verdicts are `receive`'s."""

    def __init__(self, hub: CallbackHub, secret: str) -> None:
        self._hub = hub
        self._expected = secret.encode()

    async def __call__(self, scope: _Message, receive_: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":  # served alone: nothing to start or stop
            while True:
                message = await receive_()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("method") != "POST":
            await _send_answer(send, _refuse(405, "callbacks are POSTed"))
            return
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        token = query.get("token", [None])[0]
        if not admits(self._expected, token):  # before reading a byte of it
            await _send_answer(send, WRONG_TOKEN)
            return
        for name, value in scope.get("headers", ()):
            too_long = value.isdigit() and int(value) > MAX_CALLBACK_BYTES
            if name.lower() == b"content-length" and too_long:
                await _send_answer(send, TOO_LARGE)
                return
        body = bytearray()
        while True:
            message = await receive_()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_CALLBACK_BYTES:
                await _send_answer(send, TOO_LARGE)
                return
            if not message.get("more_body", False):
                break
        await _send_answer(send, receive(self._hub, self._expected, bytes(body), token))


async def _send_answer(send: _Send, answer: CallbackAnswer) -> None:
    headers = [
        (b"content-type", answer.content_type.encode()),
        (b"content-length", str(len(answer.body)).encode()),
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
