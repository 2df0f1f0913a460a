"""Durable jobs: from prompts to videos on disk, through a ledger, crash-safe, never paying twice.

Each job walks NEW -> SUBMITTING -> CREATED -> COMPLETED -> DONE (or FAILED),
and each step is committed to the ledger before the next one starts:

- a job is recorded SUBMITTING before its create is sent, and CREATED (with
  its task id) as soon as the answer comes; a worker that stops in between
  leaves it UNKNOWN (it may exist, and be paid for), which is never sent
  again unless asked (`resubmit_unknown`);
- one create at a time per worker, so one kill leaves at most one UNKNOWN;
- waits resume from the ledger's task ids; a finished video is downloaded
  (atomically, to ``OUT/<key>.mp4``) and only then recorded DONE.
"""

from __future__ import annotations

import asyncio
import contextlib
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
#: Creates that certainly never left are tried this many times before the job is FAILED.
_CREATE_TRIES = 5
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
            raise ValueError(f"{source}, line {number}: {exc}") from exc
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
        self.create_lock = asyncio.Lock()  # one create in flight: a kill leaves one UNKNOWN
        self.driving: dict[str, asyncio.Task[JobResult | None]] = {}
        self.sleep = session._transport.sleep

    async def ledger_call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(method, *args, **kwargs)

    async def update(self, row: LedgerRow, state: JobState, **fields: object) -> LedgerRow:
        await self.ledger_call(self.ledger.update, row.key, self.owner, state, **fields)
        return attrs.evolve(row, state=state, **fields)  # type: ignore[arg-type]

    async def run(self) -> AsyncGenerator[JobResult, None]:
        ledger = self.ledger
        renewed = asyncio.get_running_loop().time()
        try:
            while True:
                for row in await self.ledger_call(ledger.reap):
                    if row.key in self.keys:
                        yield JobResult.of(row)
                claimed = await self.ledger_call(
                    ledger.claim, self.owner, LEASE, max_active=self.max_active
                )
                for row in claimed:
                    if row.key not in self.driving:
                        self.driving[row.key] = asyncio.ensure_future(self.drive(row))
                if not self.driving and not claimed and not await self.others_hold_some():
                    return
                done: set[asyncio.Task[JobResult | None]] = set()
                if self.driving:
                    done, _ = await asyncio.wait(
                        self.driving.values(), timeout=_LOOK_AGAIN, return_when="FIRST_COMPLETED"
                    )
                else:
                    await asyncio.sleep(_LOOK_AGAIN)  # leases are wall-clock time
                for task in done:
                    key = next(k for k, t in self.driving.items() if t is task)
                    del self.driving[key]
                    result = task.result()
                    if result is not None and result.key in self.keys:
                        yield result
                now = asyncio.get_running_loop().time()
                if now - renewed >= LEASE / 3 and self.driving:
                    renewed = now
                    held = await self.ledger_call(
                        ledger.renew, self.owner, list(self.driving), LEASE
                    )
                    for key in set(self.driving) - held:  # taken over: stop
                        self.driving.pop(key).cancel()
        finally:
            tasks = list(self.driving.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
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
            if row.state is JobState.CREATED:
                row = await self.wait(row)
                if row.state is not JobState.COMPLETED:
                    return JobResult.of(row)
            return JobResult.of(await self.save(row))
        except LostClaim:
            return None

    async def submit(self, row: LedgerRow) -> LedgerRow:
        request = dict(row.request)
        prompt = str(request.pop("prompt"))
        options: CreateOptions = request  # type: ignore[assignment]  # checked by Job.of
        async with self.create_lock:
            for attempt in range(_CREATE_TRIES):
                row = await self.update(
                    row, JobState.SUBMITTING, creates=row.creates + 1, error=None
                )
                try:
                    created = await self.session.create_generation(prompt, **options)
                except CreateOutcomeUnknown as exc:
                    return await self.update(row, JobState.UNKNOWN, error=str(exc))
                except asyncio.CancelledError:
                    # Ctrl-C while the create was out: it may have been sent.
                    with contextlib.suppress(Exception):
                        self.ledger.update(
                            row.key, self.owner, JobState.UNKNOWN, error="interrupted while sending"
                        )
                    raise
                except AuthenticationError:
                    await self.update(row, JobState.NEW, creates=row.creates - 1)
                    raise
                except (RateLimitError, TransportError) as exc:  # refused, or never left
                    row = await self.update(
                        row, JobState.NEW, creates=row.creates - 1, error=str(exc)
                    )
                    await self.sleep(min(_LONGEST_BACKOFF, _FIRST_BACKOFF * 2**attempt))
                    continue
                except (APIError, ValueError) as exc:  # refused: nothing was created
                    return await self.update(
                        row,
                        JobState.FAILED,
                        creates=row.creates - 1,
                        error=f"the create was refused: {exc}",
                    )
                return await self.update(row, JobState.CREATED, task_id=created.id)
        return await self.update(
            row, JobState.FAILED, error=f"the create kept failing: {row.error}"
        )

    async def wait(self, row: LedgerRow) -> LedgerRow:
        assert row.task_id is not None
        for attempt in itertools.count():
            try:
                await self.session.wait_until_completed(row.task_id, timeout=None)
            except GenerationFailed as exc:
                reason = exc.generation.failure_reason or "no reason given"
                return await self.update(
                    row, JobState.FAILED, error=f"the generation failed: {reason}"
                )
            except NotFoundError as exc:
                return await self.update(row, JobState.FAILED, error=str(exc))
            except AuthenticationError:
                raise
            except DeerLumaError as exc:
                if not is_transient(exc) and not isinstance(exc, RateLimitError):
                    return await self.update(row, JobState.FAILED, error=str(exc))
                await self.sleep(min(_LONGEST_BACKOFF, _FIRST_BACKOFF * 2**attempt))
                continue
            return await self.update(row, JobState.COMPLETED, error=None)
        raise AssertionError("unreachable")

    async def save(self, row: LedgerRow) -> LedgerRow:
        assert row.task_id is not None
        final = self.out / f"{row.key}.mp4"
        await asyncio.to_thread(_clear_parts, final)  # left by a worker killed mid-download
        for attempt in itertools.count():
            try:
                try:
                    path = await self.session.download(row.task_id, final, skip_complete=True)
                except DestinationExists:  # ours, from before, but not the whole video
                    path = await self.session.download(row.task_id, final, overwrite=True)
            except (AuthenticationError, DestinationError):
                raise  # a wrong key, a full or read-only disk: no job can go on
            except GenerationFailed as exc:
                reason = exc.generation.failure_reason or "no reason given"
                return await self.update(
                    row, JobState.FAILED, error=f"the generation failed: {reason}"
                )
            except DeerLumaError:  # storage faults, links refused even when fresh: again, later
                await self.sleep(min(_LONGEST_BACKOFF, _FIRST_BACKOFF * 2**attempt))
                continue
            return await self.update(row, JobState.DONE, path=str(path), error=None)
        raise AssertionError("unreachable")


def _made(out: str | os.PathLike[str]) -> Path:
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _clear_parts(final: Path) -> None:
    """Remove the temporary files of `final`'s earlier, interrupted downloads."""
    with contextlib.suppress(OSError):
        for part in final.parent.glob(f".{final.name}.*.part"):
            with contextlib.suppress(OSError):
                part.unlink()


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
