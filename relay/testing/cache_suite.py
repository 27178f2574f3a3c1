"""``CacheTierSuite``: what every cache tier must do.

A subclass implements ``make_tier(path, budget)``, returning a tier rooted under ``path`` with a
byte budget, and states ``slack``: how far past its budget the tier may be after a put (memory:
0; disk: one entry, since diskcache culls after it inserts).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from ..cache.base import CacheTier

__all__ = ["CacheTierSuite"]

ENTRY = 64 * 1024
BUDGET = 16 * ENTRY


def value(i: int, size: int = ENTRY) -> bytes:
    """Distinct, incompressible bytes for entry ``i``."""
    return np.random.default_rng(i).integers(0, 256, size, dtype=np.uint8).tobytes()


class CacheTierSuite(ABC):
    #: how many bytes beyond its budget the tier may hold right after a put
    slack: ClassVar[int] = 0

    @abstractmethod
    def make_tier(self, path: Path, budget: int) -> CacheTier: ...

    @pytest.fixture
    async def tier(self, tmp_path: Path) -> Any:
        tier = self.make_tier(tmp_path / "tier", BUDGET)
        yield tier
        await tier.aclose()

    async def test_miss_is_none(self, tier: CacheTier) -> None:
        assert await tier.get("absent") is None

    async def test_round_trip(self, tier: CacheTier) -> None:
        await tier.put("k", value(1))
        assert await tier.get("k") == value(1)

    async def test_small_and_empty_values(self, tier: CacheTier) -> None:
        await tier.put("small", b"x")
        await tier.put("empty", b"")
        assert await tier.get("small") == b"x"
        assert await tier.get("empty") == b""

    async def test_overwrite_replaces(self, tier: CacheTier) -> None:
        await tier.put("k", value(1))
        await tier.put("k", value(2))
        assert await tier.get("k") == value(2)

    async def test_delete(self, tier: CacheTier) -> None:
        await tier.put("k", value(1))
        await tier.delete("k")
        assert await tier.get("k") is None
        await tier.delete("never-there")  # deleting a miss is fine

    async def test_keys_are_independent(self, tier: CacheTier) -> None:
        for i in range(5):
            await tier.put(f"v1/a/{i}", value(i))
        for i in range(5):
            assert await tier.get(f"v1/a/{i}") == value(i)

    async def test_stays_within_budget(self, tier: CacheTier) -> None:
        for i in range(4 * BUDGET // ENTRY):
            await tier.put(f"k{i}", value(i))
            assert tier.stats()["bytes"] <= BUDGET + self.slack
        # the newest entry survived; the oldest went
        assert await tier.get(f"k{4 * BUDGET // ENTRY - 1}") == value(4 * BUDGET // ENTRY - 1)
        assert await tier.get("k0") is None

    async def test_least_recently_used_goes_first(self, tier: CacheTier) -> None:
        count = BUDGET // ENTRY // 2
        for i in range(count):
            await tier.put(f"k{i}", value(i))
        assert await tier.get("k0") == value(0)  # k0 is now the most recently used
        for i in range(count, 2 * count + count // 2):  # evicts about count // 2 entries
            await tier.put(f"k{i}", value(i))
        assert await tier.get("k0") == value(0)
        assert await tier.get("k1") is None

    async def test_value_bigger_than_budget_is_not_kept(self, tier: CacheTier) -> None:
        await tier.put("small", value(1))
        await tier.put("huge", value(2, BUDGET + ENTRY))
        assert tier.stats()["bytes"] <= BUDGET + self.slack + ENTRY

    async def test_concurrent_use(self, tier: CacheTier) -> None:
        await asyncio.gather(*(tier.put(f"k{i}", value(i)) for i in range(8)))
        got = await asyncio.gather(*(tier.get(f"k{i}") for i in range(8)))
        assert got == [value(i) for i in range(8)]

    async def test_stats(self, tier: CacheTier) -> None:
        await tier.put("k", value(1))
        stats = tier.stats()
        assert stats["bytes"] >= ENTRY
        assert all(isinstance(v, int) for v in stats.values())
