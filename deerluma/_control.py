"""The rate controller: events in, decisions out. `Controller.decide(event, now)` is a function
of the controller's state, the event and the time given: it reads no clock, does no I/O, and
changes nothing but that state. What the gate is to do comes back as a `Decision` (the rate,
the pause, what may go at once, what to tell the other Sessions of the key); what the others
said comes in as an event (`Heard`), through the gate.

Parts, each testable with plain numbers (botocore's adaptive mode has the same shape):

- `Meter`: what was sent and what was taken lately, round trips, and sends per
  second over the last minutes (for window limits).
- `Recent`: which of the latest answers were 429s (a lone one, a crowd, a burst).
- `WindowBudget`: a limit the gateway named (``M`` requests per ``W`` seconds);
  when the next request fits in the window.
- `Cubic`: the regrowth after a cut.
- `Trial`: a cut under judgement, and its verdict (`Verdict`).
- `Controller`: slow start, then CUBIC after cuts; judges each 429 by its kind
  (`deerluma._throttle`) and, for a plain 429, by evidence: a cut is on trial,
  and one that does not make 429s rarer is undone, after which 429s at that
  share are stray.

How the rate is learned (slow start, cuts from what the server took, CUBIC regrowth) is
told in docs/batch.md; the constants below carry the why of each number.
"""

from __future__ import annotations

import bisect
import collections
import enum
import itertools
import math

import attrs

from ._peers import PeerEvent
from ._throttle import Throttle, ThrottleKind

__all__ = [
    "SENDING",
    "Answered",
    "Controller",
    "Cubic",
    "Decision",
    "Heard",
    "Meter",
    "RateView",
    "Recent",
    "Throttled",
    "Trial",
    "Verdict",
    "WindowBudget",
]

#: The rate a new Session starts at, in requests per second (no crawl: most limits are higher).
START = 50.0
#: Slow start grows the rate by `_GROWTH` once per `_ROUNDS` round trips (at least `_STEP`
#: seconds) of being held back by it without a 429: gentler than TCP's doubling per round
#: trip, because every request in flight when a server's burst allowance runs out comes
#: back a 429, and a far API has many in flight.
_STEP = 0.05
_ROUNDS = 8
_GROWTH = 1.5
#: Sessions seen sending in a Session's first `_SHARE_FOR` seconds started with it: they share
#: the start rate. Later ones came to a Session already growing on evidence of its own.
_SHARE_FOR = 1.0
#: Never below this rate, however many 429s: a trickle still finds out when the server recovers.
FLOOR = 0.5
#: The multiplicative cut on a 429, and CUBIC's growth constant (botocore's values).
_BETA = 0.7
_CUBIC = 0.4
#: The send rate is measured over this window (seconds), or its last quarter when that holds
#: this many requests.
_WINDOW = 1.0
_ENOUGH = 8
#: Slow start reads the rate of successes off this many latest ones.
_LATEST = 32
#: After a cut, 429s within this many round trips are the same congestion (the requests sent
#: meanwhile met the same empty bucket); round trips are smoothed by this weight.
_SETTLE = 4
#: A cut measures what the server took since the previous cut when that was at most this
#: many seconds ago, and goes no deeper at once than this share of the rate (a Session that
#: sat out a Retry-After while others took the refill measures next to nothing).
_MEASURED = 10.0
_DEEPEST = 0.6
_SMOOTHING = 0.2
#: A Retry-After longer than this is taken as this (a caller's deadline caps it further).
MAX_PAUSE = 60.0
#: Plain 429s are judged over the latest `_RECENT` answers. One alone there (`_CROWD` make a
#: crowd) delays only its own request; in slow start, where meeting a limit fails most
#: requests at once, a crowd is `_ONSET` of the latest `_ONSET_OF`. Retry-After holds the
#: whole Session back only in a burst: `_BURST_429S` of the latest `_BURST_OF`.
_RECENT = 50
_CROWD = 2
_ONSET = 3
_ONSET_OF = 20
_BURST_429S = 3
_BURST_OF = 10
#: The other Sessions' 429s count towards a crowd (not a burst: their answers are not ours)
#: for this many seconds.
_PEER_SPAN = 1.0
#: A cut is on trial for `_TRIAL` answers to requests sent after it (and at least
#: `_TRIAL_SECONDS`, at most `_TRIAL_LONGEST` with `_TRIAL_MIN` answers), holding its rate.
#: A cut below a limit is followed by next to no 429s (fewer than `_SEEN`); one followed by
#: more (but fewer than `_MAX_NOISE` of the answers) is undone, and 429s at that share are
#: stray from then on.
_TRIAL = 50
_TRIAL_MIN = 10
_TRIAL_SECONDS = 0.5
_TRIAL_LONGEST = 5.0
_SEEN = 3
#: More than `_ROSE` times the share before, or more than `_MAX_NOISE` (and `_SEEN` more),
#: since a cut: it was not deep enough, and is deepened at once.
_ROSE = 2.0
#: 429s within `_SCATTER` answers of each other are close together; when `_CLOSE` of them
#: are, a limit was met again (stray 429s come scattered).
_SCATTER = 5
_CLOSE = 0.5
#: Each cut that proves right forgets this share of the stray share learned.
_FORGET = 0.75
#: The stray share learned is at most this (more is no background noise).
_MAX_NOISE = 0.1
#: Sends are counted per slot of `_SLOT` seconds for `_HORIZON` seconds (the longest window
#: followed).
_SLOT = 0.25
_HORIZON = 600
#: A named window limit is followed with this margin, and its edges with this slack (clocks
#: differ, and the gateway counts at arrival).
_WINDOW_MARGIN = 0.95
_WINDOW_SLACK = 0.05
#: With a named window, up to this share of its allowance may go at once after a quiet spell.
_WINDOW_BURST = 0.25
#: While the rate is being found, this many seconds' worth of requests may go at once.
_BURST = 0.2


@attrs.frozen
class RateView:
    """What a Session's rate gate knows, for logs and progress displays."""

    #: The rate the gate lets requests through at now, per second.
    rps: float
    #: The user's hard cap (``Session(max_rps=...)``), or None when the rate is learned.
    max_rps: float | None
    #: How many 429 answers this Session has received, of every kind.
    rate_limited: int
    #: True until the first 429 about our rate: the rate grows by half every few round
    #: trips while the Session wants more.
    slow_start: bool
    #: 429s the gateway sent because its upstream was saturated, or that slowing down did
    #: not make rarer: they delayed only their own requests.
    not_ours: int = 0
    #: The limit the gateway named, ``(requests, seconds)``, once a 429 named one.
    window: tuple[int, float] | None = None


# -- events: what the gate tells the controller ------------------------------------------------
@attrs.frozen
class _Sending:
    """A request goes now."""


#: A request goes now (one event for all: it carries nothing but the time given with it).
SENDING = _Sending()


@attrs.frozen
class Answered:
    """A request sent at `sent` went through. `held_back`: a request waited for its turn since
    slow start's last step (the Session wants more than the rate)."""

    sent: float
    held_back: bool


@attrs.frozen
class Throttled:
    """A request sent at `sent` got a 429 (`throttle`: what it said, as first read)."""

    sent: float
    throttle: Throttle


@attrs.frozen
class Heard:
    """What the other Sessions of the key were heard to say: how many send (this one too), the
    requests per second those that stopped freed, the plain 429s they met, and a cut, pause or
    named window of theirs."""

    fleet: int
    freed: float = 0.0
    ticks: int = 0
    event: PeerEvent | None = None


Event = _Sending | Answered | Throttled | Heard


@attrs.frozen
class Decision:
    """What the gate is to do after an event: its whole state, from the controller's side."""

    #: Requests per second from now.
    rate: float
    #: No request before this clock time (a Retry-After, a pause heard, a named window's).
    paused_until: float
    #: No request before this clock time either: when one more fits in the named window.
    room_at: float
    #: How many requests may go at once (the token bucket's capacity).
    capacity: float
    #: At most one request at once from here, the refill counting from this clock time (a
    #: cut, a pause heard; -inf: from the last refill). None: the bucket stays as it is.
    drain_from: float | None = None
    #: What to tell the other Sessions of the key: the plain 429s met, then cuts, pauses and
    #: named windows, in order.
    ticks: int = 0
    publish: tuple[PeerEvent, ...] = ()
    #: Slow start took a step (the gate starts counting requests held back afresh).
    stepped: bool = False
    #: The 429 of a `Throttled` event, judged (its kind may have changed).
    judged: Throttle | None = None


class Meter:
    """What this Session sent and what the server took, lately; answers' 429 share; round trips."""

    def __init__(self, now: float) -> None:
        self.born = now
        self.sent: collections.deque[float] = collections.deque()  # send times, last second
        self.ok: collections.deque[float] = collections.deque()  # success times, last second
        self.rtt = 0.0  # seconds from send to answer, smoothed
        self.served = 0  # successes, all told
        self._slots: collections.deque[list[int]] = collections.deque()  # [slot, sends]

    def sending(self, now: float) -> None:
        """A request goes now."""
        _stamp(self.sent, now)
        index = math.floor(now / _SLOT)
        slots = self._slots
        if slots and slots[-1][0] == index:
            slots[-1][1] += 1
            return
        slots.append([index, 1])
        while slots[0][0] < index - _HORIZON / _SLOT:
            slots.popleft()

    def success(self, now: float, sent: float) -> None:
        """A request sent at `sent` went through at `now`."""
        _stamp(self.ok, now)
        self.served += 1
        self.rtt += (max(0.0, now - sent) - self.rtt) * _SMOOTHING

    def rate_of_sent(self, now: float, whole: bool = False) -> float:
        """Requests sent per second lately."""
        return _rate_of(self.sent, now, whole)

    def rate_of_ok(self, now: float, whole: bool = False) -> float:
        """Successes per second lately."""
        return _rate_of(self.ok, now, whole)

    def latest_rate(self) -> float:
        """Successes per second over the last few of them: quick to follow a ramp."""
        ok = self.ok
        if len(ok) < _ENOUGH:
            return 0.0
        first = ok[-min(len(ok), _LATEST)]
        return (min(len(ok), _LATEST) - 1) / max(ok[-1] - first, 1e-6)

    def sends_since(self, start: float) -> int:
        """Requests sent since clock time `start` (by whole slots: a little more, never less)."""
        first = math.floor(start / _SLOT)
        return sum(count for index, count in self.slots_since(start) if index >= first)

    def slots_since(self, start: float) -> list[tuple[int, int]]:
        """Sends per slot of `_SLOT` seconds (index, count), oldest first, of the slots that end
        after clock time `start`."""
        found: list[tuple[int, int]] = []
        for index, count in reversed(self._slots):
            if (index + 1) * _SLOT <= start:
                break
            found.append((index, count))
        found.reverse()
        return found


class Recent:
    """Which of the latest answers were plain 429s (a crowd, a burst, a share), and how many
    the other Sessions of the key met lately."""

    def __init__(self) -> None:
        self._flags: collections.deque[bool] = collections.deque(maxlen=_RECENT)
        self._peers: collections.deque[float] = collections.deque(maxlen=_RECENT)

    def note(self, throttled: bool) -> None:
        """One more answer (a plain 429 when `throttled`)."""
        self._flags.append(throttled)

    def note_peers(self, now: float, count: int) -> None:
        """Other Sessions of the key met `count` plain 429s."""
        self._peers.extend([now] * min(count, _RECENT))

    def count(self, last: int = _RECENT) -> int:
        """429s among our latest `last` answers."""
        return sum(itertools.islice(reversed(self._flags), last))

    def crowd(self, now: float, last: int = _RECENT) -> int:
        """429s among our latest `last` answers, and the others' of the last `_PEER_SPAN` s."""
        peers = self._peers
        while peers and peers[0] < now - _PEER_SPAN:
            peers.popleft()
        return self.count(last) + len(peers)

    @property
    def share(self) -> float:
        """The share of 429s among the latest answers but the last (a 429 that just came is no
        evidence of how common they are), at least one in `_RECENT`."""
        return max(1, self.count() - 1) / max(len(self._flags) - 1, _RECENT)


@attrs.define
class WindowBudget:
    """A limit the gateway named: at most `budget` of this Session's requests in `window` seconds.

    The budget starts a little under the named limit; when the gateway says the
    window is full while this Session sent fewer (others share the key), it
    shrinks to what this Session had sent, and grows back by a twentieth of
    the limit per quiet window.
    """

    limit: int
    window: float
    budget: float
    since: float  # clock time of the last 429 that named it

    @classmethod
    def named(cls, throttle: Throttle, meter: Meter, at: float) -> WindowBudget:
        """The window a 429 for a request sent at clock time `at` named."""
        assert throttle.limit is not None
        assert throttle.window is not None
        budget = _WINDOW_MARGIN * throttle.limit
        return cls(throttle.limit, throttle.window, budget, at).full(meter, at)

    def full(self, meter: Meter, at: float) -> WindowBudget:
        """The gateway found the window full for a request sent at clock time `at` (judged as it
        arrived: an answer that comes late says nothing of the window at its own time): no more
        than this Session had sent in it."""
        mine = meter.sends_since(at - self.window)
        self.budget = max(1.0, min(self.budget, _WINDOW_MARGIN * mine))
        self.since = max(self.since, at)
        return self

    def rate(self, now: float) -> float:
        """The even rate that spends the budget over the window."""
        quiet = (now - self.since) // self.window
        if quiet >= 1:  # a window without a 429: grow back towards the named limit
            grown = self.budget + quiet * self.limit / 20
            self.budget = min(_WINDOW_MARGIN * self.limit, grown)
            self.since += quiet * self.window
        return self.budget / self.window

    @property
    def burst(self) -> float:
        """Requests that may go at once after a quiet spell."""
        return max(1.0, _WINDOW_BURST * self.budget)

    def room_at(self, meter: Meter, now: float) -> float:
        """The earliest clock time, from `now`, at which one more request fits in the window."""
        span = self.window + _WINDOW_SLACK
        slots = meter.slots_since(now - span)
        over = sum(count for _, count in slots) - self.budget + 1
        if over <= 0:
            return now
        for index, count in slots:
            over -= count
            if over <= 0:
                return (index + 1) * _SLOT + span
        return now + span  # not reached: every counted send must age out


class Controller:
    """Answers and 429s in, the rate and the Session's pause out."""

    def __init__(self, cap: float | None, now: float) -> None:
        self.cap = cap
        self.rate = cap or START
        self.slow_start = cap is None
        self.meter = Meter(now)
        self.recent = Recent()
        self.paused_until = -math.inf
        self.window: WindowBudget | None = None
        #: 429s by judged kind, for the Session's view.
        self.counts: collections.Counter[ThrottleKind] = collections.Counter()
        #: The share of plain 429s that cutting did not make rarer (0 until a trial showed it).
        self.noise = 0.0
        #: What the other Sessions of the key were last heard to be (the gate tells): how many
        #: send, and the requests per second those that stopped freed for this one.
        self.fleet = 1
        self.freed = 0.0
        #: What this controller has to tell the other Sessions (it goes with the next Decision).
        self._outbox: list[PeerEvent] = []
        self._ticks = 0
        self.cubic = Cubic()  # regrowth after a cut
        self._fleet = 1  # the Sessions sending on the key when `_c` was set
        self._cut_at = -math.inf
        self._grown_at = now
        self._served_at_cut = 0
        self._trial: Trial | None = None
        #: The state before the cuts on trial, to go back to if they prove wrong.
        self._before_cuts = self._undo()

    # -- the one way in ----------------------------------------------------------
    def decide(self, event: Event, now: float) -> Decision:
        """Take `event` at clock time `now`; what the gate is to do now."""
        if event is SENDING:
            self.meter.sending(now)
            return self.current(now)
        if isinstance(event, Answered):
            stepped = self._answered(now, event.sent, event.held_back)
            return self.current(now, stepped=stepped)
        if isinstance(event, Throttled):
            judged = self._throttled(now, event.sent, event.throttle)
            drain = now if judged.ours else None  # when a pause ends: one, then the (new) rate
            return self.current(now, drain_from=drain, judged=judged)
        assert isinstance(event, Heard)
        return self._hear(now, event)

    def current(
        self,
        now: float,
        *,
        drain_from: float | None = None,
        stepped: bool = False,
        judged: Throttle | None = None,
    ) -> Decision:
        """The gate's state as this controller has it at `now` (with what it has to tell)."""
        window = self.window
        if self.slow_start:
            capacity = max(1.0, self.rate * _BURST)
        else:
            capacity = 1.0 if window is None else window.burst
        events, self._outbox = self._outbox, []
        ticks, self._ticks = self._ticks, 0
        return Decision(
            self.rate,
            self.paused_until,
            -math.inf if window is None else window.room_at(self.meter, now),
            capacity,
            drain_from,
            ticks,
            tuple(events),
            stepped,
            judged,
        )

    def view(self, rate_limited: int) -> RateView:
        """What this controller knows, for logs and progress displays."""
        window, counts = self.window, self.counts
        return RateView(
            self.rate,
            self.cap,
            rate_limited,
            self.slow_start,
            counts[ThrottleKind.UPSTREAM] + counts[ThrottleKind.STRAY],
            None if window is None else (window.limit, window.window),
        )

    def pace(self, now: float) -> tuple[float, float]:
        """What this Session sent per second lately, and its rate (for the other Sessions)."""
        return self.meter.rate_of_sent(now, whole=True), self.rate

    # -- events ---------------------------------------------------------------
    def _hear(self, now: float, heard: Heard) -> Decision:
        """What the other Sessions said: how many send (in slow start, Sessions that start
        together share the start rate), what those that stopped freed, their 429s, a cut,
        pause or window of theirs."""
        self.fleet = heard.fleet
        self.freed += heard.freed
        drain: float | None = -math.inf if self._share_start(now) else None
        if heard.ticks:
            self._heard_429s(now, heard.ticks)
        if heard.event is not None:
            self._heard(now, heard.event)
            drain = now
        return self.current(now, drain_from=drain)

    def _answered(self, now: float, sent: float, held_back: bool) -> bool:
        """A request sent at `sent` went through at `now`: the rate may grow. Returns
        whether slow start took a step."""
        meter = self.meter
        meter.success(now, sent)
        self.recent.note(False)
        if self._trial is not None and self._judge(now, sent, throttled=False):
            return False  # a cut on trial holds its rate: growing would spoil the comparison
        if self.freed:
            # Sessions of the key stopped; our rate holds us back: take up our part of what
            # they sent (slow start finds its own way).
            freed, self.freed = self.freed, 0.0
            if not self.slow_start:
                self._regrow(max(self.cubic.w_max, self.rate) + freed, self.rate + freed, now)
        if self.slow_start:
            if held_back and now - self._grown_at >= max(_STEP, _ROUNDS * meter.rtt):
                # Grow, but never past twice what the server has taken lately (at a rate too
                # low to read that off the last second, the rate itself: a Session that shares
                # its start with others may begin at a few requests a second).
                taken = meter.latest_rate() or self.rate
                grown = min(_GROWTH * self.rate, 2 * taken)
                self._set_rate(max(self.rate, grown), now)
                self._grown_at = now
                return True
            return False
        # CUBIC: back to the rate that was too much at `cubic.peak_at`, then beyond, slowly;
        # never more than twice what the Session sends (idle Sessions do not inflate it).
        if self.fleet != self._fleet:  # Sessions came or went: grow on as many do
            self._regrow(max(self.cubic.w_max, self.rate), self.rate, now)
        cubic = self.cubic.rate_at(now)
        self._set_rate(min(cubic, max(self.rate, 2 * meter.rate_of_sent(now))), now)
        return False

    def _throttled(self, now: float, sent: float, throttle: Throttle) -> Throttle:
        """A request sent at `sent` got a 429 at `now`; returns it judged (its kind may change).

        Upstream 429s change nothing here. A named limit sets the rate and a
        pause until the window has room. A plain 429 cuts the rate when 429s
        crowd, once per congestion, unless they are no more than the stray
        share learned; each cut is on trial (see `_judge`).
        """
        kind = throttle.kind
        if kind is ThrottleKind.LIMIT:
            self.recent.note(True)
            self._named(now, throttle, sent)
        elif kind is ThrottleKind.RATE:
            self.recent.note(True)
            self._ticks += 1
            if self._trial is not None:
                self._judge(now, sent, throttled=True)
            kind = self._plain(now, sent, throttle.retry_after)
        self.counts[kind] += 1
        return throttle if kind is throttle.kind else attrs.evolve(throttle, kind=kind)

    def _share_start(self, now: float) -> bool:
        """In slow start, when more Sessions than before send on the key (workers launched
        together), they share the start rate, or each meets the server's burst allowance
        at once. Whether the rate was cut for it."""
        fleet = self.fleet
        if not self.slow_start or fleet <= self._fleet or now - self.meter.born > _SHARE_FOR:
            return False
        self._set_rate(max(FLOOR, self.rate * self._fleet / fleet), now)
        self._fleet = fleet
        return True

    def _heard_429s(self, now: float, count: int) -> None:
        """Other Sessions of this key met `count` plain 429s: evidence of a crowd here too.

        In slow start, growth waits: the key's limit is near.
        """
        self.recent.note_peers(now, count)
        self._grown_at = max(self._grown_at, now)

    def _heard(self, now: float, event: PeerEvent) -> None:
        """Another Session of this key judged a 429 about the key's rate: act as if it were ours.

        Once per congestion, as for our own: a cut of our own just before it covers it.
        """
        # Never longer than a Retry-After would be: the record is a hint, not an order.
        self.paused_until = max(self.paused_until, min(event.pause_until, now + MAX_PAUSE))
        if event.limit and event.window:
            throttle = Throttle(ThrottleKind.LIMIT, event.limit, event.window)
            self._named(now, throttle, event.at, tell=False)
        elif self.cap is None and event.at > self._cut_at + _SETTLE * self.meter.rtt:
            self._cut(now)
            if event.w_max > 0:
                # Meet the Session that met the limit halfway: Sessions that cut to their own
                # levels and grow back from there keep whatever shares they had; halfway,
                # they come to share the key evenly, and in sum cut as much as before.
                w_max, rate = (self.cubic.w_max + event.w_max) / 2, (self.rate + event.rate) / 2
                self._regrow(w_max, rate, now)

    # -- judgements -------------------------------------------------------------
    def _named(self, now: float, throttle: Throttle, sent: float, *, tell: bool = True) -> None:
        meter, window = self.meter, self.window
        if window is None or (window.limit, window.window) != (throttle.limit, throttle.window):
            window = self.window = WindowBudget.named(throttle, meter, sent)
        else:
            window.full(meter, sent)
        self.slow_start = False
        self._trial = None
        self.cubic.w_max, self.cubic.peak_at, self._cut_at = window.rate(now), now, now
        self._set_rate(self.cubic.w_max, now)
        resume = window.room_at(meter, now)
        if throttle.retry_after is not None:
            resume = max(resume, now + min(MAX_PAUSE, throttle.retry_after))
        self.paused_until = max(self.paused_until, resume)
        if tell:
            event = PeerEvent(0, 0, now, self.paused_until, window.limit, window.window)
            self._outbox.append(event)

    def _plain(self, now: float, sent: float, retry_after: float | None) -> ThrottleKind:
        """A plain 429: stray, the same congestion, a lone one, on trial, or a cut.

        Dense 429s (a burst among the latest few answers) are congestion: a cut, and
        Retry-After holds everyone back. Sparse ones, which stray 429s also are,
        cut only when they crowd, and that cut goes on trial.
        """
        recent = self.recent
        if self.noise and recent.count() <= _stray_allowance(self.noise):
            return ThrottleKind.STRAY  # no more than the 429s a cut did not make rarer
        dense = recent.count(_BURST_OF) >= _BURST_429S
        if sent <= self._cut_at or now < self._cut_at + _SETTLE * self.meter.rtt:
            # The same congestion as the last cut; once its 429s come densely, the server's
            # Retry-After holds everyone back.
            if dense and retry_after is not None and self._trial is not None:
                self._trial = None  # dense 429s: congestion, nothing left to judge
                self._pause(now, retry_after)
            return ThrottleKind.RATE
        trial = self._trial
        if trial is not None and not dense:
            return ThrottleKind.RATE  # the cut on trial is judged when the trial ends
        # In slow start, meeting a limit fails most requests at once: a crowd is denser there.
        onset = self.slow_start
        crowd = recent.crowd(now, _ONSET_OF if onset else _RECENT)
        crowded = crowd >= (_ONSET if onset else _CROWD)
        if not (crowded or dense):
            return ThrottleKind.RATE  # a lone 429 delays its own request
        if trial is None:
            self._before_cuts = self._undo()
        before = recent.share
        self._cut(now)
        self._trial = None if dense else Trial(now, before)
        if retry_after is not None and dense:  # the server asks everyone to wait: a burst did
            self._pause(now, retry_after)
        else:
            self._tell(now)
        return ThrottleKind.RATE

    def _undo(self) -> _Undo:
        return _Undo(self.rate, self.slow_start, attrs.evolve(self.cubic), self._cut_at)

    def _pause(self, now: float, retry_after: float) -> None:
        """Everyone waits as the server asked (capped), and the other Sessions of the key too."""
        self.paused_until = max(self.paused_until, now + min(MAX_PAUSE, retry_after))
        self._tell(now)

    def _tell(self, now: float) -> None:
        """Tell the other Sessions of the key of the last cut (and pause), and where it left us.

        The event is dated at the cut: a pause added later in the same congestion pauses
        the others, and does not cut them again.
        """
        at = min(now, self._cut_at)
        event = PeerEvent(0, 0, at, self.paused_until, rate=self.rate, w_max=self.cubic.w_max)
        self._outbox.append(event)

    def _judge(self, now: float, sent: float, *, throttled: bool) -> bool:
        """Count an answer for the cut on trial, and act on the trial's verdict once there is
        one. Returns whether the trial goes on."""
        trial = self._trial
        assert trial is not None
        trial.answer(sent, throttled, _SETTLE * self.meter.rtt)
        verdict = trial.verdict(now)
        if verdict is Verdict.GOES_ON:
            return True
        self._trial = None
        if verdict is Verdict.DEEPER:
            self._cut(now)
            self._trial = Trial(now, self.recent.share)
            return True
        if verdict is Verdict.OURS:
            self.noise *= _FORGET
        elif verdict is Verdict.STRAY:
            self.noise = min(_MAX_NOISE, max(self.noise, trial.share))
            undo = self._before_cuts
            self.slow_start, self.cubic = undo.slow_start, attrs.evolve(undo.cubic)
            self._cut_at = undo.cut_at
            # Back to the rate before the cuts, but not past twice what the server takes now
            # (a slow start's overshoot was never shown to be fine).
            rate = min(undo.rate, max(self.rate, 2 * self.meter.latest_rate()))
            self._set_rate(max(self.rate, rate), now)
        return False  # (STANDS: too quiet to tell, the cut stands)

    def _cut(self, now: float) -> None:
        limit, rate = self._limit(now)
        self.slow_start = False
        self._cut_at, self._served_at_cut = now, self.meter.served
        self._regrow(limit, rate, now)

    def _regrow(self, w_max: float, rate: float, now: float) -> None:
        """Go on at `rate`, growing back along CUBIC towards `w_max` (the rate that was too
        much), reached at `cubic.peak_at` as a lone Session would reach it.

        N Sessions sending on one key probe beyond it together: each N times slower
        (`cubic.c`), so the key's rate probes as one Session's would, and meets its limit as
        seldom.
        """
        self._fleet = self.fleet
        self.cubic.aim(w_max, rate, now, self._fleet)
        self._set_rate(rate, now)

    def _limit(self, now: float) -> tuple[float, float]:
        """At a new congestion: the rate that proved too much, and the rate to go on at."""
        meter = self.meter
        since, served = now - self._cut_at, meter.served - self._served_at_cut
        if since <= _MEASURED and served >= _ENOUGH:
            # The server's bucket was empty at the last cut and is now: what it took from
            # this Session in between is its limit (this Session's share of it). Go on at
            # that rate, and let CUBIC probe beyond it.
            limit = min(self.rate, max(served / since, _DEEPEST * self.rate))
            return limit, limit
        # First congestion (or long after the last): what the server took lately is its
        # limit, near enough; regrow towards it. Not below one cut of what was sent (a burst
        # after a quiet spell), nor, when a pause fell in the window (then "lately" took
        # next to nothing), of the rate itself. A rate far above what was ever sent (slow
        # start's overshoot) is no floor. A Session younger than the window has counted
        # over its own age only.
        span = _WINDOW / max(1e-3, min(_WINDOW, now - meter.born))
        taken = meter.rate_of_ok(now, whole=True) * span
        paused = self.paused_until > now - _WINDOW
        tried = self.rate if paused else meter.rate_of_sent(now, whole=True) * span
        limit = min(self.rate, max(taken, _BETA * tried))
        return limit, _BETA * limit

    def _set_rate(self, rate: float, now: float) -> None:
        if self.window is not None:
            rate = min(rate, self.window.rate(now))
        self.rate = max(FLOOR, rate if self.cap is None else min(rate, self.cap))


def _stray_allowance(noise: float) -> int:
    """Plain 429s among the latest answers that the stray share explains (twice its mean)."""
    return max(_CROWD, math.ceil(2 * noise * _RECENT))


@attrs.define
class Cubic:
    """CUBIC's regrowth after a cut (botocore's CubicCalculator, shared among Sessions): back
    to `w_max`, the rate that proved too much, by `peak_at` (as a lone Session would get
    there), then beyond it, `c` = CUBIC's constant over the Sessions sending on the key."""

    w_max: float = 0.0
    peak_at: float = -math.inf
    c: float = _CUBIC

    def aim(self, w_max: float, rate: float, now: float, fleet: int) -> None:
        """Grow back from `rate` (at `now`) towards `w_max`; beyond it, `fleet` Sessions probe
        `fleet` times slower each, so the key's rate probes as one Session's would."""
        self.w_max = w_max
        self.c = _CUBIC / fleet
        self.peak_at = now + (max(0.0, w_max - rate) / _CUBIC) ** (1 / 3)

    def rate_at(self, now: float) -> float:
        """The rate CUBIC allows at `now`."""
        since_peak = now - self.peak_at
        c = _CUBIC if since_peak < 0 else self.c
        return c * since_peak**3 + self.w_max


@attrs.frozen
class _Undo:
    """The controller's state before a cut, to go back to if the cut proves wrong."""

    rate: float
    slow_start: bool
    cubic: Cubic
    cut_at: float


class Verdict(enum.Enum):
    """What a cut's trial found."""

    #: Too few answers yet: the cut holds its rate and the trial goes on.
    GOES_ON = "goes on"
    #: Still many 429s since the cut: congestion, and the cut was not deep enough.
    DEEPER = "deeper"
    #: Too quiet to tell: the cut stands.
    STANDS = "stands"
    #: Next to no 429s since the cut, or 429s close together (a limit met again): the 429s
    #: were about our rate, and the cut stands.
    OURS = "ours"
    #: As many scattered 429s as before the cut: they are stray; the cut is undone.
    STRAY = "stray"


@attrs.define
class Trial:
    """A cut under judgement: the 429 share before it (`before`), and the answers to requests
    sent after it. A cut below a limit is followed by next to no 429s; stray 429s come as
    often as before, scattered."""

    at: float
    before: float
    answers: int = 0
    throttled: int = 0
    last_429: int = -1_000_000  # the answer number of the latest 429
    close: int = 0  # 429s within `_SCATTER` answers of the one before

    def answer(self, sent: float, throttled: bool, settle: float) -> None:
        """An answer (a plain 429 when `throttled`) to a request sent at clock time `sent`.
        Those sent within `settle` seconds of the cut met the same congestion: not counted."""
        if sent <= self.at + settle:
            return
        self.answers += 1
        if throttled:
            # 429s close together are a limit met (ours, or the key's with others on it);
            # stray ones come scattered.
            self.close += self.answers - self.last_429 <= _SCATTER
            self.throttled, self.last_429 = self.throttled + 1, self.answers

    @property
    def share(self) -> float:
        """The share of 429s among the answers counted."""
        return self.throttled / max(1, self.answers)

    def verdict(self, now: float) -> Verdict:
        """What the answers so far say, at clock time `now`."""
        answers, throttled, age = self.answers, self.throttled, now - self.at
        rose = answers >= _TRIAL_MIN and throttled > _SEEN + max(
            _ROSE * self.before * answers, _MAX_NOISE * answers
        )
        # Long enough that 429s as common as before the cut would show `_SEEN` times.
        enough = max(_TRIAL, _SEEN / self.before)
        if not rose and age < _TRIAL_LONGEST and (answers < enough or age < _TRIAL_SECONDS):
            return Verdict.GOES_ON
        if rose or (answers >= _TRIAL_MIN and throttled >= _MAX_NOISE * answers):
            return Verdict.DEEPER
        if answers < _TRIAL_MIN:
            return Verdict.STANDS
        if throttled < _SEEN or self.close >= _CLOSE * (throttled - 1):
            return Verdict.OURS
        return Verdict.STRAY


def _stamp(stamps: collections.deque[float], now: float) -> None:
    """Note an event at `now` in a window of recent ones."""
    stamps.append(now)
    _forget_old(stamps, now)


def _forget_old(stamps: collections.deque[float], now: float) -> None:
    """Drop the events that fell out of the window."""
    while stamps and stamps[0] < now - _WINDOW:
        stamps.popleft()


def _rate_of(stamps: collections.deque[float], now: float, whole: bool) -> float:
    """Events per second lately, from their clock times.

    Over the last quarter window when it holds enough events to tell (a rate
    that just grew is not averaged away), else (or when `whole`) over the
    whole window: steadier, where a moment of 429s would mislead.
    """
    _forget_old(stamps, now)
    recent = len(stamps) - bisect.bisect_left(stamps, now - _WINDOW / 4)
    if recent >= _ENOUGH and not whole:
        return recent / (_WINDOW / 4)
    return len(stamps) / _WINDOW
