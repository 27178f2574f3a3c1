"""One in-flight computation per key, shared by every caller that asks meanwhile.

The work runs in its own task; callers await it through ``asyncio.shield``, so a caller that is
cancelled (its client disconnected) stops waiting without cancelling the work the others still
wait for. If the work fails, every waiter gets the same exception and the key is free again, so
the next call starts afresh: failures are never remembered.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Task[V]] = {}
        self.started = 0  # how many computations ran (for tests and /metrics)

    async def do(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        task = self._flights.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self.started += 1
            self._flights[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        return await asyncio.shield(task)

    def _forget(self, key: K, done: asyncio.Task[V]) -> None:
        if self._flights.get(key) is done:
            del self._flights[key]
        if not done.cancelled():
            done.exception()  # mark retrieved: nobody may be waiting any more

    def __len__(self) -> int:
        return len(self._flights)
