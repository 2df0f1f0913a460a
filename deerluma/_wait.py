"""Waiting for one generation: the tenacity poll loop behind wait_until_completed and watch."""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import attrs
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_result,
)
from tenacity.stop import stop_base

from ._models import Generation, GenerationState
from ._policy import PollPolicy, PollTracker
from .exceptions import (
    DeadlineExceeded,
    GenerationFailed,
    WaitTimeout,
    is_transient,
)

__all__ = [
    "Fetch",
    "OnUpdate",
    "Poller",
    "changed",
    "notify",
    "wait_for",
    "warn_unknown_state",
    "watch_generation",
]

log = logging.getLogger("deerluma")

#: Fetch one generation, never sleeping past the deadline (a clock time, or None).
Fetch = Callable[[str, float | None], Awaitable[Generation]]
OnUpdate = Callable[[Generation], object]


@attrs.frozen
class Poller:
    """What polling needs from a Session: how to fetch, and the time it keeps."""

    fetch: Fetch
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    rng: random.Random


def changed(before: Generation | None, after: Generation) -> bool:
    """Whether a caller watching progress would want to hear about `after`."""
    return before is None or (
        before.state,
        before.estimate_wait_seconds,
        before.queue_state,
    ) != (after.state, after.estimate_wait_seconds, after.queue_state)


async def notify(on_update: OnUpdate | None, generation: Generation) -> None:
    """Call a sync or async progress callback."""
    if on_update is not None:
        result = on_update(generation)
        if inspect.isawaitable(result):
            await result


def warn_unknown_state(generation: Generation) -> None:
    """Say once that a state is new to us; waiting goes on (it may mean anything)."""
    log.warning(
        "generation %r is in a state deerluma does not know (%r); still waiting",
        generation.id,
        generation.raw.get("state"),
    )


class _TooManyErrors(stop_base):
    def __init__(self, tracker: PollTracker) -> None:
        self._tracker = tracker

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._tracker.errors > self._tracker.policy.max_consecutive_errors


async def watch_generation(
    poller: Poller, task_id: str, policy: PollPolicy
) -> AsyncGenerator[Generation, None]:
    """Yield the generation each time it changes, ending with its terminal state.

    Polls are paced by `policy`; transient faults are retried within their own
    budget; no sleep ends past the deadline, which raises WaitTimeout.
    """
    fetch, clock, sleep = poller.fetch, poller.clock, poller.sleep
    started = clock()
    tracker = PollTracker(policy, started, poller.rng)
    deadline = None if policy.timeout is None else started + policy.timeout
    last: Generation | None = None
    warned_unknown = False

    def wait(state: RetryCallState) -> float:
        now = clock()
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = tracker.next_delay(now) if exc is None else tracker.error_delay(exc)
        # Never sleep past the deadline; the next attempt then raises WaitTimeout.
        return delay if deadline is None else max(0.0, min(delay, deadline - now))

    retrying = AsyncRetrying(
        sleep=sleep,
        wait=wait,
        stop=_TooManyErrors(tracker),
        retry=retry_if_exception(is_transient) | retry_if_result(_not_terminal),
        reraise=True,
    )
    if policy.initial_delay:
        await sleep(policy.initial_delay)
    async for attempt in retrying:
        generation: Generation | None = None
        with attempt:
            if deadline is not None and clock() >= deadline:
                raise WaitTimeout(task_id, last, policy.timeout or 0.0)
            try:
                generation = await fetch(task_id, deadline)
            except DeadlineExceeded as exc:
                raise WaitTimeout(task_id, last, policy.timeout or 0.0) from exc
        if generation is None:
            failure = attempt.retry_state.outcome
            if failure is not None and (exc := failure.exception()) is not None:
                tracker.record_error(exc)  # tenacity's stop and retry decide what follows
            continue
        attempt.retry_state.set_result(generation)
        tracker.observe(clock(), generation)
        if generation.state is GenerationState.UNKNOWN and not warned_unknown:
            warned_unknown = True
            warn_unknown_state(generation)
        previous, last = last, generation
        if changed(previous, generation):
            yield generation


def _not_terminal(generation: Generation | None) -> bool:
    return generation is None or not generation.is_terminal


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
