"""Waiting on many generations at once: one scheduler, bounded requests in flight.

Each waiting id costs a small record in a heap, not a task or an open
response; `concurrency` bounds only the polls in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import deque
from collections.abc import AsyncGenerator

import attrs

from ._engine import PollTracker, Verdict
from ._models import Generation
from ._policy import PollPolicy
from ._validate import check_task_id
from ._wait import OnUpdate, Poller, notify
from .exceptions import AuthenticationError, DeerLumaError

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
    __slots__ = ("task_id", "tracker")

    def __init__(self, task_id: str, tracker: PollTracker | None) -> None:
        self.task_id = task_id
        self.tracker = tracker


class _Scheduler:
    """`concurrency` workers take due polls from one heap, earliest first.

    Idle workers wait on an event; only one of them sleeps until the next poll
    falls due, so an injected fake clock advances once, not once per worker.
    """

    def __init__(self, poller: Poller, policy: PollPolicy, on_update: OnUpdate | None) -> None:
        self.fetch = poller.fetch
        self.clock = poller.clock
        self.sleep = poller.sleep
        self.engine = poller.engine(policy)
        self.on_update = on_update
        self.heap: list[tuple[float, int, _Waiter]] = []
        self.order = itertools.count()
        self.wake = asyncio.Event()
        self.timer_running = False
        self.unseen: deque[str] = deque()  # ids not yet looked at
        self.first_poll = self.engine.started + self.engine.first_delay()
        self.repolls_in_a_row = 0
        self.fatal: AuthenticationError | None = None
        self.vouched = asyncio.Event()  # an answer came back: the key works (or fatal is set)
        self.results: asyncio.Queue[BatchResult | BaseException] = asyncio.Queue()

    def schedule(self, waiter: _Waiter, at: float) -> None:
        heapq.heappush(self.heap, (at, next(self.order), waiter))
        self.wake.set()

    def release_all(self) -> None:
        """The batch is over: no waiter still counts as running in the Session's history."""
        now = self.clock()
        for _, _, waiter in self.heap:
            self.engine.release(waiter.tracker, now)
        self.heap.clear()

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

    async def work(self, *, first: bool = False) -> None:
        try:
            if not first:
                # One request goes alone first: a wrong key then costs one 401, not one per id.
                await self.vouched.wait()
            while True:
                # After a wrong key, every id is due at once: each reports it, none is sent.
                now = self.clock() if self.fatal is None else math.inf
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
        engine = self.engine
        waiter = item if isinstance(item, _Waiter) else None
        task_id = item.task_id if isinstance(item, _Waiter) else item
        tracker = waiter.tracker if waiter is not None else None
        sent = self.clock()
        if self.fatal is not None:  # a wrong key fails every id alike: send nothing more
            engine.release(tracker, sent)
            return BatchResult(task_id, error=self.fatal)
        if engine.deadline is not None and sent >= engine.deadline:
            step = engine.timed_out(tracker, task_id, sent)
        else:
            try:
                generation = await self.fetch(task_id, engine.deadline)
            except DeerLumaError as exc:
                step, tracker = engine.failed(tracker, task_id, self.clock(), exc, sent)
            except BaseException:  # cancelled mid-poll: the id no longer counts as running
                engine.release(tracker, self.clock())
                raise
            else:
                step, tracker = engine.seen(tracker, task_id, self.clock(), generation, sent)
        if step.emit is not None and self.on_update is not None:
            await notify(self.on_update, step.emit)
        if isinstance(step.error, AuthenticationError):
            self.fatal = step.error
            self.wake.set()  # the others need not wait for their turn to hear it
        self.vouched.set()
        if step.verdict is Verdict.SLEEP:
            if waiter is None:
                waiter = _Waiter(task_id, tracker)
            else:
                waiter.tracker = tracker
            self.schedule(waiter, self.clock() + step.delay)
            return None
        return BatchResult(task_id, generation=step.result, error=step.error)


async def batch_as_completed(
    poller: Poller,
    task_ids: list[str],
    *,
    concurrency: int,
    policy: PollPolicy,
    on_update: OnUpdate | None = None,
) -> AsyncGenerator[BatchResult, None]:
    """Yield one BatchResult per task id (distinct, checked by `check_batch`) as they finish.

    `on_update` hears each change of every id (the terminal one included).
    """
    scheduler = _Scheduler(poller, policy, on_update)
    invalid: list[BatchResult] = []
    expected = 0
    for task_id in task_ids:
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
    workers = [
        asyncio.create_task(scheduler.work(first=not i)) for i in range(min(concurrency, waiting))
    ]
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
        scheduler.release_all()
