"""Gateways that serve their own rows: telling them from live ones, and when a row changes next.

new-api and its forks answer a task's GET from their own database row, which a
background pass refreshes every ~15 s (their service/task_polling.go); other
gateways ask the upstream on every GET. Nothing says which kind a gateway is,
so a Session learns it from the answers alone:

- a row is *stale* when the same estimate comes back over seconds: a live
  estimate counts down as time passes;
- it *jumped* when, between two looks a moment apart, the estimate fell by far
  more than the time between them: a refresh came in between;
- it is *live* when it fell by about the time between two looks a moment apart.

Behind a refreshing gateway a row changes only at its refreshes, so a wait
looks just after each one that may hold the end, and at nothing in between.
`RowClock` is what a Session learned (the kind, the period, where passes fall,
how far refreshes drift); `RowTrack` is one task's row. Pure: numbers in,
numbers out, no I/O and no clock of its own.
"""

from __future__ import annotations

import enum
import itertools
import math
import statistics
from collections import deque
from typing import Literal

import attrs

__all__ = ["GatewayView", "Kind", "Refresh", "RowClock", "RowTrack"]

#: What `PollPolicy.refresh` may say: a period in seconds, "live", or None (learn it).
Refresh = float | Literal["live"] | None

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
#: Signs older than this are forgotten: a gateway that changes kind is learned again.
_MEMORY = 180.0
#: One sign in this many saying "refreshed" is enough to say so.
_STALE_SHARE = 10
_SIGNS = 40
#: The period assumed until one is measured: new-api's (its task poller's Interval()).
_PRIOR_PERIOD = 15.0
#: Period samples the median is taken over (the period drifts as a pass grows or shrinks).
_SAMPLES = 16
#: A refresh bracketed within this many seconds is known well enough to measure the period.
_MEASURED = 2.0
#: A refresh known within this many seconds tells where passes fall.
_FOUND = 3.5
#: A refresh known within this many seconds is aimed at from just after its latest possible
#: time; a wider one is halved first (a look in the middle, and another if it came early).
_AIM_WIDTH = 1.0
#: The share of first steps through a window that may find the refresh come already, and how
#: fast the lead before a window follows them.
_LATE_SHARE = 0.2
_LEAD_STEP = 0.5
#: ... at most this many steps before it.
_LEAD_STEPS = 2
#: A refresh that may hold the end, known only roughly, is looked for this often.
_AIM_STEP = 1.5
#: ... or a share of the period, when that is shorter (short periods are cheap to step through).
_AIM_SHARE = 8
#: Each predicted refresh may come this far either way of its prediction (learned, from here).
_DRIFT_START = 0.4
_DRIFT_MIN = 0.1
#: How fast the trend follows what the latest periods say.
_TREND_WEIGHT = 0.3
#: ... and while the period is only assumed (new-api's passes take longer as they grow).
_PRIOR_SPREAD = 3.0
#: A look aimed just after a refresh goes this long after its latest possible time.
_MARGIN = 0.05
#: After a look that found an overdue refresh still to come, the next comes this soon
#: (doubling while it stays away, up to the search step).
_RETRY = 0.5
#: A fall of the estimate at least this many periods spans two refreshes (while the fall per
#: refresh is not measured); and so until it is, a look skips at most one refresh.
_TWO_CYCLES = 1.41
_UNMEASURED_SKIP = 2
#: Two rows whose refreshes are at least this far apart measure how fast the estimate falls.
_RATE_SPAN = 10.0
#: While no pass has been seen, at most this many waits look for one; the rest wait for them.
_SCOUTS = 4
_PROBERS = 8
_SCOUT_HOLD = 20.0
#: What the passes say of a row's next refresh is taken within these shares of its period.
_SANE = (0.7, 1.3)
#: Passes remembered, and how far apart two refreshes are at least to belong to two passes.
_PASSES = 8
_PASS_GAP = 3.0
_WAYS = ("ticker", "rest")
#: How much the latest pass counts in judging the two ways.
_JUDGE_WEIGHT = 0.5
#: A pass seen refresh fewer rows than this tells little of when it ended.
_SEEN_END = 8
#: Behind a refreshing gateway, a look that checks it is still one comes this often.
_CHECK_EVERY = 30.0


@attrs.frozen
class GatewayView:
    """What a Session learned of how its gateway answers a GET, for logs and displays."""

    #: "live" (every GET asks the upstream), "refreshed" (GETs read a row that a background
    #: pass refreshes) or "unknown" (not learned yet; waits poll as for a live one).
    kind: str
    #: How far apart the passes that refresh the rows begin, in seconds (None: not known).
    period: float | None
    #: Whether the period was measured (False: assumed, or said by the policy).
    measured: bool


class Kind(enum.Enum):
    """Which kind of gateway answers a Session's GETs."""

    UNKNOWN = "unknown"  #: not learned yet: waits poll as for a live one
    LIVE = "live"  #: every GET asks the upstream
    REFRESHED = "refreshed"  #: GETs read a row that a background pass refreshes


@attrs.define
class _Pass:
    """A pass over the rows, as the rows it refreshed showed it."""

    number: int  #: counted from the first seen (a pass nobody saw is counted in too)
    begin: float  #: the earliest refresh seen in it
    end: float  #: the latest
    seen: int = 1  #: how many refreshes were seen in it

    def saw(self, at: float) -> None:
        self.begin, self.end, self.seen = min(self.begin, at), max(self.end, at), self.seen + 1


class RowClock:
    """What a Session learned about its gateway's rows, shared by every wait and batch in it."""

    def __init__(self) -> None:
        self._signs: deque[tuple[float, bool]] = deque(maxlen=_SIGNS)  # (when, refreshed?)
        self._samples: deque[tuple[float, float]] = deque(maxlen=_SAMPLES)  # (when, seconds)
        self._passes: deque[_Pass] = deque(maxlen=_PASSES)
        self._misses: dict[str, float] = {}  # how far each way was off, lately
        self._scouts: dict[int, float] = {}
        self._probers: dict[int, float] = {}
        #: How far a refresh may come either way of its prediction, per period.
        self.drift = _DRIFT_START
        #: How much longer each row's period lately came out than predicted (negative: shorter).
        self.trend = 0.0
        #: How long before a window that may hold the end its first step goes (learned).
        self.lead = 0.0
        self._last_check = -math.inf

    def __repr__(self) -> str:
        period = "?" if self.period is None else f"{self.period:.1f}s"
        return f"RowClock(period={period}, drift={self.drift:.2f}s, signs={len(self._signs)})"

    def view(self, now: float) -> GatewayView:
        """What this Session learned, as of `now`."""
        kind = self.kind(now)
        period = self.period if kind is Kind.REFRESHED else None
        return GatewayView(kind.value, period, bool(self._samples) and period is not None)

    def sign(self, now: float, refreshed: bool) -> None:
        """A pair of looks said the rows are refreshed (True) or live (False)."""
        self._signs.append((now, refreshed))
        self._last_check = now

    def kind(self, now: float, fixed: Refresh = None) -> Kind:
        """The kind of gateway, as the signs of the last few minutes say (or as `fixed`)."""
        if fixed == "live":
            return Kind.LIVE
        if fixed is not None:
            return Kind.REFRESHED
        while self._signs and self._signs[0][0] < now - _MEMORY:
            self._signs.popleft()
        refreshed = sum(1 for _, sign in self._signs if sign)
        live = len(self._signs) - refreshed
        # A live row never shows a stale estimate; a refreshed one shows some, however short
        # its period (and pairs that straddle a refresh can read live).
        if refreshed and refreshed * _STALE_SHARE >= len(self._signs):
            return Kind.REFRESHED
        if live >= 3 and refreshed * 20 <= len(self._signs):
            return Kind.LIVE
        return Kind.UNKNOWN

    def period_for(self, fixed: Refresh) -> float | None:
        """The refresh period: the user's, else the median of the latest samples."""
        if fixed is not None and fixed != "live":
            return fixed
        return self.period

    @property
    def period(self) -> float | None:
        """The learned refresh period (None: no refreshing gateway seen yet)."""
        if self.pass_period is not None:
            return self.pass_period
        sampled = self._sampled()
        if sampled is not None:
            return sampled
        return _PRIOR_PERIOD if self._signs else None

    def _sampled(self) -> float | None:
        """The period as rows measured it lately (those of the latest pass: a pass grows and
        shrinks with the rows it refreshes)."""
        if not self._samples:
            return None
        latest = self._samples[-1][0]
        recent = [value for at, value in self._samples if at >= latest - value / 2]
        return float(statistics.median(recent))

    @property
    def passes_seen(self) -> bool:
        """Whether some row's refresh told where passes fall."""
        return bool(self._passes)

    @property
    def measuring(self) -> bool:
        """Whether the period was measured (not only assumed)."""
        return bool(self._samples)

    @property
    def spread(self) -> float:
        """How far a refresh may come either way of its prediction (wider while the period is
        only assumed)."""
        return self.drift if self._samples else max(self.drift, _PRIOR_SPREAD)

    def measured(self, at: float, seconds: float) -> None:
        """One row's refreshes were this far apart, the latest at `at`."""
        if seconds > 0:
            self._samples.append((at, seconds))

    def missed(self, residual: float, period: float) -> None:
        """A row's period came out `residual` seconds longer than predicted: follow which way
        periods move (the trend) and how far they stray from it (the drift: twice the mean, so
        that most fall within)."""
        self.trend += _TREND_WEIGHT * (residual - self.trend)
        miss = abs(residual - self.trend)
        self.drift = min(period / 4, max(_DRIFT_MIN, 0.8 * self.drift + 0.4 * miss))

    def refreshed(self, at: float) -> None:
        """A pass was under way at `at` (some row was refreshed then)."""
        passes = self._passes
        period = self.period or _PRIOR_PERIOD
        gap = min(_PASS_GAP, period / 4)
        # A new pass: a while after the latest refresh seen, and well after the pass began
        # (rows of one pass are seen seconds apart when few of them are looked at).
        if not passes or (at > passes[-1].end + gap and at > passes[-1].begin + period / 2):
            # A new pass: judge the two ways of telling when it would begin.
            for way in _WAYS:
                due = self._next_begin(way)
                if due is not None:
                    miss = abs(at - due)
                    before = self._misses.get(way, miss)
                    self._misses[way] = before + _JUDGE_WEIGHT * (miss - before)
            # Passes nobody saw in between count too: as many as the measured period fits.
            number = 0
            if passes:
                each = self._sampled()
                skipped = 1 if each is None else max(1, round((at - passes[-1].begin) / each))
                number = passes[-1].number + skipped
            passes.append(_Pass(number, at, at))
        elif at >= passes[-1].begin - gap:
            passes[-1].saw(at)

    def _next_begin(self, way: str) -> float | None:
        """When the pass after the latest begins: a fixed time after the one before began (a
        ticker), or a fixed rest after the one before ended (new-api sleeps 15 s after each)."""
        if len(self._passes) < 2:
            return None
        before, latest = self._passes[-2], self._passes[-1]
        apart = latest.number - before.number
        if way == "ticker":
            return latest.begin + (latest.begin - before.begin) / apart
        rests = [
            after.begin - first.end
            for first, after in itertools.pairwise(self._passes)
            if after.number - first.number == 1 and first.seen >= _SEEN_END
        ]
        if not rests:
            return None
        # A pass is seen to end no later than it did: the shortest rest seen is the truest.
        return latest.end + min(rests)

    @property
    def pass_period(self) -> float | None:
        """How far apart the latest pass and the next begin, the better way of telling."""
        if len(self._passes) < 2 or not self._samples:
            return None  # passes nobody saw may lie between those seen: no count without samples
        due = self._next_begin(self._way())
        between = None if due is None else due - self._passes[-1].begin
        return between if between is not None and between > _PASS_GAP else None

    def _way(self) -> str:
        """The way that told the latest passes' beginnings best (a ticker, until judged)."""
        return min(self._misses, key=self._misses.__getitem__, default="ticker")

    def shift(self, at: float, cycles: int) -> float | None:
        """How long after a refresh at `at` the same row is refreshed again `cycles` passes
        later: from the passes seen and the way they follow each other (None: `at` fell in
        no pass seen)."""
        passes, gap = self._passes, _PASS_GAP
        home = next((p for p in passes if p.begin - gap <= at <= p.end + gap), None)
        period = self.pass_period
        if home is None or period is None:
            return None
        target = home.number + cycles
        latest = passes[-1]
        if target <= latest.number:
            seen = next((p for p in passes if p.number == target), None)
            if seen is not None:
                return seen.begin - home.begin
            before = max((p for p in passes if p.number < target), key=lambda p: p.number)
            after = min((p for p in passes if p.number > target), key=lambda p: p.number)
            each = (after.begin - before.begin) / (after.number - before.number)  # nobody saw
            return before.begin + (target - before.number) * each - home.begin
        due = self._next_begin(self._way())
        assert due is not None
        return due + (target - latest.number - 1) * period - home.begin

    def next_pass(self, after: float, period: float) -> float | None:
        """The earliest time from `after` at which a pass refreshes rows: `after` itself while
        one may be under way (as long as the longest seen took), else when the next begins."""
        if not self._passes:
            return None
        began = self._passes[-1].begin
        cycles = math.floor((after - began) / period)
        start = began + cycles * period
        if after <= start + self._span():
            return after
        return start + period

    def _span(self) -> float:
        """How long a pass takes to refresh the rows seen (the longest seen: a pass is seen
        in part)."""
        return max((seen.end - seen.begin for seen in self._passes), default=0.0)

    def may_probe(self, track: object, now: float) -> bool:
        """Whether `track` may look again soon to learn the gateway's kind (a few do)."""
        return _take_place(self._probers, track, now, _PROBERS)

    def may_scout(self, track: object, now: float) -> bool:
        """Whether `track` may look for the first pass now (a few waits do, not all)."""
        return _take_place(self._scouts, track, now, _SCOUTS)

    def led(self, late: bool, period: float | None) -> None:
        """The first step through a window found the refresh come already (`late`) or not:
        follow how early to begin, so that about `_LATE_SHARE` of first steps are late."""
        step = _LEAD_STEP * ((1 - _LATE_SHARE) if late else -_LATE_SHARE)
        self.lead = max(0.0, min((period or _PRIOR_PERIOD) / 3, self.lead + step))

    def checking(self, now: float) -> None:
        """A wait took the check that is due: the others need not."""
        self._last_check = now

    def check_due(self, now: float) -> bool:
        """Whether a wait should check that the gateway still refreshes its rows (no pair of
        looks has said so for a while)."""
        return now - self._last_check >= _CHECK_EVERY


def _take_place(places: dict[int, float], track: object, now: float, most: int) -> bool:
    """Whether `track` holds one of `most` places (held while used, for `_SCOUT_HOLD`)."""
    for key, since in list(places.items()):
        if since < now - _SCOUT_HOLD:
            del places[key]
    key = id(track)
    if key in places or len(places) < most:
        places[key] = now
        return True
    return False


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
        "_estimate",
        "_fall",
        "_first_answered",
        "_guessed",
        "_high",
        "_leading",
        "_looks",
        "_low",
        "_own_period",
        "_pinned",
        "_row",
        "_searching",
        "_seen",
        "_stale_said",
        "early",
        "last_sent",
        "unfinished_at",
    )

    def __init__(self) -> None:
        self._row: tuple[object, ...] | None = None
        self._first_answered = 0.0  # when the first look that showed this row was answered
        self._answered = 0.0  # when the latest look was answered
        self._estimate: float | None = None
        self._stale_said = False
        #: When the latest look was sent.
        self.last_sent = 0.0
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
        #: Looks in a row that found the refresh they went after still to come.
        self.early = 0

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
        self,
        clock: RowClock,
        sent: float,
        now: float,
        row: tuple[object, ...],
        estimate: float | None,
        period: float | None,
    ) -> None:
        """A look sent at `sent` and answered at `now` showed `row` (what a watcher sees)."""
        self._looks += 1
        if self._leading and self._row is not None:
            self._leading = False
            clock.led(row != self._row, period)
        if self._row is None:
            self._row, self.last_sent, self._estimate = row, sent, estimate
            self._answered = self._first_answered = now
            return
        if row == self._row:
            self._unchanged(clock, sent, now, estimate)
        else:
            self._changed(clock, sent, now, row, estimate, period)

    def _unchanged(self, clock: RowClock, sent: float, now: float, estimate: float | None) -> None:
        counting = estimate is not None and estimate >= _COUNTING
        if counting and not self._stale_said and sent - self._first_answered >= _STALE_SPAN:
            self._stale_said = True  # one sign per row: a long wait is no stronger evidence
            clock.sign(now, True)
        if self._ahead or self._searching:
            self.early += 1
        self.last_sent, self._answered = sent, now

    def _period(self, clock: RowClock, period: float | None) -> float | None:
        """The time to this row's next refresh: its own latest period where measured, else the
        Session's; moved by how periods have lately been changing (a pass that shrinks as a
        batch drains brings every row earlier)."""
        if period is None:
            return None
        own = self._own_period if self._own_period is not None else period
        return max(own / 2, own + clock.trend)

    def _move(self, clock: RowClock, cycles: int, own: float) -> float:
        """How long after this row's refresh it is refreshed again `cycles` passes later: as
        the passes seen say, else `cycles` of its period."""
        at = self.refreshed_at
        shift = None if at is None else clock.shift(at, cycles)
        if shift is None or not _SANE[0] * own <= shift / cycles <= _SANE[1] * own:
            return cycles * own  # the passes seen say nothing (or nonsense) of this row's
        return shift

    def _changed(
        self,
        clock: RowClock,
        sent: float,
        now: float,
        row: tuple[object, ...],
        estimate: float | None,
        period: float | None,
    ) -> None:
        # The two answers were made between their requests and their arrivals.
        shortest, longest = sent - self._answered, now - self.last_sent
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
        low, high = self.last_sent, now  # after the last look that missed it, by this one
        cycles = self._count(fell, low, high, own)
        seen = (low, high)  # what the looks alone say, for measuring
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
        if seen[1] - seen[0] <= _MEASURED:
            clock.refreshed((seen[0] + seen[1]) / 2)  # a pass was under way then
        if seen[1] - seen[0] <= _FOUND:
            self._measure(clock, seen, cycles, own)
            self._guessed = 0
        else:
            self._guessed += cycles  # placed as predicted, not as seen
        self._seen = seen
        if period is not None and high - low > period / 2:
            low = high = math.nan  # somewhere in a long stretch: the phase is still to be found
        if fell is not None and fell > 0 and self._low is not None:
            per = fell / cycles
            self._fall = per if self._fall is None else (self._fall + per) / 2
        if self._row is not None and self._row[0] not in ("completed", "failed"):
            self.unfinished_at = self.refreshed_at if self._low is not None else self.last_sent
        self._low, self._high = (None, None) if math.isnan(low) else (low, high)
        if self._pinned is None and estimate is not None and not math.isnan(low):
            self._pinned = (low, high, estimate)
        self._row, self.last_sent, self._estimate = row, sent, estimate
        self._answered = self._first_answered = now
        self._stale_said = False
        # Fewer refreshes than the look went after: the one it expected is still to come.
        self._ahead = max(0, self._ahead - cycles)
        self.early = 1 if self._ahead else 0
        if self._searching and self._low is not None:
            self._searching = False
        elif self._searching:
            # A look where a pass was due found the row changed since a look long ago: that
            # may be the pass before. The next change, a step away, tells.
            self.early = 1

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
        clock.measured(seen[1], sample)
        self._own_period = sample  # the latest: a row's period drifts as the pass before it shrinks
        narrow = max(seen[1] - seen[0], before[1] - before[0]) <= _MEASURED
        if own is not None and narrow:
            clock.missed(sample - own, own)

    def _count(self, fell: float | None, low: float, high: float, period: float | None) -> int:
        """How many refreshes a change spans: by how far the estimate fell, else by time."""
        if fell is not None and fell > 0 and period is not None:
            if self._fall:
                return max(1, round(fell / self._fall))
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
        if span < _RATE_SPAN:
            return fastest
        # Whole-second estimates: each may be half a second off.
        return min(fastest, (pinned[2] - estimate + 1.0) / span)

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
            return self._search(clock, now, period, earliest_end, search)
        if self._checking:
            self._checking = False
        elif clock.check_due(now) and not self.early:
            # Does it still refresh? A look a moment later shows the same row if so.
            self._checking = True
            clock.checking(now)
            return max(now, self._first_answered + _STALE_SPAN)
        drift = clock.spread
        cycle = 1
        if earliest_end is not None:
            # A row shows the end at the first refresh after it: skip the ones before, while
            # a skip can be told from how far the estimate falls.
            most = _UNMEASURED_SKIP if self._fall is None else math.inf
            while (
                cycle < most
                and self._high + self._move(clock, cycle, own) + cycle * drift + _MARGIN
                < earliest_end
            ):
                cycle += 1
        move = self._move(clock, cycle, own)
        first = self._low + move - cycle * drift
        last = self._high + move + cycle * drift
        self._ahead = cycle
        if self.last_sent >= first:
            if self.last_sent >= last:  # came later than it could: it is late; look again soon
                return self._step(now, self._retry(clock, search))
            first = self.last_sent
        if self._guessed and self.last_sent < first - _MARGIN and cycle == self._ahead:
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
            if self.last_sent < first:
                self._leading = True
                # (beyond what the window already allows for straying either way)
                lead = min(max(0.0, clock.lead - cycle * drift), _LEAD_STEPS * step)
                return max(now, first - lead + step)
            return first + step
        return (first + last) / 2

    def _step(self, now: float, step: float) -> float:
        """`step` after the latest look was sent; soon after `now` if its answer came late (it
        waited its turn for a while, say)."""
        return max(self.last_sent + step, now + min(step, _RETRY))

    def _retry(self, clock: RowClock, search: float) -> float:
        """How soon to look again for a refresh that is late: soon at first, then less so."""
        if not clock.measuring:
            return search
        return min(search, _RETRY * 2.0 ** max(0, self.early - 1))

    def _search(
        self,
        clock: RowClock,
        now: float,
        period: float | None,
        earliest_end: float | None,
        search: float,
    ) -> float:
        """Look for a refresh of this row: where the next pass is due, then a step at a time."""
        begin = now
        if earliest_end is not None and period is not None:
            # Nothing to learn before a period or so ahead of the end that those looks miss.
            begin = max(now, earliest_end - 1.5 * period)
        near = earliest_end is None or period is None or earliest_end <= now + period
        if self._searching and self.early and begin <= now + search:
            # Looked where a pass was due and the row had not changed: step on, in shorter
            # steps once the end may come.
            return self._step(now, min(search, _AIM_STEP) if near else search)
        due = None if period is None else clock.next_pass(max(begin, self.last_sent), period)
        if due is not None:
            self._searching, self.early = True, 0
            return max(now, due)
        # No pass seen yet: the scouts look for one; the others wait for them, unless the end
        # may come first (then as a plain loop would).
        return max(begin, self._step(now, search if near else period or _PRIOR_PERIOD))
