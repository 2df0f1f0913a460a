"""Sessions of one key on several machines share its rate through Redis.

The file of `_peers` reaches the Sessions of one machine; a fleet on several
machines (workers on one PostgreSQL ledger, say) shares nothing through it,
and each worker must meet the limit itself (measured: 6 % 429s with 8
machines, against 1.5 % with 8 processes on one). `RedisPeers` keeps what
the file keeps in Redis instead: the latest event (a pause, a cut, a named
window, with its writer and a sequence number), the count of plain 429s, and
who is sending and how fast, under keys made from a digest of (base URL,
API key), never the key itself.

- Writes are atomic: an event is one Lua script (sequence number and fields
  at once); plain 429s one HINCRBY; each Session's slot one HSET.
- Times are Redis's (`TIME`), never a machine's: each Session learns the
  offset from its monotonic clock to Redis's, and converts both ways.
- The gate never waits for Redis. What it asks (`news`) is read from what a
  background task last fetched (every 50 ms); what it tells (`publish`,
  `tick`) is queued for that task, which coalesces it.
- Redis is a help, never a single point of failure: missing, slow (each call
  is bounded) or killed mid-run, the Session goes on alone, as with no
  store, warns once, and reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import attrs

from ._peers import PeerEvent, Peers, Sender
from ._validate import without_password

__all__ = ["RedisPeers"]

log = logging.getLogger("deerluma")

#: The background task reads the record this often (seconds), and at once after a write,
#: while its Session sends (asks for news within `_IDLE`); then it rests until asked again.
_READ_EVERY = 0.05
_IDLE = 2.0
#: Each Session marks its slot at most this often while it sends (seconds).
_BEAT = 0.25
#: A slot unmarked this long is a Session gone (seconds).
_STALE = 10.0
#: Each call to Redis gets this long (seconds); past it, Redis counts as down.
_CALL_TIMEOUT = 0.5
#: The offset to Redis's clock is measured again this often (seconds).
_CLOCK_EVERY = 30.0
#: Down: try again after this, doubling up to the longest (seconds).
_FIRST_RETRY = 0.5
_LONGEST_RETRY = 30.0
#: The keys live this long after their last write (seconds): a key unused leaves no trace.
_TTL = 3600

_PUBLISH = """
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'writer', ARGV[1], 'at', ARGV[2], 'pause_until', ARGV[3],
           'limit', ARGV[4], 'window', ARGV[5], 'rate', ARGV[6], 'w_max', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('PUBLISH', KEYS[2], seq)
return seq
"""


class RedisPeers(Peers):
    """Peers on any machine sharing a Redis server (`url`: ``redis://host:6379/0``)."""

    shared = True

    def __init__(self, url: str, digest: str) -> None:
        super().__init__()
        self._url = url
        self._shown = without_password(url)  # for warnings: never its password
        self._event_key = f"deerluma:rate:{digest}:event"
        self._senders_key = f"deerluma:rate:{digest}:senders"
        self._channel = f"deerluma:rate:{digest}:news"
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        #: What the task last read, in this machine's clock; None: nothing yet (or down).
        self._latest: PeerEvent | None = None
        self._up = False
        self._joined_once = False
        self._warned = False
        #: Queued for the task: the latest event to publish, and plain 429s to count.
        self._outgoing: PeerEvent | None = None
        self._ticks_out = 0
        self._asked = -math.inf  # when the gate last asked for news (it sends)
        self._resting = False

    # -- what the gate calls: never waits ----------------------------------------------------
    def publish(self, event: PeerEvent) -> None:
        self._outgoing = event  # a newer one replaces one not sent yet
        self._poke()

    def tick(self) -> None:
        self._ticks_out += 1
        self._poke()

    def news(
        self, now: float, pace: Callable[[float], tuple[float, float]] | None = None
    ) -> tuple[PeerEvent | None, int]:
        if pace is not None:
            self.pace = pace
        self._asked = time.monotonic()
        if self._resting or self._task is None or self._task.done():
            self._poke()
        if not self._up:
            return None, 0
        return self._fresh(self._latest, now)

    def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        self._closing = task
        self._up = False

    async def aclose(self) -> None:
        self.close()
        task, self._closing = self._closing, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            await asyncio.wait([task], timeout=2 * _CALL_TIMEOUT)  # its connections closed

    @property
    def cold(self) -> bool:
        return not self._joined_once

    @property
    def up(self) -> bool:
        """Whether Redis answered lately (else this Session goes on alone)."""
        return self._up

    # -- the background task -----------------------------------------------------------------
    def _start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to share from
            loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run())

    def _poke(self) -> None:
        self._start()
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        retry = _FIRST_RETRY
        while True:
            client = aioredis.from_url(
                self._url,
                socket_timeout=_CALL_TIMEOUT,
                socket_connect_timeout=_CALL_TIMEOUT,
                health_check_interval=0,
            )
            stop = asyncio.Event()
            listening = asyncio.ensure_future(self._listen(client, stop))
            try:
                await self._talk(client)
            except (TimeoutError, RedisError, OSError) as exc:
                self._down(exc)
            finally:
                # The listener stops at its next turn (its client may not hear a cancel).
                stop.set()
                listening.cancel()
                await asyncio.wait([listening], timeout=_CALL_TIMEOUT)
                closing = asyncio.ensure_future(client.aclose())
                await asyncio.wait([closing], timeout=_CALL_TIMEOUT)
            await asyncio.sleep(retry)
            retry = min(_LONGEST_RETRY, retry * 2)

    async def _listen(self, client: Any, stop: asyncio.Event) -> None:
        """Wake the reader whenever a Session of the key writes (pub/sub), until `stop`."""
        assert self._wake is not None
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            while not stop.is_set():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if message is not None:
                    self._wake.set()
        except Exception:  # the reader's own calls tell when Redis is gone
            pass
        finally:
            closing = asyncio.ensure_future(pubsub.aclose())
            await asyncio.wait([closing], timeout=_CALL_TIMEOUT)

    async def _talk(self, client: Any) -> None:
        publish = client.register_script(_PUBLISH)
        offset = await self._offset(client)
        measured = time.monotonic()
        next_beat = -math.inf
        joined = False
        assert self._wake is not None
        while True:
            now = time.monotonic()
            if now - measured > _CLOCK_EVERY:
                offset, measured = await self._offset(client), now
            event, self._outgoing = self._outgoing, None
            if event is not None:
                args = [
                    self.me,
                    event.at + offset,
                    event.pause_until + offset,  # -inf stays -inf
                    event.limit,
                    event.window,
                    event.rate,
                    event.w_max,
                    _TTL,
                ]
                keys = [self._event_key, self._channel]
                seq = await publish(keys=keys, args=[_text(a) for a in args])
                self._seen = max(self._seen, int(seq))
            ticks, self._ticks_out = self._ticks_out, 0
            if ticks:
                pipe = client.pipeline(transaction=False)
                pipe.hincrby(self._event_key, "ticks", ticks)
                pipe.publish(self._channel, "tick")
                await pipe.execute()
                self._ticks += ticks  # ours: not news to us
            if now >= next_beat and now - self._asked < _BEAT:  # it sends: it counts
                next_beat = now + _BEAT
                sent, rate = self.pace(now)
                slot = f"{now + offset!r},{sent!r},{rate!r}"
                pipe = client.pipeline(transaction=False)
                pipe.hset(self._senders_key, str(self.me), slot)
                pipe.expire(self._senders_key, _TTL)
                if not joined:  # a newcomer: the others count it at once, not 50 ms later
                    pipe.publish(self._channel, "join")
                    joined = True
                await pipe.execute()
            pipe = client.pipeline(transaction=False)
            pipe.hgetall(self._event_key)
            pipe.hgetall(self._senders_key)
            record, senders = await pipe.execute()
            now = time.monotonic()
            latest = _event(record, offset)
            if not self._joined_once:
                self._joined_once = True
                self._join(latest)  # what was there before is history, not news
            self._latest = latest
            self._count(_senders(senders, offset), now)
            if not self._up:
                self._up = True
                if self._warned:
                    log.warning("the rate store at %s answers again", self._shown)
            self._wake.clear()
            self._resting = time.monotonic() - self._asked > _IDLE
            if self._resting:  # nobody asks: read again when asked
                await self._wake.wait()
                self._resting = False
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _READ_EVERY)

    async def _offset(self, client: Any) -> float:
        """Redis's clock minus this machine's monotonic one (the round trip halved)."""
        before = time.monotonic()
        seconds, micros = await client.time()
        after = time.monotonic()
        return float(seconds) + float(micros) / 1e6 - (before + after) / 2

    def _down(self, exc: BaseException) -> None:
        """Go on alone: no news, a fleet of one; warn once."""
        self._up = False
        self._latest = None
        self._senders = {}
        self._fleet = 1
        if not self._warned:
            self._warned = True
            log.warning(
                "the rate store at %s is out of reach (%s); each Session goes on "
                "alone, and it is tried again",
                self._shown,
                type(exc).__name__,
            )


def _text(value: float | int) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _event(record: dict[bytes, bytes], offset: float) -> PeerEvent | None:
    """The record as a PeerEvent in this machine's clock (None: none, or not ours)."""
    try:
        field = {k.decode(): v.decode() for k, v in record.items()}
        ticks = int(field.get("ticks", "0"))
        if "seq" not in field:
            return attrs.evolve(_NONE, ticks=ticks) if field else None
        return PeerEvent(
            seq=int(field["seq"]),
            writer=int(field["writer"]),  # 63 bits: as a whole number, never a float
            at=float(field["at"]) - offset,
            pause_until=float(field["pause_until"]) - offset,
            limit=int(field["limit"]),
            window=float(field["window"]),
            ticks=ticks,
            rate=float(field["rate"]),
            w_max=float(field["w_max"]),
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None  # not a record of ours: share nothing rather than misread


_NONE = PeerEvent(0, 0, -math.inf)


def _senders(raw: dict[bytes, bytes], offset: float) -> list[Sender]:
    found = []
    for writer, value in raw.items():
        try:
            at, sent, rate = (float(part) for part in value.decode().split(","))
            found.append(Sender(int(writer), at - offset, sent, rate))
        except (ValueError, UnicodeDecodeError):
            continue
    return found
