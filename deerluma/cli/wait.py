"""wait: ids as one batch, with live progress; one line per task."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .output import Row
from .app import App
from .errors import exit_code_for
from .output import save_row, track


async def cmd_wait(app: App) -> int:
    from .output import generation_json, summary_table

    ids = list(dict.fromkeys(app.args.task_ids))
    async with app.session(max_rps=app.args.max_rps) as s:
        rows = await track(app, s, ids, timeout=app.args.timeout, concurrency=app.args.concurrency)
        if app.args.download:
            for row in rows:
                if row.error is None and row.generation is not None:
                    row.error = await save_row(app, s, row.generation, app.args.download)
    for row in rows:
        if app.args.json:
            app.emit(generation_json(row.task_id, row.generation, row.error))
        else:
            print(_plain(row), file=app.out)
    if not app.args.json:
        app.console.print(summary_table(rows))
    return exit_code_for(row.error for row in rows)


def _plain(row: Row) -> str:
    g = row.generation
    if row.error is not None:
        return f"{row.task_id}\t{type(row.error).__name__}\t{row.error}"
    url = g.video.download_url or g.video.url if g is not None and g.video else ""
    return f"{row.task_id}\tcompleted\t{url}"
