"""The cache-tier interface. A miss is ``None``; values are opaque bytes (packed cuboids)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import ClassVar, Literal, Protocol, runtime_checkable

__all__ = ["CacheTier", "Checked", "Inventoried", "Leasing", "Versioned"]

#: what checking one entry found: whole, damaged (and removed), gone meanwhile, or foreign (not
#: written by a relay: never read as a value, left alone)
Checked = Literal["whole", "damaged", "gone", "foreign"]


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


@runtime_checkable
class Leasing(Protocol):
    """A tier several processes share, which can make one of them read a key upstream while
    the others wait (``relay.cache.redis``)."""

    def lease(self, key: str) -> AbstractAsyncContextManager[bytes | None]:
        """Enter before reading ``key`` upstream: yields the value when another process stored
        it (before or meanwhile), else None, and the caller reads and puts it. A put of the
        key, or leaving the block with an exception, ends the lease."""
        ...


@runtime_checkable
class Versioned(Protocol):
    """A shared tier that keeps a write version per key for a fleet (``relay.cache.redis``):
    relays cache a writable source's cuboid under its key and version, so a write that bumps
    the version makes every relay's copies of the old one unreachable at once (docs/writes.md)."""

    async def versions(self, keys: Sequence[str]) -> list[str] | None:
        """Each key's version, a token made afresh by each bump and whenever the tier has
        lost the key's version (so never one an earlier copy was cached under); None when the
        tier cannot be asked."""
        ...

    async def bump(self, keys: Sequence[str], writing_for: float | None = None) -> bool:
        """Give each key a new version; with ``writing_for``, mark the keys as being written
        for at most that many seconds (a writer killed mid-write leaves the mark to expire),
        else clear the mark. False when the tier could not be told."""
        ...

    async def settled(self, key: str, version: str) -> bool:
        """May what was read of ``key`` under ``version`` be cached: is that still its version,
        with no write of it under way? False when the tier cannot say."""
        ...

    async def end_lease(self, key: str) -> None:
        """End a lease taken by ``lease`` without storing a value."""
        ...


@runtime_checkable
class Inventoried(Protocol):
    """A tier that outlives a relay (disk, Redis): its entries can be listed, checked and
    removed from outside one (``relay cache``), while relays use it."""

    #: how many keys the last ``entries`` left out: keys under the tier's name that a relay
    #: did not write (another program's, a tampered row), which nothing here touches
    foreign_keys: int

    def entries(self) -> AsyncIterator[tuple[str, int]]:
        """Every key a relay wrote, with the bytes it takes, in no particular order."""
        ...

    async def check(self, key: str) -> Checked:
        """Read ``key`` and check its checksum; a damaged entry is removed."""
        ...
