"""The ledger of durable jobs: one row per job, each state change committed before the next step.

One protocol, two stores, and every statement written once, here: a SQLite
file (the standard library; the default, inside the output folder) and
PostgreSQL (psycopg 3's `AsyncConnection`, the ``postgres`` extra) for
workers on several machines. Workers claim jobs with a lease: SQLite's write
transaction, or PostgreSQL's ``FOR UPDATE SKIP LOCKED`` (as procrastinate
and pgqueuer do), so each job has one worker at a time. Leases are judged on
the database's clock, never a worker's. A worker that dies leaves its claims
to the others once its lease runs out, or at once when it ran on this
machine (same host, boot and process namespace) and its process is gone.

Every move is checked against the state table (`state.MOVES`) before it is
written, and written only if the row is still where the writer saw it.
The schema carries a version; `_MIGRATIONS` brings an older table up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import attrs

from .._validate import without_password
from ..exceptions import ArgumentError, ConfigurationError, DestinationError
from .state import JobState, check

__all__ = ["JobConflict", "Ledger", "LedgerRow", "LostClaim", "Move", "new_owner"]

#: The SQLite ledger's file name inside the output folder.
LEDGER_FILE = ".deerluma-jobs.sqlite"
#: The oldest SQLite that has what the statements need (RETURNING).
SQLITE_NEEDED = (3, 35, 0)
_TABLE = "deerluma_jobs"
_COLUMNS = "key, request, state, task_id, error, path, creates"
#: Statements that bring the table from version N to N + 1, in order (the table of
#: version 0 is the one made before versions were kept, which these statements also make).
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        f"""CREATE TABLE IF NOT EXISTS {_TABLE} (
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
        )""",
        f"CREATE INDEX IF NOT EXISTS {_TABLE}_state ON {_TABLE} (state)",
    ),
    (f"CREATE INDEX IF NOT EXISTS {_TABLE}_owner ON {_TABLE} (owner)",),
)
_VERSIONS = f"{_TABLE}_version"


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


class Move(NamedTuple):
    """A job's row as it is to be written, and the state the writer saw it in."""

    was: JobState
    row: LedgerRow


class LostClaim(Exception):
    """Another worker holds the job now (this one's lease ran out), or moved it meanwhile:
    stop working on it."""


class JobConflict(ArgumentError):
    """Jobs whose line says another request than the one already sent under their key."""

    def __init__(self, message: str, keys: Sequence[str]) -> None:
        super().__init__(message, {"retry_failed": "retry_failed=True"})
        self.keys = list(keys)


def _machine() -> str:
    """This machine as a process sees it: host, boot and process namespace. Two containers
    with one hostname differ here; an empty answer (no /proc) means: never judge at once."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        return ""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


_MACHINE = _machine()


def new_owner() -> str:
    """A worker's name in the ledger: host, process, machine, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{_MACHINE or '-'}:{secrets.token_hex(4)}"


def _gone(owner: str) -> bool:
    """Whether `owner` was a process of this very machine that no longer runs."""
    parts = owner.split(":")
    if len(parts) != 4 or not _MACHINE or parts[2] != _MACHINE or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # someone else's process: alive
    return False


class _Tx:
    """One transaction's statements: `?` placeholders, rows (or the count) back."""

    def __init__(self, run: Any, placeholder: str) -> None:
        self._run = run
        self._placeholder = placeholder
        self.rowcount = 0

    async def __call__(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        if self._placeholder != "?":
            sql = sql.replace("?", self._placeholder)
        rows: list[Any]
        rows, self.rowcount = await self._run(sql, params)
        return rows


class Ledger:
    """Where durable jobs and their states are kept; open one with `await Ledger.open(...)`."""

    #: Whether its calls never wait (a local file): then a write is made in the caller's step.
    inline = False
    #: How this store says "now" in seconds since the epoch, on the database's clock.
    _NOW = ""
    #: How it says "the keys in this JSON array" (one parameter, however many keys).
    _KEYS = ""
    #: What locks the rows a claim picks, where the store can (PostgreSQL).
    _SKIP_LOCKED = ""
    #: What makes a statement on a few keys of one owner find them by key (SQLite, with no
    #: statistics, would walk every row of the owner's index).
    _BY_KEY = ""
    _placeholder = "?"

    def __init__(self, url: str) -> None:
        self.url = url
        """Where the ledger lives (a file path, or a PostgreSQL URL without its password)."""

    @staticmethod
    async def open(where: str | os.PathLike[str]) -> Ledger:
        """A ledger: ``postgresql://...`` (or ``postgres://``), else a folder whose SQLite
        ledger file (``.deerluma-jobs.sqlite``) is made if missing, or that file itself.
        Another ``scheme://`` is refused (ValueError)."""
        text = os.fspath(where)
        if text.startswith(("postgresql://", "postgres://")):
            return await PostgresLedger.connect(text)
        scheme = text.partition("://")[0]
        if "://" in text and scheme.isidentifier():
            raise ValueError(
                f"a ledger is a postgresql:// URL, or a folder or .sqlite file; got {scheme}://"
            )
        ledger = SQLiteLedger(_sqlite_path(text))
        await ledger._migrate()
        return ledger

    # -- what each store does -------------------------------------------------------------
    def _transaction(self) -> contextlib.AbstractAsyncContextManager[_Tx]:
        """One transaction, committed when it ends."""
        raise NotImplementedError

    def _statement(self) -> contextlib.AbstractAsyncContextManager[_Tx]:
        """For one statement, atomic by itself, committed and on disk when it ends (a
        server's commits always are; a SQLite file syncs for it): a job's move."""
        return self._transaction()

    def _read(self) -> contextlib.AbstractAsyncContextManager[_Tx]:
        """For one statement that only reads (SQLite: no write lock taken, so a reader never
        waits for a worker's writes, nor holds them up)."""
        return self._transaction()

    async def _serialize(self, tx: _Tx) -> None:
        """One at a time: claims counting the generations running, and migrations (SQLite's
        write lock already does this)."""

    async def close(self) -> None:
        """Let go of the connection."""

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _clock(self, now: float | None) -> tuple[str, list[object]]:
        """The database's "now" (or a given one, in tests), as SQL and its parameters."""
        return (self._NOW, []) if now is None else ("?", [now])

    async def _migrate(self) -> None:
        async with self._transaction() as tx:
            await self._serialize(tx)
            await tx(f"CREATE TABLE IF NOT EXISTS {_VERSIONS} (version INTEGER NOT NULL)")
            found = await tx(f"SELECT max(version) FROM {_VERSIONS}")
            version = (found[0][0] or 0) if found else 0
            if version > len(_MIGRATIONS):
                raise ConfigurationError(
                    f"the ledger at {self.url} is of a newer deerluma (schema {version}); "
                    "upgrade deerluma"
                )
            for steps in _MIGRATIONS[version:]:
                for sql in steps:
                    await tx(sql)
            if version < len(_MIGRATIONS):
                await tx(f"DELETE FROM {_VERSIONS}")
                await tx(f"INSERT INTO {_VERSIONS} (version) VALUES (?)", [len(_MIGRATIONS)])

    # -- jobs ------------------------------------------------------------------------------
    async def add(
        self, jobs: Mapping[str, Mapping[str, object]], *, retry_failed: bool = False
    ) -> None:
        """Record jobs (key -> request) not yet in the ledger, in one transaction. A job
        whose request differs from the ledger's takes the new one if it was never sent (or,
        with `retry_failed`, if it failed: it is then NEW again); any other is a
        JobConflict, and nothing is written."""
        texts = {key: json.dumps(request, sort_keys=True) for key, request in jobs.items()}
        async with self._transaction() as tx:
            found = await tx(
                f"SELECT key, request, state, owner FROM {_TABLE} WHERE key IN {self._KEYS}",
                [json.dumps(list(texts))],
            )
            edited: list[tuple[str, JobState]] = []
            conflicts: list[str] = []
            for key, request, state, owner in found:
                if request == texts[key]:
                    continue
                state = JobState(state)
                if (state is JobState.NEW and owner is None) or (
                    state is JobState.FAILED and retry_failed
                ):
                    edited.append((key, state))
                else:
                    conflicts.append(key)
            if conflicts:
                raise JobConflict(_conflict_message(sorted(conflicts)), sorted(conflicts))
            known = {row[0] for row in found}
            now, params = self._clock(None)
            for key, text in texts.items():
                if key not in known:
                    await tx(
                        f"INSERT INTO {_TABLE} (key, request, state, updated_at) "
                        f"VALUES (?, ?, ?, {now}) ON CONFLICT (key) DO NOTHING",
                        [key, text, JobState.NEW.value, *params],
                    )
            for key, was in edited:
                check(was, JobState.NEW)
                await tx(
                    f"UPDATE {_TABLE} SET request = ?, state = ?, error = NULL, task_id = NULL, "
                    f"updated_at = {now} WHERE key = ? AND state = ?",
                    [texts[key], JobState.NEW.value, *params, key, was.value],
                )

    async def rows(self, keys: Iterable[str] | None = None) -> list[LedgerRow]:
        """Every job (or those of `keys`), by key."""
        sql, params = f"SELECT {_COLUMNS} FROM {_TABLE}", []
        if keys is not None:
            sql += f" WHERE key IN {self._KEYS}"
            params.append(json.dumps(list(keys)))
        async with self._read() as tx:
            return [_row(r) for r in await tx(sql + " ORDER BY key", params)]

    async def unsettled(self, keys: Iterable[str]) -> int:
        """How many jobs of `keys` are not settled (held by a worker, or free to claim)."""
        settled = [s.value for s in JobState if s.settled]
        async with self._read() as tx:
            found = await tx(
                f"SELECT count(*) FROM {_TABLE} WHERE key IN {self._KEYS} "
                f"AND state NOT IN ({', '.join('?' * len(settled))})",
                [json.dumps(list(keys)), *settled],
            )
        return int(found[0][0])

    async def reap(self, now: float | None = None) -> list[LedgerRow]:
        """Claims of workers that are gone end: those of a process of this machine that no
        longer runs at once, others when their lease has run out. A job they were sending
        becomes UNKNOWN (it may have been created). Returns those."""
        check(JobState.SUBMITTING, JobState.UNKNOWN)
        clock, params = self._clock(now)
        async with self._transaction() as tx:
            owners = await tx(f"SELECT DISTINCT owner FROM {_TABLE} WHERE owner IS NOT NULL")
            for (owner,) in owners:
                if _gone(owner):
                    await tx(f"UPDATE {_TABLE} SET lease_until = 0 WHERE owner = ?", [owner])
            found = await tx(
                f"UPDATE {_TABLE} SET state = ?, owner = NULL, updated_at = {clock}, error = ? "
                f"WHERE state = ? AND lease_until < {clock} RETURNING {_COLUMNS}",
                [
                    JobState.UNKNOWN.value,
                    *params,
                    "the worker sending its create stopped before the answer was recorded",
                    JobState.SUBMITTING.value,
                    *params,
                ],
            )
        return [_row(r) for r in found]

    async def reopen(self, keys: Iterable[str], moves: Sequence[tuple[JobState, JobState]]) -> None:
        """Move the jobs of `keys` that sit in a move's first state to its second (UNKNOWN ->
        NEW, FAILED -> NEW, TIMED_OUT -> CREATED), unless a worker holds them."""
        wanted = json.dumps(list(keys))
        clock, params = self._clock(None)
        async with self._transaction() as tx:
            for was, to in moves:
                check(was, to)
                task = ", task_id = NULL" if to is JobState.NEW else ""
                await tx(
                    f"UPDATE {_TABLE} SET state = ?, error = NULL{task}, updated_at = {clock} "
                    f"WHERE state = ? AND (owner IS NULL OR lease_until < {clock}) "
                    f"AND key IN {self._KEYS}",
                    [to.value, *params, was.value, *params, wanted],
                )

    async def claim(
        self,
        owner: str,
        lease: float,
        keys: Iterable[str],
        *,
        running: int,
        max_active: int,
        now: float | None = None,
    ) -> list[LedgerRow]:
        """Claim free jobs of `keys` for `owner`, for `lease` seconds: CREATED ones (up to
        `running`), then NEW ones while fewer than `max_active` generations run in all (on
        the whole ledger) and the worker has room (`running` left)."""
        clock, params = self._clock(now)
        wanted = json.dumps(list(keys))

        async def pick(tx: _Tx, state: JobState, limit: int) -> list[LedgerRow]:
            if limit <= 0:
                return []
            found = await tx(
                f"UPDATE {_TABLE} SET owner = ?, lease_until = {clock} + ?, updated_at = {clock} "
                f"WHERE key IN (SELECT key FROM {_TABLE} WHERE state = ? "
                f"AND key IN {self._KEYS} AND (owner IS NULL OR lease_until < {clock}) "
                f"ORDER BY key LIMIT ?{self._SKIP_LOCKED}) RETURNING {_COLUMNS}",
                [owner, *params, lease, *params, state.value, wanted, *params, limit],
            )
            return sorted(map(_row, found), key=lambda row: row.key)  # in key order

        async with self._transaction() as tx:
            await self._serialize(tx)
            resumed = await pick(tx, JobState.CREATED, running)
            # Running, being sent, or claimed to be sent, by a live worker (of any file) count
            # alike; a generation no worker holds (its run stopped) is not counted.
            counted = await tx(
                f"SELECT count(*) FROM {_TABLE} WHERE state IN (?, ?, ?) "
                f"AND owner IS NOT NULL AND lease_until >= {clock}",
                [JobState.SUBMITTING.value, JobState.CREATED.value, JobState.NEW.value, *params],
            )
            room = min(running - len(resumed), max_active - int(counted[0][0]))
            return resumed + await pick(tx, JobState.NEW, room)

    async def write(self, owner: str, moves: Sequence[Move]) -> None:
        """Record the rows of `moves` (state, task id, error, path, creates) of jobs this
        worker holds, in one statement: all of them, or none and LostClaim (another worker
        holds one now, or it is no longer where the writer saw it). Each move is checked
        against the state table first. Committed (and on disk) on return."""
        if not moves:
            return
        for was, row in moves:
            check(was, row.state)
        rows = [row for _, row in moves]
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
        clock, now = self._clock(None)
        params: list[object] = []
        for values in columns.values():
            for key, value in zip(keys, values, strict=True):
                params += (key, value)
        seen = [item for move in moves for item in (move.row.key, move.was.value)]
        params += (*now, owner, *keys, owner, *keys, *seen, len(keys))
        sql = (
            f"UPDATE {_TABLE}{self._BY_KEY} SET {assignments}, updated_at = {clock} "
            f"WHERE owner = ? AND key IN ({marks}) "
            f"AND (SELECT count(*) FROM {_TABLE}{self._BY_KEY} "
            f"WHERE owner = ? AND key IN ({marks}) "
            f"AND state = CASE key {whens} END) = ?"
        )
        async with self._statement() as tx:
            await tx(sql, params)
            if tx.rowcount != len(keys):  # (none, as the statement is atomic)
                raise LostClaim(keys[0] if len(keys) == 1 else ", ".join(keys))

    async def renew(self, owner: str, keys: Sequence[str], lease: float) -> set[str]:
        """Extend this worker's claims on `keys` by `lease` seconds; returns those it holds."""
        if not keys:
            return set()
        clock, params = self._clock(None)
        async with self._transaction() as tx:
            found = await tx(
                f"UPDATE {_TABLE}{self._BY_KEY} SET lease_until = {clock} + ? "
                f"WHERE owner = ? AND key IN {self._KEYS} RETURNING key",
                [*params, lease, owner, json.dumps(list(keys))],
            )
        return {r[0] for r in found}

    async def release(self, owner: str) -> None:
        """Give up this worker's claims."""
        async with self._transaction() as tx:
            await tx(f"UPDATE {_TABLE} SET owner = NULL, lease_until = 0 WHERE owner = ?", [owner])


def _sqlite_path(text: str) -> Path:
    """A folder (its ledger file inside), or the ledger file itself."""
    path = Path(text).expanduser()
    return path if path.suffix in (".sqlite", ".db") else path / LEDGER_FILE


def _conflict_message(keys: Sequence[str]) -> str:
    named = ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
    return (
        f"the line of {named} asks for another request than the one already sent under "
        "that key; nothing was sent. Give the edited line a new key (a failed job takes "
        "its edited line with {retry_failed})"
    )


def _row(raw: Sequence[Any]) -> LedgerRow:
    key, request, state, task_id, error, path, creates = raw
    return LedgerRow(key, json.loads(request), JobState(state), task_id, error, path, creates)


class SQLiteLedger(Ledger):
    """A ledger in a SQLite file (WAL: readers never wait). A job's move is one statement,
    made on the event loop, synced to disk before it returns (``synchronous = FULL``: a
    power cut cannot lose the write before a create; about 0.5 ms here). Claims and leases
    are committed without the sync (``NORMAL``): a power cut loses at most a lease."""

    inline = True
    _NOW = "((julianday('now') - 2440587.5) * 86400.0)"
    _KEYS = "(SELECT value FROM json_each(?))"
    _BY_KEY = f" INDEXED BY sqlite_autoindex_{_TABLE}_1"

    def __init__(self, path: Path) -> None:
        if sqlite3.sqlite_version_info < SQLITE_NEEDED:
            raise ConfigurationError(
                f"the jobs ledger needs SQLite {'.'.join(map(str, SQLITE_NEEDED))} or newer; "
                f"this Python has {sqlite3.sqlite_version}. Use a newer Python, or a "
                "postgresql:// ledger"
            )
        super().__init__(str(path))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            _switch_to_wal(self._db)
            self._synchronous = ""
            self._sync("NORMAL")
        except (OSError, sqlite3.Error) as exc:
            raise DestinationError(f"cannot open the ledger {path}: {exc}") from exc

    def _runner(self, cursor: sqlite3.Cursor) -> Any:
        async def run(sql: str, params: Sequence[object]) -> tuple[list[Any], int]:
            try:
                cursor.execute(sql, params)
            except sqlite3.OperationalError as exc:  # a full or read-only disk, say
                raise DestinationError(f"cannot write the ledger {self.url}: {exc}") from exc
            return cursor.fetchall(), cursor.rowcount

        return run

    def _sync(self, level: str) -> None:
        if level != self._synchronous:
            self._db.execute(f"PRAGMA synchronous = {level}")
            self._synchronous = level

    @contextlib.asynccontextmanager
    async def _statement(self) -> AsyncIterator[_Tx]:
        # One statement is a transaction of its own: no BEGIN and COMMIT around it.
        self._sync("FULL")
        yield _Tx(self._runner(self._db.cursor()), "?")

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[_Tx]:
        yield _Tx(self._runner(self._db.cursor()), "?")  # WAL: a snapshot, no lock

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Tx]:
        self._sync("NORMAL")
        cursor = self._db.cursor()
        run = self._runner(cursor)
        try:
            cursor.execute("BEGIN IMMEDIATE")  # the write lock now: claims never interleave
        except sqlite3.OperationalError as exc:
            raise DestinationError(f"cannot write the ledger {self.url}: {exc}") from exc
        try:
            yield _Tx(run, "?")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        try:
            cursor.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            with contextlib.suppress(sqlite3.Error):
                cursor.execute("ROLLBACK")
            raise DestinationError(f"cannot write the ledger {self.url}: {exc}") from exc

    async def close(self) -> None:
        self._db.close()


def _switch_to_wal(db: sqlite3.Connection) -> None:
    """WAL mode, waiting a while for the lock: two workers opening a new ledger at once both
    switch it, and the switch does not wait on SQLite's busy timeout."""
    for _ in range(_WAL_TRIES):
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            time.sleep(_WAL_PAUSE)
    db.execute("PRAGMA journal_mode = WAL")


#: Tries, and seconds between them, to switch a new ledger to WAL while another holds it.
_WAL_TRIES = 200
_WAL_PAUSE = 0.025


class PostgresLedger(Ledger):
    """A ledger in a PostgreSQL table, shared by workers on several machines, through
    psycopg's AsyncConnection: no call holds the event loop."""

    _NOW = "extract(epoch from clock_timestamp())::float8"
    _KEYS = "(SELECT jsonb_array_elements_text(?::jsonb))"
    _SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
    _placeholder = "%s"

    def __init__(self, url: str, db: Any) -> None:
        super().__init__(url)
        self._db = db
        self._lock = asyncio.Lock()  # one connection: one transaction at a time

    @classmethod
    async def connect(cls, url: str) -> PostgresLedger:
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigurationError(
                "a PostgreSQL ledger needs psycopg: pip install 'deerluma[postgres]'"
            ) from exc
        shown = without_password(url)
        try:
            db = await psycopg.AsyncConnection.connect(url, autocommit=True)
        except psycopg.Error as exc:
            message = str(exc).replace(url, shown)
            raise ConfigurationError(f"cannot open the ledger at {shown}: {message}") from None
        ledger = cls(shown, db)
        await ledger._migrate()
        return ledger

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Tx]:
        async with self._lock, self._db.transaction(), self._db.cursor() as cursor:

            async def run(sql: str, params: Sequence[object]) -> tuple[list[Any], int]:
                await cursor.execute(sql, params)
                rows = await cursor.fetchall() if cursor.description else []
                return rows, cursor.rowcount

            yield _Tx(run, "%s")

    async def _serialize(self, tx: _Tx) -> None:
        await tx("SELECT pg_advisory_xact_lock(hashtext(?))", [_TABLE])

    async def close(self) -> None:
        await self._db.close()
