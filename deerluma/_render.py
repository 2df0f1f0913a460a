"""How the command line shows generations: rich tables on a terminal, plain text elsewhere."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._gate import RateView
from ._models import Generation, GenerationState
from .exceptions import DeerLumaError

__all__ = [
    "Row",
    "generation_json",
    "print_generation",
    "progress_table",
    "result_line",
    "summary_table",
]

_STYLES = {
    GenerationState.COMPLETED: "green",
    GenerationState.FAILED: "red",
    GenerationState.PENDING: "yellow",
    GenerationState.QUEUED: "yellow",
    GenerationState.PROCESSING: "cyan",
    GenerationState.DREAMING: "cyan",
    GenerationState.UNKNOWN: "magenta",
}


class Row:
    """What the live table knows about one task."""

    __slots__ = ("error", "finished", "generation", "label", "seen_at", "started", "task_id")

    def __init__(self, task_id: str, label: str = "") -> None:
        self.task_id = task_id
        self.label = label
        self.generation: Generation | None = None
        self.error: DeerLumaError | None = None
        self.started = time.monotonic()
        self.seen_at = self.started
        self.finished: float | None = None

    def update(self, generation: Generation) -> bool:
        """Record a newer view; True when its state changed."""
        before, self.generation = self.generation, generation
        self.seen_at = time.monotonic()
        return before is None or before.state is not generation.state

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def status(self) -> Text:
        if self.error is not None:
            if self.generation is not None and self.generation.state is GenerationState.FAILED:
                return Text("failed", style="red")
            return Text(type(self.error).__name__, style="red")
        if self.generation is None:
            return Text("starting", style="dim")
        state = self.generation.state
        return Text(state.value, style=_STYLES[state])

    def detail(self) -> str:
        g = self.generation
        if self.error is not None:
            reason = g.failure_reason if g is not None and g.failure_reason else str(self.error)
            return reason[:60]
        if g is None:
            return ""
        if g.estimate_wait_seconds is not None:
            # Count down between polls: the waiter sleeps until the estimate runs out.
            left = max(0.0, g.estimate_wait_seconds - (time.monotonic() - self.seen_at))
            return f"~{left:.0f}s left"
        if isinstance(g.queue_state, Mapping) and "position" in g.queue_state:
            return f"queue position {g.queue_state['position']}"
        return ""


def progress_table(rows: Iterable[Row], title: str = "", rate: RateView | None = None) -> Table:
    """One row per task: id, state, estimate or queue position, elapsed time.

    With `rate`, a footer says how fast the Session is sending and how many 429s it got.
    """
    caption = None
    if rate is not None:
        how = "capped" if rate.max_rps is not None else "learned"
        caption = f"{rate.rps:.0f} requests/s ({how}), {rate.rate_limited} rate-limited"
    table = Table(title=title or None, caption=caption, expand=False)
    table.add_column("task")
    table.add_column("state")
    table.add_column("estimate / reason")
    table.add_column("elapsed", justify="right")
    for row in rows:
        name = row.label or row.task_id
        table.add_row(name[:44], row.status(), row.detail(), f"{row.elapsed:5.1f}s")
    return table


def summary_table(rows: Iterable[Row]) -> Table:
    """The closing tally: how many completed, failed, or errored, and how long it took."""
    rows = list(rows)
    completed = sum(1 for r in rows if r.error is None and r.generation is not None)
    failed = sum(
        1 for r in rows if r.generation is not None and r.generation.state is GenerationState.FAILED
    )
    other = len(rows) - completed - failed
    slowest = max((r.elapsed for r in rows), default=0.0)
    table = Table(title="summary")
    for name in ("tasks", "completed", "failed", "errors", "longest wait"):
        table.add_column(name, justify="right")
    table.add_row(str(len(rows)), str(completed), str(failed), str(other), f"{slowest:.1f}s")
    return table


def generation_json(
    task_id: str, generation: Generation | None, error: DeerLumaError | None
) -> dict[str, object]:
    """One JSON-ready record per task: what the CLI writes with --json and to --out."""
    record: dict[str, object] = {
        "task_id": task_id,
        "state": generation.state.value if generation is not None else None,
        "error": None if error is None else {"type": type(error).__name__, "message": str(error)},
    }
    if generation is not None:
        record["generation"] = dict(generation.raw)
    return record


def result_line(record: Mapping[str, object]) -> str:
    """A record as one JSON line."""
    return json.dumps(record, ensure_ascii=False, default=str)


def generation_fields(generation: Generation) -> list[tuple[str, str]]:
    """One generation as (field, value) pairs: what `get` shows, as a table or as lines."""
    fields = [("id", generation.id), ("state", generation.state.value)]
    for name in ("prompt", "created_at", "estimate_wait_seconds", "failure_reason"):
        value = getattr(generation, name)
        if value is not None:
            fields.append((name, str(value)))
    for name in ("video", "video_raw", "thumbnail", "last_frame"):
        media = getattr(generation, name)
        # The link to fetch, as `wait` prints it: the presigned download_url when there is one.
        url = media and (getattr(media, "download_url", None) or media.url)
        if url:
            size = f" ({media.width}x{media.height})" if media.width and media.height else ""
            fields.append((name, f"{url}{size}"))
    return fields


def print_generation(console: Console, generation: Generation) -> None:
    """A readable view of one generation."""
    table = Table(show_header=False, title=generation.id)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in generation_fields(generation)[1:]:
        shown = Text(value, style=_STYLES[generation.state]) if name == "state" else value
        table.add_row(name.replace("_", " "), shown)
    console.print(table)
