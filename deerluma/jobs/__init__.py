"""Durable jobs: a file of prompts to a folder of videos, through a ledger (docs/jobs.md).

- `state`: the state table every write is checked against;
- `store`: the ledger (SQLite, PostgreSQL) behind one protocol, its SQL in one place;
- `spec`: jobs and their results;
- `runner`: the worker, on a small client protocol (create, wait, download).
"""

from .runner import WAIT_TIMEOUT, Client, RunStats, run_jobs
from .spec import Job, JobResult, JobsFileError, load_jobs
from .state import MOVES, JobState
from .store import LEDGER_FILE, JobConflict, Ledger, LedgerRow, LostClaim

__all__ = [
    "LEDGER_FILE",
    "MOVES",
    "WAIT_TIMEOUT",
    "Client",
    "Job",
    "JobConflict",
    "JobResult",
    "JobState",
    "JobsFileError",
    "Ledger",
    "LedgerRow",
    "LostClaim",
    "RunStats",
    "load_jobs",
    "run_jobs",
]
