"""Sessions on one machine that share an API key hear of each other's 429s.

Without coordination, each of N worker processes on one key learns the limit
from its own 429s: every one of them must meet the limit to back off, so the
429s grow with N (measured: 4 % with 8 processes, 7 % with 16). So a Session
that judges a 429 to be about the key's rate (a cut, or a named window) writes
one small record, and every other Session of that key on the machine, in any
process, acts on it as if the 429 were its own: the fleet cuts together, and
pauses together.

The record lives in a file per (base URL, key) in a private folder of the
temporary directory (``$DEERLUMA_RATE_DIR`` to choose another, ``off`` to turn
this off); its name is a digest, never the key. Writers lock it (``flock``);
readers read its 76-byte record at most every `_READ_EVERY` seconds. After
the record, each Session that sends marks a slot of its own (a quarter
second apart at most) with how fast it sends, so the Sessions know how many
of them are sending on the key, and probe their limit after a cut as one
Session would; and when some stop, those still held back by their rate take
up what the others sent. Clock times in it
are ``time.monotonic()``, which every process on the machine shares, so it is
used only by Sessions on that clock.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import random
import struct
import tempfile
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator

import attrs

from .exceptions import ConfigurationError

__all__ = [
    "FilePeers",
    "MemoryPeers",
    "PeerEvent",
    "Peers",
    "Sender",
    "check_rate_store",
    "peers_for",
]

#: Readers look at the record at most this often (seconds): cheap, and soon enough.
_READ_EVERY = 0.001
#: While the file does not exist yet, look for it this often.
_LOOK_EVERY = 1.0
_MAGIC = b"DLR3"
# magic, writer, seq, at, pause_until, limit, window, ticks, rate, w_max; then a CRC-32 of
# those bytes: a reader never takes a record torn by a writer for one (it reads again).
_RECORD = struct.Struct("<4sQQddQdQdd")
_CRC = struct.Struct("<I")
#: A torn record (or slot) is read again this many times before it counts as none.
_READS = 3
#: A lock held by another Session (one stopped with Ctrl-Z, say) is tried this many times,
#: `_LOCK_PAUSE` seconds apart, then given up: sharing is skipped, never waited for.
_LOCK_TRIES = 20
_LOCK_PAUSE = 50e-6
#: Who is sending: after the record, `_SLOTS` slots of (writer, clock time last seen sending,
#: requests sent per second lately, its rate). A Session marks its slot at most every `_BEAT`
#: seconds while it sends; the fleet is the Sessions seen sending in the last `_ALIVE`
#: seconds; a slot unmarked for `_STALE` seconds may be taken by a newcomer.
_SLOTS_AT = 128
_SLOT = struct.Struct("<QdddI")
_SLOTS = 64
_BEAT = 0.25
_ALIVE = 2.0
_STALE = 10.0
#: A Session that sends at least this share of its rate is held back by it: busy.
_BUSY = 0.8


@attrs.frozen
class PeerEvent:
    """One Session's judgement of a 429 about the key's rate, for the others."""

    seq: int
    writer: int
    #: Clock time (``time.monotonic``) of the 429.
    at: float
    #: Everyone holds back until then (-inf: no pause).
    pause_until: float = -math.inf
    #: A limit the gateway named: requests per window seconds (0: none).
    limit: int = 0
    window: float = 0.0
    #: Plain 429s met by all the Sessions of the key, all told.
    ticks: int = 0
    #: After a cut: the rate the writer goes on at, and the rate that proved too much for it
    #: (0: none). Sessions that take them up grow back alike, and so share the key evenly.
    rate: float = 0.0
    w_max: float = 0.0


@attrs.frozen
class Sender:
    """A Session's slot: who, when it was last seen sending, and how fast (requests/s)."""

    writer: int
    at: float
    #: What it sent lately, and what its rate lets it send.
    sent: float = 0.0
    rate: float = 0.0

    @property
    def busy(self) -> bool:
        """It sends about as fast as its rate lets it: it would send more if let."""
        return self.rate > 0 and self.sent >= _BUSY * self.rate


def _no_pace(now: float) -> tuple[float, float]:
    return 0.0, 0.0


class Peers:
    """Where Sessions of one key tell each other of 429s; this base class tells no one."""

    #: Whether anyone hears: when not, the gate need not ask for news.
    shared = False

    def __init__(self) -> None:
        self.me = random.getrandbits(63)
        #: This Session's pace at a clock time, for the others: (sent lately, rate), per second
        #: (the last one `news` was given).
        self.pace: Callable[[float], tuple[float, float]] = _no_pace
        #: Requests per second that Sessions which stopped were sending, this Session's part
        #: of it (it is held back by its rate); `take_freed` hands it over.
        self.freed = 0.0
        self._seen = 0
        self._ticks = 0  # the others' plain 429s counted so far (and ours)
        self._joined: PeerEvent | None = None
        self._senders: dict[int, Sender] = {}  # those seen sending lately, by writer
        self._fleet = 1

    def publish(self, event: PeerEvent) -> None:
        """Tell the others of a 429 about the key's rate (`seq`, `writer` and `ticks` are
        filled in here)."""

    def tick(self) -> None:
        """Tell the others that a plain 429 came (evidence, whatever it is judged)."""

    def news(
        self, now: float, pace: Callable[[float], tuple[float, float]] | None = None
    ) -> tuple[PeerEvent | None, int]:
        """The latest event by another Session not seen yet, and the others' plain 429s since
        the last call. Called as this Session sends (`pace` tells how fast): it marks it as
        sending, too."""
        return None, 0

    def take_freed(self) -> float:
        """What Sessions that stopped freed for this one since last asked (requests/s)."""
        freed, self.freed = self.freed, 0.0
        return freed

    def fleet(self) -> int:
        """How many Sessions of the key (this one included) were sending lately."""
        return self._fleet

    @property
    def cold(self) -> bool:
        """Whether it cannot tell yet how many Sessions send (a store not read yet): a
        Session then starts without a burst, as others may be starting too."""
        return False

    def close(self) -> None:
        """Let go of what telling others takes (a file, here none)."""

    async def aclose(self) -> None:
        """`close`, and wait until what it let go of is gone (a connection's task)."""
        self.close()

    def _count(self, slots: Iterable[Sender], now: float) -> None:
        """Count the Sessions sending lately. What those that stopped were sending, when their
        rate held them back (a worker whose batch ended), is free: the busy ones left share it
        evenly, and this Session's part, if it is busy, adds to `freed`. One that sent less
        than its rate allowed (a few polls now and then, in and out of the count) frees
        nothing."""
        alive = {s.writer: s for s in slots if s.writer and now - _ALIVE <= s.at <= now + _ALIVE}
        # (A slot is only numbers from a file: nothing that is not a pace counts as one.)
        gone = [
            s.sent
            for w, s in self._senders.items()
            if w not in alive and s.busy and 0 < s.sent < 1e6
        ]
        mine = alive.get(self.me)
        if gone and mine is not None and mine.busy:
            self.freed += sum(gone) / sum(1 for s in alive.values() if s.busy)
        self._senders = alive
        self._fleet = max(1, len(alive))

    def _join(self, event: PeerEvent | None) -> None:
        """What was there when this Session began is history, not news: only a pause still
        running, or a window named lately, will concern it."""
        if event is not None:
            self._seen, self._ticks, self._joined = event.seq, event.ticks, event

    def _fresh(self, event: PeerEvent | None, now: float) -> tuple[PeerEvent | None, int]:
        joined, self._joined = self._joined, None
        if joined is not None and (
            joined.pause_until > now or (joined.limit and now - joined.at < joined.window)
        ):
            return joined, 0
        if event is None:
            return None, 0
        ticks, self._ticks = max(0, event.ticks - self._ticks), max(self._ticks, event.ticks)
        if event.seq <= self._seen:
            return None, ticks
        self._seen = event.seq
        return (None if event.writer == self.me else event), ticks


class MemoryPeers(Peers):
    """Peers in one process sharing one list (tests and simulations)."""

    shared = True

    def __init__(self, board: list[PeerEvent], sending: dict[int, Sender] | None = None) -> None:
        super().__init__()
        self._board = board
        self._sending = {} if sending is None else sending  # the slots, by writer
        self._next_beat = -math.inf
        self._join(board[-1] if board else None)

    def publish(self, event: PeerEvent) -> None:
        last = self._board[-1] if self._board else PeerEvent(0, 0, -math.inf)
        seq = last.seq + 1
        self._board.append(attrs.evolve(event, seq=seq, writer=self.me, ticks=last.ticks))
        self._seen = seq

    def tick(self) -> None:
        last = self._board[-1] if self._board else PeerEvent(0, 0, -math.inf)
        self._board.append(attrs.evolve(last, ticks=last.ticks + 1))
        self._ticks += 1

    def news(
        self, now: float, pace: Callable[[float], tuple[float, float]] | None = None
    ) -> tuple[PeerEvent | None, int]:
        if pace is not None:
            self.pace = pace
        if now >= self._next_beat:
            self._next_beat = now + _BEAT
            self._sending[self.me] = Sender(self.me, now, *self.pace(now))
            self._count(self._sending.values(), now)
        return self._fresh(self._board[-1] if self._board else None, now)


class FilePeers(Peers):
    """Peers on one machine sharing a small file."""

    shared = True

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path
        self._fd: int | None = None
        self._next_read = -math.inf
        self._next_look = -math.inf
        self._next_beat = -math.inf
        self._slot: int | None = None  # which slot is ours, once taken
        self._finalizer = weakref.finalize(self, lambda: None)
        fd = self._open(-math.inf)
        if fd is not None:
            with contextlib.suppress(OSError):
                self._join(_read(fd))

    def publish(self, event: PeerEvent) -> None:
        try:
            with self._locked() as fd:
                last = _read(fd) or PeerEvent(0, 0, -math.inf)
                seq = last.seq + 1
                event = attrs.evolve(event, seq=seq, writer=self.me, ticks=last.ticks)
                os.pwrite(fd, _pack(event), 0)
                self._seen = seq
        except OSError:
            return  # sharing is a help, never a failure

    def tick(self) -> None:
        try:
            with self._locked() as fd:
                last = _read(fd) or PeerEvent(0, 0, -math.inf)
                os.pwrite(fd, _pack(attrs.evolve(last, ticks=last.ticks + 1)), 0)
                self._ticks += 1
        except OSError:
            return

    def news(
        self, now: float, pace: Callable[[float], tuple[float, float]] | None = None
    ) -> tuple[PeerEvent | None, int]:
        if pace is not None:
            self.pace = pace
        if now < self._next_read:
            return None, 0
        self._next_read = now + _READ_EVERY
        try:
            if now >= self._next_beat:
                self._next_beat = now + _BEAT
                self._beat(now)
            fd = self._open(now)
            return (None, 0) if fd is None else self._fresh(_read(fd), now)
        except OSError:
            return None, 0

    def _beat(self, now: float) -> None:
        """Mark our slot as sending now (taking one if we have none), and count the fleet."""
        fd = self._fd
        me = Sender(self.me, now, *self.pace(now))
        slots = [] if fd is None else _read_slots(fd)
        if fd is None or self._slot is None or slots[self._slot].writer != self.me:
            with self._locked() as fd:
                slots = _read_slots(fd)
                free = [i for i, s in enumerate(slots) if abs(now - s.at) > _STALE]
                if not free:
                    return  # a crowd of Sessions: count them without us
                self._slot = free[0]
                self._mark(fd, me)  # under the lock: no one takes the same slot
        else:
            self._mark(fd, me)
        slots[self._slot] = me
        self._count(slots, now)

    def _mark(self, fd: int, sender: Sender) -> None:
        """Write our slot (a writer of 0: the slot is free)."""
        assert self._slot is not None
        fields = (sender.writer, sender.at, sender.sent, sender.rate)
        packed = _SLOT.pack(*fields, zlib.crc32(_SLOT.pack(*fields, 0)[:-4]))
        os.pwrite(fd, packed, _SLOTS_AT + self._slot * _SLOT.size)

    def _open(self, now: float) -> int | None:
        if self._fd is None and now >= self._next_look:
            self._next_look = now + _LOOK_EVERY
            with contextlib.suppress(OSError):
                if os.stat(os.path.dirname(self._path)).st_uid == os.getuid():  # ours alone
                    self._opened(os.open(self._path, os.O_RDWR | os.O_NOFOLLOW))
        return self._fd

    def _opened(self, fd: int) -> None:
        """Hold `fd`; a Session never closed lets go of it when it is collected."""
        self._fd = fd
        self._finalizer = weakref.finalize(self, functools.partial(_close_quietly, fd))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        import fcntl  # not on Windows: peers_for gives no FilePeers there

        if self._fd is None:
            folder = os.path.dirname(self._path)
            os.makedirs(folder, mode=0o700, exist_ok=True)
            if os.stat(folder).st_uid != os.getuid():  # another user's folder: share nothing
                raise PermissionError(f"{folder} belongs to another user")
            self._opened(os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        assert self._fd is not None
        # Never wait on the event loop for a lock another Session holds: it may be stopped
        # (Ctrl-Z) while holding it. A few quick tries, then this write is skipped.
        for _ in range(_LOCK_TRIES):
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(_LOCK_PAUSE)
        else:
            raise BlockingIOError("the rate file is locked by another Session")
        try:
            yield self._fd
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Let go of the file (it stays, for the others), and of our slot."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._finalizer.detach()
            if self._slot is not None:
                with contextlib.suppress(OSError):
                    self._mark(fd, Sender(0, 0.0))
            _close_quietly(fd)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _pack(event: PeerEvent) -> bytes:
    record = _RECORD.pack(
        _MAGIC,
        event.writer,
        event.seq,
        event.at,
        event.pause_until,
        event.limit,
        event.window,
        event.ticks,
        event.rate,
        event.w_max,
    )
    return record + _CRC.pack(zlib.crc32(record))


def _read(fd: int) -> PeerEvent | None:
    """The record, whole: one torn by a writer is read again, and counts as none after
    `_READS` tries."""
    for _ in range(_READS):
        raw = os.pread(fd, _RECORD.size + _CRC.size, 0)
        if len(raw) < _RECORD.size + _CRC.size:
            return None
        record, (crc,) = raw[: _RECORD.size], _CRC.unpack(raw[_RECORD.size :])
        if zlib.crc32(record) != crc:
            continue
        magic, writer, seq, at, pause_until, limit, window, ticks, rate, w_max = _RECORD.unpack(
            record
        )
        if magic != _MAGIC:
            return None
        return PeerEvent(seq, writer, at, pause_until, limit, window, ticks, rate, w_max)
    return None


def _read_slots(fd: int) -> list[Sender]:
    """Every slot; one torn by its writer (or never written) is a free one."""
    raw = os.pread(fd, _SLOTS * _SLOT.size, _SLOTS_AT).ljust(_SLOTS * _SLOT.size, b"\0")
    slots = []
    for i in range(_SLOTS):
        writer, at, sent, rate, crc = _SLOT.unpack_from(raw, i * _SLOT.size)
        whole = zlib.crc32(raw[i * _SLOT.size : (i + 1) * _SLOT.size - _CRC.size]) == crc
        slots.append(Sender(writer, at, sent, rate) if whole and writer else Sender(0, 0.0))
    return slots


def peers_for(base_url: str, key: str | None, store: str | None = None) -> Peers:
    """The peers of Sessions using this key at this address: through `store` (a
    ``redis://`` URL; None: ``$DEERLUMA_RATE_STORE``, else a file of this machine's)."""
    store = store if store is not None else os.environ.get("DEERLUMA_RATE_STORE") or None
    check_rate_store(store)
    if key is None or store == "off":
        return Peers()
    digest = hashlib.sha256(f"{base_url}\0{key}".encode()).hexdigest()[:32]
    if store is not None and store != "file":
        from ._redis_peers import RedisPeers

        return RedisPeers(store, digest)
    folder = os.environ.get("DEERLUMA_RATE_DIR")
    if folder == "off" or os.name != "posix":
        return Peers()
    if not folder:
        folder = os.path.join(tempfile.gettempdir(), f"deerluma-{os.getuid()}")
    return FilePeers(os.path.join(folder, f"{digest}.rate3"))  # (3: the layout's version)


def check_rate_store(store: str | None) -> None:
    """A rate store deerluma knows (ConfigurationError otherwise, and when Redis's client
    is not installed)."""
    if store is None or store in ("file", "off"):
        return
    if not store.startswith(_REDIS_SCHEMES):
        raise ConfigurationError(
            "rate_store must be a redis://, rediss:// or unix:// URL, 'file' (this machine's "
            f"Sessions, the default) or 'off'; got {store.partition('://')[0]!r}"
        )
    try:
        import redis.asyncio  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "a Redis rate store needs redis-py: pip install 'deerluma[redis]'"
        ) from exc


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
