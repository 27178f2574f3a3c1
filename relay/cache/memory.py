"""The memory tier: packed (blosc-compressed) cuboids in an LRU bounded by their bytes, so the
budget holds several times more voxels than it has bytes."""

from __future__ import annotations

from .base import CacheTier
from .lru import SizedLRU

__all__ = ["MemoryTier"]


class MemoryTier(CacheTier):
    name = "memory"

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._lru: SizedLRU[bytes] = SizedLRU(budget_bytes, len)

    async def get(self, key: str) -> bytes | None:
        return self._lru.get(key)

    async def put(self, key: str, value: bytes) -> None:
        self._lru.put(key, value)

    async def delete(self, key: str) -> None:
        self._lru.discard(key)

    def keys(self) -> list[str]:
        return self._lru.keys()

    def stats(self) -> dict[str, int]:
        return {
            "bytes": self._lru.bytes,
            "budget_bytes": self.budget,
            "entries": len(self._lru),
            "evictions": self._lru.evictions,
        }
