"""The cache-tier interface. A miss is ``None``; values are opaque bytes (packed cuboids)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

__all__ = ["CacheTier"]


class CacheTier(ABC):
    """One level of the cache. Subclasses are named ``<Where>Tier``.

    A tier may raise on I/O trouble; ``TieredCache`` turns every such failure into a miss, so a
    broken tier can slow the relay down but never fail a request.
    """

    name: ClassVar[str]

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def put(self, key: str, value: bytes) -> None:
        """Store ``value``; an entry is visible whole or not at all."""

    @abstractmethod
    async def delete(self, key: str) -> None: ...

    @abstractmethod
    def stats(self) -> dict[str, int]:
        """Counters and sizes for /metrics; ``bytes`` is the tier's current size."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass
