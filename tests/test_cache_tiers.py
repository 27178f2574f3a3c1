"""Every cache tier passes CacheTierSuite; then what only the disk and tiered caches promise."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.cache import CacheTier, DiskTier, MemoryTier, TieredCache
from relay.testing import CacheTierSuite
from relay.testing.cache_suite import BUDGET, ENTRY, value


class TestMemoryTier(CacheTierSuite):
    def make_tier(self, path: Path, budget: int) -> CacheTier:
        return MemoryTier(budget)


class TestDiskTier(CacheTierSuite):
    slack = ENTRY + 64 * 1024  # one entry, plus its checksum frame and SQLite's own pages

    def make_tier(self, path: Path, budget: int) -> CacheTier:
        return DiskTier(path, budget)


class TestTieredCache(CacheTierSuite):
    """A TieredCache is a tier itself: of one memory tier, it behaves as that tier."""

    def make_tier(self, path: Path, budget: int) -> CacheTier:
        return TieredCache([MemoryTier(budget)])


# --- disk ------------------------------------------------------------------------------------


def _value_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*.val")]


async def test_disk_survives_reopen(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, BUDGET)
    await tier.put("k", value(1))
    await tier.aclose()
    again = DiskTier(tmp_path, BUDGET)
    assert await again.get("k") == value(1)
    await again.aclose()


async def test_disk_flipped_byte_is_a_miss_and_removed(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, BUDGET)
    await tier.put("k", value(1))
    (file,) = _value_files(tmp_path)
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    assert await tier.get("k") is None
    assert tier.stats()["corrupt"] == 1
    assert await tier.get("k") is None  # removed, not re-read as corrupt again
    assert tier.stats()["corrupt"] == 1
    await tier.put("k", value(2))  # and the tier keeps working
    assert await tier.get("k") == value(2)
    await tier.aclose()


async def test_disk_truncated_file_is_a_miss(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, BUDGET)
    await tier.put("k", value(1))
    (file,) = _value_files(tmp_path)
    file.write_bytes(file.read_bytes()[:1000])
    assert await tier.get("k") is None
    await tier.aclose()


async def test_disk_deleted_file_is_a_miss(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, BUDGET)
    await tier.put("k", value(1))
    (file,) = _value_files(tmp_path)
    file.unlink()
    assert await tier.get("k") is None
    await tier.aclose()


# --- tiered ----------------------------------------------------------------------------------


async def test_tiered_promotes_disk_hits_to_memory(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, BUDGET)
    await disk.put("k", value(1))
    memory = MemoryTier(BUDGET)
    cache = TieredCache([memory, disk])
    assert await cache.get("k") == value(1)
    assert cache.counters["disk_hits"] == 1
    assert await memory.get("k") == value(1)
    assert await cache.get("k") == value(1)
    assert cache.counters["memory_hits"] == 1
    await cache.aclose()


async def test_tiered_writes_behind_to_disk(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path, BUDGET)
    cache = TieredCache([MemoryTier(BUDGET), disk])
    await cache.put("k", value(1))
    await cache.drain()
    assert cache.pending_writes == 0
    assert await disk.get("k") == value(1)
    await cache.aclose()


async def test_tiered_drops_writes_past_the_pending_bound(tmp_path: Path) -> None:
    gate = asyncio.Event()

    class SlowTier(MemoryTier):
        name = "slow"

        async def put(self, key: str, value: bytes) -> None:
            await gate.wait()
            await super().put(key, value)

    slow = SlowTier(BUDGET)
    cache = TieredCache([MemoryTier(BUDGET), slow], max_pending_bytes=2 * ENTRY)
    for i in range(4):
        await cache.put(f"k{i}", value(i))
    assert cache.pending_writes == 2
    assert cache.counters["slow_writes_dropped"] == 2
    gate.set()
    await cache.drain()
    assert await slow.get("k0") == value(0)
    assert await slow.get("k3") is None
    await cache.aclose()


class BrokenTier(CacheTier):
    name = "broken"

    async def get(self, key: str) -> bytes | None:
        raise OSError("disk on fire")

    async def put(self, key: str, value: bytes) -> None:
        raise OSError("disk on fire")

    async def delete(self, key: str) -> None:
        raise OSError("disk on fire")

    def stats(self) -> dict[str, int]:
        raise OSError("disk on fire")


async def test_tiered_failures_are_misses_not_errors() -> None:
    memory = MemoryTier(BUDGET)
    cache = TieredCache([memory, BrokenTier()])
    assert await cache.get("k") is None
    await cache.put("k", value(1))
    await cache.drain()
    assert await cache.get("k") == value(1)  # memory still serves
    await cache.delete("k")
    assert cache.counters["broken_errors"] >= 3
    assert cache.tier_stats()["broken"] == {}
    await cache.aclose()


async def test_a_lookup_that_raced_a_delete_does_not_promote_the_old_value() -> None:
    """Finding 1 of issue 25: a read that found a key on disk just before a write's delete
    reached the disk put the old value back into memory after the delete had emptied it, and
    the relay served the replaced voxels from then on. Its answer may be the old value (it was
    asked before the delete was over); memory must not keep it."""
    found_it, go_on = asyncio.Event(), asyncio.Event()

    class SlowDisk(MemoryTier):  # a lower tier whose read is slow after it has the value
        name = "disk"

        async def get(self, key: str) -> bytes | None:
            got = await super().get(key)
            found_it.set()
            await go_on.wait()
            return got

    memory, disk = MemoryTier(BUDGET), SlowDisk(BUDGET)
    await disk.put("k", value(1))
    cache = TieredCache([memory, disk])
    lookup = asyncio.ensure_future(cache.find("k"))
    await found_it.wait()
    await cache.delete("k")  # memory, then the disk: the lookup holds the old value already
    go_on.set()
    assert await lookup == (value(1), "disk")
    assert await memory.get("k") is None
    assert await cache.get("k") is None
    assert cache.counters["promotions_skipped"] == 1
    # a lookup that begins after a delete has ended promotes as ever
    await disk.put("k", value(2))
    assert await cache.get("k") == value(2)
    assert await memory.get("k") == value(2)
    assert not cache._deleted_at  # no lookup under way: no marks kept
    await cache.aclose()


async def test_a_lookup_that_began_during_a_delete_does_not_promote() -> None:
    """The delete is under way (memory emptied, the disk not yet) when a lookup begins and
    finds the old value on disk: not promoted either."""
    deleting, go_on = asyncio.Event(), asyncio.Event()

    class SlowDeleteDisk(MemoryTier):
        name = "disk"

        async def delete(self, key: str) -> None:
            deleting.set()
            await go_on.wait()
            await super().delete(key)

    memory, disk = MemoryTier(BUDGET), SlowDeleteDisk(BUDGET)
    await disk.put("k", value(1))
    await memory.put("k", value(1))
    cache = TieredCache([memory, disk])
    delete = asyncio.ensure_future(cache.delete("k"))
    await deleting.wait()
    assert await cache.find("k") == (value(1), "disk")
    go_on.set()
    await delete
    assert await memory.get("k") is None
    assert await cache.get("k") is None
    await cache.aclose()
