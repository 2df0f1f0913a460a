"""get: one generation, as a table, plain lines, or its JSON body."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass
from .app import App, _is_terminal
from .errors import EXIT_OK


async def cmd_get(app: App) -> int:
    from .output import generation_fields, print_generation, result_line

    async with app.session() as s:
        g = await s.get_generation(app.args.task_id, timeout=app.args.timeout)
    if app.args.json:  # the generation itself, as sent: like gh api or kubectl -o json
        print(result_line(dict(g.raw)), file=app.out, flush=True)
    elif not _is_terminal(app.out):  # piped: plain "field<TAB>value" lines a script can read
        for field, value in generation_fields(g):
            print(f"{field}\t{value}", file=app.out)
    else:
        from rich.console import Console

        plain = bool(os.environ.get("NO_COLOR"))
        print_generation(Console(file=app.out, color_system=None if plain else "auto"), g)
    return EXIT_OK
