"""What a run is asked to do (jobs, from a JSON-lines file) and what it reports (results)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .._create import CreateOptions, build_create_body
from .state import JobState
from .store import LedgerRow

__all__ = ["Job", "JobResult", "JobsFileError", "load_jobs"]

_SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: Bad lines of a jobs file named at most, before "and N more".
_NAMED = 20


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
    why), UNKNOWN (its create may have been sent and charged; see docs/jobs.md), or
    TIMED_OUT (created, not ended within the wait timeout: a re-run waits on it again)."""

    key: str
    state: JobState
    task_id: str | None = None
    path: str | None = None
    error: str | None = None

    @classmethod
    def of(cls, row: LedgerRow) -> JobResult:
        return cls(row.key, row.state, row.task_id, row.path, row.error)


class JobsFileError(ValueError):
    """Lines of a jobs file that are not jobs (the message names each, up to 20, by the
    file's own keys), or a file with no job at all."""


def load_jobs(lines: Iterable[str], source: str = "jobs") -> list[Job]:
    """Jobs from JSON lines (blank ones and ``#`` comments skipped; a UTF-8 byte order mark
    allowed); the first of a key wins. Every bad line is reported, not just the first."""
    jobs: dict[str, Job] = {}
    bad: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.lstrip("\ufeff").strip() if number == 1 else line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            job = Job.of(json.loads(text))
        except (ValueError, TypeError) as exc:
            bad.append(f"{source}, line {number}: {exc}")
            continue
        jobs.setdefault(job.key, job)
    if bad:
        more = f"\n(and {len(bad) - _NAMED} more bad lines)" if len(bad) > _NAMED else ""
        raise JobsFileError("\n".join(bad[:_NAMED]) + more)
    if not jobs:
        raise JobsFileError(f"{source} holds no job (one JSON object per line)")
    return list(jobs.values())
