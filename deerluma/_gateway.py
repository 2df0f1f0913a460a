"""What a Session learns of how its gateway answers a GET: live, or from rows refreshed in passes.

new-api and its forks answer a task's GET from their own database row, which a
background pass refreshes every ~15 s (their service/task_polling.go); other
gateways ask the upstream on every GET. Nothing says which kind a gateway is,
so a Session learns it from the answers alone (`RowClock.kind`, from the signs
its waits' rows give: see `_rows`), and behind rows, the passes: when they
begin, how long they take, how far apart they are. Pure: numbers in, numbers
out, no I/O and no clock of its own.
"""

from __future__ import annotations

import enum
import itertools
import math
import statistics
from collections import deque
from typing import Literal

import attrs

__all__ = ["PRIOR_PERIOD", "GatewayView", "Kind", "Refresh", "RowClock"]

#: What `PollPolicy.refresh` may say: a period in seconds, "live", or None (learn it).
Refresh = float | Literal["live"] | None

#: Signs older than this are forgotten: a gateway that changes kind is learned again.
_MEMORY = 180.0
#: One sign in this many saying "refreshed" is enough to say so; this many are kept.
_STALE_SHARE = 10
_SIGNS = 40
#: "Live" takes this many signs saying so, and fewer than one in this many saying otherwise.
_LIVE_SIGNS = 3
_LIVE_SHARE = 20
#: The period assumed until one is measured: new-api's (its task poller's Interval()).
PRIOR_PERIOD = 15.0
#: Period samples the median is taken over (the period drifts as a pass grows or shrinks).
_SAMPLES = 16
#: The share of first steps through a window (one that may hold a row's end) that may find
#: the refresh come already, and how fast the lead before such a window follows them.
_LATE_SHARE = 0.2
_LEAD_STEP = 0.5
#: Each predicted refresh may come this far either way of its prediction (learned, from here).
_DRIFT_START = 0.4
_DRIFT_MIN = 0.1
#: ... and while the period is only assumed (new-api's passes take longer as they grow).
_PRIOR_SPREAD = 3.0
#: How fast the trend follows what the latest periods say.
_TREND_WEIGHT = 0.3
#: While no pass has been seen, at most this many waits look for one (scouts); while the kind
#: is unknown, at most this many look again soon (probers); a wait holds its place while it
#: uses it, and this long after.
_SCOUTS = 2
_PROBERS = 8
_SCOUT_HOLD = 20.0
#: Passes remembered, and how far apart two refreshes are at least to belong to two passes.
_PASSES = 8
_PASS_GAP = 3.0
#: How the next pass is told to begin: a fixed time after the latest began, or a fixed rest
#: after it ended (new-api sleeps 15 s after each).
_WAYS = ("ticker", "rest")
#: How much the latest pass counts in judging the two ways.
_JUDGE_WEIGHT = 0.5
#: A pass seen refresh fewer rows than this tells little of when it ended.
_SEEN_END = 8
#: Behind a refreshing gateway, a look that checks it is still one comes this often.
_CHECK_EVERY = 30.0
#: A wait whose row shows the latest pass holds its next look (sends nothing) while a watch
#: says no pass has begun since: the row refreshed earliest in that pass (at most
#: `_WATCH_OFFSET` s after it began), looked at this often while any wait holds...
_WATCH_STEP = 1.5
_WATCH_OFFSET = 1.0
#: ... its word good for this long after the time it vouches for; holders look again this
#: long after its next look was due (its answer's time), and it keeps watching this long
#: after the latest wait asked to hold.
_WATCH_STALE = 2.5
_WATCH_ANSWER = 0.3
_WATCH_WANTED = 4.0
_RECHECK_LEAST = 0.1
#: Half the widest bracket that places a refresh in a pass (`_rows._MEASURED`).
_MEASURED_HALF = 1.0
#: A row this much later in a pass than in the one before (beyond what two beginnings seen
#: a little late allow) says the passes keep no order.
_DISORDER = 2.0
#: A pass's rows placed before a row's refresh tell how many ended there, from this many.
_SHRINK_SAMPLE = 4


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
    #: Rows placed in it: when each was refreshed, and whether it ended there.
    placed: list[tuple[float, bool]] = attrs.Factory(list)

    @property
    def earliest(self) -> float:
        """The earliest it may have begun: its beginning is the middle of the narrow bracket
        that found it (`_MEASURED_HALF` either way)."""
        return self.begin - _MEASURED_HALF

    def shrink(self, at: float) -> float:
        """How much sooner after the next pass begins a row refreshed at `at` in this one is
        refreshed in it: the rows before it that ended here leave the next (a pass refreshes
        its rows oldest first, one after the other): as many of that time as ended."""
        before = [ended for when, ended in self.placed if when < at]
        if len(before) < _SHRINK_SAMPLE:
            return 0.0
        return max(0.0, at - self.begin) * sum(before) / len(before)

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
        #: No pass after the latest seen began before this (as the watch vouches).
        self._quiet = -math.inf
        self._watch: tuple[int, float, float] | None = None  # (track, offset, next look)
        self._wanted = -math.inf  # the latest time a wait asked to hold
        #: For each pass, the creation time of the oldest row first refreshed in it (seen so).
        self._firsts: dict[int, float] = {}
        #: When a row was last seen later in a pass than in the one before (passes that keep
        #: no order: then no wait holds its look on the watch's word).
        self._disorder = -math.inf

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
        if live >= _LIVE_SIGNS and refreshed * _LIVE_SHARE <= len(self._signs):
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
        return PRIOR_PERIOD if self._signs else None

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
        period = self.period or PRIOR_PERIOD
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
                # (Passes apart as they began lately, else as rows measured them: a row's own
                # period is shorter by the rows before it that ended.)
                each = self.pass_period or self._sampled()
                skipped = 1 if each is None else max(1, round((at - passes[-1].begin) / each))
                number = passes[-1].number + skipped
            passes.append(_Pass(number, at, at))
            self._quiet = -math.inf  # what the watch said was of the pass before
        elif at >= passes[-1].begin - gap:
            passes[-1].saw(at)

    def placed(self, at: float, ended: bool) -> None:
        """A row's refresh was placed at `at` (and it showed the task `ended`)."""
        home = self._home(at)
        if home is not None:
            home.placed.append((at, ended))

    def _home(self, at: float) -> _Pass | None:
        """The pass seen under way at `at`."""
        gap = _PASS_GAP
        return next((p for p in self._passes if p.begin - gap <= at <= p.end + gap), None)

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
        if not rests or latest.seen < _SEEN_END:
            return None  # (nor when the latest pass was seen too little to tell its end)
        # A pass is seen to end no later than it did: the shortest rest seen is the truest.
        return latest.end + min(rests)

    @property
    def pass_period(self) -> float | None:
        """How far apart the latest pass and the next begin, the better way of telling."""
        if len(self._passes) < 2 or not self._samples:
            return None  # passes nobody saw may lie between those seen: no count without samples
        due = self._due()
        between = None if due is None else due - self._passes[-1].begin
        return between if between is not None and between > _PASS_GAP else None

    def _due(self) -> float | None:
        """When the next pass begins, the better way of telling (the other where passes were
        seen too little to tell by it)."""
        way = self._way()
        due = self._next_begin(way)
        if due is None:
            due = self._next_begin(next(other for other in _WAYS if other != way))
        return due

    def _way(self) -> str:
        """The way that told the latest passes' beginnings best (a ticker, until judged)."""
        return min(self._misses, key=self._misses.__getitem__, default="ticker")

    def shift(self, at: float, cycles: int) -> float | None:
        """How long after a refresh at `at` the same row is refreshed again `cycles` passes
        later: from the passes seen and the way they follow each other, sooner by the rows
        before it that left the passes (None: `at` fell in no pass seen)."""
        home = self._home(at)
        period = self.pass_period
        if home is None or period is None:
            return None
        return self._begins_apart(home, cycles, period) - home.shrink(at)

    def _begins_apart(self, home: _Pass, cycles: int, period: float) -> float:
        """How long after `home` began the pass `cycles` later begins."""
        passes = self._passes
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
        due = self._due()
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

    @property
    def latest(self) -> tuple[int, float] | None:
        """The latest pass seen: its number and the earliest refresh seen in it."""
        if not self._passes:
            return None
        return self._passes[-1].number, self._passes[-1].begin

    def pass_after(self, at: float) -> int | None:
        """The number of the latest pass, when a refresh no earlier than `at` belongs to it
        (or to a later one not seen yet): `at` is after the latest pass began."""
        if not self._passes or at < self._passes[-1].earliest:
            return None
        return self._passes[-1].number

    def first_refreshed(self, number: int, born: float) -> None:
        """A row made at `born` was first refreshed in pass `number` (a look placed it)."""
        self._firsts[number] = min(born, self._firsts.get(number, math.inf))
        for old in [key for key in self._firsts if key < number - _PASSES]:
            del self._firsts[old]

    def first_pass(self, born: float) -> int | None:
        """The latest pass, when a row made at `born` was first refreshed in it: it was made
        before the pass began, and no sooner than a row first refreshed in it (so no pass
        began in between that would have refreshed that one)."""
        if not self._passes:
            return None
        latest = self._passes[-1]
        oldest = self._firsts.get(latest.number)
        if oldest is None or not oldest <= born <= latest.earliest:
            return None
        return latest.number

    def moved(self, before: int, by: float, number: int, since: float) -> None:
        """A row refreshed in pass `before` by `by` was refreshed in pass `number` (the next)
        no sooner than `since`: later in it than in the one before, when the passes keep
        no order (a pass oldest first brings a row only sooner, as the rows ahead end)."""
        begins = {p.number: p.begin for p in self._passes}
        if number != before + 1 or before not in begins or number not in begins:
            return
        if since - begins[number] > by - begins[before] + _DISORDER:
            self._disorder = since

    def begin_after(self, number: int) -> float | None:
        """The earliest a refresh in a pass after pass `number` may have come (None: no such
        pass seen)."""
        return min((p.earliest for p in self._passes if p.number > number), default=None)

    def quiet(self, number: int, at: float) -> None:
        """No pass after pass `number` (the latest) began before `at`: a row it refreshed
        early looked unchanged."""
        latest = self.latest
        if latest is not None and latest[0] == number:
            self._quiet = max(self._quiet, at)

    def watch_duty(self, track: object, offset: float, now: float, planned: float) -> float:
        """The time of `track`'s next look, as the watch needs it: `track`'s row was
        refreshed within `offset` s of the latest pass's beginning; the row refreshed
        earliest watches, every `_WATCH_STEP` s while waits hold."""
        key, watch = id(track), self._watch
        if offset > _WATCH_OFFSET:
            return planned
        if watch is not None and watch[0] != key:
            stale = now > watch[2] + _WATCH_STEP
            if not stale and offset >= watch[1]:
                return planned
        if now - self._wanted <= _WATCH_WANTED:
            planned = min(planned, now + _WATCH_STEP)
        self._watch = (key, offset, planned)
        return planned

    def hold(self, track: object, number: int, now: float) -> float | None:
        """When a wait whose row shows pass `number` should look again, sending nothing now
        (None: look now; a newer pass began, or no watch vouches for the time since)."""
        latest = self.latest
        if latest is None or latest[0] != number:
            return None
        watch = self._watch
        if watch is not None and watch[0] == id(track):
            return None  # the watch itself looks
        if now - self._disorder < _MEMORY:
            return None  # a row late in a pass may come first in the next
        self._wanted = now
        if watch is None or now > self._quiet + _WATCH_STALE:
            return None
        return max(now + _RECHECK_LEAST, min(watch[2], now + _WATCH_STEP) + _WATCH_ANSWER)

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
        self.lead = max(0.0, min((period or PRIOR_PERIOD) / 3, self.lead + step))

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
