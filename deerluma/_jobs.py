"""Durable jobs: from prompts to videos on disk, through a ledger, crash-safe, never paying twice.

Each job walks NEW -> SUBMITTING -> CREATED -> DONE (or FAILED, or UNKNOWN),
and each step is committed to the ledger before the next one starts:

- a job is recorded SUBMITTING before its create is sent, and CREATED (with
  its task id) as soon as the answer comes; a worker that stops in between
  leaves it UNKNOWN (it may exist, and be paid for), which is never sent
  again unless asked (`resubmit_unknown`);
- one create at a time per worker, so one kill leaves at most one UNKNOWN;
- waits resume from the ledger's task ids; a finished video is downloaded
  (atomically, to ``OUT/<key>.mp4``) and only then recorded DONE (a worker
  stopped before that looks at the generation again, and downloads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import os
import re
from collections.abc import AsyncGenerator, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._create import CreateOptions, build_create_body
from ._ledger import JobState, Ledger, LedgerRow, LostClaim, new_owner
from ._models import Generation
from .exceptions import (
    APIError,
    AuthenticationError,
    CreateOutcomeUnknown,
    DeerLumaError,
    DestinationError,
    DestinationExists,
    GenerationFailed,
    NotFoundError,
    RateLimitError,
    TransportError,
    is_transient,
)

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["Job", "JobResult", "JobState", "run_jobs"]

#: A worker holds its jobs this long without renewing (seconds); it renews every third of it.
LEASE = 30.0
#: While other workers hold the jobs left, look again this often (seconds).
_LOOK_AGAIN = 0.5
#: A job's transient faults back off from this to at most `_LONGEST_BACKOFF` seconds.
_FIRST_BACKOFF = 1.0
_LONGEST_BACKOFF = 60.0
#: Downloads at once, per worker.
_DOWNLOADS = 8
#: Creates that certainly never left are tried this many times before the job is FAILED.
_CREATE_TRIES = 5
#: A job's end (done, failed) waits at most this long (seconds) for the creator's next
#: write to ride with, while creates go on: one write for both.
_RIDE = 0.02
_SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@attrs.frozen
class Job:
    """One video to make: a prompt and create options, under a key naming its file."""

    key: str
    prompt: str
    options: Mapping[str, Any] = attrs.field(factory=dict)

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> Job:
        """A job from ``{"key": ..., "prompt": ..., **create options}`` (as one JSON line).

        Without a key, the key is a digest of the request: the same line is the same job.
        Bad options are refused here, before anything is recorded or sent.
        """
        if not isinstance(spec, Mapping):
            raise ValueError(f"a job is a JSON object, got {type(spec).__name__}")
        fields = dict(spec)
        key = fields.pop("key", None)
        prompt = fields.pop("prompt", None)
        if not isinstance(prompt, str):
            raise ValueError("a job needs a prompt (a string)")
        options: CreateOptions = fields  # type: ignore[assignment]
        request = build_create_body(prompt, **options)  # checks every option
        if key is None:
            canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
            key = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        if not isinstance(key, str) or not _SAFE_KEY.fullmatch(key):
            raise ValueError(
                f"a job's key names its file: letters, digits, '.', '_' and '-', "
                f"at most 128, not starting with '.' or '-'; got {key!r}"
            )
        return cls(key, prompt, fields)

    @property
    def request(self) -> dict[str, Any]:
        """What the ledger keeps of it: the prompt and its options."""
        return {"prompt": self.prompt, **self.options}


@attrs.frozen
class JobResult:
    """Where a job ended up in this run: DONE (its video at `path`), FAILED (`error` says
    why), or UNKNOWN (its create may have been sent and charged; see docs/jobs.md)."""

    key: str
    state: JobState
    task_id: str | None = None
    path: str | None = None
    error: str | None = None

    @classmethod
    def of(cls, row: LedgerRow) -> JobResult:
        return cls(row.key, row.state, row.task_id, row.path, row.error)


class JobsFileError(ValueError):
    """A line of a jobs file that is not a job (its message names the file's own keys)."""


def load_jobs(lines: Iterable[str], source: str = "jobs") -> list[Job]:
    """Jobs from JSON lines (blank ones and ``#`` comments skipped); the first of a key wins."""
    jobs: dict[str, Job] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            job = Job.of(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise JobsFileError(f"{source}, line {number}: {exc}") from exc
        jobs.setdefault(job.key, job)
    return list(jobs.values())


class _Runner:
    """One worker's run: claims jobs from the ledger, drives each to its end, renews leases."""

    def __init__(
        self,
        session: Session,
        ledger: Ledger,
        out: Path,
        *,
        max_active: int,
        keys: set[str],
    ) -> None:
        self.session = session
        self.ledger = ledger
        self.out = out
        self.max_active = max_active
        self.keys = keys
        self.owner = new_owner()
        #: Temporary files of downloads a killed worker left, by the file they were for;
        #: each job's are removed when it is claimed (then no one else writes them).
        self.parts: dict[str, list[Path]] = {}
        self.to_create: asyncio.Queue[tuple[LedgerRow, asyncio.Future[LedgerRow]]] = asyncio.Queue()
        self.creator: asyncio.Task[None] | None = None
        # Downloads take turns: a few keep the disk and the link busy, and the event loop
        # stays free for the creates, which go one by one.
        self.downloads = asyncio.Semaphore(_DOWNLOADS)
        self.driving: dict[str, asyncio.Task[JobResult | None]] = {}
        self.sleep = session._transport.sleep
        #: Jobs' ends waiting to be written with the next write (see `update`).
        self.riders: list[tuple[LedgerRow, asyncio.Future[LedgerRow]]] = []
        self.sending = False  # whether the creator holds a job (it writes again soon)
        self.flush: asyncio.TimerHandle | None = None
        self.flushing: set[asyncio.Task[None]] = set()

    async def ledger_call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        if self.ledger.inline:
            return method(*args, **kwargs)
        return await asyncio.to_thread(method, *args, **kwargs)

    async def update(self, row: LedgerRow, state: JobState, **fields: object) -> LedgerRow:
        """Record a job's end (DONE, FAILED); returns once it is committed. It rides with
        the creator's next write, if one comes within `_RIDE` seconds, else goes alone."""
        row = attrs.evolve(row, state=state, **fields)  # type: ignore[arg-type]
        written: asyncio.Future[LedgerRow] = asyncio.get_running_loop().create_future()
        self.riders.append((row, written))
        if self.flush is None:
            self.flush = asyncio.get_running_loop().call_later(
                _RIDE if self.sending else 0.0, self.write_riders
            )
        return await written

    def write_riders(self) -> None:
        task = asyncio.ensure_future(self._write_riders())
        self.flushing.add(task)
        task.add_done_callback(self.flushing.discard)

    async def _write_riders(self) -> None:
        with contextlib.suppress(Exception):  # the drivers waiting were told of it
            await self.commit([])

    async def run(self) -> AsyncGenerator[JobResult, None]:
        """Claim, drive, report: yields each job this worker settles (and those it finds
        left UNKNOWN by a worker that is gone)."""
        ledger, loop = self.ledger, asyncio.get_running_loop()
        finished: list[tuple[str, asyncio.Task[JobResult | None]]] = []
        ready = asyncio.Event()  # something finished, or it is time to look again

        def done(key: str, task: asyncio.Task[JobResult | None]) -> None:
            finished.append((key, task))
            ready.set()

        next_reap = next_renew = next_claim = loop.time()
        try:
            while True:
                now = loop.time()
                if now >= next_reap:  # workers that are gone: rarely, it costs a write
                    next_reap = now + LEASE / 3
                    for row in await self.ledger_call(ledger.reap):
                        if row.key in self.keys:
                            yield JobResult.of(row)
                # Claim when half the room is free (claims cost a write), or now and then.
                if len(self.driving) <= self.max_active // 2 or now >= next_claim:
                    next_claim = now + _LOOK_AGAIN
                    claimed = await self.ledger_call(
                        ledger.claim, self.owner, LEASE, max_active=self.max_active
                    )
                    for row in claimed:
                        if row.key not in self.driving:
                            task = asyncio.ensure_future(self.drive(row))
                            task.add_done_callback(functools.partial(done, row.key))
                            self.driving[row.key] = task
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
                    result = task.result()  # a fault that stops the run is raised here
                    if result is not None and result.key in self.keys:
                        yield result
                if now >= next_renew and self.driving:
                    next_renew = now + LEASE / 3
                    keys = list(self.driving)
                    held = await self.ledger_call(ledger.renew, self.owner, keys, LEASE)
                    for key in set(keys) - held:  # taken over: stop
                        self.driving.pop(key).cancel()
        finally:
            tasks = list(self.driving.values())
            if self.creator is not None:
                tasks.append(self.creator)
            tasks += self.flushing
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.flush is not None:
                self.flush.cancel()
            ends = [r for r, _ in self.riders]  # jobs' ends not yet written: now
            with contextlib.suppress(Exception):
                await asyncio.shield(self.ledger_call(ledger.write, self.owner, ends))
            with contextlib.suppress(Exception):
                await asyncio.shield(self.ledger_call(ledger.release, self.owner))

    async def others_hold_some(self) -> bool:
        """Whether jobs of this run are still unsettled (held by other workers, whose lease
        may yet run out): then wait for them rather than end."""
        rows = await self.ledger_call(self.ledger.rows, self.keys)
        if all(row.state.settled for row in rows):
            return False
        await asyncio.sleep(_LOOK_AGAIN)  # leases are wall-clock time
        return True

    async def drive(self, row: LedgerRow) -> JobResult | None:
        """Take one claimed job as far as it goes: create, wait, download. None: let go of it
        (lost to another worker)."""
        try:
            if row.state is JobState.NEW:
                row = await self.submit(row)
                if row.state is not JobState.CREATED:
                    return JobResult.of(row)
            # Just created: the wait takes the create answer as its first look (no GET when
            # it is done already); resumed from the ledger: it polls.
            row, generation = await self.wait(row)
            if row.state is not JobState.CREATED:
                return JobResult.of(row)
            return JobResult.of(await self.save(row, generation))
        except LostClaim:
            return None

    async def submit(self, row: LedgerRow) -> LedgerRow:
        """Have the creator create this job; its row as it then is (CREATED, UNKNOWN, ...)."""
        done: asyncio.Future[LedgerRow] = asyncio.get_running_loop().create_future()
        self.to_create.put_nowait((row, done))
        if self.creator is None or self.creator.done():
            self.creator = asyncio.ensure_future(self.create_all())
        return await done

    async def create_all(self) -> None:
        """The worker's one creator: one create in flight at a time, so a kill leaves one
        UNKNOWN at most. A job is SUBMITTING (committed) before its create is sent, CREATED
        when the answer comes: committed with the next job's SUBMITTING when one waits (one
        transaction instead of two), else at once; its driver goes on after that."""
        created: list[tuple[LedgerRow, asyncio.Future[LedgerRow]]] = []
        try:
            while True:
                if created and self.to_create.empty():
                    await self.commit(created)
                    created = []
                self.sending = False
                row, done = await self.to_create.get()
                if done.done():
                    continue  # its driver is gone
                self.sending = True
                sending = attrs.evolve(row, state=JobState.SUBMITTING, creates=row.creates + 1)
                await self.commit(created, sending, done)
                created = []
                if done.done():
                    continue  # lost to another worker
                try:
                    outcome = await self.create(sending)
                except Exception as exc:  # a wrong key, say: its driver stops the run
                    done.set_exception(exc)
                    raise
                if outcome.state is JobState.CREATED:
                    created = [(outcome, done)]  # committed with the next SUBMITTING
                else:
                    await self.commit([(outcome, done)])
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # what came back before the stop
                self.ledger.write(self.owner, [r for r, _ in created])
            raise
        finally:
            self.sending = False

    async def commit(
        self,
        settled: list[tuple[LedgerRow, asyncio.Future[LedgerRow]]],
        sending: LedgerRow | None = None,
        waiter: asyncio.Future[LedgerRow] | None = None,
    ) -> None:
        """Record rows in one write and tell their drivers (one taken over meanwhile: its
        driver lets go); `sending` (SUBMITTING) and the jobs' ends waiting go with them."""
        if self.flush is not None:
            self.flush.cancel()
            self.flush = None
        settled = settled + self.riders
        self.riders = []
        changes = list(settled)
        if sending is not None and waiter is not None:
            changes.append((sending, waiter))
        write = self.ledger.write
        try:
            try:
                await self.ledger_call(write, self.owner, [r for r, _ in changes])
            except LostClaim:  # one at a time, to learn which
                for r, f in changes:
                    try:
                        await self.ledger_call(write, self.owner, [r])
                    except LostClaim as exc:
                        if not f.done():
                            f.set_exception(exc)
        except Exception as exc:  # the ledger failed (a full disk, a lost server): all hear it
            for _, f in changes:
                if not f.done():
                    f.set_exception(exc)
            raise
        for r, f in settled:
            if not f.done():
                f.set_result(r)

    async def create(self, row: LedgerRow) -> LedgerRow:
        """Send one SUBMITTING job's create, retrying those that certainly never left; the row
        as it ends (not yet committed)."""
        request = dict(row.request)
        prompt = str(request.pop("prompt"))
        options: CreateOptions = request  # type: ignore[assignment]  # checked by Job.of
        error = ""
        for attempt in range(_CREATE_TRIES):
            try:
                created = await self.session.create_generation(prompt, **options)
            except CreateOutcomeUnknown as exc:
                return attrs.evolve(row, state=JobState.UNKNOWN, error=str(exc))
            except asyncio.CancelledError:
                stopped = "stopped while sending its create"
                self.ledger.write(
                    self.owner, [attrs.evolve(row, state=JobState.UNKNOWN, error=stopped)]
                )
                raise
            except AuthenticationError:  # no create can go: the run stops
                unsent = attrs.evolve(row, state=JobState.NEW, creates=row.creates - 1)
                self.ledger.write(self.owner, [unsent])
                raise
            except (RateLimitError, TransportError) as exc:
                error = str(exc)  # refused, or never left: nothing was created
                await self.sleep(_backoff(attempt))
                continue
            except (APIError, ValueError) as exc:  # refused: nothing was created
                refused = f"the create was refused: {exc}"
                return _failed(row, refused)
            return attrs.evolve(row, state=JobState.CREATED, task_id=created.id, error=None)
        return _failed(row, f"the create kept failing: {error}")

    async def failed(self, row: LedgerRow, exc: GenerationFailed) -> LedgerRow:
        reason = exc.generation.failure_reason or "no reason given"
        return await self.update(row, JobState.FAILED, error=f"the generation failed: {reason}")

    async def wait(self, row: LedgerRow) -> tuple[LedgerRow, Generation | None]:
        assert row.task_id is not None
        for attempt in itertools.count():
            try:
                generation = await self.session.wait_until_completed(row.task_id, timeout=None)
            except GenerationFailed as exc:
                return await self.failed(row, exc), None
            except NotFoundError as exc:
                return await self.update(row, JobState.FAILED, error=str(exc)), None
            except AuthenticationError:
                raise
            except DeerLumaError as exc:
                if not is_transient(exc) and not isinstance(exc, RateLimitError):
                    return await self.update(row, JobState.FAILED, error=str(exc)), None
                await self.sleep(_backoff(attempt))
                continue
            return row, generation  # recorded only once its video is on disk
        raise AssertionError("unreachable")

    async def save(self, row: LedgerRow, generation: Generation | None) -> LedgerRow:
        """Download its video; from the generation just seen (a link that expired is
        fetched again), or by task id."""
        assert row.task_id is not None
        target: Generation | str = generation or row.task_id
        final = self.out / f"{row.key}.mp4"
        leftovers = self.parts.pop(final.name, ())
        if leftovers:  # left by a worker killed mid-download
            await asyncio.to_thread(_remove, leftovers)
        for attempt in itertools.count():
            try:
                try:
                    async with self.downloads:
                        path = await self.session.download(target, final, skip_complete=True)
                except DestinationExists:  # ours, from before, but not the whole video
                    path = await self.session.download(target, final, overwrite=True)
            except (AuthenticationError, DestinationError):
                raise  # a wrong key, a full or read-only disk: no job can go on
            except GenerationFailed as exc:
                return await self.failed(row, exc)
            except DeerLumaError:  # storage faults, links refused even when fresh: again, later
                target = row.task_id  # with a fresh look at the generation
                await self.sleep(_backoff(attempt))
                continue
            return await self.update(row, JobState.DONE, path=str(path), error=None)
        raise AssertionError("unreachable")


def _backoff(attempt: int) -> float:
    """Seconds before trying a job's step again after `attempt` + 1 faults in a row."""
    return min(_LONGEST_BACKOFF, _FIRST_BACKOFF * 2.0 ** min(attempt, 16))


def _failed(row: LedgerRow, error: str) -> LedgerRow:
    """A job whose create certainly did not go through: FAILED, not counted as sent."""
    return attrs.evolve(row, state=JobState.FAILED, creates=row.creates - 1, error=error)


def _made(out: str | os.PathLike[str]) -> Path:
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
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
    session: Session,
    jobs: Iterable[Job | Mapping[str, Any]],
    *,
    ledger: Ledger | str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    max_active: int = 10,
    resubmit_unknown: bool = False,
    retry_failed: bool = False,
) -> AsyncGenerator[JobResult, None]:
    """See Session.run."""
    if isinstance(max_active, bool) or not isinstance(max_active, int) or max_active < 1:
        raise ValueError(f"max_active must be a whole number >= 1, got {max_active!r}")
    listed = [job if isinstance(job, Job) else Job.of(job) for job in jobs]
    folder = await asyncio.to_thread(_made, out)
    owned = not isinstance(ledger, Ledger)
    store = (
        ledger
        if isinstance(ledger, Ledger)
        else await asyncio.to_thread(Ledger.open, folder if ledger is None else ledger)
    )
    try:
        unique = {job.key: job for job in reversed(listed)}  # the first of a key wins
        keys = set(unique)
        await asyncio.to_thread(store.add, [(k, j.request) for k, j in unique.items()])
        again = [JobState.UNKNOWN] * resubmit_unknown + [JobState.FAILED] * retry_failed
        if again:  # asked for: these are created anew (an UNKNOWN one may then exist twice)
            await asyncio.to_thread(store.renew_states, keys, again)
        runner = _Runner(session, store, folder, max_active=max_active, keys=keys)
        runner.parts = await asyncio.to_thread(_parts_in, folder)
        reported: set[str] = set()
        for row in await asyncio.to_thread(store.rows, keys):  # settled before this run
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
            store.close()
