"""One in-flight computation per key, shared by every caller that asks meanwhile.

The work runs in its own task; callers await it through ``asyncio.shield``, so a caller that is
cancelled (its client disconnected) stops waiting without cancelling the work the others still
wait for. When the last caller leaves before the work is done, nobody wants its result any
more: the work is cancelled too (a client that hangs up does not leave a trail of upstream
reads behind it). If the work fails, every waiter gets the same exception and the key is free
again, so the next call starts afresh: failures are never remembered.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight(Generic[V]):
    __slots__ = ("abandoned", "task", "waiters")

    def __init__(self, task: asyncio.Task[V]) -> None:
        self.task = task
        self.waiters = 0
        self.abandoned = False  # cancelled for want of callers: a new caller starts afresh


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._flights: dict[K, _Flight[V]] = {}
        self.started = 0  # how many computations ran (for tests and /metrics)
        self.abandoned = 0  # how many were cancelled because every caller left

    async def do(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        flight = self._flights.get(key)
        if flight is None or flight.abandoned:
            task = asyncio.ensure_future(work())
            self.started += 1
            flight = self._flights[key] = _Flight(task)
            task.add_done_callback(functools.partial(self._forget, key))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                self.abandoned += 1
                flight.abandoned = True
                flight.task.cancel()

    def _forget(self, key: K, done: asyncio.Task[V]) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight.task is done:
            del self._flights[key]
        if not done.cancelled():
            done.exception()  # mark retrieved: nobody may be waiting any more

    def __len__(self) -> int:
        return len(self._flights)
