"""Tiers stacked fastest first: read-through with promotion, and write-behind below the top.

A ``TieredCache`` is itself a ``CacheTier`` (it passes ``CacheTierSuite``): what it holds is
what its fastest tier holds, and a value on its way to a slower tier (below) stays readable.

Every tier call goes through ``_guard``: an exception from a tier is counted, logged once per
tier and kind, and becomes a miss (on get) or a skipped write (on put). A broken disk makes the
relay slower, never wrong and never failing.

Writes to the first tier happen before ``put`` returns (it is memory, and the request that
fetched the value is about to be answered anyway). Writes to slower tiers run as background
tasks so a diskcache ``set`` (a file write and a SQLite commit) never sits on the response
path; their pending bytes are bounded, and past the bound a write is dropped (the entry is
simply not cached there).

A delete is final for every lookup that did not end before it began. A lookup that finds a key
in a slower tier copies it into the faster ones (promotion), but the copy is made only when no
delete of that key began since the lookup did: otherwise a read that found the old value on
disk just before a write's delete reached the disk would put it back into memory after the
delete had emptied memory, and the relay would serve the voxels the write replaced for as long
as memory kept them. (The value itself is still the answer to that read: it was asked before
the delete was over.)
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

from .base import CacheTier, Leasing, Versioned

__all__ = ["DEFAULT_PENDING_BYTES", "MIN_PENDING_BYTES", "TieredCache"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the write-behind's backlog, at most (``relay.app`` makes it no more than the memory tier's
#: budget, and no less than the smaller figure)
DEFAULT_PENDING_BYTES = 256 * 2**20
MIN_PENDING_BYTES = 32 * 2**20
#: deletes remembered against promotions before the ones no lookup can need are let go
_MARKS = 4096


class TieredCache(CacheTier):
    name = "tiered"

    def __init__(
        self, tiers: Sequence[CacheTier], max_pending_bytes: int = DEFAULT_PENDING_BYTES
    ) -> None:
        self.tiers = list(tiers)
        #: the tier a fleet shares, with its depth (found once: a protocol check is slow)
        self._shared: tuple[int, Leasing] | None = next(
            ((depth, tier) for depth, tier in enumerate(self.tiers) if isinstance(tier, Leasing)),
            None)
        self.max_pending_bytes = max_pending_bytes
        self._pending: set[asyncio.Task[None]] = set()
        #: the latest write-behind of each key, so a delete can wait for it to land first
        self._pending_by_key: dict[str, asyncio.Task[None]] = {}
        self._pending_bytes = 0
        # Values on their way to a slower tier, readable meanwhile: a get between a put and its
        # write-behind landing must not miss (with the memory tier off or evicted, it would
        # send the request upstream again). Not a tier: it is the write-behind's own queue,
        # emptied as each write lands.
        self._in_transit: dict[str, bytes] = {}
        self.counters: dict[str, int] = {}
        self._logged: set[tuple[str, str]] = set()
        for tier in self.tiers:
            for event in ("hits", "errors", "writes_dropped"):
                self.counters[f"{tier.name}_{event}"] = 0
        self.counters["misses"] = 0
        self.counters["in_transit_hits"] = 0
        self.counters["promotions_skipped"] = 0
        # Deletes against promotions (see the module): a clock that ticks at every lookup's
        # start and every delete's start and end; each key's last delete tick; the ticks of the
        # lookups under way. A key's mark is needed only while a lookup that began before it
        # is under way, so marks are let go when no lookup is (the table stays small).
        self._tick = 0
        self._deleted_at: dict[str, int] = {}
        self._deleting: dict[str, int] = {}
        self._lookups: dict[int, int] = {}  # a lookup's start tick → how many began then

    async def get(self, key: str) -> bytes | None:
        return (await self.find(key))[0]

    async def find(self, key: str) -> tuple[bytes | None, str | None]:
        """``get``, and the name of the tier that held the value (None on a miss; "memory"
        for a value still on its way down, which is held in memory)."""
        began = self._begin_lookup()
        try:
            for depth, tier in enumerate(self.tiers):
                value = await self._guard(tier, "get", functools.partial(tier.get, key))
                if value is not None:
                    await self._hit(depth, key, value, began)
                    return value, tier.name
        finally:
            self._end_lookup(began)
        value = self._in_transit.get(key)
        if value is not None:
            self.counters["in_transit_hits"] += 1
            return value, "memory"
        self.counters["misses"] += 1
        return None, None

    @asynccontextmanager
    async def lease(self, key: str) -> AsyncIterator[bytes | None]:
        """Around an upstream read of ``key`` after a miss: the shared tier's lease when there
        is one (``Leasing``), so a fleet reads each key once. A value another process stored
        meanwhile is yielded, promoted into the tiers above; None: read, then ``put``."""
        if self._shared is None:
            yield None
            return
        depth, tier = self._shared
        began = self._begin_lookup()
        looking = True
        try:
            async with tier.lease(key) as supplied:
                if supplied is not None:
                    await self._hit(depth, key, supplied, began)
                # the lookup ends here; the caller's upstream read may be long
                looking = False
                self._end_lookup(began)
                yield supplied
        finally:
            if looking:
                self._end_lookup(began)

    async def _hit(self, depth: int, key: str, value: bytes, began: int) -> None:
        """Count a hit in the tier at ``depth`` and copy the value into the faster tiers,
        unless a delete of ``key`` began since the lookup did (tick ``began``)."""
        self.counters[f"{self.tiers[depth].name}_hits"] += 1
        for upper_depth, upper in enumerate(self.tiers[:depth]):
            if not self._promotable(key, began):
                self.counters["promotions_skipped"] += 1
                return
            await self._put_one(upper, key, value, upper_depth)

    def _begin_lookup(self) -> int:
        self._tick += 1
        self._lookups[self._tick] = self._lookups.get(self._tick, 0) + 1
        return self._tick

    def _end_lookup(self, began: int) -> None:
        if (left := self._lookups[began] - 1) > 0:
            self._lookups[began] = left
        else:
            del self._lookups[began]
        if not self._lookups:
            self._deleted_at.clear()
        elif len(self._deleted_at) > _MARKS:
            # a mark older than every lookup under way can stop none of them
            oldest = min(self._lookups)
            self._deleted_at = {k: t for k, t in self._deleted_at.items() if t >= oldest}

    def _promotable(self, key: str, began: int) -> bool:
        """May a value of ``key`` found by a lookup that began at tick ``began`` be copied
        into a faster tier: is no delete of it under way, and did none begin since?"""
        return key not in self._deleting and self._deleted_at.get(key, 0) < began

    async def put(self, key: str, value: bytes) -> None:
        for depth, tier in enumerate(self.tiers):
            await self._put_one(tier, key, value, depth)

    async def _put_one(self, tier: CacheTier, key: str, value: bytes, depth: int) -> None:
        if depth == 0:
            await self._guard(tier, "put", functools.partial(tier.put, key, value))
            return
        if self._pending_bytes + len(value) > self.max_pending_bytes:
            self.counters[f"{tier.name}_writes_dropped"] += 1
            return
        self._pending_bytes += len(value)
        self._in_transit[key] = value
        task = asyncio.create_task(self._write_behind(tier, key, value))
        self._pending.add(task)
        self._pending_by_key[key] = task
        task.add_done_callback(functools.partial(self._landed, key))

    def _landed(self, key: str, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if self._pending_by_key.get(key) is task:
            del self._pending_by_key[key]

    async def _write_behind(self, tier: CacheTier, key: str, value: bytes) -> None:
        try:
            await self._guard(tier, "put", functools.partial(tier.put, key, value))
        finally:
            self._pending_bytes -= len(value)
            if self._in_transit.get(key) is value:
                del self._in_transit[key]

    async def delete(self, key: str) -> None:
        """Remove ``key`` from every tier; a write-behind of it still on its way down lands
        first, so it cannot put the value back after the delete (a write to the store drops
        what it touched this way)."""
        self._tick += 1
        self._deleting[key] = self._deleting.get(key, 0) + 1
        try:
            self._in_transit.pop(key, None)
            while (pending := self._pending_by_key.get(key)) is not None and not pending.done():
                await asyncio.wait([pending])
            for tier in self.tiers:
                await self._guard(tier, "delete", functools.partial(tier.delete, key))
        finally:
            self._tick += 1
            if self._lookups:  # (a lookup that began before this one may still promote)
                self._deleted_at[key] = self._tick
            if (left := self._deleting[key] - 1) > 0:
                self._deleting[key] = left
            else:
                del self._deleting[key]

    @property
    def versioned(self) -> bool:
        """Is there a shared tier keeping the fleet's write versions (``Versioned``)?"""
        return self._shared is not None and isinstance(self._shared[1], Versioned)

    async def versions(self, keys: Sequence[str]) -> list[str] | None:
        """The fleet's write version of each key (``Versioned.versions``), or None when the
        shared tier cannot say (it is down: nothing cached may be trusted for them)."""
        return await self._versioned().versions(keys)

    def _versioned(self) -> Versioned:
        assert self._shared is not None
        tier = self._shared[1]
        assert isinstance(tier, Versioned)
        return tier

    async def bump(self, keys: Sequence[str], writing_for: float | None = None) -> bool:
        """Make every relay of the fleet read ``keys`` afresh (see ``versions``), marked as
        being written for ``writing_for`` seconds or no longer; False when the shared tier
        could not be told."""
        return await self._versioned().bump(keys, writing_for)

    async def settled(self, versioned_key: str) -> bool:
        """May the value just read for ``versioned_key`` (a key and its version, as
        ``CutoutService.versioned`` makes them) be cached? Not when a write of it has begun
        since, or is under way (see ``Versioned.settled``)."""
        key, _, version = versioned_key.rpartition("@")
        return await self._versioned().settled(key, version)

    async def end_lease(self, key: str) -> None:
        await self._versioned().end_lease(key)

    async def drain(self) -> None:
        """Wait for every write-behind to land (shutdown, tests)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    @property
    def pending_writes(self) -> int:
        return len(self._pending)

    async def aclose(self) -> None:
        await self.drain()
        for tier in self.tiers:
            await self._guard(tier, "close", tier.aclose)

    def tier_stats(self) -> dict[str, dict[str, int]]:
        """Each tier's own statistics, by tier name."""
        out: dict[str, dict[str, int]] = {}
        for tier in self.tiers:
            try:
                out[tier.name] = tier.stats()
            except Exception:
                out[tier.name] = {}
        return out

    def stats(self) -> dict[str, int]:
        """The fastest tier's size, the writes still on their way down, and the counters."""
        top = self.tier_stats().get(self.tiers[0].name, {}) if self.tiers else {}
        return {"bytes": top.get("bytes", 0), "pending_writes": self.pending_writes,
                **self.counters}

    async def _guard(
        self, tier: CacheTier, op: str, call: Callable[[], Awaitable[T]]
    ) -> T | None:
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counters[f"{tier.name}_errors"] += 1
            if (tier.name, op) not in self._logged:
                self._logged.add((tier.name, op))
                log.warning("cache tier %s failed on %s (%s); treating as a miss", tier.name,
                            op, exc)
            return None
