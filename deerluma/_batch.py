"""Waiting on many generations at once: one scheduler, bounded requests in flight.

Each waiting id costs a small record in a heap, not a task or an open
response; `concurrency` bounds only the polls in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import AsyncGenerator, Iterable

import attrs

from ._models import Generation, GenerationState
from ._policy import PollPolicy, PollTracker
from ._validate import check_task_id
from ._wait import Poller, warn_unknown_state
from .exceptions import (
    DeadlineExceeded,
    DeerLumaError,
    GenerationFailed,
    WaitTimeout,
)

__all__ = ["BatchResult", "batch_as_completed"]


@attrs.frozen
class BatchResult:
    """The outcome for one task id of a batch: a completed generation or an error."""

    task_id: str
    generation: Generation | None = None
    error: DeerLumaError | None = None

    @property
    def ok(self) -> bool:
        """True when the generation completed."""
        return self.error is None

    def unwrap(self) -> Generation:
        """The completed generation, or raise the error."""
        if self.error is not None:
            raise self.error
        assert self.generation is not None
        return self.generation


#: Under a binding rate limit, at most this many re-polls before a first poll.
_REPOLLS_PER_FIRST = 3


class _Waiter:
    __slots__ = ("last", "task_id", "tracker")

    def __init__(self, task_id: str, tracker: PollTracker) -> None:
        self.task_id = task_id
        self.tracker = tracker
        self.last: Generation | None = None


class _Scheduler:
    """`concurrency` workers take due polls from one heap, earliest first.

    Idle workers wait on an event; only one of them sleeps until the next poll
    falls due, so an injected fake clock advances once, not once per worker.
    """

    def __init__(self, poller: Poller, policy: PollPolicy) -> None:
        self.fetch = poller.fetch
        self.rng = poller.rng
        self.policy = policy
        self.clock = poller.clock
        self.sleep = poller.sleep
        self.started = poller.clock()
        self.deadline = None if policy.timeout is None else self.started + policy.timeout
        self.heap: list[tuple[float, int, _Waiter]] = []
        self.order = itertools.count()
        self.wake = asyncio.Event()
        self.timer_running = False
        self.unseen: deque[str] = deque()  # ids not yet looked at
        self.first_poll = self.started + policy.initial_delay
        self.repolls_in_a_row = 0
        self.warned_unknown = False  # once per batch, not once per id
        self.results: asyncio.Queue[BatchResult | BaseException] = asyncio.Queue()

    def schedule(self, waiter: _Waiter, at: float) -> None:
        if self.deadline is not None:
            at = min(at, self.deadline)
        heapq.heappush(self.heap, (at, next(self.order), waiter))
        self.wake.set()

    def _next_due(self, now: float) -> _Waiter | str | None:
        """The next poll to make now, if any.

        A due re-poll (aimed at a predicted completion) usually finds the
        generation done, while a first poll is a shot in the dark; when the
        rate limit binds, re-polls go first, but never more than
        `_REPOLLS_PER_FIRST` in a row while ids wait for their first look.
        """
        heap, unseen = self.heap, self.unseen
        repoll_due = bool(heap) and heap[0][0] <= now
        first_due = bool(unseen) and now >= self.first_poll
        if first_due and (not repoll_due or self.repolls_in_a_row >= _REPOLLS_PER_FIRST):
            self.repolls_in_a_row = 0
            return unseen.popleft()
        if repoll_due:
            self.repolls_in_a_row += 1
            return heapq.heappop(heap)[2]
        return None

    def _next_is_due(self, now: float) -> bool:
        return (bool(self.heap) and self.heap[0][0] <= now) or (
            bool(self.unseen) and now >= self.first_poll
        )

    def _wake_at(self) -> float | None:
        times = [self.heap[0][0]] if self.heap else []
        if self.unseen:
            times.append(self.first_poll)
        return min(times, default=None)

    async def work(self) -> None:
        try:
            while True:
                now = self.clock()
                waiter = self._next_due(now)
                if waiter is not None:
                    if self._next_is_due(now):
                        self.wake.set()  # more is due: rouse an idle peer
                    result = await self._poll_once(waiter)
                    if result is not None:
                        self.results.put_nowait(result)
                    continue
                # No await between the check above and clear(): no wake-up is lost.
                self.wake.clear()
                wake_at = self._wake_at()
                if wake_at is not None and not self.timer_running:
                    self.timer_running = True
                    try:
                        await self._sleep_or_wake(wake_at - now)
                    finally:
                        self.timer_running = False
                else:
                    await self.wake.wait()
        except Exception as exc:  # a bug must surface to the caller, not hang the batch
            self.results.put_nowait(exc)

    async def _sleep_or_wake(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        waker = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _poll_once(self, item: _Waiter | str) -> BatchResult | None:
        # An id's first look needs no bookkeeping: most batches are mostly done.
        waiter = item if isinstance(item, _Waiter) else None
        task_id = item.task_id if isinstance(item, _Waiter) else item
        if self.deadline is not None and self.clock() >= self.deadline:
            return BatchResult(task_id, error=self._timeout(task_id, waiter))
        try:
            generation = await self.fetch(task_id, self.deadline)
        except DeadlineExceeded as exc:
            error = self._timeout(task_id, waiter)
            error.__cause__ = exc
            return BatchResult(task_id, error=error)
        except DeerLumaError as exc:
            waiter = waiter or self._waiter(task_id)
            if waiter.tracker.record_error(exc):
                return BatchResult(task_id, error=exc)
            self.schedule(waiter, self.clock() + waiter.tracker.error_delay(exc))
            return None
        if generation.state is GenerationState.COMPLETED:
            return BatchResult(task_id, generation=generation)
        if generation.state is GenerationState.FAILED:
            return BatchResult(task_id, error=GenerationFailed(generation))
        if generation.state is GenerationState.UNKNOWN and not self.warned_unknown:
            self.warned_unknown = True
            warn_unknown_state(generation)
        waiter = waiter or self._waiter(task_id)
        now = self.clock()
        waiter.tracker.observe(now, generation)
        waiter.last = generation
        self.schedule(waiter, now + waiter.tracker.next_delay(now))
        return None

    def _waiter(self, task_id: str) -> _Waiter:
        return _Waiter(task_id, PollTracker(self.policy, self.started, self.rng))

    def _timeout(self, task_id: str, waiter: _Waiter | None) -> WaitTimeout:
        last = waiter.last if waiter is not None else None
        return WaitTimeout(task_id, last, self.policy.timeout or 0.0)


async def batch_as_completed(
    poller: Poller, task_ids: Iterable[str], *, concurrency: int, policy: PollPolicy
) -> AsyncGenerator[BatchResult, None]:
    """Yield one BatchResult per distinct task id, in the order they finish."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    scheduler = _Scheduler(poller, policy)
    invalid: list[BatchResult] = []
    expected = 0
    for task_id in dict.fromkeys(task_ids):
        expected += 1
        try:
            check_task_id(task_id)
        except DeerLumaError as exc:  # InvalidTaskId: report it, let the others run
            invalid.append(BatchResult(task_id, error=exc))
            continue
        scheduler.unseen.append(task_id)
    for result in invalid:
        yield result
    waiting = expected - len(invalid)
    workers = [asyncio.create_task(scheduler.work()) for _ in range(min(concurrency, waiting))]
    try:
        for _ in range(waiting):
            item = await scheduler.results.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
