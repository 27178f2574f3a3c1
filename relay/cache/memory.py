"""The memory tier: an LRU bounded by the bytes of its values.

It lives on the event loop's thread and never awaits inside an operation, so it needs no lock.
Values are packed (blosc-compressed) cuboids, so the budget holds several times more voxels
than it has bytes.
"""

from __future__ import annotations

from collections import OrderedDict

from .base import CacheTier

__all__ = ["MemoryTier"]


class MemoryTier(CacheTier):
    name = "memory"

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._evictions = 0

    async def get(self, key: str) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes) -> None:
        self._remove(key)
        if len(value) > self.budget:
            return  # would evict everything and still not fit
        self._entries[key] = value
        self._bytes += len(value)
        while self._bytes > self.budget:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)
            self._evictions += 1

    async def delete(self, key: str) -> None:
        self._remove(key)

    def _remove(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old)

    def stats(self) -> dict[str, int]:
        return {
            "bytes": self._bytes,
            "budget_bytes": self.budget,
            "entries": len(self._entries),
            "evictions": self._evictions,
        }
