"""What run and status print about jobs: JSON lines, and the summary that ends a run."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

from ..jobs import JobResult, JobState

if TYPE_CHECKING:
    pass
from .app import App
from .errors import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT

#: A job's end, as an error type in JSON lines (the shape every command's errors have).
_JOB_ERRORS = {
    JobState.FAILED: "JobFailed",
    JobState.UNKNOWN: "CreateOutcomeUnknown",
    JobState.TIMED_OUT: "WaitTimeout",
}


def _job_line(result: JobResult) -> dict[str, object]:
    error = None
    if result.error is not None:
        kind = _JOB_ERRORS.get(result.state, "JobError")
        error = {"type": kind, "message": result.error}
    return {
        "key": result.key,
        "state": result.state.value,
        "task_id": result.task_id,
        "path": result.path,
        "error": error,
    }


def _run_summary(
    app: App, results: Sequence[JobResult], file: IO[str], *, stopped: bool = False
) -> int:
    """Counts by state, then each job that needs a person (not with -q); the exit code."""
    if app.quiet and file is not app.out:
        file = io.StringIO()
    counts: dict[str, int] = {}
    for result in results:
        counts[result.state.value] = counts.get(result.state.value, 0) + 1
    said = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    if stopped:
        print(f"stopped after {len(results)} jobs settled{': ' if said else ''}{said}", file=file)
    else:
        print(f"{len(results)} jobs: {said}", file=file)
    failed = [r for r in results if r.state is JobState.FAILED]
    unknown = [r for r in results if r.state is JobState.UNKNOWN]
    late = [r for r in results if r.state is JobState.TIMED_OUT]
    for r in failed:
        print(f"  failed: {r.key}: {r.error}", file=file)
    for r in unknown:
        print(f"  outcome unknown (may be charged): {r.key}: {r.error}", file=file)
    for r in late:
        print(f"  timed out: {r.key} ({r.task_id}): a re-run waits on it again", file=file)
    if unknown:
        print(
            "  a person should check these in the provider's dashboard; --resubmit-unknown "
            "creates them again",
            file=file,
        )
    if failed:
        print("  --retry-failed creates the failed ones again", file=file)
    if late:
        return EXIT_TIMEOUT
    return EXIT_FAILED if failed or unknown else EXIT_OK
