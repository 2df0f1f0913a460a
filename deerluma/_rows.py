"""One task's row behind a gateway that serves its own rows: when it changed, and when to look next.

Behind such a gateway (see `_gateway`) a row changes only at its refreshes. A
`RowTrack` brackets each refresh between two looks, says what the pair of looks
tells of the gateway's kind (a stale estimate, one that jumped, one that fell as
time passed), places the row in the Session's passes, and plans the next look:
just after each refresh that may hold the end, at nothing in between. Pure:
numbers in, numbers out, no I/O and no clock of its own.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ._gateway import RowClock

__all__ = ["Look", "RowTrack"]

#: The same estimate (of at least `_COUNTING` s) over this many seconds: the row is stale.
_STALE_SPAN = 2.5
_COUNTING = 2
#: Looks at most this far apart judge how far the estimate fell between them.
_SHORT = 4.0
#: ... and at least this far apart (whole-second estimates say little over less).
_SHORT_LOOK = 0.8
#: A live estimate falls this many seconds a second, or so (whole seconds: ±1 over a pair).
_LIVE_LOW = 0.6
_LIVE_HIGH = 1.6
#: No period is taken to be shorter than this (a gateway refreshing its rows that often is as
#: good as live).
_SHORTEST_PERIOD = 1.0
#: A refresh bracketed within this many seconds is known well enough to measure the period.
_MEASURED = 2.0
#: A refresh known within this many seconds tells where passes fall.
_FOUND = 3.5
#: A refresh known within this many seconds is aimed at from just after its latest possible
#: time; a wider one is halved first (a look in the middle, and another if it came early).
_AIM_WIDTH = 1.0
#: A refresh that may hold the end, known only roughly, is looked for this often (from a
#: learned lead before its window, at most this many steps)...
_AIM_STEP = 1.5
_LEAD_STEPS = 2
#: ... or a share of the period, when that is shorter (short periods are cheap to step through).
_AIM_SHARE = 8
#: A look aimed just after a refresh goes this long after its latest possible time.
_MARGIN = 0.05
#: A row not placed in its passes when its end may come is looked at this share of the plain
#: interval apart (as a plain loop would: a little sooner, so that its lag is not the loop's).
_UNPLACED = 0.9
#: After a look that found an overdue refresh still to come, the next comes this soon
#: (doubling while it stays away, up to the search step).
_RETRY = 0.5
#: A fall of the estimate at least this many periods spans two refreshes (while the fall per
#: refresh is not measured); and so until it is, a look skips at most one refresh.
_TWO_CYCLES = 1.41
_UNMEASURED_SKIP = 2
#: Two rows whose refreshes are at least this far apart measure how fast the estimate falls
#: (taken as no slower than this, per second).
_RATE_SPAN = 10.0
_SLOWEST = 0.2
#: A wait holds its look for the next pass at most this many periods after its row's refresh.
_HOLD_PERIODS = 2.0
#: What the passes say of a row's next refresh is taken within these shares of its period.
_SANE = (0.5, 1.3)


class Look(NamedTuple):
    """One look at a row: when its request was sent and its answer came, and what it showed."""

    sent: float
    answered: float
    #: What a watcher sees of the row: (state, estimate, queue state).
    row: tuple[object, ...]
    estimate: float | None


class RowTrack:
    """One task's row: what it shows, when it was refreshed, and when to look next.

    The refresh that made the row we see lies in [`_low`, `_high`]; the next
    ones lie a period later each, widened by the drift. A look that finds the
    row changed puts the refresh between it and the look before; one that
    finds it unchanged moves the next refresh's earliest time up to it. When
    looks skip refreshes, how far the estimate fell says how many came in
    between: it falls by about the same amount at each.
    """

    __slots__ = (
        "_ahead",
        "_answered",
        "_checking",
        "_early",
        "_estimate",
        "_fall",
        "_first_answered",
        "_guessed",
        "_high",
        "_last_sent",
        "_leading",
        "_looks",
        "_low",
        "_own_period",
        "_pass_of",
        "_pinned",
        "_refresh_high",
        "_row",
        "_searching",
        "_seen",
        "_since",
        "_stale_said",
        "born",
        "fresh",
        "unfinished_at",
    )

    def __init__(self) -> None:
        self._row: tuple[object, ...] | None = None
        self._first_answered = 0.0  # when the first look that showed this row was answered
        self._answered = 0.0  # when the latest look was answered
        self._estimate: float | None = None
        self._stale_said = False
        self._last_sent = 0.0  # when the latest look was sent
        self._low: float | None = None  # the current row's refresh lies in [_low, _high]
        self._high: float | None = None
        self._own_period: float | None = None
        self._seen: tuple[float, float] | None = None  # the looks around the row's refresh
        self._fall: float | None = None  # how far the estimate falls at each refresh
        self._pinned: tuple[float, float, float] | None = None  # first known (low, high, estimate)
        self._ahead = 0  # the refresh the next look goes after: this many after the row's
        self._looks = 0
        self._leading = False  # the latest look was the first step through a window
        self._guessed = 0  # refreshes since the last one the looks alone bracketed
        self._checking = False
        self._searching = False  # looking where a pass is due, for this row's phase
        #: When the latest row that showed the task unfinished was refreshed (or first seen).
        self.unfinished_at: float | None = None
        self._early = 0  # looks in a row that found the refresh they went after still to come
        #: The row we see was refreshed no earlier than `_since` and no later than
        #: `_refresh_high`, in the pass numbered `_pass_of` (None: not known).
        self._since: float | None = None
        self._refresh_high: float | None = None
        self._pass_of: int | None = None
        #: When the task was created, where its created_at says (its first row is no older),
        #: and whether the first look came so soon after that it showed the row made then.
        self.born: float | None = None
        self.fresh = False

    @property
    def looks(self) -> int:
        """How many looks this row had (one, the first, says nothing of the gateway's kind)."""
        return self._looks

    @property
    def refreshed_at(self) -> float | None:
        """When the row we see was refreshed, as best known (None: not pinned down)."""
        if self._low is None or self._high is None:
            return None
        return (self._low + self._high) / 2

    def look(
        self, clock: RowClock, seen: Look, period: float | None, fastest: float = math.inf
    ) -> None:
        """A look was answered: what it showed, and when (`period`: the Session's; the
        estimate falls no faster than `fastest` a second)."""
        sent, now, row, estimate = seen
        self._looks += 1
        if self._leading and self._row is not None:
            self._leading = False
            clock.led(row != self._row, period)
        if self._row is None:
            self._row, self._last_sent, self._estimate = row, sent, estimate
            self._answered = self._first_answered = now
            return
        if row == self._row:
            self._unchanged(clock, seen)
        else:
            self._changed(clock, seen, period, fastest)

    def _unchanged(self, clock: RowClock, seen: Look) -> None:
        sent, now, _, estimate = seen
        counting = estimate is not None and estimate >= _COUNTING
        if counting and not self._stale_said and sent - self._first_answered >= _STALE_SPAN:
            self._stale_said = True  # one sign per row: a long wait is no stronger evidence
            clock.sign(now, True)
        if self._ahead or self._searching:
            self._early += 1
        offset = self._offset(clock)
        if offset is not None and counting:
            # Refreshed early in the latest pass and unchanged since: the next has not begun.
            assert self._pass_of is not None
            clock.quiet(self._pass_of, sent - offset)
        self._last_sent, self._answered = sent, now

    def _offset(self, clock: RowClock) -> float | None:
        """How long at most after the latest pass began the row we see was refreshed (None:
        it was not refreshed in that pass, or not known to be)."""
        latest = clock.latest
        if latest is None or self._pass_of != latest[0] or self._refresh_high is None:
            return None
        return max(0.0, self._refresh_high - latest[1])

    def hold(self, clock: RowClock, now: float, period: float | None) -> float | None:
        """When to look again, sending nothing now, while the row shows the latest pass and
        the next is not seen to begin (None: look now); never past `_HOLD_PERIODS` periods
        after its refresh (a watch whose row stops changing must not hold the others)."""
        if self._pass_of is None or self._refresh_high is None or period is None:
            return None
        if now >= self._refresh_high + _HOLD_PERIODS * period:
            return None
        return clock.hold(self, self._pass_of, now)

    def _period(self, clock: RowClock, period: float | None) -> float | None:
        """The time to this row's next refresh: its own latest period where measured, else the
        Session's; moved by how periods have lately been changing (a pass that shrinks as a
        batch drains brings every row earlier)."""
        if period is None:
            return None
        own = self._own_period if self._own_period is not None else period
        return max(own / 2, own + clock.trend, _SHORTEST_PERIOD)

    def _move(self, clock: RowClock, cycles: int, own: float) -> float:
        """How long after this row's refresh it is refreshed again `cycles` passes later: as
        the passes seen say, else `cycles` of its period."""
        at = self.refreshed_at
        shift = None if at is None else clock.shift(at, cycles)
        if shift is None or not _SANE[0] * own <= shift / cycles <= _SANE[1] * own:
            return cycles * own  # the passes seen say nothing (or nonsense) of this row's
        return shift

    def _changed(self, clock: RowClock, seen: Look, period: float | None, fastest: float) -> None:
        sent, now, row, estimate = seen
        # The two answers were made between their requests and their arrivals.
        shortest, longest = sent - self._answered, now - self._last_sent
        fell = None
        if estimate is not None and self._estimate is not None:
            fell = self._estimate - estimate
            if fell > 2 * longest + 2 and shortest >= _SHORT_LOOK:
                clock.sign(now, True)  # fell by far more than the time between: a refresh
            elif (
                shortest >= _SHORT_LOOK
                and longest <= min(_SHORT, shortest + _SHORT_LOOK)
                and _LIVE_LOW * shortest - 0.5 <= fell <= _LIVE_HIGH * longest + 1
                and not self._stale_said
            ):
                clock.sign(now, False)  # fell as time passed: read live
        own = self._period(clock, period)
        low, high = self._last_sent, now  # after the last look that missed it, by this one
        cycles = self._count(fell, low, high, own)
        bracket = (low, high)  # what the looks alone say, for measuring
        if self._low is not None and self._high is not None and own is not None:
            drift = clock.spread * cycles
            move = self._move(clock, cycles, own)
            first = self._low + move - drift
            last = self._high + move + drift
            if high < first:
                # It came before it could have, as predicted: the prediction strays further.
                clock.missed((high - (first + last) / 2) / cycles, own)
            else:
                low, high = max(low, first), min(high, max(low, last))
        if bracket[1] - bracket[0] <= _MEASURED:
            clock.refreshed((bracket[0] + bracket[1]) / 2)  # a pass was under way then
        if bracket[1] - bracket[0] <= _FOUND:
            self._measure(clock, bracket, cycles, own)
            self._guessed = 0
        else:
            self._guessed += cycles  # placed as predicted, not as seen
        self._seen = bracket
        if period is not None and high - low > period / 2:
            low = high = math.nan  # somewhere in a long stretch: the phase is still to be found
        if fell is not None and fell > 0 and self._low is not None:
            per = fell / cycles
            self._fall = per if self._fall is None else (self._fall + per) / 2
        if self._row is not None and self._row[0] not in ("completed", "failed"):
            self.unfinished_at = self.refreshed_at if self._low is not None else self._last_sent
        self._low, self._high = (None, None) if math.isnan(low) else (low, high)
        self._place(clock, fell, fastest, now)
        if self._low is not None and self._high is not None and self._high - self._low <= _FOUND:
            # Where the pass refreshed it, and whether it ended there (it leaves the passes).
            clock.placed((self._low + self._high) / 2, row[0] in ("completed", "failed"))
        if self._pinned is None and estimate is not None and not math.isnan(low):
            self._pinned = (low, high, estimate)
        self._row, self._last_sent, self._estimate = row, sent, estimate
        self._answered = self._first_answered = now
        self._stale_said = False
        # Fewer refreshes than the look went after: the one it expected is still to come.
        self._ahead = max(0, self._ahead - cycles)
        self._early = 1 if self._ahead else 0
        if self._searching and self._low is not None:
            self._searching = False
        elif self._searching:
            # A look where a pass was due found the row changed since a look long ago: that
            # may be the pass before. The next change, a step away, tells.
            self._early = 1

    def _place(self, clock: RowClock, fell: float | None, fastest: float, now: float) -> None:
        """The new row's refresh: after the look before it, and after the row before it was
        refreshed by as long as the estimate took to fall (at most `fastest` a second); so,
        when that is after the latest pass began, in that pass (or a later one not seen)."""
        before = self._since if self._since is not None else self.born
        lower = self._last_sent
        if fell is not None and fell > 0 and before is not None:
            bound = before + fell / fastest
            if bound <= now:  # (else it fell faster than that: it says nothing)
                lower = max(lower, bound)
        if self._pass_of is not None:
            # It showed that pass: it changes in a later one (seen to begin then, or so).
            later = clock.begin_after(self._pass_of)
            if later is not None:
                lower = max(lower, min(now, later))
        first = self._since is None  # its first change seen (from the made row, if `fresh`)
        before_pass, before_high = self._pass_of, self._refresh_high
        self._since = lower
        self._refresh_high = now
        self._pass_of = clock.pass_after(lower)
        if before_pass is not None and before_high is not None and self._pass_of is not None:
            clock.moved(before_pass, before_high, self._pass_of, lower)
        if first and self.born is not None:
            # A pass refreshes every row made before it began: rows made no sooner than one
            # first refreshed in the latest pass were first refreshed in it too.
            if self._pass_of is None:
                self._pass_of = clock.first_pass(self.born)
            elif self.fresh and self._low is not None and self._high is not None:
                clock.first_refreshed(self._pass_of, self.born)

    def _measure(
        self, clock: RowClock, seen: tuple[float, float], cycles: int, own: float | None
    ) -> None:
        """A refresh bracketed by two looks close together, as the one before it: the period
        (a median over many rows evens out the brackets' widths), and how far refreshes stray
        from their predictions (from narrow brackets only)."""
        before = self._seen
        if before is None or before[1] - before[0] > _FOUND:
            return
        sample = ((seen[0] + seen[1]) - (before[0] + before[1])) / 2 / cycles
        if sample < _SHORTEST_PERIOD:
            return  # two brackets of one refresh (looks that close say nothing of a period)
        clock.measured(seen[1], sample)
        self._own_period = sample  # the latest: a row's period drifts as the pass before it shrinks
        narrow = max(seen[1] - seen[0], before[1] - before[0]) <= _MEASURED
        if own is not None and narrow:
            clock.missed(sample - own, own)

    def _count(self, fell: float | None, low: float, high: float, period: float | None) -> int:
        """How many refreshes a change spans: by how far the estimate fell, else by time."""
        if fell is not None and fell > 0 and period is not None:
            if self._fall:
                # No more refreshes than the time between the looks can hold (a short period
                # is at least half the one predicted).
                most = int((high - low) / (period / 2)) + 1
                return max(1, min(most, round(fell / self._fall)))
            # Not measured yet: the estimate falls 0.7-1.3 s a second, so one refresh takes
            # 0.7-1.3 periods off it, two 1.4-2.6.
            return 1 if fell < _TWO_CYCLES * period else max(2, round(fell / period))
        before = self.refreshed_at
        if before is None or period is None or high - low <= period:
            return 1
        return max(1, round((high - before) / period))

    def fastest(self, hint_error: float) -> float:
        """The fastest the estimate may plausibly fall per second: as measured between two rows
        whose refreshes are known (a period or more apart), else as `hint_error` allows."""
        pinned, low, high, estimate = self._pinned, self._low, self._high, self._estimate
        fastest = 1.0 + hint_error
        if pinned is None or low is None or high is None or estimate is None:
            return fastest
        span = low - pinned[1]  # the shortest time the two refreshes can be apart
        if span < _RATE_SPAN or estimate > pinned[2]:
            return fastest  # too close to tell, or the estimate went up (queued again, say)
        # Whole-second estimates: each may be half a second off.
        return min(fastest, max(_SLOWEST, (pinned[2] - estimate + 1.0) / span))

    def next_look(
        self,
        clock: RowClock,
        now: float,
        period: float | None,
        earliest_end: float | None,
        search: float,
        *,
        assumed: bool = False,
    ) -> float:
        """The clock time of the next look behind a refreshing gateway.

        Until the row's phase is known, it is searched for a period before the
        end may come, one look every `search` seconds from where passes fall.
        Then one look just after each refresh that may hold the end (at or
        after `earliest_end`), skipping those that cannot; a refresh known only
        roughly is halved first. While the `period` is only `assumed` (or no
        pass was seen yet), a few waits (scouts) step through the passes to
        measure it.
        """
        if assumed and clock.may_scout(self, now):
            # Steps short enough that the refreshes they find tell where passes fall.
            self._ahead = 0
            return self._step(now, min(search, 0.9 * _MEASURED))
        own = self._period(clock, period)
        if own is None or self._low is None or self._high is None or assumed:
            # Not placed yet, or the period only assumed (then a place says little of the
            # next): look for the refreshes.
            self._ahead = 0
            return self._search(clock, now, period, earliest_end, search, assumed=assumed)
        if self._checking:
            self._checking = False
        elif clock.check_due(now) and not self._early:
            # Does it still refresh? A look a moment later shows the same row if so.
            self._checking = True
            clock.checking(now)
            return max(now, self._first_answered + _STALE_SPAN)
        drift = clock.spread
        cycle = 1
        move = self._move(clock, cycle, own)
        if earliest_end is not None:
            # A row shows the end at the first refresh after it: skip the ones before, while
            # a skip can be told from how far the estimate falls.
            most = _UNMEASURED_SKIP if self._fall is None else math.inf
            while cycle < most and self._high + move + cycle * drift + _MARGIN < earliest_end:
                cycle += 1
                move = self._move(clock, cycle, own)
        first = self._low + move - cycle * drift
        last = self._high + move + cycle * drift
        self._ahead = cycle
        if self._last_sent >= first:
            if self._last_sent >= last:  # came later than it could: it is late; look again soon
                return self._step(now, self._retry(clock, search))
            first = self._last_sent
        if self._guessed and self._last_sent < first - _MARGIN:
            # The row's refresh was placed by prediction alone: a look just before the next
            # may come shows whether the predictions still hold (and measures them again).
            self._guessed = 0
            return first - _MARGIN
        if last - first <= _AIM_WIDTH:
            return last + _MARGIN
        if earliest_end is None or last + _MARGIN >= earliest_end:
            # This refresh may hold the end: step through its window, so that none is late,
            # from a little before it as refreshes lately came sooner than predicted.
            step = min(_AIM_STEP, max(_RETRY, own / _AIM_SHARE))
            if self._last_sent < first:
                self._leading = True
                # (beyond what the window already allows for straying either way)
                lead = min(max(0.0, clock.lead - cycle * drift), _LEAD_STEPS * step)
                return max(now, first - lead + step)
            return first + step
        return (first + last) / 2

    def watching(self, clock: RowClock, now: float, planned: float) -> float:
        """The time of the next look planned for `planned`: sooner where this row watches for
        the next pass (it was refreshed earliest in the latest: see `RowClock.hold`)."""
        offset = self._offset(clock)
        if offset is None:
            return planned
        target = clock.watch_duty(self, offset, now, planned)
        if target < planned:
            self._leading = False  # a watch, not the first step through a window
        return target

    def _step(self, now: float, step: float) -> float:
        """`step` after the latest look was sent; soon after `now` if its answer came late (it
        waited its turn for a while, say)."""
        return max(self._last_sent + step, now + min(step, _RETRY))

    def _retry(self, clock: RowClock, search: float) -> float:
        """How soon to look again for a refresh that is late: soon at first, then less so."""
        if not clock.measuring:
            return search
        return min(search, _RETRY * 2.0 ** max(0, self._early - 1))

    def _search(
        self,
        clock: RowClock,
        now: float,
        period: float | None,
        earliest_end: float | None,
        search: float,
        *,
        assumed: bool,
    ) -> float:
        """Look for a refresh of this row: where the next pass is due, then a step at a time."""
        begin = now
        if earliest_end is not None and period is not None:
            # Nothing to learn before a period or so ahead of the end that those looks miss.
            begin = max(now, earliest_end - 1.5 * period)
        near = earliest_end is None or period is None or earliest_end <= now + period
        if self._searching and self._early and begin <= now + search:
            # Looked where a pass was due and the row had not changed: step on, in shorter
            # steps once the end may come.
            return self._step(now, min(search, _AIM_STEP) if near else search)
        if near and self.refreshed_at is None:
            # The end may come before this row is placed: as a plain loop would, a little sooner.
            return self._step(now, _UNPLACED * search)
        due = None if period is None else clock.next_pass(max(begin, self._last_sent), period)
        if due is not None:
            self._searching, self._early = True, 0
            return max(now, due)
        # No pass seen yet: the scouts look for one; the others wait a period for them, unless
        # the end may come first or the period is only assumed (then as a plain loop would).
        wait = search if near or assumed or period is None else period
        return max(begin, self._step(now, wait))
