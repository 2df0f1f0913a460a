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
from collections.abc import AsyncGenerator, Callable

import attrs

from ._callbacks import Listening, sleep_or_wake
from ._engine import TOLERANCE, PollTracker, Verdict, changed
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
    __slots__ = ("busy", "listening", "stop_listening", "task_id", "tracker", "version")

    def __init__(self, task_id: str, tracker: PollTracker | None) -> None:
        self.task_id = task_id
        self.tracker = tracker
        self.version = 0  # heap entries of older versions are stale
        self.busy = False  # its poll is in flight
        self.listening: Listening | None = None
        self.stop_listening: Callable[[], None] | None = None


class _Scheduler:
    """`concurrency` workers take due polls from one heap, earliest first.

    Idle workers wait on an event; only one of them sleeps until the next poll
    falls due, so an injected fake clock advances once, not once per worker.
    """

    def __init__(
        self,
        poller: Poller,
        policy: PollPolicy,
        on_update: OnUpdate | None,
        listen: Callable[[str], bool] | None = None,
    ) -> None:
        self.fetch = poller.fetch
        self.hub = poller.hub if listen is not None else None
        self.listen = listen
        self.clock = poller.clock
        self.sleep = poller.sleep
        self.engine = poller.engine(policy)
        self.on_update = on_update
        self.heap: list[tuple[float, int, _Waiter, int]] = []
        self.order = itertools.count()
        self.wake = asyncio.Event()
        self.timer_running = False
        self.unseen: deque[str] = deque()  # ids not yet looked at
        self.unseen_listening: dict[str, _Waiter] = {}  # their waiters, if they listen
        self.first_poll = self.engine.started + self.engine.first_delay()
        self.repolls_in_a_row = 0
        self.fatal: AuthenticationError | None = None
        self.vouched = asyncio.Event()  # an answer came back: the key works (or fatal is set)
        self.results: asyncio.Queue[BatchResult | BaseException] = asyncio.Queue()

    def schedule(self, waiter: _Waiter, at: float) -> None:
        waiter.version += 1
        heapq.heappush(self.heap, (at, next(self.order), waiter, waiter.version))
        self.wake.set()

    def release_all(self) -> None:
        """The batch is over: no waiter still counts as running in the Session's history."""
        now = self.clock()
        for _, _, waiter, version in self.heap:
            if version == waiter.version:
                self.engine.release(waiter.tracker, now)
                self._unlisten(waiter)
        for waiter in self.unseen_listening.values():
            self._unlisten(waiter)
        self.heap.clear()

    def _listening(self, task_id: str) -> _Waiter | None:
        """A waiter that callbacks for `task_id` wake, if the id listens for them."""
        if self.hub is None or self.listen is None or not self.listen(task_id):
            return None
        waiter = _Waiter(task_id, None)
        waiter.listening = Listening(self.hub, task_id, self.engine.started)

        def woken() -> None:
            if not waiter.busy:  # one in flight is re-planned when it comes back
                self.schedule(waiter, 0.0)

        waiter.stop_listening = self.hub.listen(task_id, woken)
        return waiter

    @staticmethod
    def _unlisten(waiter: _Waiter) -> None:
        if waiter.stop_listening is not None:
            waiter.stop_listening()
            waiter.stop_listening = None

    def first_looks(self) -> None:
        """Give ids that listen for callbacks their waiter; the create answer is a first look."""
        assert self.hub is not None
        for _ in range(len(self.unseen)):
            task_id = self.unseen.popleft()
            waiter = self._listening(task_id)
            listening = None if waiter is None else waiter.listening
            started = None if listening is None else listening.start(self.engine)
            if waiter is None or listening is None or started is None:
                self.unseen.append(task_id)
                if waiter is not None:
                    self.unseen_listening[task_id] = waiter
                continue
            _, waiter.tracker = started
            self._recheck(waiter, listening, listening.planned_from)

    def _plan(self, waiter: _Waiter, now: float, delay: float, *, spread: bool) -> None:
        """Put the waiter back in the heap: after `delay`, or as callbacks have it."""
        listening = waiter.listening
        if listening is None:
            self.schedule(waiter, now + delay)
            return
        listening.plan(now, delay, spread=spread)
        self._recheck(waiter, listening, now)

    def _recheck(self, waiter: _Waiter, listening: Listening, now: float) -> None:
        # Looked at again within one planned interval: the reliability may change meanwhile.
        due = now if listening.news() else listening.due(self.engine.final)
        self.schedule(waiter, min(due, now + listening.tick(self.engine.policy.min_interval)))

    def _next_due(self, now: float) -> _Waiter | str | None:
        """The next poll to make now, if any.

        A due re-poll (aimed at a predicted completion) usually finds the
        generation done, while a first poll is a shot in the dark; when the
        rate limit binds, re-polls go first, but never more than
        `_REPOLLS_PER_FIRST` in a row while ids wait for their first look.
        """
        heap, unseen = self.heap, self.unseen
        while heap and heap[0][3] != heap[0][2].version:
            heapq.heappop(heap)  # superseded by a later schedule() of the same waiter
        repoll_due = bool(heap) and heap[0][0] <= now
        first_due = bool(unseen) and now >= self.first_poll
        if first_due and (not repoll_due or self.repolls_in_a_row >= _REPOLLS_PER_FIRST):
            self.repolls_in_a_row = 0
            task_id = unseen.popleft()
            waiter = self.unseen_listening.pop(task_id, None)
            if waiter is None:
                return task_id
            if waiter.version:  # a callback already put it in the heap
                return self._next_due(now)
            return waiter
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
                    if isinstance(waiter, _Waiter):
                        waiter.busy = True
                    try:
                        result = await self._poll_once(waiter)
                    finally:
                        if isinstance(waiter, _Waiter):
                            waiter.busy = False
                    if result is not None:
                        self.results.put_nowait(result)
                    continue
                # No await between the check above and clear(): no wake-up is lost.
                self.wake.clear()
                wake_at = self._wake_at()
                if wake_at is not None and not self.timer_running:
                    self.timer_running = True
                    try:
                        await sleep_or_wake(self.sleep, wake_at - now, self.wake)
                    finally:
                        self.timer_running = False
                else:
                    await self.wake.wait()
        except Exception as exc:  # a bug must surface to the caller, not hang the batch
            self.results.put_nowait(exc)

    async def _poll_once(self, item: _Waiter | str) -> BatchResult | None:
        # An id's first look needs no bookkeeping: most batches are mostly done.
        engine = self.engine
        waiter = item if isinstance(item, _Waiter) else None
        task_id = item.task_id if isinstance(item, _Waiter) else item
        tracker = waiter.tracker if waiter is not None else None
        listening = waiter.listening if waiter is not None else None
        sent = self.clock()
        if self.fatal is not None:  # a wrong key fails every id alike: send nothing more
            engine.release(tracker, sent)
            return self._over(waiter, BatchResult(task_id, error=self.fatal))
        before = (False, 0)
        if listening is not None and waiter is not None and tracker is not None:
            progress = listening.take_progress()
            if progress is not None:  # progress by callback: passed on, no request
                if self.on_update is not None and changed(tracker.last, progress):
                    tracker.last = progress
                    await notify(self.on_update, progress)
                self._recheck(waiter, listening, sent)
                return None
            before = listening.sending()
            if not before[0] and sent < listening.due(engine.final) - TOLERANCE:
                self._recheck(waiter, listening, sent)  # not due yet, as callbacks have it
                return None
        spread = False
        if engine.deadline is not None and sent >= engine.deadline:
            step = engine.timed_out(tracker, task_id, sent)
        else:
            try:
                generation = await self.fetch(task_id, engine.deadline)
            except DeerLumaError as exc:
                step, tracker = engine.failed(tracker, task_id, self.clock(), exc, sent)
            except BaseException:  # cancelled mid-poll: the id no longer counts as running
                engine.release(tracker, self.clock())
                if waiter is not None:
                    self._unlisten(waiter)
                raise
            else:
                if listening is not None:
                    listening.observed(generation, before)
                step, tracker = engine.seen(tracker, task_id, self.clock(), generation, sent)
                spread = True
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
            self._plan(waiter, self.clock(), step.delay, spread=spread)
            return None
        return self._over(waiter, BatchResult(task_id, generation=step.result, error=step.error))

    def _over(self, waiter: _Waiter | None, result: BatchResult) -> BatchResult:
        if waiter is not None:
            self._unlisten(waiter)
            waiter.version += 1  # a late callback's schedule() must not poll it again
        return result


async def batch_as_completed(
    poller: Poller,
    task_ids: list[str],
    *,
    concurrency: int,
    policy: PollPolicy,
    on_update: OnUpdate | None = None,
    listen: Callable[[str], bool] | None = None,
) -> AsyncGenerator[BatchResult, None]:
    """Yield one BatchResult per task id (distinct, checked by `check_batch`) as they finish.

    `on_update` hears each change of every id (the terminal one included).
    """
    scheduler = _Scheduler(poller, policy, on_update, listen)
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
    if scheduler.hub is not None:
        scheduler.first_looks()
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
