"""Durable jobs: from prompts to videos on disk, through a ledger, crash-safe, never paying twice.

Each job walks the state table (`state.MOVES`), and each step is committed
to the ledger before the next one starts:

- a job is recorded SUBMITTING (synced to disk) before its create is sent,
  and CREATED (with its task id) as soon as the answer comes; a worker that
  stops in between leaves it UNKNOWN (it may exist, and be paid for), which
  is never sent again unless asked;
- at most `creates_in_flight` creates at a time per worker (1 by default),
  so one kill leaves at most that many UNKNOWN;
- waits resume from the ledger's task ids, for at most `wait_timeout`; a
  finished video is downloaded (atomically, to ``OUT/<key>.mp4``) and only
  then recorded DONE.

A run works only on the jobs its own list names. There is one retry layer:
the client's (a Session's per-request retries, its wait's error budget);
when a step still fails for a reason that is not the job's own (the API out
of reach, a wrong key, a full disk), the run stops, leaves what it did not
send NEW, and raises that error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import os
import tempfile
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import attrs

from .._download import asset_url
from .._models import Generation
from .._validate import check_whole
from ..exceptions import (
    AuthenticationError,
    ConfigurationError,
    CreateOutcomeUnknown,
    DeadlineExceeded,
    DeerLumaError,
    DestinationError,
    DownloadError,
    GenerationFailed,
    NotFoundError,
    WaitTimeout,
    is_transient,
)
from .spec import Job, JobResult
from .state import JobState
from .store import Ledger, LedgerRow, LostClaim, Move, new_owner

__all__ = ["Client", "RunStats", "run_jobs"]

T = TypeVar("T")

#: A worker holds its jobs this long without renewing (seconds); it renews every third of it.
LEASE = 30.0
#: While other workers hold the jobs left, look again this often (seconds).
_LOOK_AGAIN = 0.5
#: Downloads at once, per worker.
_DOWNLOADS = 8
#: A video refused this many times (each with a fresh look at its generation) fails its job.
_DOWNLOAD_TRIES = 3
#: A job's end (done, failed) waits at most this long (seconds) for the creator's next
#: write to ride with, while creates go on: one write for both.
_RIDE = 0.02
#: When a run stops, creates already sent get this long (seconds) to record their answers.
GRACE = 5.0
#: The default bound of one job's wait (seconds), from when this run starts waiting on it.
WAIT_TIMEOUT = 3600.0


class Client(Protocol):
    """What a run needs of the API: a Session provides it (see `Session.run`)."""

    async def create(self, request: Mapping[str, Any]) -> Generation:
        """Start a generation; CreateOutcomeUnknown when it may or may not exist."""

    async def wait(self, task_id: str, timeout: float | None) -> Generation:
        """The generation once completed (GenerationFailed, WaitTimeout otherwise)."""

    async def download(self, target: Generation | str, path: Path) -> Path:
        """Its video at `path`, whole (a complete file already there is kept)."""


@attrs.define
class RunStats:
    """What a run is doing now, for a status line: read it while the run goes."""

    #: Jobs waiting for a create slot (`creates_in_flight` is full).
    waiting_to_create: int = 0
    #: Creates sent, answer not yet in.
    creating: int = 0
    #: Jobs this worker holds: being created, generating, or downloading.
    active: int = 0


class _Halt(Exception):
    """A step failed for a reason that is not its job's own: the run stops with `error`."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Writer:
    """The worker's writes to the ledger, grouped: moves asked for within a moment go in one
    transaction, in order, one transaction at a time. A SUBMITTING goes at once; other moves
    wait up to `_RIDE` for one when creates are queued. On a local file (SQLite: a write
    never waits on anything) the write is made in the caller's step, before `send` returns;
    on a server, by a task of its own, so that a caller's cancellation cannot cut it."""

    def __init__(self, ledger: Ledger, owner: str, creates_queued: Callable[[], bool]) -> None:
        self.ledger = ledger
        self.owner = owner
        self.creates_queued = creates_queued
        self.pending: list[tuple[Move, asyncio.Future[None]]] = []
        self.timer: asyncio.Handle | None = None
        self.lock = asyncio.Lock()
        self.flushing: set[asyncio.Task[None]] = set()

    def send(self, move: Move) -> asyncio.Future[None]:
        """Record `move`: the future is done once it is committed (LostClaim: another worker
        holds the job). The move is written even if nobody awaits the future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.pending.append((move, future))
        if move.row.state is JobState.SUBMITTING or not self.creates_queued():
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.ledger.inline and not self.lock.locked():
                _at_once(self.flush())
            else:
                self.timer = loop.call_soon(self._flush_soon)
        elif self.timer is None:
            self.timer = loop.call_later(_RIDE, self._flush_soon)
        return future

    async def write(self, move: Move) -> None:
        """`send`, and wait until it is committed."""
        await asyncio.shield(self.send(move))

    def _flush_soon(self) -> None:
        self.timer = None
        task = asyncio.ensure_future(self.flush())
        self.flushing.add(task)
        task.add_done_callback(self.flushing.discard)

    async def flush(self) -> None:
        """Write what is pending now; each mover hears how its move went."""
        async with self.lock:
            batch, self.pending = self.pending, []
            if not batch:
                return
            try:
                await self.ledger.write(self.owner, [m for m, _ in batch])
            except LostClaim:  # one at a time, to learn which
                for move, future in batch:
                    try:
                        await self.ledger.write(self.owner, [move])
                    except Exception as exc:
                        _settle(future, exc, None)
                    else:
                        _settle(future, None, None)
                return
            except Exception as exc:  # the ledger failed (a full disk, a lost server)
                for _, future in batch:
                    _settle(future, exc, None)
                return
            for _, future in batch:
                _settle(future, None, None)

    async def close(self) -> None:
        """Write everything pending now; a failure is raised (never swallowed)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        await asyncio.gather(*self.flushing, return_exceptions=True)
        batch = list(self.pending)
        await self.flush()
        for _, future in batch:
            if not future.cancelled() and future.exception() is not None:
                exc = future.exception()
                assert exc is not None
                if not isinstance(exc, LostClaim):
                    raise exc


def _answer(
    done: asyncio.Future[LedgerRow | None], written: asyncio.Future[None], row: LedgerRow | None
) -> None:
    """Tell a driver how its create went, once its row is written (or why it was not)."""
    if written.cancelled():
        done.cancel()
    else:
        _settle(done, written.exception(), row)


def _at_once(step: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never waits (a local file's write) to its end, now."""
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()
    raise RuntimeError("a write to a local ledger waited")


def _settle(future: asyncio.Future[T], exc: BaseException | None, result: T) -> None:
    """Give `future` its outcome (`exc`, else `result`), unless it has one already."""
    if future.done():
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


class _Runner:
    """One worker's run: claims its jobs from the ledger, drives each to its end."""

    def __init__(
        self,
        client: Client,
        ledger: Ledger,
        out: Path,
        keys: set[str],
        *,
        max_active: int,
        creates_in_flight: int,
        wait_timeout: float | None,
        stats: RunStats,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.out = out
        self.keys = keys
        self.max_active = max_active
        self.wait_timeout = wait_timeout
        self.stats = stats
        self.owner = new_owner()
        self.writer = _Writer(ledger, self.owner, lambda: stats.waiting_to_create > 0)
        self.creates_in_flight = creates_in_flight
        self.to_create: collections.deque[tuple[LedgerRow, asyncio.Future[LedgerRow | None]]]
        self.to_create = collections.deque()
        self.senders: set[asyncio.Task[None]] = set()
        #: Temporary files of downloads a killed worker left, by the file they were for;
        #: each job's are removed when it is claimed (then no one else writes them).
        self.parts: dict[str, list[Path]] = {}
        self.downloads = asyncio.Semaphore(_DOWNLOADS)
        self.driving: dict[str, asyncio.Task[JobResult | None]] = {}
        #: Senders whose create is in flight: they get a grace when the run stops.
        self.sending: set[asyncio.Task[Any]] = set()
        #: The error that stops the run (no create is sent after it).
        self.halt: BaseException | None = None

    async def run(self) -> AsyncGenerator[JobResult, None]:
        """Claim, drive, report: yields each job this worker settles (and those of its list
        found left UNKNOWN by a worker that is gone); raises what stopped the run."""
        ledger, loop = self.ledger, asyncio.get_running_loop()
        finished: list[tuple[str, asyncio.Task[JobResult | None]]] = []
        ready = asyncio.Event()  # something finished, or it is time to look again

        def done(key: str, task: asyncio.Task[JobResult | None]) -> None:
            finished.append((key, task))
            ready.set()

        next_reap = next_renew = next_claim = loop.time()
        try:
            while self.halt is None:
                now = loop.time()
                if now >= next_reap:  # workers that are gone: rarely, it costs a write
                    next_reap = now + LEASE / 3
                    for row in await ledger.reap():
                        if row.key in self.keys:
                            yield JobResult.of(row)
                # Claim when half the room is free (claims cost a write), or now and then.
                if len(self.driving) <= self.max_active // 2 or now >= next_claim:
                    next_claim = now + _LOOK_AGAIN
                    room = self.max_active - len(self.driving)
                    claimed = await ledger.claim(
                        self.owner, LEASE, self.keys, running=room, max_active=self.max_active
                    )
                    for row in claimed:
                        if row.key not in self.driving:
                            task = asyncio.ensure_future(self.drive(row))
                            task.add_done_callback(functools.partial(done, row.key))
                            self.driving[row.key] = task
                    self.stats.active = len(self.driving)
                    if not self.driving and not await self.others_hold_some():
                        return
                if self.driving and not finished:
                    ready.clear()
                    timer = loop.call_later(_LOOK_AGAIN, ready.set)
                    await ready.wait()
                    timer.cancel()
                settled, finished[:] = finished[:], []
                for key, task in settled:  # everything that finished meanwhile, at once
                    if self.driving.get(key) is task:
                        del self.driving[key]
                    if task.cancelled():
                        continue  # taken over by another worker
                    result = task.result()
                    if result is not None and result.key in self.keys:
                        yield result
                self.stats.active = len(self.driving)
                if now >= next_renew and self.driving:
                    next_renew = now + LEASE / 3
                    keys = list(self.driving)
                    held = await ledger.renew(self.owner, keys, LEASE)
                    for key in set(keys) - held:  # taken over: stop
                        self.driving.pop(key).cancel()
        finally:
            await self.stop()
        # Stopped by a fault: what settled meanwhile (creates given their grace) first.
        for _, task in finished:
            if not task.cancelled() and task.exception() is None:
                result = task.result()
                if result is not None and result.key in self.keys and result.state.settled:
                    yield result
        raise self.halt

    def stop_with(self, error: BaseException) -> None:
        """A fault stops the run: no create is sent from now on (the first fault is the one
        the run raises)."""
        if self.halt is None:
            self.halt = error

    async def stop(self) -> None:
        """Stop: no create is sent from now; creates in flight get `GRACE` to record their
        answers; the rest is cancelled (a create cut short is UNKNOWN); every pending write
        goes; claims are released."""
        self.stop_with(asyncio.CancelledError())
        if self.sending:
            await asyncio.wait(list(self.sending), timeout=GRACE)
        tasks = [*self.driving.values(), *self.senders]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.shield(self.writer.close())
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.ledger.release(self.owner))

    async def others_hold_some(self) -> bool:
        """Whether jobs of this run are still unsettled (held by other workers, whose lease
        may yet run out): then wait for them rather than end."""
        if not await self.ledger.unsettled(self.keys):
            return False
        await asyncio.sleep(_LOOK_AGAIN)
        return True

    async def drive(self, row: LedgerRow) -> JobResult | None:
        """Take one claimed job as far as it goes: create, wait, download. None: let go of it
        (lost to another worker, or the run stopped before its create)."""
        try:
            if row.state is JobState.NEW:
                created = await self.submit(row)
                if created is None:
                    return None
                row = created
                if row.state is not JobState.CREATED or self.halt is not None:
                    return JobResult.of(row)
            row, generation = await self.wait(row)
            if row.state is not JobState.CREATED:
                return JobResult.of(row)
            return JobResult.of(await self.save(row, generation))
        except LostClaim:
            return None
        except _Halt as exc:
            self.stop_with(exc.error)
            return None

    async def submit(self, row: LedgerRow) -> LedgerRow | None:
        """Have a sender create this job; its row as it then is (CREATED, UNKNOWN, FAILED),
        or None when the run stopped before it was sent (it stays NEW)."""
        done: asyncio.Future[LedgerRow | None] = asyncio.get_running_loop().create_future()
        self.to_create.append((row, done))
        self.stats.waiting_to_create = len(self.to_create)
        if len(self.senders) < self.creates_in_flight:
            # A sender leaves the set the moment it decides to end (in its own step), never
            # later: a job queued after that always finds a sender.
            self.senders.add(asyncio.ensure_future(self.send_all()))
        return await done

    async def send_all(self) -> None:
        """One sender: one create in flight at a time, so `creates_in_flight` senders leave
        at most that many UNKNOWN when killed. A job is SUBMITTING (committed) before its
        create is sent, CREATED when the answer comes: committed with this sender's next
        SUBMITTING when one waits (one write instead of two), else at once. Its driver goes
        on once that is committed. A sender is in `sending` from its create until the
        answer is recorded (a grace when the run stops)."""
        answered: tuple[Move, asyncio.Future[LedgerRow | None]] | None = None
        task = asyncio.current_task()
        assert task is not None
        try:
            while True:
                if answered is not None and (not self.to_create or self.halt is not None):
                    await self.record(*answered)
                    answered = None
                self.sending.discard(task)
                if not self.to_create or self.halt is not None:
                    return
                row, done = self.to_create.popleft()
                self.stats.waiting_to_create = len(self.to_create)
                if done.done():
                    continue  # its driver is gone
                sending = attrs.evolve(row, state=JobState.SUBMITTING, creates=row.creates + 1)
                ready = [self.writer.send(answered[0])] if answered else []
                ready.append(self.writer.send(Move(JobState.NEW, sending)))  # one write, both
                try:
                    if not all(future.done() for future in ready):  # (a local file's are)
                        await asyncio.shield(asyncio.gather(*ready, return_exceptions=True))
                except asyncio.CancelledError:  # it may be committed still: then undo it
                    with contextlib.suppress(Exception):
                        await ready[-1]
                        await self.writer.write(Move(JobState.SUBMITTING, row))
                    raise
                if answered is not None:
                    _answer(answered[1], ready[0], answered[0].row)
                    answered = None
                    self.sending.discard(task)
                if ready[-1].exception() is not None:  # taken over, or the ledger failed
                    _answer(done, ready[-1], None)
                    continue
                if self.halt is not None:  # stopped while it was written: never sent
                    await self.record(Move(JobState.SUBMITTING, row), done)
                    return
                self.sending.add(task)
                self.stats.creating += 1
                try:
                    outcome = await self.create(sending)
                finally:
                    self.stats.creating -= 1
                answered = (Move(JobState.SUBMITTING, outcome), done)
                if outcome.state is not JobState.CREATED:  # at once: nothing rides with it
                    await self.record(*answered)
                    answered = None
        finally:
            self.sending.discard(task)
            self.senders.discard(task)

    async def record(self, move: Move, done: asyncio.Future[LedgerRow | None]) -> None:
        """Write a create's outcome; its driver hears the row (None: it went back to NEW)."""
        written = self.writer.send(move)
        with contextlib.suppress(Exception):
            await asyncio.shield(written)
        _answer(done, written, None if move.row.state is JobState.NEW else move.row)

    async def create(self, row: LedgerRow) -> LedgerRow:
        """Send one SUBMITTING job's create, once: the row as it ends (not yet committed).
        A fault that is not the job's own also stops the run (`halt`)."""
        try:
            created = await self.client.create(row.request)
        except CreateOutcomeUnknown as exc:  # no answer: the next create would fare no better
            self.stop_with(exc)
            return attrs.evolve(row, state=JobState.UNKNOWN, error=str(exc))
        except asyncio.CancelledError:
            stopped = "stopped while sending its create"
            unknown = Move(
                JobState.SUBMITTING, attrs.evolve(row, state=JobState.UNKNOWN, error=stopped)
            )
            with contextlib.suppress(Exception):
                await self.writer.write(unknown)
            raise
        except DeerLumaError as exc:
            if _stops_the_run(exc):  # it never left: nothing was created; send it later
                self.stop_with(exc)
                return attrs.evolve(row, state=JobState.NEW, creates=row.creates - 1)
            return _refused(row, f"the create was refused: {exc}")
        except ValueError as exc:
            return _refused(row, f"the create was refused: {exc}")
        return attrs.evolve(row, state=JobState.CREATED, task_id=created.id, error=None)

    async def end(self, row: LedgerRow, state: JobState, **fields: object) -> LedgerRow:
        """Record a job's end (DONE, FAILED, TIMED_OUT); returns once it is committed."""
        ended = attrs.evolve(row, state=state, **fields)  # type: ignore[arg-type]
        await self.writer.write(Move(row.state, ended))
        return ended

    async def failed(self, row: LedgerRow, exc: GenerationFailed) -> LedgerRow:
        reason = exc.generation.failure_reason or "no reason given"
        return await self.end(row, JobState.FAILED, error=f"the generation failed: {reason}")

    async def wait(self, row: LedgerRow) -> tuple[LedgerRow, Generation | None]:
        assert row.task_id is not None
        try:
            generation = await self.client.wait(row.task_id, self.wait_timeout)
        except GenerationFailed as exc:
            return await self.failed(row, exc), None
        except NotFoundError as exc:
            return await self.end(row, JobState.FAILED, error=str(exc)), None
        except (WaitTimeout, DeadlineExceeded):
            said = f"not ended within the wait timeout ({self.wait_timeout:g} s)"
            return await self.end(row, JobState.TIMED_OUT, error=said), None
        except DeerLumaError as exc:
            # Anything else stops the run, the job CREATED (a re-run waits on it again):
            # FAILED would invite --retry-failed to pay for it twice.
            raise _Halt(exc) from exc
        return row, generation  # recorded only once its video is on disk

    async def save(self, row: LedgerRow, generation: Generation | None) -> LedgerRow:
        """Download its video; from the generation just seen (a link refused is fetched
        again, with a fresh look), or by task id. A completed generation with no video, or
        a video refused `_DOWNLOAD_TRIES` times, fails the job with the reason."""
        assert row.task_id is not None
        if generation is not None:
            try:
                asset_url(generation, "video")
            except DownloadError as exc:
                return await self.end(row, JobState.FAILED, error=str(exc))
        target: Generation | str = generation or row.task_id
        final = self.out / f"{row.key}.mp4"
        leftovers = self.parts.pop(final.name, ())
        if leftovers:  # left by a worker killed mid-download
            await asyncio.to_thread(_remove, leftovers)
        error: DeerLumaError | None = None
        for _ in range(_DOWNLOAD_TRIES):
            try:
                async with self.downloads:
                    path = await self.client.download(target, final)
            except GenerationFailed as exc:
                return await self.failed(row, exc)
            except DeerLumaError as exc:
                if _stops_the_run(exc) or isinstance(exc, DestinationError):
                    raise _Halt(exc) from exc
                error = exc
                target = row.task_id  # again, with a fresh look at the generation
                continue
            return await self.end(row, JobState.DONE, path=str(path), error=None)
        said = f"its video could not be had after {_DOWNLOAD_TRIES} tries: {error}"
        return await self.end(row, JobState.FAILED, error=said)


def _stops_the_run(exc: DeerLumaError) -> bool:
    """A fault that is not the job's own: no key (or a Session that cannot send as set up),
    the API out of reach or refusing the key, or failing after the client's own retries.
    Every other job would meet it too."""
    return isinstance(exc, (AuthenticationError, ConfigurationError)) or is_transient(exc)


def _refused(row: LedgerRow, error: str) -> LedgerRow:
    """A job whose create certainly did not go through: FAILED, not counted as sent."""
    return attrs.evolve(row, state=JobState.FAILED, creates=row.creates - 1, error=error)


def _writable(out: str | os.PathLike[str]) -> Path:
    """The output folder, made if missing, and shown writable: else DestinationError, before
    anything is recorded or sent."""
    folder = Path(out).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".deerluma-probe-"):
            pass
    except OSError as exc:
        raise DestinationError(
            f"cannot write videos into {folder}: {exc.strerror or exc}", dest=folder
        ) from exc
    return folder


def _parts_in(folder: Path) -> dict[str, list[Path]]:
    """The temporary files of interrupted downloads in `folder`, by the file they were for
    (``.KEY.mp4.1a2b3c4d.part`` is for ``KEY.mp4``): one look at the folder for a run."""
    found: dict[str, list[Path]] = {}
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") and name.endswith(".part") and name.count(".") >= 3:
                final = name[1:].rsplit(".", 2)[0]
                found.setdefault(final, []).append(Path(entry.path))
    return found


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


async def run_jobs(
    client: Client,
    jobs: Iterable[Job | Mapping[str, Any]],
    *,
    ledger: Ledger | str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    max_active: int = 10,
    creates_in_flight: int = 1,
    wait_timeout: float | None = WAIT_TIMEOUT,
    resubmit_unknown: bool = False,
    retry_failed: bool = False,
    stats: RunStats | None = None,
) -> AsyncGenerator[JobResult, None]:
    """See Session.run."""
    check_whole("max_active", max_active, 1)
    check_whole("creates_in_flight", creates_in_flight, 1)
    if wait_timeout is not None and not wait_timeout > 0:
        raise ValueError(f"wait_timeout must be seconds > 0 or None, got {wait_timeout!r}")
    listed = [job if isinstance(job, Job) else Job.of(job) for job in jobs]
    folder = await asyncio.to_thread(_writable, out)
    owned = not isinstance(ledger, Ledger)
    store = ledger if isinstance(ledger, Ledger) else await Ledger.open(ledger or folder)
    try:
        unique = {job.key: job for job in reversed(listed)}  # the first of a key wins
        keys = set(unique)
        await store.add({k: j.request for k, j in unique.items()}, retry_failed=retry_failed)
        again = [(JobState.TIMED_OUT, JobState.CREATED)]
        again += [(JobState.UNKNOWN, JobState.NEW)] * resubmit_unknown
        again += [(JobState.FAILED, JobState.NEW)] * retry_failed
        await store.reopen(keys, again)
        runner = _Runner(
            client,
            store,
            folder,
            keys,
            max_active=max_active,
            creates_in_flight=creates_in_flight,
            wait_timeout=wait_timeout,
            stats=stats or RunStats(),
        )
        runner.parts = await asyncio.to_thread(_parts_in, folder)
        reported: set[str] = set()
        for row in await store.rows(keys):  # settled before this run
            if row.state.settled:
                reported.add(row.key)
                yield JobResult.of(row)
        async with contextlib.aclosing(runner.run()) as running:  # its claims go at once
            async for result in running:
                if result.key not in reported:
                    reported.add(result.key)
                    yield result
    finally:
        if owned:
            await store.close()
