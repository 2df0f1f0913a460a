"""What watch() and as_completed() return: async-iterable, closable with `async with`."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Generic, Self, TypeVar

__all__ = ["Updates"]

T = TypeVar("T")


class Updates(Generic[T]):
    """Iterate with ``async for``; use ``async with`` to stop its polling when you break early.

    Breaking out of a bare ``async for`` leaves the polling to be stopped when
    the iterator is garbage-collected; ``async with`` (or ``await
    updates.aclose()``) stops it at once::

        async with s.watch(task_id) as updates:
            async for g in updates:
                if g.state is deerluma.GenerationState.PROCESSING:
                    break
    """

    __slots__ = ("_source",)

    def __init__(self, source: AsyncGenerator[T, None]) -> None:
        self._source = source

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        return await self._source.__anext__()

    async def aclose(self) -> None:
        """Stop polling now; no request stays in flight."""
        await self._source.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
