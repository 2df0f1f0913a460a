"""Waiting on many generations at once: one scheduler, bounded requests in flight.

Each waiting id costs a small record in a heap, not a task or an open
response; `concurrency` bounds only the polls in flight. Each id's wait goes
step by step through the same `Watch` as a single wait.
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
from ._engine import Step, Verdict
from ._models import Generation
from ._policy import PollPolicy
from ._validate import check_task_id
from ._wait import Created, OnUpdate, Poller, Watch, notify, poll
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


#: Polls in flight at most, by default. The rate gate paces requests; this only bounds
#: them: at 16, 300 ms round trips (a far API) would cap a batch at 53 polls a second, and
#: 500 ids finishing together would be noticed over seconds.
CONCURRENCY = 64
#: Under a binding rate limit, at most this many re-polls before a first poll.
_REPOLLS_PER_FIRST = 3


class _Waiter(Watch):
    """An id's wait in a batch: its watch, and its place in the scheduler's heap."""

    __slots__ = ("busy", "version")

    def __init__(
        self, task_id: str, listening: Listening | None = None, created: Created | None = None
    ) -> None:
        super().__init__(task_id, listening, created)
        self.version = 0  # heap entries of older versions are stale
        self.busy = False  # its poll is in flight


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
        self.poller = poller
        self.fetch = poller.fetch
        self.listen = listen if poller.hub is not None else None
        self.clock = poller.clock
        self.sleep = poller.sleep
        self.engine = poller.engine(policy)
        self.on_update = on_update
        self.heap: list[tuple[float, int, _Waiter, int]] = []
        self.order = itertools.count()
        self.wake = asyncio.Event()
        self.timer_running = False
        self.unseen: deque[str] = deque()  # ids not yet looked at
        self.unseen_waiters: dict[str, _Waiter] = {}  # their waiters, if they have one
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
                waiter.release(self.engine, now)
        for waiter in self.unseen_waiters.values():
            waiter.release(self.engine, now)
        self.heap.clear()

    def _waiter(self, task_id: str) -> _Waiter:
        """An id's waiter; one that listens for callbacks is woken by them."""
        listen = self.listen is not None and self.listen(task_id)
        waiter = self.poller.watch(self.engine, task_id, listen=listen, kind=_Waiter)

        def woken() -> None:
            if not waiter.busy:  # one in flight is re-planned when it comes back
                self.schedule(waiter, 0.0)

        waiter.listen(woken)
        return waiter

    async def first_looks(self) -> AsyncGenerator[BatchResult, None]:
        """Ids this Session created start from their create answer (no GET at 0 s); those
        that listen for callbacks get their waiter now. Yields those already terminal."""
        created = self.poller.created
        for _ in range(len(self.unseen)):
            task_id = self.unseen.popleft()
            known = created is not None and created.get(task_id) is not None
            if not known and (self.listen is None or not self.listen(task_id)):
                self.unseen.append(task_id)
                continue
            waiter = self._waiter(task_id)
            started = waiter.start(self.engine)
            if started is None:
                self.unseen.append(task_id)
                self.unseen_waiters[task_id] = waiter
                continue
            step, at = started
            result = self._then(waiter, step, at)
            await self._tell(waiter, step)
            if result is not None:
                yield result

    def _then(self, waiter: _Waiter, step: Step, now: float) -> BatchResult | None:
        """After a step: back in the heap (after its delay, or as callbacks have it), or over."""
        if step.verdict is not Verdict.SLEEP:
            waiter.release(self.engine, now)
            waiter.version += 1  # a late callback's schedule() must not poll it again
            return BatchResult(waiter.task_id, generation=step.result, error=step.error)
        if waiter.listening is None:
            self.schedule(waiter, now + step.delay)
        else:
            self._recheck(waiter, waiter.listening, now)
        return None

    async def _tell(self, waiter: _Waiter, step: Step) -> None:
        """Pass a change on to `on_update`; if it raises, the batch ends, and this wait too."""
        if step.emit is None or self.on_update is None:
            return
        try:
            await notify(self.on_update, step.emit)
        except BaseException:
            waiter.release(self.engine, self.clock())
            raise

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
            waiter = self.unseen_waiters.pop(task_id, None)
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
                item = self._next_due(now)
                if item is not None:
                    if self._next_is_due(now):
                        self.wake.set()  # more is due: rouse an idle peer
                    if isinstance(item, str):  # most ids of a late batch are done at first sight
                        result = await self._first_look(item)
                    else:
                        item.busy = True
                        try:
                            result = await self._poll_once(item)
                        finally:
                            item.busy = False
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

    async def _first_look(self, task_id: str) -> BatchResult | None:
        """An id's first look: it needs a waiter of its own only if it goes on."""
        if self.fatal is not None:
            return BatchResult(task_id, error=self._fatal_for(task_id))
        engine = self.engine
        created = self.poller.created
        step, tracker, _ = await poll(
            engine,
            self.fetch,
            self.clock,
            task_id,
            None,
            created,
        )
        self._answered(step)
        if step.verdict is not Verdict.SLEEP:
            if step.emit is not None and self.on_update is not None:
                await notify(self.on_update, step.emit)
            return BatchResult(task_id, generation=step.result, error=step.error)
        waiter = _Waiter(task_id, None, created)
        waiter.tracker, waiter.shown = tracker, step.emit
        return await self._went_on(waiter, step)

    async def _went_on(self, waiter: _Waiter, step: Step) -> BatchResult | None:
        """After a step: the waiter's next turn (or its result), then `on_update` hears it."""
        result = self._then(waiter, step, self.clock())
        await self._tell(waiter, step)
        return result

    async def _poll_once(self, waiter: _Waiter) -> BatchResult | None:
        engine = self.engine
        now = self.clock()
        if self.fatal is not None:  # a wrong key fails every id alike: send nothing more
            step = Step(Verdict.GIVE_UP, error=self._fatal_for(waiter.task_id))
            return self._then(waiter, step, now)
        if not waiter.ready(engine, now):
            assert waiter.listening is not None
            self._recheck(waiter, waiter.listening, now)  # not due yet, as callbacks have it
            return None
        later = waiter.held(engine, now)
        if later is not None:  # its row changes in the next pass only, not begun yet
            self.schedule(waiter, later)
            return None
        try:
            step = await waiter.step(engine, self.fetch, self.clock)
        except BaseException:  # cancelled mid-poll: the id no longer counts as running
            waiter.release(engine, self.clock())
            raise
        self._answered(step)
        return await self._went_on(waiter, step)

    def _fatal_for(self, task_id: str) -> AuthenticationError:
        """The wrong key's error, as it would have come for `task_id` (named in it)."""
        assert self.fatal is not None
        fatal = self.fatal
        return AuthenticationError(
            fatal.status, fatal.code, fatal.message, fatal.body_excerpt, task_id=task_id
        )

    def _answered(self, step: Step) -> None:
        """A poll came back: the key works, or (a wrong key) every id hears so at once."""
        if isinstance(step.error, AuthenticationError):
            self.fatal = step.error
            self.wake.set()  # the others need not wait for their turn to hear it
        self.vouched.set()


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
    for result in invalid:
        yield result
    waiting = expected - len(invalid)
    try:
        async for result in scheduler.first_looks():
            waiting -= 1
            yield result
    except BaseException:
        scheduler.release_all()
        raise
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
