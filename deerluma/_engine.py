"""The poll engine: after each poll, what to do next, as a pure function of what was seen and when.

One engine serves the single-wait tenacity loop, the batch scheduler and the
command line alike: they fetch and sleep; it decides. It does no I/O and
reads time only from the numbers it is given, so tests drive it with plain
floats.
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import attrs

from ._gateway import Kind, RowClock
from ._history import Plan, TimingHistory
from ._models import Generation, GenerationState
from ._policy import PollPolicy
from ._rows import Look, RowTrack
from .exceptions import (
    DeadlineExceeded,
    DeerLumaError,
    GenerationFailed,
    NotFoundError,
    RateLimitError,
    WaitTimeout,
    is_transient,
)

__all__ = ["Engine", "PollTracker", "Step", "Verdict", "changed"]

log = logging.getLogger("deerluma")

#: Bounds for the learned rate at which the estimate falls per real second.
_MIN_RATE = 0.2
_MAX_RATE = 5.0
#: The last poll happens this share of the timeout before the deadline (at most _FINAL_MARGIN s),
#: so that its request has time to come back.
_FINAL_SHARE = 0.05
_FINAL_MARGIN = 0.5
#: Waits older than any seen finish keep the learned spacing while they are at most this share
#: of those running (a stream's first few); when most are (a batch started at once), nothing
#: is known about them yet and they poll at the plain cadence.
_FRONTIER = 0.25
#: While a Session does not know its gateway's kind, a wait whose estimate is at least this many
#: plain intervals looks once more after one plain interval: a stale row shows there.
_PROBE_FROM = 4
#: ... at most this many times (a pair that straddles a refresh soon after a row began reads
#: live: the next pair tells).
_PROBES = 2
#: A first look this soon after the task was made shows the row made with it (no pass can
#: have refreshed it yet, but one that begins at a create).
_FRESH_ROW = 1.0
#: Clock readings this close count as equal (a sleep of `final - now` may land an ulp short).
TOLERANCE = 1e-6


def utcnow() -> datetime:
    """The wall clock, aware (a Session's default; tests inject their own)."""
    return datetime.now(UTC)


def wall_of(clock: Callable[[], float]) -> Callable[[], datetime]:
    """A wall clock that starts at the real time now and moves as `clock` (seconds) does."""
    wall0, clock0 = utcnow(), clock()

    def wall() -> datetime:
        return wall0 + timedelta(seconds=clock() - clock0)

    return wall


class Verdict(enum.Enum):
    """What the caller of the engine does next."""

    SLEEP = "sleep"  #: sleep `delay` seconds, then poll again
    DONE = "done"  #: the generation is terminal: `result` completed, or `error` GenerationFailed
    GIVE_UP = "give up"  #: stop and report `error` (WaitTimeout, or a fault no retry can fix)


@attrs.frozen
class Step:
    """The engine's answer to one poll."""

    verdict: Verdict
    delay: float = 0.0
    #: The generation, when a watcher would want to hear about it (it changed).
    emit: Generation | None = None
    result: Generation | None = None
    error: DeerLumaError | None = None


def changed(before: Generation | None, after: Generation) -> bool:
    """Whether a caller watching progress would want to hear about `after`."""
    return before is None or (
        before.state,
        before.estimate_wait_seconds,
        before.queue_state,
    ) != (after.state, after.estimate_wait_seconds, after.queue_state)


class PollTracker:
    """What one wait has seen so far, and from it, how long to sleep next."""

    __slots__ = (
        "_anchor",
        "_estimate",
        "_floor",
        "_history",
        "_rng",
        "_row",
        "_rows",
        "_running",
        "_wall",
        "errors",
        "failure",
        "last",
        "origin",
        "policy",
        "survived",
    )

    def __init__(
        self,
        policy: PollPolicy,
        started: float,
        rng: random.Random,
        history: TimingHistory | None = None,
        wall: Callable[[], datetime] = utcnow,
        rows: RowClock | None = None,
    ) -> None:
        self.policy = policy
        #: Clock time at which the generation began (its created_at, else when waiting began).
        self.origin = started
        #: Clock time of the last poll that saw it unfinished (None: not seen yet).
        self.survived: float | None = None
        self.errors = 0
        #: What the latest poll met, when it failed (None once one succeeds).
        self.failure: DeerLumaError | None = None
        self.last: Generation | None = None
        self._rng = rng
        self._wall = wall
        self._history = history
        self._running = False
        self._floor = 0.0  # the age after which a skip records a finish it found (Plan.floor)
        self._anchor: tuple[float, float] | None = None
        self._estimate: tuple[float, float] | None = None
        self._rows = rows
        self._row = None if rows is None else RowTrack()

    def observe(self, now: float, generation: Generation, sent: float | None = None) -> None:
        """Record a successful poll (sent at `sent`) that found the generation unfinished."""
        self.look(now, generation, sent)
        self.errors = 0
        self.failure = None
        if self.survived is None:
            self._date(now, generation)
        self.survived = now
        self.last = generation
        estimate = generation.estimate_wait_seconds
        if estimate is None:
            self._anchor = self._estimate = None
            return
        point = (now, max(0.0, estimate))
        if self._anchor is None or point[1] > self._anchor[1]:
            self._anchor = point  # first estimate, or it went up: start learning afresh
        self._estimate = point

    def look(self, now: float, generation: Generation, sent: float | None = None) -> None:
        """Show the row what a poll saw (finished or not)."""
        if self._row is not None and self._rows is not None:
            estimate = generation.estimate_wait_seconds
            row = (generation.state.value, estimate, generation.queue_state)
            seen = Look(now if sent is None else sent, now, row, estimate)
            period = self._rows.period_for(self.policy.refresh)
            self._row.look(self._rows, seen, period, self._row.fastest(self.policy.hint_error))

    def hold(self, now: float) -> float | None:
        """When to look next, sending nothing now, behind rows that no pass refreshed since
        this wait's latest look (None: look now)."""
        rows, row = self._rows, self._row
        if rows is None or row is None or not self._refreshed(now):
            return None
        return row.hold(rows, now, rows.period_for(self.policy.refresh))

    def _refreshed(self, now: float) -> bool:
        """Whether the gateway serves its own rows, as far as this Session knows."""
        rows = self._rows
        return rows is not None and rows.kind(now, self.policy.refresh) is Kind.REFRESHED

    def _date(self, now: float, generation: Generation) -> None:
        """Fix the generation's origin at its first sighting, and count it as running."""
        if generation.created_at is not None:
            # A real creation time dates the generation; skew only ever shortens its age.
            age = (self._wall() - generation.created_at).total_seconds()
            if age > 0:
                self.origin = min(self.origin, now - age)
            if self._row is not None:
                self._row.born = now - max(0.0, age)  # its first row is no older
                self._row.fresh = age <= _FRESH_ROW
        if self._history is not None:
            self._history.begin(self.origin)
            self._running = True

    def finish(self, now: float, generation: Generation | None) -> None:
        """The wait is over: record how long a completed generation took, stop counting it."""
        if not self._running or self._history is None:
            return
        self._running = False
        self._history.end(self.origin)
        if generation is not None and generation.is_completed and self.survived is not None:
            survived, ended = self.survived, now
            row = self._row
            if row is not None and row.refreshed_at is not None and self._refreshed(now):
                # A row shows the upstream as of its refresh, not as of the look.
                ended = row.refreshed_at
                if row.unfinished_at is not None:
                    survived = min(survived, row.unfinished_at)
            # A poll skipped the ages at which nothing was seen to finish: it finished after them
            # (nearly: see Plan.floor).
            lower = max(survived - self.origin, self._floor)
            self._history.record(min(lower, ended - self.origin), ended - self.origin)

    def _fastest_rate(self) -> float:
        """The highest plausible speed at which the estimate runs down, per real second."""
        fastest = 1.0 + self.policy.hint_error
        if self._anchor is None or self._estimate is None:
            return fastest
        (t0, e0), (t1, e1) = self._anchor, self._estimate
        span = t1 - t0
        if span < self.policy.min_interval or e0 <= e1:
            return fastest
        rate = min(_MAX_RATE, max(_MIN_RATE, (e0 - e1) / span))
        return rate + 1.0 / span  # whole-second estimates: ±0.5 at each end

    def next_delay(self, now: float) -> float:
        """Seconds to sleep before the next poll, jittered and clamped."""
        policy = self.policy
        rows = self._rows
        if rows is not None and self._row is not None:
            kind = rows.kind(now, policy.refresh)
            if kind is Kind.REFRESHED:
                return self._row_delay(now, rows, self._row)
            if kind is Kind.UNKNOWN and self._probes(now, rows, self._row):
                return min(policy.unhinted_interval, self._live_delay(now))
        return self._live_delay(now)

    def _probes(self, now: float, rows: RowClock, row: RowTrack) -> bool:
        """Whether this wait looks again soon to learn the gateway's kind (while nobody knows
        it): it met a long estimate, which a live gateway counts down and a row keeps."""
        estimate = None if self._estimate is None else self._estimate[1]
        long = estimate is not None and estimate >= _PROBE_FROM * self.policy.unhinted_interval
        return long and row.looks <= _PROBES and rows.may_probe(row, now)

    def _row_delay(self, now: float, rows: RowClock, row: RowTrack) -> float:
        """Behind a gateway that serves its own rows: look just after the refreshes that may
        hold the end (`_rows`)."""
        policy = self.policy
        period = rows.period_for(policy.refresh)
        find = (
            policy.unhinted_interval
            if period is None
            else min(policy.unhinted_interval, period / 4)
        )
        # Until the period is measured (or said) and a pass seen, a few waits scout for them.
        assumed = (policy.refresh is None and not rows.measuring) or not rows.passes_seen
        planned = row.next_look(
            rows, now, period, self._earliest_end(row, period), find, assumed=assumed
        )
        target = row.watching(rows, now, planned)
        return min(max(0.0, target - now), policy.max_interval)

    def _earliest_end(self, row: RowTrack, period: float | None) -> float | None:
        """The earliest clock time the generation may end, as its row's estimate (counted from
        the row's refresh, not from the look: a row not placed yet may be a `period` old) or
        the history says."""
        policy = self.policy
        if self._estimate is not None:
            since = row.refreshed_at
            if since is None:
                since = self._estimate[0] - (period or 0.0)
            return since + max(0.0, self._estimate[1] - 0.5) / row.fastest(policy.hint_error)
        plan = (
            None
            if self._history is None
            else self._history.plan(self.survived or self.origin, policy.learned_interval)
        )
        return None if plan is None else self.origin + plan.early

    def _live_delay(self, now: float) -> float:
        policy = self.policy
        if self._estimate is not None:
            _, estimate = self._estimate
            earliest = max(0.0, estimate - 0.5) / self._fastest_rate()
            # A poll one interval after the earliest completion keeps the lag
            # within `min_interval` while saving the poll at the boundary.
            delay = earliest + policy.min_interval
            jitter = policy.jitter * self._rng.random()  # only ever sooner: never late
        else:
            # No jitter: without an estimate, waits that start together poll together, as
            # plain loops would; the rate gate spreads their requests.
            delay = self._unhinted_target(now) - now
            jitter = 0.0
        delay = min(delay, policy.max_interval) if math.isfinite(delay) else policy.min_interval
        return max(delay, 0.0) * (1.0 - jitter)

    def _unhinted_target(self, now: float) -> float:
        """The clock time of the next poll when the server gives no estimate."""
        policy = self.policy
        survived = now if self.survived is None else self.survived
        age = survived - self.origin
        plan = None if self._history is None else self._history.plan(now, policy.learned_interval)
        if plan is None and policy.expected_duration is not None:
            expected, spread = policy.expected_duration, policy.hint_error
            low, high = expected * (1 - spread), expected * (1 + spread)
            plan = Plan(low, high, high, 0.0)
        if plan is None:
            return survived + policy.unhinted_interval
        step = policy.learned_interval
        if age < plan.early:
            # Nothing was seen to finish this young: skip ahead, one interval into the finishes.
            self._floor = plan.floor
            return self.origin + plan.early + step
        if age < plan.late and (age + step <= plan.known or plan.frontier <= _FRONTIER):
            # Where finishes were seen, or for the few waits older than any seen finish,
            # the learned spacing, with one poll at the 95 % mark.
            return min(survived + step, self.origin + plan.late)
        # Past what the history knows, with most waits out there too: the plain cadence.
        return survived + policy.unhinted_interval

    def record_error(self, exc: BaseException, *, young: bool = False) -> bool:
        """Count a failed poll; True when the waiter should give up and report `exc`.

        429s do not count: the rate gate paces the Session, and the deadline bounds the wait.
        A 404 for a task created moments ago (`young`) is not final: it is looked for again.
        """
        if isinstance(exc, DeerLumaError):
            self.failure = exc
        if isinstance(exc, RateLimitError):
            return False
        self.errors += 1
        if young and isinstance(exc, NotFoundError):
            return False
        return not is_transient(exc) or self.errors > self.policy.max_consecutive_errors

    def error_delay(self, exc: BaseException | None = None) -> float:
        """Seconds to sleep after a failed poll (its request's own retries included).

        Grows with each fault in a row; after a 429 it is one `min_interval`,
        as the rate gate holds the next request back for as long as needed.
        """
        policy = self.policy
        doublings = 0 if isinstance(exc, RateLimitError) else max(0, self.errors - 1)
        backoff = min(policy.max_interval, policy.min_interval * 2.0**doublings)
        return backoff * (1.0 - policy.jitter * self._rng.random())


class Engine:
    """Decides, after each poll of each task of one wait or batch, what happens next.

    Holds what the tasks share (policy, deadline, the Session's history); each
    task's own state is a PollTracker, made only once a first look finds the
    generation unfinished (most ids of a late batch are done at first sight).
    """

    def __init__(
        self,
        policy: PollPolicy,
        started: float,
        rng: random.Random,
        history: TimingHistory | None,
        wall: Callable[[], datetime] = utcnow,
        rows: RowClock | None = None,
    ) -> None:
        self.policy = policy
        self.started = started
        # What the Session learned of its gateway's rows (None where the user says it is live).
        self._rows = None if policy.refresh == "live" else rows
        self._rng = rng
        self._wall = wall
        self._history = history if policy.learn else None
        timeout = policy.timeout
        #: Clock time after which no request is sent (None: no deadline).
        self.deadline = None if timeout is None else started + timeout
        #: Clock time of the last poll: just before the deadline, so that it can come back.
        margin = 0.0 if timeout is None else min(_FINAL_MARGIN, timeout * _FINAL_SHARE)
        self.final = math.inf if timeout is None else started + timeout - margin
        self.warned_unknown = False
        self._skips_first = False
        self._floor: float | None = None  # the age after which a skipped first poll records
        # a finish it found (None: it skipped with nothing learned, and so bounds nothing)

    def first_delay(self, *, may_skip: bool = False) -> float:
        """The pause before the first poll, cut short by the deadline.

        `initial_delay` when set; else none, unless `may_skip` (a single wait)
        and the Session has learned that its waits begin as their generations
        do: then the first poll goes one learned interval past where finishes
        begin, or one plain interval in while nothing is learned yet.
        """
        delay = self.policy.initial_delay
        history = self._history
        if not delay and may_skip and history is not None and history.waits_start_young:
            plan = history.plan(self.started, self.policy.learned_interval)
            self._skips_first = True
            step = self.policy.learned_interval
            if plan is None:
                delay = self.policy.unhinted_interval
            else:
                self._floor = plan.floor
                delay = plan.early + step
        return max(0.0, min(delay, self.final - self.started))

    def tracker(self) -> PollTracker:
        """A new task's own state."""
        return PollTracker(
            self.policy, self.started, self._rng, self._history, self._wall, self._rows
        )

    def seen(
        self,
        tracker: PollTracker | None,
        task_id: str,
        now: float,
        generation: Generation,
        sent: float | None = None,
    ) -> tuple[Step, PollTracker | None]:
        """A poll sent at `sent` was answered at `now`; returns the step and the task's tracker.

        The tracker is made here when the task needs one (it is still running).
        """
        last = tracker.last if tracker is not None else None
        emit = generation if changed(last, generation) else None
        if tracker is None and self._history is not None:
            self._first_look(now, generation)
        if generation.is_terminal:
            if tracker is not None:
                tracker.look(now, generation, sent)
                tracker.finish(now, generation)
            if generation.state is GenerationState.FAILED:
                return Step(Verdict.DONE, emit=emit, error=GenerationFailed(generation)), tracker
            return Step(Verdict.DONE, emit=emit, result=generation), tracker
        if generation.state is GenerationState.UNKNOWN and not self.warned_unknown:
            self.warned_unknown = True  # once per wait or batch, not once per id
            log.warning(
                "generation %r is in a state deerluma does not know (%r); still waiting",
                generation.id,
                generation.raw.get("state"),
            )
        if tracker is None:
            tracker = self.tracker()
        tracker.observe(now, generation, sent)
        step = self._then(tracker, task_id, now, sent, tracker.next_delay(now), emit)
        return step, tracker

    def _first_look(self, now: float, generation: Generation) -> None:
        history = self._history
        assert history is not None
        if not self._skips_first:
            history.first_look(generation.is_terminal)
            return
        if generation.is_completed and self._floor is not None:
            # Skipped ahead and found it done: it finished after the skipped ages (nearly), before
            # this.
            age = now - self.started
            history.record(min(self._floor, age), age)

    def failed(
        self,
        tracker: PollTracker | None,
        task_id: str,
        now: float,
        exc: DeerLumaError,
        sent: float | None = None,
        *,
        young_until: float | None = None,
    ) -> tuple[Step, PollTracker | None]:
        """A poll sent at `sent` failed at `now` (after its request's own retries).

        Until `young_until` (a while after this Session created the task), a
        404 is looked for again: some gateways know a task only moments after
        answering its create.
        """
        if isinstance(exc, DeadlineExceeded):
            return self._timed_out(tracker, task_id, now, exc), tracker
        if tracker is None:
            tracker = self.tracker()
        young = young_until is not None and now < young_until
        if tracker.record_error(exc, young=young):
            tracker.finish(now, None)
            return Step(Verdict.GIVE_UP, error=exc), tracker
        delay = tracker.error_delay(exc)
        if young and isinstance(exc, NotFoundError):
            assert young_until is not None
            delay = min(delay, young_until - now)  # one last look as the grace ends
        step = self._then(tracker, task_id, now, sent, delay, None, exc)
        return step, tracker

    def _then(
        self,
        tracker: PollTracker,
        task_id: str,
        now: float,
        sent: float | None,
        delay: float,
        emit: Generation | None,
        cause: BaseException | None = None,
    ) -> Step:
        # A poll sent at the last moment was the last look; one sent earlier whose answer
        # came late still leaves time for the last look.
        if (now if sent is None else sent) >= self.final - TOLERANCE:
            step = self._timed_out(tracker, task_id, now, cause)
            return attrs.evolve(step, emit=emit)
        return Step(Verdict.SLEEP, delay=max(0.0, min(delay, self.final - now)), emit=emit)

    def hold(self, tracker: PollTracker | None, now: float) -> float | None:
        """When a poll that is due now should go instead, no request sent (None: now): a row
        that shows the latest pass changes only in the next, which no pass has begun yet."""
        if tracker is None or now >= self.final - TOLERANCE:
            return None
        later = tracker.hold(now)
        return None if later is None else min(later, self.final)

    def timed_out(self, tracker: PollTracker | None, task_id: str, now: float) -> Step:
        """The deadline passed before this task could be polled (again)."""
        return self._timed_out(tracker, task_id, now, None)

    def _timed_out(
        self,
        tracker: PollTracker | None,
        task_id: str,
        now: float,
        cause: BaseException | None,
    ) -> Step:
        last = failure = None
        if tracker is not None:
            last, failure = tracker.last, tracker.failure
            tracker.finish(now, None)
        # What the latest polls met says more than "the deadline came" that ended them.
        failure = failure or (cause if isinstance(cause, DeerLumaError) else None)
        error = WaitTimeout(task_id, last, self.policy.timeout, failure, now - self.started)
        error.__cause__ = cause
        return Step(Verdict.GIVE_UP, error=error)

    def release(self, tracker: PollTracker | None, now: float) -> None:
        """A task's wait was abandoned (cancelled, or its batch closed early)."""
        if tracker is not None:
            tracker.finish(now, None)
