"""Waiting for one generation: the tenacity loop behind wait_until_completed and watch.

The loop fetches and sleeps; the poll engine (`_engine`) decides what each
answer means and how long to sleep.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import attrs
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_never

from ._callbacks import CallbackHub, Listening, sleep_or_wake
from ._engine import TOLERANCE, Engine, PollTracker, Step, Verdict, changed
from ._history import TimingHistory
from ._models import Generation, GenerationState
from ._policy import PollPolicy
from .exceptions import DeerLumaError, GenerationFailed

__all__ = ["Fetch", "OnUpdate", "Poller", "notify", "wait_for", "watch_generation"]

#: Fetch one generation, never sleeping past the deadline (a clock time, or None).
Fetch = Callable[[str, float | None], Awaitable[Generation]]
OnUpdate = Callable[[Generation], object]


@attrs.frozen
class Poller:
    """What polling needs from a Session: how to fetch, the time it keeps, what it learned."""

    fetch: Fetch
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    rng: random.Random
    history: TimingHistory | None = None
    hub: CallbackHub | None = None

    def engine(self, policy: PollPolicy) -> Engine:
        """A poll engine for one wait or batch starting now."""
        return Engine(policy, self.clock(), self.rng, self.history)


async def notify(on_update: OnUpdate | None, generation: Generation) -> None:
    """Call a sync or async progress callback."""
    if on_update is not None:
        result = on_update(generation)
        if inspect.isawaitable(result):
            await result


async def watch_generation(
    poller: Poller, task_id: str, policy: PollPolicy, *, listen: bool = False
) -> AsyncGenerator[Generation, None]:
    """Yield the generation each time it changes, ending with its terminal state.

    Tenacity drives the loop; the poll engine decides each sleep. Transient
    faults are retried within their own budget; no sleep ends past the
    deadline, the last poll comes just before it, and then WaitTimeout.
    With `listen`, callbacks for the id (see `_callbacks`) wake the wait.
    """
    if listen and poller.hub is not None:
        async for generation in _watch_listening(poller, poller.hub, task_id, policy):
            yield generation
        return
    clock = poller.clock
    engine = poller.engine(policy)
    tracker: PollTracker | None = None
    step = Step(Verdict.SLEEP)

    def wait(_: RetryCallState) -> float:
        return step.delay

    try:
        first = engine.first_delay(may_skip=True)
        if first:
            await poller.sleep(first)
        async for attempt in _retrying(poller.sleep, wait):
            polled: Step | None = None
            with attempt:  # anything not ours (a bug, cancellation) is raised by tenacity
                sent = clock()
                try:
                    generation = await poller.fetch(task_id, engine.deadline)
                except DeerLumaError as exc:
                    polled, tracker = engine.failed(tracker, task_id, clock(), exc, sent)
                else:
                    polled, tracker = engine.seen(tracker, task_id, clock(), generation, sent)
            if polled is None:
                continue
            step = polled
            attempt.retry_state.set_result(step)
            if step.emit is not None:
                yield step.emit
            if _over(step):
                return
    finally:
        engine.release(tracker, clock())


def _retrying(
    sleep: Callable[[float], Awaitable[None]], wait: Callable[[RetryCallState], float]
) -> AsyncRetrying:
    return AsyncRetrying(
        sleep=sleep, wait=wait, stop=stop_never, retry=retry_if_result(_asleep), reraise=True
    )


async def _watch_listening(
    poller: Poller, hub: CallbackHub, task_id: str, policy: PollPolicy
) -> AsyncGenerator[Generation, None]:
    """watch_generation for an id that expects callbacks: they wake it; polls confirm.

    A terminal callback wakes the wait for one confirming poll; a progress
    callback is yielded without a request; the engine's schedule, spread out
    while callbacks prove reliable (`Listening`), is the fallback.
    """
    clock = poller.clock
    engine = poller.engine(policy)
    tracker: PollTracker | None = None
    step = Step(Verdict.SLEEP)
    woken = asyncio.Event()
    stop_listening = hub.listen(task_id, woken.set)
    listening = Listening(hub, task_id, engine.started)
    last: Generation | None = None  # what was last yielded

    async def sleep(_: float) -> None:
        while not listening.news():
            now = clock()
            due = listening.due(engine.final)
            if now >= due - TOLERANCE:
                return
            woken.clear()  # no await since news(): no callback is missed
            tick = listening.tick(policy.min_interval)
            await sleep_or_wake(poller.sleep, min(due - now, tick), woken)

    def wait(_: RetryCallState) -> float:
        return step.delay

    try:
        started = listening.start(engine)
        if started is not None:  # the create answer was the first look: the poll waits its turn
            step, tracker = started
            last = step.emit
            await sleep(0.0)
        elif first := engine.first_delay(may_skip=True):
            await poller.sleep(first)
        async for attempt in _retrying(sleep, wait):
            polled: Step | None = None
            with attempt:
                progress = listening.take_progress()
                if progress is not None:
                    # Progress by callback: passed on, no request; the poll keeps its time.
                    polled = Step(Verdict.SLEEP, emit=progress)
                else:
                    before = listening.sending()
                    sent = clock()
                    try:
                        generation = await poller.fetch(task_id, engine.deadline)
                    except DeerLumaError as exc:
                        polled, tracker = engine.failed(tracker, task_id, clock(), exc, sent)
                        listening.plan(clock(), polled.delay, spread=False)
                    else:
                        listening.observed(generation, before)
                        polled, tracker = engine.seen(tracker, task_id, clock(), generation, sent)
                        listening.plan(clock(), polled.delay, spread=True)
            if polled is None:
                continue
            step = polled
            attempt.retry_state.set_result(step)
            if step.emit is not None and changed(last, step.emit):
                last = step.emit
                yield step.emit
            if _over(step):
                return
    finally:
        stop_listening()
        engine.release(tracker, clock())


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
