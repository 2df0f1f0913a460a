"""status: a durable run's jobs, and those that need a person."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..jobs import LEDGER_FILE, JobResult, JobState

if TYPE_CHECKING:
    pass
from .app import App
from .errors import EXIT_OK
from .output import _job_line, _run_summary


async def cmd_status(app: App) -> int:
    from ..jobs import Ledger

    a = app.args
    if (a.out is None) == (a.ledger is None):
        raise ValueError("give a run's --out folder, or --ledger URL (one of them)")
    where = a.ledger or a.out
    if a.ledger is None and not (Path(a.out) / LEDGER_FILE).exists():
        raise ValueError(f"no ledger in {a.out}: was `deerluma run ... --out {a.out}` run?")
    async with await Ledger.open(where) as ledger:
        rows = await ledger.rows()
    results = [JobResult.of(row) for row in rows]
    if a.json:
        for result in results:
            app.emit(_job_line(result))
        _run_summary(app, results, app.console.file)
    else:
        _run_summary(app, results, app.out)
    sending = [r for r in rows if r.state is JobState.SUBMITTING]
    for row in sending:  # only a worker killed mid-create leaves these; a run reaps them
        print(
            f"  outcome unknown (may be charged): {row.key}: its worker stopped while sending "
            "its create (or is sending it now)",
            file=app.console.file if a.json else app.out,
        )
    return EXIT_OK
