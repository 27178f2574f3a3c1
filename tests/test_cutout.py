"""The read path with a fault-injecting upstream: counted reads, races, bad upstream answers."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from relay.cache import CacheTier, MemoryTier, TieredCache
from relay.catalog import Catalog
from relay.config import SourceSettings
from relay.cutout import CutoutRequest, CutoutService
from relay.errors import UpstreamError
from relay.geometry import Box, Vec3
from relay.metrics import Metrics
from relay.model import ChannelInfo, ChannelRef, Level
from relay.upstreams.base import Upstream, UpstreamContext
from relay.upstreams.kinds import Registry

REF = ChannelRef("c", "e", "ch")
BOUNDS = Box.of((0, 0, 0), (40, 30, 20))
VOLUME = np.random.default_rng(0).integers(0, 2**16, BOUNDS.shape_zyx, dtype=np.uint16)


class FakeUpstream(Upstream):
    """Serves VOLUME on a 16×16×8 grid; tests change ``mode`` to inject faults."""

    kind = "fake"
    mode = "ok"

    def __init__(self, source: SourceSettings, context: UpstreamContext | None = None) -> None:
        super().__init__(source, context)
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()  # set when a read begins

    async def channel_info(self, ref: ChannelRef, token: str | None = None) -> ChannelInfo:
        level = Level((4.0, 4.0, 40.0), BOUNDS, Vec3(16, 16, 8), Vec3(0, 0, 0))
        return ChannelInfo(np.dtype("<u2"), "image", (level,))

    async def read(self, ref: ChannelRef, level: int, box: Box, t: int = 0,
                   token: str | None = None) -> np.ndarray | None:
        self.reads += 1
        self.reading.set()
        if self.gate is not None:
            await self.gate.wait()
        data = VOLUME[box.zyx_slices()]
        if self.mode == "error":
            raise UpstreamError("upstream down")
        if self.mode == "short":
            return data[:, :, :-1]
        if self.mode == "dtype":
            return data.astype(np.uint8)
        if self.mode == "none":
            return None
        return data


class SlowGetTier(MemoryTier):
    """A tier whose lookups wait for ``release`` and whose writes never land (a disk tier
    with its worker threads busy)."""

    name = "slow"

    def __init__(self, budget: int) -> None:
        super().__init__(budget)
        self.release = asyncio.Event()

    async def get(self, key: str) -> bytes | None:
        await self.release.wait()
        return await super().get(key)

    async def put(self, key: str, value: bytes) -> None:
        await asyncio.Event().wait()


async def _service(tiers: list[CacheTier], decoded_bytes: int = 0
                   ) -> tuple[CutoutService, FakeUpstream, Any]:
    registry = Registry()
    registry.register("fake", FakeUpstream)
    source = SourceSettings(collection="c", experiment="e", channel="ch", kind="zarr", url="x")
    source = source.model_copy(update={"kind": "fake"})
    catalog = Catalog([source], registry)
    service = CutoutService(catalog, TieredCache(tiers) if tiers else None, Metrics(),
                            decoded_bytes=decoded_bytes)
    channel = await catalog.channel(REF)
    upstream = channel.upstream
    assert isinstance(upstream, FakeUpstream)
    return service, upstream, channel


def _request(channel: Any, box: Box, refresh: bool = False) -> CutoutRequest:
    return CutoutRequest(channel, 0, box, refresh=refresh)


async def test_reads_assemble_ground_truth_and_hit_the_cache() -> None:
    service, upstream, channel = await _service([MemoryTier(2**24)])
    box = Box.of((3, 5, 2), (37, 29, 19))
    np.testing.assert_array_equal(await service.read(_request(channel, box)),
                                  VOLUME[box.zyx_slices()])
    assert upstream.reads == 3 * 2 * 3
    np.testing.assert_array_equal(await service.read(_request(channel, box)),
                                  VOLUME[box.zyx_slices()])
    assert upstream.reads == 3 * 2 * 3


@pytest.mark.parametrize("box", [
    Box.of((16, 16, 8), (32, 30, 16)),   # one whole cell, clipped by the bounds in y
    Box.of((32, 16, 16), (40, 30, 20)),  # the corner cell, clipped on every axis
])
async def test_a_box_of_exactly_one_cuboid_is_answered_with_that_cuboid(box: Box) -> None:
    """No zeroed output and no copy: the cuboid's own array, which is read-only so that no
    consumer can change what the cache and the next caller see."""
    service, upstream, channel = await _service([MemoryTier(2**24)], decoded_bytes=2**24)
    first = await service.read(_request(channel, box))
    np.testing.assert_array_equal(first, VOLUME[box.zyx_slices()])
    assert not first.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0, 0] = 1
    second = await service.read(_request(channel, box))
    assert second is first  # the decoded cuboid itself, held for the next caller
    np.testing.assert_array_equal(second, VOLUME[box.zyx_slices()])
    assert upstream.reads == 1


async def test_a_lookup_that_outlives_a_fetch_does_not_read_upstream_again() -> None:
    """The race a check-then-join cache lookup has: request 2 misses memory, waits on a slow
    tier while request 1's fetch lands and leaves, then misses the slow tier (its write has
    not landed) and would start a second fetch."""
    slow = SlowGetTier(2**24)
    service, upstream, channel = await _service([MemoryTier(2**24), slow])
    upstream.gate = asyncio.Event()
    box = Box.of((0, 0, 0), (16, 16, 8))
    slow.release.set()  # request 1's lookup passes straight through
    first = asyncio.create_task(service.read(_request(channel, box)))
    await asyncio.wait_for(upstream.reading.wait(), 5)
    assert upstream.reads == 1
    slow.release.clear()  # request 2's lookup will hang in the slow tier
    asked = asyncio.Event()  # set as request 2 asks the single flight for the cuboid
    ask = service.flights.do

    async def asking(key: str, work: Any) -> Any:
        asked.set()
        return await ask(key, work)

    service.flights.do = asking  # type: ignore[method-assign]
    second = asyncio.create_task(service.read(_request(channel, box)))
    await asyncio.wait_for(asked.wait(), 5)  # (it has joined by the time this task runs)
    upstream.gate.set()
    await first
    slow.release.set()
    a, b = await asyncio.gather(first, second)
    assert upstream.reads == 1
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["error", "short", "dtype"])
async def test_bad_upstream_answers_are_errors_and_never_cached(mode: str) -> None:
    memory = MemoryTier(2**24)
    service, upstream, channel = await _service([memory])
    upstream.mode = mode
    box = Box.of((0, 0, 0), (20, 20, 8))
    with pytest.raises(UpstreamError):
        await service.read(_request(channel, box))
    assert memory.stats()["entries"] == 0 or mode == "short"  # other cuboids may have landed
    upstream.mode = "ok"
    np.testing.assert_array_equal(await service.read(_request(channel, box)),
                                  VOLUME[box.zyx_slices()])


async def test_no_data_reads_as_zeros() -> None:
    service, upstream, channel = await _service([])
    upstream.mode = "none"
    data = await service.read(_request(channel, Box.of((0, 0, 0), (5, 5, 5))))
    assert data.dtype == np.uint16 and not data.any()


async def test_a_corrupt_cache_entry_is_refetched() -> None:
    memory = MemoryTier(2**24)
    service, upstream, channel = await _service([memory])
    box = Box.of((0, 0, 0), (16, 16, 8))
    await service.read(_request(channel, box))
    (key,) = memory.keys()
    await memory.put(key, b"RLC2garbage")
    np.testing.assert_array_equal(await service.read(_request(channel, box)),
                                  VOLUME[box.zyx_slices()])
    assert upstream.reads == 2
    assert service.metrics.counters["cache_bad_entries_total"] == 1


async def test_refresh_rereads_even_while_a_lookup_is_in_flight() -> None:
    service, upstream, channel = await _service([MemoryTier(2**24)])
    box = Box.of((0, 0, 0), (16, 16, 8))
    await service.read(_request(channel, box))
    await service.read(_request(channel, box, refresh=True))
    assert upstream.reads == 2


async def test_write_behind_values_are_readable_before_they_land() -> None:
    gate = asyncio.Event()

    class GatedTier(MemoryTier):
        name = "gated"

        async def put(self, key: str, value: bytes) -> None:
            await gate.wait()
            await super().put(key, value)

    cache = TieredCache([MemoryTier(0), GatedTier(2**24)])  # memory tier keeps nothing
    await cache.put("k", b"v")
    assert cache.pending_writes == 1
    assert await cache.get("k") == b"v"
    gate.set()
    await cache.drain()
    assert await cache.get("k") == b"v"


async def test_ttl_seconds_bounds_how_long_a_cuboid_is_reused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import relay.cutout

    service, upstream, channel = await _service([MemoryTier(2**24)])
    source = channel.source.model_copy(update={"ttl_seconds": 60.0})
    channel = type(channel)(channel.ref, source, channel.upstream, channel.info)
    box = Box.of((0, 0, 0), (16, 16, 8))
    now = [60.0 * 16_666]  # the start of an epoch
    monkeypatch.setattr(relay.cutout, "wall_clock", lambda: now[0])
    await service.read(_request(channel, box))
    now[0] += 30
    await service.read(_request(channel, box))
    assert upstream.reads == 1  # within the epoch: reused
    now[0] += 60
    await service.read(_request(channel, box))
    assert upstream.reads == 2  # a minute later: read upstream again


async def test_decoded_cuboids_serve_small_reads_fresh_and_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads inside a recently used cuboid are sliced from its decoded copy (no tier lookup, no
    upstream read), but never past ttl_seconds and never for a refresh; a tier whose entry is
    replaced underneath is not consulted while the decoded copy is fresh, so it is bounded by
    the same ttl."""
    import relay.cutout

    service, upstream, channel = await _service([MemoryTier(2**24)], decoded_bytes=2**20)
    source = channel.source.model_copy(update={"ttl_seconds": 60.0})
    channel = type(channel)(channel.ref, source, channel.upstream, channel.info)
    now = [1_000_000.0]
    monkeypatch.setattr(relay.cutout, "wall_clock", lambda: now[0])
    whole, inner = Box.of((0, 0, 0), (32, 16, 8)), Box.of((3, 5, 1), (20, 15, 7))
    np.testing.assert_array_equal(await service.read(_request(channel, whole)),
                                  VOLUME[whole.zyx_slices()])
    cold = upstream.reads  # the two cuboids of the whole box
    for _ in range(3):
        np.testing.assert_array_equal(await service.read(_request(channel, inner)),
                                      VOLUME[inner.zyx_slices()])
    assert upstream.reads == cold and service.metrics.counters["decoded_hits_total"] >= 3
    await service.read(_request(channel, inner, refresh=True))
    assert upstream.reads == 2 * cold  # a refresh reads upstream whatever is decoded
    now[0] += 61  # expired: the decoded copy is not used, nor the tier's
    np.testing.assert_array_equal(await service.read(_request(channel, inner)),
                                  VOLUME[inner.zyx_slices()])
    assert upstream.reads == 3 * cold
    assert service.decoded.bytes <= 2**20


def test_requests_past_the_concurrency_limit_get_503_json() -> None:
    """Two requests hold the relay (their upstream reads wait on a gate); a third is refused at
    once with BossDB JSON, and is served again once they finish."""
    import concurrent.futures
    import threading

    from starlette.testclient import TestClient

    from relay.app import create_app
    from relay.config import Settings

    gate = threading.Event()
    started = threading.Semaphore(0)

    class GatedUpstream(FakeUpstream):
        async def read(self, ref: ChannelRef, level: int, box: Box, t: int = 0,
                       token: str | None = None) -> np.ndarray | None:
            started.release()
            await asyncio.to_thread(gate.wait, 30)
            return await super().read(ref, level, box, t, token)

    registry = Registry()
    registry.register("gated", GatedUpstream)
    source = SourceSettings(collection="c", experiment="e", channel="ch", kind="zarr", url="x")
    settings = Settings(sources=[source.model_copy(update={"kind": "gated"})],
                        cache={"disk_dir": None},
                        server={"max_concurrency": 2})
    with TestClient(create_app(settings, registry), base_url="http://localhost") as client, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = [pool.submit(client.get, f"/v1/cutout/c/e/ch/0/{x}:{x + 16}/0:16/0:8/")
                for x in (0, 16)]
        assert started.acquire(timeout=30) and started.acquire(timeout=30)
        refused = client.get("/v1/cutout/c/e/ch/0/32:40/0:16/0:8/")
        assert refused.status_code == 503
        assert refused.json() == {"status": 503, "code": 9001,
                                  "message": "The relay is at its concurrency limit; retry "
                                             "shortly"}
        assert client.get("/healthz").status_code == 200  # health is never refused
        gate.set()
        assert [f.result(timeout=30).status_code for f in held] == [200, 200]
        assert client.get("/v1/cutout/c/e/ch/0/32:40/0:16/0:8/").status_code == 200
