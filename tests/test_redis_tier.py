"""The shared tier against a real redis-server (and a real 3-master Redis Cluster): it passes
CacheTierSuite, with capacity and eviction left to Redis; its leases make one process read and
the others wait; a damaged value is never served; a dead or frozen Redis is a miss, quickly,
and is used again once it is back."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ResponseError

from relay.cache import CacheTier, MemoryTier, RedisTier, TieredCache
from relay.cache import redis as redis_module
from relay.cache.redis import parse_redis_url
from relay.testing import CacheTierSuite
from relay.testing.cache_suite import BUDGET, ENTRY, value

from .servers import RedisClusterServers, RedisServer


def _tier(url: str, **options: Any) -> RedisTier:
    # a prefix of its own: tests share one server and never see each other's keys
    return RedisTier(url, prefix=f"t-{uuid.uuid4().hex[:8]}:", **options)


class TestRedisTier(CacheTierSuite):
    """Capacity and eviction are Redis's own (``maxmemory`` + ``allkeys-lru``): the three
    budget tests are restated here in Redis's terms, on a server given a ``maxmemory``."""

    @pytest.fixture(autouse=True)
    def _server(self, redis_server: RedisServer) -> Iterator[None]:
        self.server = redis_server
        yield
        redis_server.cli("config", "set", "maxmemory", "0")
        redis_server.cli("flushall")

    def make_tier(self, path: Path, budget: int) -> CacheTier:
        return _tier(self.server.url)

    def _full_at(self, budget: int) -> int:
        """Give Redis a maxmemory ``budget`` bytes above what it holds now, evicting by LRU
        over every key it holds (so the order of eviction is exact, not sampled)."""
        used = int(_info(self.server, "used_memory"))
        limit = used + budget
        self.server.cli("config", "set", "maxmemory-policy", "allkeys-lru")
        self.server.cli("config", "set", "maxmemory-samples", "64")
        self.server.cli("config", "set", "maxmemory", str(limit))
        return limit

    async def test_stays_within_budget(self, tier: CacheTier) -> None:
        limit = self._full_at(BUDGET)
        count = 4 * BUDGET // ENTRY
        for i in range(count):
            await tier.put(f"k{i}", value(i))
            assert int(_info(self.server, "used_memory")) <= limit + 2 * ENTRY
        assert await tier.get(f"k{count - 1}") == value(count - 1)
        kept = [await tier.get(f"k{i}") for i in range(count)]
        assert sum(v is not None for v in kept) < count  # Redis evicted, the writes succeeded

    async def test_least_recently_used_goes_first(self, tier: CacheTier) -> None:
        count = BUDGET // ENTRY // 2
        for i in range(count):
            await tier.put(f"k{i}", value(i))
        # Redis's LRU clock ticks once a second: let it tick past the puts, then read k0
        raw = [key for key in self.server.cli("--scan").split() if key.endswith("{k1}")]
        deadline = time.monotonic() + 5
        while int(self.server.cli("object", "idletime", raw[0])) < 1:
            assert time.monotonic() < deadline, "Redis's LRU clock did not advance"
            await asyncio.sleep(0.05)  # polling Redis's own clock
        assert await tier.get("k0") == value(0)  # k0 is now the most recently used
        self._full_at(count // 2 * ENTRY + ENTRY // 2)
        for i in range(count, 2 * count):  # evicts about count // 2 of the old entries
            await tier.put(f"k{i}", value(i))
        assert await tier.get("k0") == value(0)
        assert any([await tier.get(f"k{i}") is None for i in range(1, count)])

    async def test_value_bigger_than_budget_is_not_kept(self, tier: CacheTier) -> None:
        await tier.put("small", value(1))
        self._full_at(BUDGET)
        with pytest.raises(ResponseError, match="maxmemory"):
            await tier.put("huge", value(2, 4 * BUDGET))  # Redis refuses it; TieredCache
        assert await tier.get("huge") is None              # counts that as a skipped write

    async def test_stats(self, tier: CacheTier) -> None:
        await tier.put("k", value(1))
        assert await tier.get("k") == value(1)
        stats = tier.stats()
        assert stats["errors"] == 0 and stats["down"] == 0
        assert all(isinstance(v, int) for v in stats.values())


class TestRedisClusterTier(TestRedisTier):
    """The same, through a 3-master Redis Cluster (keys spread over its slots)."""

    @pytest.fixture(autouse=True)
    def _server(self, redis_cluster: RedisClusterServers) -> Iterator[None]:
        self.cluster = redis_cluster
        yield
        for node in redis_cluster.nodes:
            node.cli("flushall")

    def make_tier(self, path: Path, budget: int) -> CacheTier:
        return _tier(self.cluster.url)

    # maxmemory and its eviction are each node's own, as on a single server (tested above)
    test_stays_within_budget = None  # type: ignore[assignment]
    test_least_recently_used_goes_first = None  # type: ignore[assignment]
    test_value_bigger_than_budget_is_not_kept = None  # type: ignore[assignment]

    async def test_keys_spread_over_the_masters(self, tier: CacheTier) -> None:
        for i in range(16):
            await tier.put(f"k{i}", value(i))
        assert [await tier.get(f"k{i}") for i in range(16)] == [value(i) for i in range(16)]
        held = [len(node.cli("--scan").split()) for node in self.cluster.nodes]
        assert sum(held) == 16 and sum(1 for n in held if n) >= 2


def _info(server: RedisServer, field: str) -> str:
    for line in server.cli("info").splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1]
    raise KeyError(field)


# --- leases -----------------------------------------------------------------------------------


async def _until(condition: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)  # polling a counter the other task moves


async def _lease(tier: RedisTier, key: str) -> bytes | None:
    async with tier.lease(key) as supplied:
        return supplied


def _pair(url: str, **options: Any) -> tuple[RedisTier, RedisTier]:
    """Two tiers as two relays of one fleet see it: one Redis, one prefix."""
    prefix = f"t-{uuid.uuid4().hex[:8]}:"
    return RedisTier(url, prefix=prefix, **options), RedisTier(url, prefix=prefix, **options)


async def test_one_reads_and_the_other_waits_for_its_value(redis_url: str) -> None:
    a, b = _pair(redis_url)
    async with a.lease("k") as supplied:
        assert supplied is None  # a leads: it reads upstream
        waiter = asyncio.create_task(_lease(b, "k"))
        await _until(lambda: b.counters["lease_waits"] == 1)
        assert not waiter.done()
        await a.put("k", value(1))  # storing the value ends the lease
    assert await waiter == value(1)
    assert (a.counters["leases"], b.counters["leases"], b.counters["lease_supplied"]) == (1, 0, 1)
    assert await _lease(b, "k") == value(1)  # found at once now: no wait
    assert b.counters["lease_waits"] == 1
    await a.aclose()
    await b.aclose()


async def test_a_failed_read_hands_the_lease_on_at_once(redis_url: str) -> None:
    a, b = _pair(redis_url, lease_seconds=30)
    with pytest.raises(RuntimeError):
        async with a.lease("k"):
            waiter = asyncio.create_task(_lease(b, "k"))
            await _until(lambda: b.counters["lease_waits"] == 1)
            raise RuntimeError("upstream failed")
    started = time.monotonic()
    assert await waiter is None  # b leads now, long before a's 30 s lease would end
    assert time.monotonic() - started < 5
    assert b.counters["lease_takeovers"] == 1
    await a.aclose()
    await b.aclose()


async def test_a_vanished_leader_blocks_nobody_beyond_its_lease(redis_url: str) -> None:
    a, b = _pair(redis_url, lease_seconds=1.0, timeout_seconds=0.5)
    async with a.lease("k") as supplied:
        assert supplied is None
        # a "dies" here: it never stores the value nor ends the lease
        started = time.monotonic()
        assert await _lease(b, "k") is None  # b waited for the lease to expire, then took it
        waited = time.monotonic() - started
    assert 0.8 <= waited <= 1.0 + 0.5 + 0.5, waited
    assert b.counters["lease_takeovers"] == 1
    await a.aclose()
    await b.aclose()


async def test_a_damaged_or_foreign_value_is_never_served(redis_server: RedisServer) -> None:
    tier = _tier(redis_server.url)
    await tier.put("k", value(1))
    for garbage in (b"garbage", value(1)[:100], b"RLD1" + bytes(100)):
        await tier.client.set(f"{tier.prefix}{{k}}", garbage)
        assert await tier.get("k") is None
        assert await _lease(tier, "k") is None  # not served, and no lease taken over it
    assert tier.counters["corrupt"] == 6 and tier.counters["leases"] == 0
    await tier.put("k", value(2))  # the read that follows replaces it
    assert await tier.get("k") == value(2)
    await tier.aclose()


# --- Redis down, frozen, back -----------------------------------------------------------------


async def test_a_dead_redis_is_a_quick_miss_and_is_used_again_when_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_module, "RETRY_AFTER", 0.3)
    with RedisServer(tmp_path / "redis") as server:
        tier = _tier(server.url, timeout_seconds=0.5)
        cache = TieredCache([MemoryTier(BUDGET), tier])
        await cache.put("k", value(1))
        await cache.drain()
        server.kill()
        started = time.monotonic()
        assert await cache.get("absent") is None  # refused: a miss, at once
        assert await tier.get("k") is None  # and Redis is not asked again for a while
        assert await _lease(tier, "k") is None  # no lease: the relay reads alone
        await cache.put("j", value(2))  # a write to a dead Redis is dropped, not raised
        await cache.drain()
        assert time.monotonic() - started < 1.0
        assert tier.stats()["down"] == 1 and tier.counters["skipped"] >= 1
        server.start()  # back, and empty
        await _until(lambda: tier._breaker.allows(), within=2.0)
        await tier.put("k", value(3))
        assert await tier.get("k") == value(3)
        assert tier.stats()["down"] == 0
        await cache.aclose()


async def test_a_frozen_redis_costs_one_timeout_then_is_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_module, "RETRY_AFTER", 30.0)
    with RedisServer(tmp_path / "redis") as server:
        tier = _tier(server.url, timeout_seconds=0.3)
        cache = TieredCache([tier])
        await tier.put("k", value(1))
        server.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert await cache.get("k") is None
            first = time.monotonic() - started
            started = time.monotonic()
            for _ in range(20):
                assert await tier.get("k") is None
            assert await _lease(tier, "k") is None
            rest = time.monotonic() - started
        finally:
            server.signal(signal.SIGCONT)
        assert 0.25 <= first < 1.0, first  # the socket timeout, once
        assert rest < 0.1, rest  # then the breaker answers without asking
        assert tier.counters["skipped"] == 21 and cache.counters["redis_errors"] == 1
        await tier.aclose()


def test_redis_urls() -> None:
    assert parse_redis_url("redis://h:1/0") == ("redis://h:1/0", [])
    assert parse_redis_url("redis+cluster://a:7000,b:7001")[1] == [("a", 7000), ("b", 7001)]
    assert parse_redis_url("rediss+cluster://u:p@a,b:7001")[1] == [("a", 6379), ("b", 7001)]
    for bad in ("http://h", "redis://", "redis+cluster://:7000"):
        with pytest.raises(ValueError):
            parse_redis_url(bad)


async def test_a_full_redis_refuses_writes_and_nothing_fails(redis_server: RedisServer) -> None:
    """maxmemory with Redis's default noeviction: writes are refused (counted), reads go on,
    and the breaker stays closed (Redis is up; it is only full)."""
    tier = _tier(redis_server.url)
    cache = TieredCache([MemoryTier(BUDGET), tier])
    await cache.put("before", value(1))
    await cache.drain()
    used = int(_info(redis_server, "used_memory"))
    redis_server.cli("config", "set", "maxmemory-policy", "noeviction")
    redis_server.cli("config", "set", "maxmemory", str(used + ENTRY // 2))
    try:
        for i in range(4):
            await cache.put(f"k{i}", value(i))  # never raises
        await cache.drain()
        assert cache.counters["redis_errors"] == 4
        assert await tier.get("before") == value(1)  # still read
        assert await tier.get("k0") is None
        assert tier.stats()["down"] == 0
    finally:
        redis_server.cli("config", "set", "maxmemory", "0")
        redis_server.cli("config", "set", "maxmemory-policy", "allkeys-lru")
        await cache.aclose()


async def test_a_cluster_slot_moved_is_followed(redis_cluster: RedisClusterServers) -> None:
    """Slots resharded from one master to another while the tier is in use (the keys move with
    them): every value is still found where it went."""
    tier = _tier(redis_cluster.url)
    for i in range(32):
        await tier.put(f"k{i}", value(i, 1024))
    source, target = redis_cluster.nodes[0], redis_cluster.nodes[1]
    source_id = source.cli("cluster", "myid")
    target_id = target.cli("cluster", "myid")
    held = len(source.cli("--scan").split())
    assert held > 0
    subprocess.run(["redis-cli", "--cluster", "reshard", f"127.0.0.1:{source.port}",
                    "--cluster-from", source_id, "--cluster-to", target_id,
                    "--cluster-slots", "16384", "--cluster-yes"],
                   check=True, capture_output=True, timeout=120)
    assert source.cli("--scan") == ""  # every key moved off the source
    assert [await tier.get(f"k{i}") for i in range(32)] == [value(i, 1024) for i in range(32)]
    await tier.put("after", value(99, 1024))
    assert await tier.get("after") == value(99, 1024)
    await tier.aclose()


async def _versions(tier: RedisTier, key: str) -> list[str]:
    found = await tier.versions([key])
    assert found is not None
    return found


async def test_write_versions_and_marks(redis_server: RedisServer) -> None:
    """The versions a fleet caches writable sources under: made when first asked for, new at
    each bump, marked as being written, settled again; and never one an earlier copy was
    cached under after Redis lost them (a flush, a restart, an eviction)."""
    tier = _tier(redis_server.url)
    key = f"writes/{uuid.uuid4().hex}"
    try:
        (first,) = await _versions(tier, key)
        assert await _versions(tier, key) == [first]  # the same until a write
        assert await tier.settled(key, first)
        assert await tier.bump([key], writing_for=30)
        (second,) = await _versions(tier, key)
        assert second != first
        assert not await tier.settled(key, second)  # being written
        assert await tier.bump([key])
        (third,) = await _versions(tier, key)
        assert third not in (first, second)
        assert not await tier.settled(key, second)  # written since
        assert await tier.settled(key, third)
        # lost (FLUSHALL is what a restart without persistence looks like): a new version
        redis_server.cli("del", f"{tier.prefix}{{{key}}}:ver")
        (fourth,) = await _versions(tier, key)
        assert fourth not in (first, second, third)
        assert not await tier.settled(key, third)
        # the versions are not cache entries: `relay cache` does not list them
        assert [name async for name, _ in tier.entries() if name.startswith("writes/")] == []
    finally:
        await tier.aclose()
