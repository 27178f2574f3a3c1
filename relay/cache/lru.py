"""An LRU bounded by the total size of its values, for values that live in this process.

Used by the memory tier (packed cuboids, sized in bytes) and by the cutout service's decoded
cuboids (numpy arrays, sized by ``nbytes``). It runs on the event loop's thread and never
awaits, so it needs no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["SizedLRU"]

V = TypeVar("V")


class SizedLRU(Generic[V]):
    def __init__(self, budget: int, size: Callable[[V], int]) -> None:
        self.budget = budget
        self._size = size
        self._entries: OrderedDict[str, V] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        """Least recently used first."""
        return list(self._entries)

    def get(self, key: str) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        self.discard(key)
        size = self._size(value)
        if size > self.budget:
            return  # would evict everything and still not fit
        self._entries[key] = value
        self.bytes += size
        while self.bytes > self.budget:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= self._size(evicted)
            self.evictions += 1

    def discard(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= self._size(old)
