"""Reads and writes of one writable channel, kept apart inside one relay process.

A write to a store is not one instant: zarr and cloud-volume write chunk after chunk, DVID
takes a POST per box, and a relay cuboid may span several store chunks. A read of the store
meanwhile could see some chunks new and some old inside one cuboid, and a read that began
before the write could put what it read into the cache after the write dropped it. So, per
channel: a write waits until the store reads in flight have finished and been cached, holds
new store reads off while it writes and drops the cached cuboids it touched, and then lets
them go on (they read the new voxels). Cache hits never wait: a hit during a write is the old
voxels, whole, which is what a read racing a write may see.

Writers are preferred (a steady stream of reads cannot hold a write off for ever), with one
exception that keeps a derived level from deadlocking against a waiting writer: a read made
*inside* a read that already holds the gate (a derived cuboid reading the finer level) goes
ahead, because the writer is waiting for the outer one. ``held`` is a context variable, so it
follows the inner reads into the tasks they start.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["Gates", "ReadWriteGate"]

#: the gates this task (and the tasks it started) holds for reading
_held: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("relay_gates_held",
                                                                       default=frozenset())


class ReadWriteGate:
    def __init__(self) -> None:
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0
        self._changed = asyncio.Condition()
        self._waking: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        """Around a store read and the caching of what it read."""
        nested = id(self) in _held.get()
        async with self._changed:
            # an outer read of this task holds the gate: only a writer at work (which means
            # the outer read was given up meanwhile) is waited for, never a waiting one
            await self._changed.wait_for(
                lambda: not self._writing and (nested or not self._writers_waiting))
            self._readers += 1
        token = _held.set(_held.get() | {id(self)})
        try:
            yield
        finally:
            _held.reset(token)
            self._readers -= 1
            self._wake()

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """Around a store write and the dropping of the cuboids it touched; one at a time."""
        async with self._changed:
            self._writers_waiting += 1
            try:
                await self._changed.wait_for(lambda: not self._writing and not self._readers)
            finally:
                self._writers_waiting -= 1
                self._changed.notify_all()  # a writer given up no longer holds reads off
            self._writing = True
        try:
            yield
        finally:
            self._writing = False
            self._wake()

    def _wake(self) -> None:
        """Let the waiters look again. Called from a ``finally`` that a second cancellation
        could interrupt while it waited for the condition's lock (a reader's count left up
        would hold every write off for good), so the count changes at once and the waking is
        a task of its own."""
        task = asyncio.ensure_future(self._notify())
        self._waking.add(task)
        task.add_done_callback(self._waking.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    @property
    def idle(self) -> bool:
        return not (self._readers or self._writing or self._writers_waiting)


class Gates:
    """One gate per writable channel (by the key prefix its cuboids are cached under)."""

    def __init__(self) -> None:
        self._gates: dict[str, ReadWriteGate] = {}

    def __call__(self, name: str) -> ReadWriteGate:
        gate = self._gates.get(name)
        if gate is None:
            # idle gates are let go, so the table holds the channels in use, not every one
            # ever written
            if len(self._gates) > 1024:
                self._gates = {k: g for k, g in self._gates.items() if not g.idle}
            gate = self._gates[name] = ReadWriteGate()
        return gate
