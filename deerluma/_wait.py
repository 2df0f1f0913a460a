"""Waiting for one generation: the tenacity loop behind wait_until_completed and watch.

The loop fetches and sleeps; the poll engine (`_engine`) decides what each
answer means and how long to sleep.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import attrs
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_never

from ._callbacks import CallbackHub, Listening, sleep_or_wake
from ._engine import TOLERANCE, Engine, PollTracker, Step, Verdict, changed, utcnow
from ._gateway import RowClock
from ._history import TimingHistory
from ._models import Generation, GenerationState
from ._policy import PollPolicy
from ._transport import request_sent
from .exceptions import DeerLumaError, GenerationFailed

__all__ = [
    "NOT_FOUND_GRACE",
    "Created",
    "Fetch",
    "OnUpdate",
    "Poller",
    "Watch",
    "notify",
    "poll",
    "wait_for",
    "watch_generation",
]

#: Fetch one generation, never sleeping past the deadline (a clock time, or None).
Fetch = Callable[[str, float | None], Awaitable[Generation]]
OnUpdate = Callable[[Generation], object]
"""A wait's progress callback: hears each change of a generation, sync or async."""
#: A kind of Watch (a batch's waiter is one).
W = TypeVar("W", bound="Watch")


#: A 404 for a task this Session created less than this many seconds ago is not final: some
#: gateways do not know a task for a moment after answering its create.
NOT_FOUND_GRACE = 30.0
#: A create answer is a wait's first look when the wait begins at most this many seconds
#: after it (a terminal one, whenever: it cannot change).
FRESH = 5.0


class Created:
    """The generations this Session created lately: their latest answer (the create's, or a
    fresher one `get_generation` saw since), when it came, and when each was created."""

    def __init__(self, size: int = 16384) -> None:
        self._size = size
        self._answers: OrderedDict[str, tuple[Generation, float, float]] = OrderedDict()

    def add(self, generation: Generation, at: float) -> None:
        """This Session created `generation` at clock time `at`."""
        self._answers[generation.id] = (generation, at, at)
        self._answers.move_to_end(generation.id)
        while len(self._answers) > self._size:
            self._answers.popitem(last=False)

    def seen(self, generation: Generation, at: float) -> None:
        """A fresher answer for a generation this Session created: a wait or watch that
        starts from it never goes back to the create answer's older state."""
        known = self._answers.get(generation.id)
        if known is not None and at >= known[1]:
            self._answers[generation.id] = (generation, at, known[2])

    def get(self, task_id: str) -> tuple[Generation, float] | None:
        """The latest answer for `task_id` and its clock time, if this Session created it."""
        known = self._answers.get(task_id)
        return None if known is None else known[:2]

    def young_until(self, task_id: str) -> float | None:
        """Until when a 404 for `task_id` is not final: a while after this Session created it."""
        created = self._answers.get(task_id)
        return None if created is None else created[2] + NOT_FOUND_GRACE


@attrs.frozen
class Poller:
    """What polling needs from a Session: how to fetch, the time it keeps, what it learned
    (how long generations take, and how its gateway answers)."""

    fetch: Fetch
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    rng: random.Random
    history: TimingHistory | None = None
    hub: CallbackHub | None = None
    created: Created | None = None
    wall: Callable[[], datetime] = utcnow
    rows: RowClock | None = None

    def engine(self, policy: PollPolicy) -> Engine:
        """A poll engine for one wait or batch starting now."""
        return Engine(policy, self.clock(), self.rng, self.history, self.wall, self.rows)

    def watch(self, engine: Engine, task_id: str, *, listen: bool, kind: type[W]) -> W:
        """One id's wait (a `kind` of Watch) in `engine`'s wait or batch, listening for
        callbacks if `listen`."""
        hub = self.hub if listen else None
        listening = None if hub is None else Listening(hub, task_id, engine.started)
        return kind(task_id, listening, self.created)


async def notify(on_update: OnUpdate | None, generation: Generation) -> None:
    """Call a sync or async progress callback."""
    if on_update is not None:
        result = on_update(generation)
        if inspect.isawaitable(result):
            await result


class Watch:
    """One id's wait, step by step: the one poll step single waits and batches share.

    Each step is a GET judged by the engine, or a callback's progress passed
    on without one. A callback is a hint, never a result: what a poll saw
    (``tracker.last``, and so ``WaitTimeout.last``) comes from polls and the
    create answer only. `shown` is what the caller last heard, from either.
    """

    __slots__ = ("_created", "listening", "shown", "stop_listening", "task_id", "tracker")

    def __init__(
        self, task_id: str, listening: Listening | None = None, created: Created | None = None
    ) -> None:
        self.task_id = task_id
        self.listening = listening
        self._created = created
        self.tracker: PollTracker | None = None
        self.shown: Generation | None = None
        self.stop_listening: Callable[[], None] | None = None

    def listen(self, wake: Callable[[], None]) -> None:
        """Call `wake` on each callback for this id (when it listens)."""
        if self.listening is not None:
            self.stop_listening = self.listening.hub.listen(self.task_id, wake)

    def start(self, engine: Engine) -> tuple[Step, float] | None:
        """The create answer as the first look, when this Session created the id: no GET at
        0 s. Returns the engine's step for it and its clock time (None: poll first)."""
        created = None if self._created is None else self._created.get(self.task_id)
        if created is None or engine.policy.initial_delay:
            return None
        generation, at = created
        if not generation.is_terminal and engine.started - at > FRESH:
            return None  # created long before this wait: what it says now, a poll tells
        step, self.tracker = engine.seen(None, self.task_id, at, generation, at)
        if self.listening is not None:
            self.listening.plan(at, step.delay, spread=True)
        return self._show(step), at

    def ready(self, engine: Engine, now: float) -> bool:
        """Whether a step is due now (callbacks may have put the next poll off)."""
        listening = self.listening
        return (
            listening is None
            or self.tracker is None
            or listening.news()
            or now >= listening.due(engine.final) - TOLERANCE
        )

    def held(self, engine: Engine, now: float) -> float | None:
        """When the poll due now should go instead, sending nothing now (None: now): behind
        rows that no pass has refreshed since (`Engine.hold`), unless a callback came."""
        listening = self.listening
        if listening is not None and listening.news():
            return None
        return engine.hold(self.tracker, now)

    async def step(self, engine: Engine, fetch: Fetch, clock: Callable[[], float]) -> Step:
        """Pass on a callback's progress, or poll once; the engine judges what a poll saw."""
        listening = self.listening
        if listening is None:
            step, self.tracker, _ = await poll(
                engine, fetch, clock, self.task_id, self.tracker, self._created
            )
            return self._show(step)
        progress = listening.take_progress()
        if progress is not None:  # passed on, no request; the poll keeps its time
            return self._show(Step(Verdict.SLEEP, emit=progress))
        before = listening.sending()
        step, self.tracker, seen = await poll(
            engine,
            fetch,
            clock,
            self.task_id,
            self.tracker,
            self._created,
            lambda generation: listening.observed(generation, before),
        )
        listening.plan(clock(), step.delay, spread=seen)
        return self._show(step)

    def _show(self, step: Step) -> Step:
        """Pass on only what changed since the caller last heard."""
        emit = step.emit
        if emit is None:
            return step
        if not changed(self.shown, emit):
            return attrs.evolve(step, emit=None)
        self.shown = emit
        return step

    def release(self, engine: Engine, now: float) -> None:
        """The wait is over (or abandoned): stop listening; it no longer counts as running."""
        engine.release(self.tracker, now)
        if self.stop_listening is not None:
            self.stop_listening()
            self.stop_listening = None


async def poll(
    engine: Engine,
    fetch: Fetch,
    clock: Callable[[], float],
    task_id: str,
    tracker: PollTracker | None,
    created: Created | None,
    heard: Callable[[Generation], object] | None = None,
) -> tuple[Step, PollTracker | None, bool]:
    """One GET, judged by the engine: the step, the task's tracker, and whether the poll saw
    the generation (`heard` hears it first). Past the deadline, no GET: the wait is over.
    A 404 for an id this Session created (`created`) moments ago is looked for again."""
    sent = clock()
    if engine.deadline is not None and sent >= engine.deadline:
        return engine.timed_out(tracker, task_id, sent), tracker, False
    try:
        generation = await fetch(task_id, engine.deadline)
        sent = max(sent, request_sent.get())  # the rate gate may have held it back
    except DeerLumaError as exc:
        young = None if created is None else created.young_until(task_id)
        step, tracker = engine.failed(tracker, task_id, clock(), exc, sent, young_until=young)
        return step, tracker, False
    if heard is not None:
        heard(generation)
    step, tracker = engine.seen(tracker, task_id, clock(), generation, sent)
    return step, tracker, True


async def watch_generation(
    poller: Poller, task_id: str, policy: PollPolicy, *, listen: bool = False
) -> AsyncGenerator[Generation, None]:
    """Yield the generation each time it changes, ending with its terminal state.

    Tenacity drives the loop; the poll engine decides each sleep. Transient
    faults are retried within their own budget; no sleep ends past the
    deadline, the last poll comes just before it, and then WaitTimeout.
    With `listen`, callbacks for the id (see `_callbacks`) wake the wait: a
    terminal one for one confirming poll, a progress one passed on without a
    request; the engine's schedule, spread out while callbacks prove reliable
    (`Listening`), is the fallback.
    """
    clock = poller.clock
    engine = poller.engine(policy)
    watch = poller.watch(engine, task_id, listen=listen, kind=Watch)
    listening = watch.listening
    woken = asyncio.Event()
    watch.listen(woken.set)
    step = Step(Verdict.SLEEP)

    async def sleep(delay: float) -> None:
        await sleep_planned(delay)
        while True:  # behind rows, the poll may wait for the next pass (sending nothing)
            woken.clear()  # no await before held(): no callback is missed
            later = watch.held(engine, clock())
            if later is None:
                return
            await sleep_or_wake(poller.sleep, max(0.0, later - clock()), woken)

    async def sleep_planned(delay: float) -> None:
        if listening is None:
            await poller.sleep(delay)
            return
        while not listening.news():
            now = clock()
            due = listening.due(engine.final)
            if now >= due - TOLERANCE:
                return
            woken.clear()  # no await since news(): no callback is missed
            tick = listening.tick(policy.min_interval)
            await sleep_or_wake(poller.sleep, min(due - now, tick), woken)

    planned = clock()  # when the latest step was judged: its delay runs from then

    def wait(_: RetryCallState) -> float:
        # However long the caller took over what it was handed, the next poll keeps its time.
        return max(0.0, planned + step.delay - clock())

    try:
        started = watch.start(engine)
        if started is not None:  # the create answer was the first look: the poll waits its turn
            step, at = started
            if step.emit is not None:
                yield step.emit
            if _over(step):
                return
            await sleep(max(0.0, at + step.delay - clock()))
        elif first := engine.first_delay(may_skip=True):
            await poller.sleep(first)
        async for attempt in _retrying(sleep, wait):
            polled: Step | None = None
            with attempt:  # anything not ours (a bug, cancellation) is raised by tenacity
                polled = await watch.step(engine, poller.fetch, clock)
            if polled is None:
                continue
            step, planned = polled, clock()
            attempt.retry_state.set_result(step)
            if step.emit is not None:
                yield step.emit
            if _over(step):
                return
    finally:
        watch.release(engine, clock())


def _retrying(
    sleep: Callable[[float], Awaitable[None]], wait: Callable[[RetryCallState], float]
) -> AsyncRetrying:
    return AsyncRetrying(
        sleep=sleep, wait=wait, stop=stop_never, retry=retry_if_result(_asleep), reraise=True
    )


def _over(step: Step) -> bool:
    """True when the wait is done; raises the error it gave up with."""
    if step.verdict is Verdict.GIVE_UP:
        assert step.error is not None
        raise step.error
    return step.verdict is Verdict.DONE


def _asleep(step: Step | None) -> bool:
    return step is not None and step.verdict is Verdict.SLEEP


async def wait_for(updates: AsyncIterator[Generation], on_update: OnUpdate | None) -> Generation:
    """Drain a watch, reporting each change; return the completed generation or raise."""
    last: Generation | None = None
    async for generation in updates:
        last = generation
        await notify(on_update, generation)
    if last is None or not last.is_terminal:
        raise RuntimeError("the watch ended before the generation was terminal")
    if last.state is GenerationState.FAILED:
        raise GenerationFailed(last)
    return last
