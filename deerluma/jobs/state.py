"""The durable job's state machine, as one table: every write of the ledger is checked here.

A test walks the whole table (tests/test_jobs.py): each move it allows is made
through the ledger, and every other pair is refused.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = ["MOVES", "IllegalMove", "JobState", "check"]


class JobState(enum.StrEnum):
    """Where a durable job is (see docs/jobs.md for the state machine)."""

    NEW = "new"  #: recorded; its create was never sent
    SUBMITTING = "submitting"  #: its create is being sent (recorded before sending)
    UNKNOWN = "unknown"  #: sent, but the answer never got recorded: it may exist (and be paid)
    CREATED = "created"  #: its task id is recorded; its video is not on disk yet
    TIMED_OUT = "timed_out"  #: created, but not ended within the run's wait timeout
    DONE = "done"  #: the video is on disk
    FAILED = "failed"  #: the generation failed, or the create was refused

    @property
    def settled(self) -> bool:
        """Whether a run leaves it as it is (done, or waiting for a person or a re-run)."""
        return self in _SETTLED


_SETTLED = frozenset({JobState.DONE, JobState.FAILED, JobState.UNKNOWN, JobState.TIMED_OUT})

S = JobState
#: Every move a job may make, and why. Nothing else is ever written.
MOVES: Mapping[tuple[JobState, JobState], str] = {
    (S.NEW, S.NEW): "its line was edited before its create was sent: the new request",
    (S.NEW, S.SUBMITTING): "its create is about to be sent (committed first)",
    (S.SUBMITTING, S.CREATED): "the create's answer came: its task id",
    (S.SUBMITTING, S.FAILED): "the create was refused: nothing was made",
    (S.SUBMITTING, S.UNKNOWN): "no answer, or its worker stopped: it may exist, and be paid",
    (S.SUBMITTING, S.NEW): "the create certainly never left (an outage, a wrong key)",
    (S.CREATED, S.DONE): "its video is on disk, whole",
    (S.CREATED, S.FAILED): "the generation failed, vanished, or its video cannot be had",
    (S.CREATED, S.TIMED_OUT): "not ended within the wait timeout: its slot is freed",
    (S.TIMED_OUT, S.CREATED): "a new run waits on it again (it is never created twice)",
    (S.FAILED, S.NEW): "--retry-failed: created again, from its line as it is now",
    (S.UNKNOWN, S.NEW): "--resubmit-unknown: created again (it may then exist twice)",
}
del S


class IllegalMove(AssertionError):
    """A write the state table does not allow: a bug of ours, never the user's."""


def check(before: JobState, after: JobState) -> None:
    """Raise IllegalMove unless the table allows `before` -> `after`."""
    if (before, after) not in MOVES:
        raise IllegalMove(f"a job may not go from {before.value} to {after.value}")
