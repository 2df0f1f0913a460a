"""The ledger of durable jobs: one row per job, each state change committed before the next step.

Two stores with one schema and one set of statements: a SQLite file (the
standard library; the default, inside the output folder) and PostgreSQL
(psycopg 3, the ``postgres`` extra) for workers on several machines. Workers
claim jobs with a lease: SQLite's write transaction, or PostgreSQL's
``FOR UPDATE SKIP LOCKED`` (as procrastinate and pgqueuer do), so each job
has one worker at a time. A worker that dies leaves its claims to the
others once its lease runs out, or at once when it ran on this machine and
its process is gone.

All methods block (SQLite and psycopg's plain connections are synchronous);
the runner calls them from a worker thread. A lock keeps one call at a time.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

from .exceptions import ConfigurationError

__all__ = ["JobState", "Ledger", "LedgerRow", "LostClaim", "new_owner"]

#: The SQLite ledger's file name inside the output folder.
LEDGER_FILE = ".deerluma-jobs.sqlite"
_TABLE = "deerluma_jobs"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    task_id TEXT,
    error TEXT,
    path TEXT,
    owner TEXT,
    lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    creates INTEGER NOT NULL DEFAULT 0,
    updated_at DOUBLE PRECISION NOT NULL DEFAULT 0
)
"""
_INDEX = f"CREATE INDEX IF NOT EXISTS {_TABLE}_state ON {_TABLE} (state)"
_COLUMNS = "key, request, state, task_id, error, path, creates"


class JobState(enum.StrEnum):
    """Where a durable job is (see docs/jobs.md for the state machine)."""

    NEW = "new"  #: recorded; its create was never sent
    SUBMITTING = "submitting"  #: its create is being sent (recorded before sending)
    UNKNOWN = "unknown"  #: sent, but the answer never got recorded: it may exist (and be paid)
    CREATED = "created"  #: its task id is recorded; its video is not on disk yet
    DONE = "done"  #: the video is on disk
    FAILED = "failed"  #: the generation failed, or the create was refused

    @property
    def settled(self) -> bool:
        """Whether a run leaves it as it is (done, or waiting for a person)."""
        return self in (JobState.DONE, JobState.FAILED, JobState.UNKNOWN)


@attrs.frozen
class LedgerRow:
    """One job as the ledger has it."""

    key: str
    request: Mapping[str, object]
    state: JobState
    task_id: str | None = None
    error: str | None = None
    path: str | None = None
    creates: int = 0


class LostClaim(Exception):
    """Another worker holds the job now (this one's lease ran out): stop working on it."""


def new_owner() -> str:
    """A worker's name in the ledger: host, process, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _gone(owner: str) -> bool:
    """Whether `owner` was a process on this machine that is no longer running."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # someone else's process: alive
    return False


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[object] = ...) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Ledger:
    """Where durable jobs and their states are kept; open one with `Ledger.open`."""

    #: Whether a call is quick enough to make on the event loop (a local file's few
    #: microseconds), rather than from a thread (a server's round trip).
    inline = False
    #: How `?` placeholders are written for this store.
    _placeholder = "?"
    #: What locks the rows a claim picks, where the store can (PostgreSQL).
    _skip_locked = ""

    def __init__(self, url: str) -> None:
        self.url = url
        """Where the ledger lives (a file path, or a PostgreSQL URL without its password)."""
        self._lock = threading.Lock()

    @staticmethod
    def open(where: str | os.PathLike[str]) -> Ledger:
        """A ledger: ``postgresql://...`` (or ``postgres://``), else a folder whose SQLite
        ledger file (``.deerluma-jobs.sqlite``) is made if missing, or that file itself."""
        text = os.fspath(where)
        if text.startswith(("postgresql://", "postgres://")):
            return PostgresLedger(text)
        path = Path(text).expanduser()
        if path.suffix not in (".sqlite", ".db"):
            path = path / LEDGER_FILE
        return SQLiteLedger(path)

    # -- what the store does -----------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the connection."""

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    def _make_table(self) -> None:
        """The jobs table and its index, if missing (two workers making them at once wait
        for each other)."""

        def work(cursor: _Cursor) -> None:
            self._serialize(cursor)
            cursor.execute(_SCHEMA)
            cursor.execute(_INDEX)

        self._run(work)

    def _run(self, work: Callable[[_Cursor], Any]) -> Any:
        with self._lock, self._transaction() as cursor:
            return work(cursor)

    def _statement(self, work: Callable[[_Cursor], Any]) -> Any:
        """`_run` for work of one statement (atomic by itself where the store allows)."""
        return self._run(work)

    # -- jobs ----------------------------------------------------------------------------
    def add(self, jobs: Iterable[tuple[str, Mapping[str, object]]]) -> None:
        """Record jobs (key, request) not yet in the ledger; those already there are kept."""
        rows = [
            (key, json.dumps(request, sort_keys=True), JobState.NEW.value, time.time())
            for key, request in jobs
        ]
        sql = self._sql(
            f"INSERT INTO {_TABLE} (key, request, state, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key) DO NOTHING"
        )

        def work(cursor: _Cursor) -> None:
            for row in rows:
                cursor.execute(sql, row)

        self._run(work)

    def rows(self, keys: Iterable[str] | None = None) -> list[LedgerRow]:
        """Every job (or those of `keys`), by key."""
        wanted = None if keys is None else set(keys)

        def work(cursor: _Cursor) -> list[LedgerRow]:
            cursor.execute(f"SELECT {_COLUMNS} FROM {_TABLE} ORDER BY key")
            return [_row(r) for r in cursor.fetchall()]

        found: list[LedgerRow] = self._run(work)
        return found if wanted is None else [r for r in found if r.key in wanted]

    def reap(self, now: float | None = None) -> list[LedgerRow]:
        """Claims of workers that are gone end: those of a process of this machine that no
        longer runs at once, others when their lease has run out. A job they were sending
        becomes UNKNOWN (it may have been created). Returns those."""
        now = time.time() if now is None else now

        def work(cursor: _Cursor) -> list[LedgerRow]:
            cursor.execute(
                self._sql(f"SELECT DISTINCT owner FROM {_TABLE} WHERE owner IS NOT NULL")
            )
            for (owner,) in cursor.fetchall():
                if _gone(owner):
                    cursor.execute(
                        self._sql(f"UPDATE {_TABLE} SET lease_until = 0 WHERE owner = ?"),
                        (owner,),
                    )
            cursor.execute(
                self._sql(
                    f"UPDATE {_TABLE} SET state = ?, owner = NULL, updated_at = ?, error = ? "
                    "WHERE state = ? AND lease_until < ? "
                    f"RETURNING {_COLUMNS}"
                ),
                (
                    JobState.UNKNOWN.value,
                    now,
                    "the worker sending its create stopped before the answer was recorded",
                    JobState.SUBMITTING.value,
                    now,
                ),
            )
            return [_row(r) for r in cursor.fetchall()]

        return list(self._run(work))

    def renew_states(self, keys: Iterable[str], states: Sequence[JobState]) -> None:
        """Make the jobs of `keys` in `states` (UNKNOWN, FAILED) NEW again, unless a worker
        holds them: a person asked for them to be created anew."""
        wanted = list(keys)
        if not wanted or not states:
            return
        now = time.time()
        sql = self._sql(
            f"UPDATE {_TABLE} SET state = ?, error = NULL, task_id = NULL, updated_at = ? "
            f"WHERE state IN ({', '.join('?' * len(states))}) "
            "AND (owner IS NULL OR lease_until < ?) AND key = ?"
        )

        def work(cursor: _Cursor) -> None:
            for key in wanted:
                cursor.execute(sql, (JobState.NEW.value, now, *(s.value for s in states), now, key))

        self._run(work)

    def claim(
        self,
        owner: str,
        lease: float,
        *,
        max_active: int,
        batch: int = 64,
        now: float | None = None,
    ) -> list[LedgerRow]:
        """Claim free jobs for `owner` until `now + lease`: CREATED ones (up to `batch`), and
        NEW ones while fewer than `max_active` generations run in all."""
        now = time.time() if now is None else now
        to_create = [JobState.NEW]

        def pick(cursor: _Cursor, states: Sequence[JobState], limit: int) -> list[LedgerRow]:
            if limit <= 0:
                return []
            marks = ", ".join("?" * len(states))
            cursor.execute(
                self._sql(
                    f"UPDATE {_TABLE} SET owner = ?, lease_until = ?, updated_at = ? "
                    f"WHERE key IN (SELECT key FROM {_TABLE} WHERE state IN ({marks}) "
                    "AND (owner IS NULL OR lease_until < ?) "
                    f"ORDER BY key LIMIT ?{self._skip_locked}) "
                    f"RETURNING {_COLUMNS}"
                ),
                (owner, now + lease, now, *(s.value for s in states), now, limit),
            )
            return sorted(map(_row, cursor.fetchall()), key=lambda row: row.key)  # in key order

        def work(cursor: _Cursor) -> list[LedgerRow]:
            self._serialize(cursor)
            running = pick(cursor, (JobState.CREATED,), batch)
            # Running, being sent, or claimed to be sent (by any worker) count alike.
            cursor.execute(
                self._sql(
                    f"SELECT count(*) FROM {_TABLE} WHERE state IN (?, ?) "
                    "OR (state = ? AND owner IS NOT NULL AND lease_until >= ?)"
                ),
                (JobState.SUBMITTING.value, JobState.CREATED.value, JobState.NEW.value, now),
            )
            active = int(cursor.fetchall()[0][0])
            return running + pick(cursor, to_create, min(batch, max_active - active))

        return list(self._run(work))

    def _serialize(self, cursor: _Cursor) -> None:
        """One at a time: claims counting the generations running, and making the table
        (SQLite's write lock already does this)."""

    def write(self, owner: str, rows: Sequence[LedgerRow]) -> None:
        """Record `rows` (state, task id, error, path, creates) of jobs this worker holds, in
        one statement: all of them, or none and LostClaim (another worker holds one now).
        Committed on return."""
        if not rows:
            return
        keys = [row.key for row in rows]
        marks = ", ".join("?" * len(rows))
        whens = " ".join(["WHEN ? THEN ?"] * len(rows))
        columns: dict[str, list[object]] = {
            "state": [row.state.value for row in rows],
            "task_id": [row.task_id for row in rows],
            "error": [row.error for row in rows],
            "path": [row.path for row in rows],
            "creates": [row.creates for row in rows],
        }
        assignments = ", ".join(f"{name} = CASE key {whens} END" for name in columns)
        sql = self._sql(
            f"UPDATE {_TABLE} SET {assignments}, updated_at = ? "
            f"WHERE owner = ? AND key IN ({marks}) "
            f"AND (SELECT count(*) FROM {_TABLE} WHERE owner = ? AND key IN ({marks})) = ?"
        )
        params: list[object] = []
        for values in columns.values():
            for key, value in zip(keys, values, strict=True):
                params += (key, value)
        params += (time.time(), owner, *keys, owner, *keys, len(keys))

        def work(cursor: _Cursor) -> None:
            cursor.execute(sql, params)
            if cursor.rowcount != len(keys):  # (none, where one statement is atomic)
                raise LostClaim(keys[0] if len(keys) == 1 else ", ".join(keys))

        self._statement(work)

    def renew(self, owner: str, keys: Sequence[str], lease: float) -> set[str]:
        """Extend this worker's claims on `keys` by `lease` seconds; returns those it holds."""
        if not keys:
            return set()
        marks = ", ".join("?" * len(keys))
        sql = self._sql(
            f"UPDATE {_TABLE} SET lease_until = ? WHERE owner = ? AND key IN ({marks}) "
            "RETURNING key"
        )

        def work(cursor: _Cursor) -> set[str]:
            cursor.execute(sql, (time.time() + lease, owner, *keys))
            return {r[0] for r in cursor.fetchall()}

        return set(self._statement(work))

    def release(self, owner: str, keys: Sequence[str] | None = None) -> None:
        """Give up this worker's claims (all of them, or those of `keys`)."""
        sql = f"UPDATE {_TABLE} SET owner = NULL, lease_until = 0 WHERE owner = ?"
        params: tuple[object, ...] = (owner,)
        if keys is not None:
            if not keys:
                return
            sql += f" AND key IN ({', '.join('?' * len(keys))})"
            params += tuple(keys)

        def work(cursor: _Cursor) -> None:
            cursor.execute(self._sql(sql), params)

        self._statement(work)


def _row(raw: Sequence[Any]) -> LedgerRow:
    key, request, state, task_id, error, path, creates = raw
    return LedgerRow(key, json.loads(request), JobState(state), task_id, error, path, creates)


class SQLiteLedger(Ledger):
    """A ledger in a SQLite file (WAL: readers never wait; a killed process loses nothing
    committed). A write is one statement of about 30-70 µs: it is made on the event loop."""

    inline = True

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes
        self._make_table()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        cursor = self._db.cursor()
        cursor.execute("BEGIN IMMEDIATE")  # the write lock now: claims never interleave
        try:
            yield cursor
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

    def _statement(self, work: Callable[[_Cursor], Any]) -> Any:
        # One statement is a transaction of its own: no BEGIN and COMMIT around it. Each
        # call into SQLite lets other threads (downloads' writes) in, and waits for them.
        with self._lock:
            return work(self._db.cursor())

    def close(self) -> None:
        self._db.close()


class PostgresLedger(Ledger):
    """A ledger in a PostgreSQL table, shared by workers on several machines."""

    _placeholder = "%s"
    _skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigurationError(
                "a PostgreSQL ledger needs psycopg: pip install 'deerluma[postgres]'"
            ) from exc
        super().__init__(_without_password(url))
        try:
            self._db = psycopg.connect(url, autocommit=True)
        except psycopg.Error as exc:
            raise ConfigurationError(f"cannot open the ledger at {self.url}: {exc}") from exc
        self._make_table()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        with self._db.transaction(), self._db.cursor() as cursor:
            yield cursor

    def _serialize(self, cursor: _Cursor) -> None:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_TABLE,))

    def close(self) -> None:
        self._db.close()


def _without_password(url: str) -> str:
    import yarl

    parsed = yarl.URL(url)
    return str(parsed.with_password(None)) if parsed.password else url
