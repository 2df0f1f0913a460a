"""download: one finished generation's file, with a bar."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass
from .app import App
from .errors import EXIT_OK
from .output import save


async def cmd_download(app: App) -> int:
    async with app.session() as s:
        g = await s.get_generation(app.args.task_id)
        path = await save(
            app, s, g, app.args.dest, asset=app.args.asset, overwrite=app.args.overwrite
        )
    print(path, file=app.out)
    return EXIT_OK
