"""The read path: plan → cache → single-flight upstream fetch → assemble.

A request box is planned into cuboids on the channel's grid. Each cuboid comes from the cache
when it is there and whole (its packed header must match the shape and dtype the plan expects),
and otherwise from exactly one upstream read shared by everyone who wants it meanwhile. An
upstream answer of the wrong shape or dtype is an error, never cached and never padded: the
relay would rather fail a request than serve a wrong voxel.

Each packed cuboid records when it was fetched. A source with ``ttl_seconds`` reuses a cuboid
for that long; after that it is read again. With ``stale_if_error_seconds`` a cuboid that has
expired (or is being refreshed) may still be served for that much longer when the upstream
read fails with a 5xx or a timeout; the response then says so (``Warning: 110``). It is off by
default, it never applies to an upstream's 4xx (a revoked credential stays revoked), and it
never means zeros.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from .cache.lru import SizedLRU
from .cache.tiered import TieredCache
from .catalog import Catalog, Channel
from .codecs import (
    pack_cuboid,
    pack_frame,
    packed_blosc_frame,
    packed_fetched_at,
    packed_header,
    unpack_cuboid,
)
from .config import SourceSettings
from .errors import RequestTooLarge, UpstreamError
from .forwarding import Forwarded, FrameSink
from .gate import Gates
from .geometry import Box, Vec3
from .metrics import OUTCOMES, Metrics, Outcome
from .model import Level, token_digest
from .offload import offload
from .planner import CuboidPlan, count_cells, exact_cuboid, plan
from .pyramid import factor, finer_box, reduce, working_bytes
from .singleflight import SingleFlight

__all__ = ["DERIVE_PARALLEL", "Cutout", "CutoutRequest", "CutoutService", "cache_key",
           "channel_prefix", "check_cells", "fresh", "key_prefix"]

#: Seconds since the epoch; shared by every process on the cache (tests replace it).
wall_clock = time.time

#: Version of the key layout and of the packed value format; bump to orphan old entries.
KEY_VERSION = "v2"

#: Derived cuboids one request makes at once (each holds ``pyramid.working_bytes``), and the
#: store reads made for derived levels at once, across requests.
DERIVE_PARALLEL = 2
DERIVE_READS = 4

#: set while a derived cuboid is being made: the store reads it leads to count as its
_deriving: contextvars.ContextVar[bool] = contextvars.ContextVar("relay_deriving",
                                                                default=False)

#: The most cuboids one request may cover: a fine grid (a source's 16³ cuboid, say) must not
#: turn one request into a hundred thousand reads and as many tasks. With BossDB's 512×512×16
#: a whole 512 MiB uint8 cutout is 128 cuboids.
MAX_CUBOIDS = 16_384


@dataclass(frozen=True, slots=True)
class CutoutRequest:
    channel: Channel
    resolution: int
    box: Box
    times: range | None = None  # None: 3-D, at the channel's default time sample
    refresh: bool = False       # re-read upstream and replace the cached cuboids
    token: str | None = None    # the caller's Authorization, for sources that forward it
    #: where the upstream read of exactly this one cuboid feeds its frame as it arrives
    sink: FrameSink | None = None


@dataclass(frozen=True, slots=True)
class Cutout:
    """What a request gets: its voxels (read-only: they may be a cached cuboid itself), or,
    when the caller takes one and the request is exactly one cuboid, that cuboid's stored
    Blosc frame (then ``data`` may be None: the frame is sent without decoding it)."""

    data: np.ndarray | None
    #: None when every cuboid was fresh; else the age in seconds of the oldest stale cuboid
    #: served in place of an upstream read that failed (stale-if-error)
    stale_age: float | None = None
    frame: memoryview | None = None
    #: where its data came from: the slowest place any of its cuboids came from
    outcome: Outcome = "memory"
    #: when each of its cuboids was read upstream, in plan order: what it is a version of
    fetched: tuple[float, ...] = ()
    #: an upstream relay's frame of the one cuboid asked for, sent on as it arrives (then
    #: ``data`` and ``frame`` are None)
    forwarded: Forwarded | None = None

    @property
    def voxels(self) -> np.ndarray:
        assert self.data is not None, "a frame-only answer has no voxels"
        return self.data


#: What one cuboid's flight yields: its voxels, their age if they are stale, the packed
#: value they were read from or stored as (None when held decoded, or stale), and where they
#: came from.
class _Loaded(NamedTuple):
    data: np.ndarray
    stale_age: float | None
    packed: bytes | None
    outcome: Outcome
    fetched_at: float  # when it was read upstream (its version, for validators)

#: a cache tier's name → the outcome a hit there is
_TIER_OUTCOME: dict[str | None, Outcome] = {"memory": "memory", "disk": "disk",
                                            "redis": "shared"}


def slowest(outcomes: Iterable[Outcome]) -> Outcome:
    """The outcome of a request made of cuboids with ``outcomes``."""
    return max(outcomes, key=OUTCOMES.index, default="memory")


def check_cells(level: Level, box: Box, times: int = 1) -> None:
    """413 when a request (a read, or a write and the cuboids it drops) covers more than
    ``MAX_CUBOIDS`` cuboids of the level's grid."""
    cells = count_cells(box, level.cuboid, level.origin, level.bounds) * times
    if cells > MAX_CUBOIDS:
        c = level.cuboid
        raise RequestTooLarge(
            f"This cutout covers {cells} cuboids of the channel's {c.x}×{c.y}×{c.z} grid "
            f"(at most {MAX_CUBOIDS} per request); ask for a smaller box")


def channel_prefix(channel: Channel) -> str:
    """The store and channel every cache key of ``channel`` starts with (its partitions and
    levels below it): what a write's gate is named after."""
    ref = channel.ref
    return (f"{KEY_VERSION}/{channel.upstream.kind}-{channel.upstream.identity_digest}/"
            f"{ref.collection}/{ref.experiment}/{ref.channel}")


def key_prefix(channel: Channel, resolution: int, token: str | None = None) -> str:
    """Where a channel level's entries are cached: its cuboids (``cache_key``) and what is
    made from them (meshes). The upstream identity is hashed: it may hold a URL with
    credentials, and a key must never name a path a client chose. A source that forwards each
    caller's token keeps a partition per token (hashed), so nobody receives bytes fetched with
    somebody else's credential."""
    ref = channel.ref
    partition = f"p-{token_digest(token)}/" if channel.upstream.partitioned else ""
    pyramid = channel.pyramid
    # a derived level's cuboids depend on how, and from which stored level, they were made
    derived = (f"-{pyramid.method}-from{pyramid.stored}"
               if pyramid is not None and pyramid.derives(resolution) else "")
    return (
        f"{KEY_VERSION}/{channel.upstream.kind}-{channel.upstream.identity_digest}/{partition}"
        f"{ref.collection}/{ref.experiment}/{ref.channel}/r{resolution}{derived}"
    )


def cache_key(channel: Channel, resolution: int, t: int, cuboid: CuboidPlan,
              token: str | None = None) -> str:
    """A readable, versioned key of one cuboid (see ``key_prefix``)."""
    return _cell_key(_grid_prefix(channel, resolution, token), t, cuboid)


def _grid_prefix(channel: Channel, resolution: int, token: str | None) -> tuple[str, str]:
    """What the keys of a level's cuboids are made of, around the time (computed once per
    request, not once per cuboid)."""
    size = channel.info.levels[resolution].cuboid
    return key_prefix(channel, resolution, token), f"{size.x}x{size.y}x{size.z}"


def _cell_key(grid: tuple[str, str], t: int, cuboid: CuboidPlan) -> str:
    i = cuboid.index
    return f"{grid[0]}/t{t}/{grid[1]}/{i.x}_{i.y}_{i.z}"


def _source_label(source: SourceSettings) -> str:
    """A source as a metrics label: its entry's name patterns (few values, never a URL)."""
    return f"{source.collection}/{source.experiment}/{source.channel}"


def _age(packed: bytes) -> float:
    fetched_at = packed_fetched_at(packed)
    return float("inf") if fetched_at is None else max(0.0, wall_clock() - fetched_at)


def fresh(source: SourceSettings, fetched_at: float | None) -> bool:
    """May a cuboid of ``source`` read upstream at ``fetched_at`` still be reused?"""
    ttl = source.ttl_seconds
    return ttl is None or (fetched_at is not None and wall_clock() - fetched_at < ttl)


class CutoutService:
    def __init__(
        self,
        catalog: Catalog,
        cache: TieredCache | None,
        metrics: Metrics,
        max_parallel: int = 8,
        decoded_bytes: int = 0,
    ) -> None:
        self.catalog = catalog
        self.cache = cache
        self.metrics = metrics
        self.flights: SingleFlight[str, _Loaded] = SingleFlight()
        # Recently used cuboids, decoded, with their fetch time: an unaligned or small cutout
        # that lands in them costs a slice instead of decompressing whole cuboids, which is
        # most of a small warm read's cost. A memo of the packed tiers, not a tier: it holds
        # nothing they do not, so it is never written through or counted as a hit level.
        self.decoded: SizedLRU[tuple[np.ndarray, float]] = SizedLRU(
            decoded_bytes, lambda entry: entry[0].nbytes)
        # Bounds the cuboid reads one request keeps in flight at once.
        self._max_parallel = max_parallel
        # Bounds the store reads made for derived levels, across requests: however many
        # coarse cuboids are being made, the source's pool keeps room for other readers
        self._derive_reads = asyncio.Semaphore(DERIVE_READS)
        #: writable channels' store reads and writes kept apart (``relay.gate``)
        self.gates = Gates()

    async def versioned(self, channel: Channel, keys: list[str]) -> list[str] | None:
        """The keys a writable source's cuboids are cached under in a fleet: each key with
        its write version (``Versioned``), so a write on any relay of the fleet makes every
        relay's copy of what it touched unreachable. ``keys`` as they are for other sources
        or without a fleet; None when the fleet's versions cannot be read (the shared tier is
        down): nothing cached can then be trusted, and the caller reads afresh."""
        cache = self.cache
        if not channel.source.writable or cache is None or not cache.versioned:
            return keys
        versions = await cache.versions(keys)
        if versions is None:
            self.metrics.inc("versions_unknown_total")
            return None
        return [f"{k}@{v}" for k, v in zip(keys, versions, strict=True)]

    @staticmethod
    def working_bytes(channel: Channel, resolution: int, box: Box, times: int = 1) -> int:
        """What a read of ``box`` holds beside its answer while it makes derived cuboids (0
        for a stored level): for the callers to reserve from the in-flight budget."""
        pyramid = channel.pyramid
        if pyramid is None or not pyramid.derives(resolution):
            return 0
        level = channel.info.levels[resolution]
        cells = count_cells(box, level.cuboid, level.origin, level.bounds) * times
        return min(cells, DERIVE_PARALLEL) * working_bytes(channel.info, pyramid, resolution)

    async def answer(self, request: CutoutRequest, frame_ok: bool = False) -> Cutout:
        """What the handler sends, in one call: with ``frame_ok`` (the answer is a Blosc1
        frame of the voxels, unfiltered) and a request of exactly one cuboid, that cuboid's
        stored frame, warm or just read; otherwise the voxels."""
        if frame_ok and (found := await self._stored_frame(request)) is not None:
            frame, where, fetched_at = found
            return Cutout(None, frame=frame, outcome=where, fetched=(fetched_at,))
        if frame_ok and (sink := self._sink(request)) is not None:
            return await self._forward(request, sink)
        return await self.read_cutout(request, frame_ok)

    def _sink(self, request: CutoutRequest) -> FrameSink | None:
        """A sink for a request of exactly one stored cuboid whose upstream forwards frames
        (another relay, BossDB): its frame may then be sent on as it arrives."""
        channel = request.channel
        if (request.times is not None or channel.info.default_time_sample
                or not channel.upstream.forwards) or (
                channel.pyramid is not None and channel.pyramid.derives(request.resolution)):
            return None
        level = channel.info.levels[request.resolution]
        if exact_cuboid(request.box, level.cuboid, level.origin, level.bounds) is None:
            return None
        return FrameSink(request.box, channel.info.dtype)

    async def _forward(self, request: CutoutRequest, sink: FrameSink) -> Cutout:
        """The request read with ``sink``: forwarded once its upstream read is under way and
        its frame's header checked, or the answer when it came first (cached meanwhile, held,
        joined another read, failed)."""
        reading = asyncio.ensure_future(self.read_cutout(replace(request, sink=sink), True))
        started = asyncio.ensure_future(sink.started.wait())
        try:
            await asyncio.wait((reading, started), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            reading.cancel()
            raise
        finally:
            started.cancel()
        if reading.done():
            return reading.result()
        self.metrics.inc("forwarded_total")
        return Cutout(None, forwarded=Forwarded(sink, reading, self.metrics), outcome="upstream",
                      fetched=(sink.fetched_at,))

    async def _stored_frame(self, request: CutoutRequest
                            ) -> tuple[memoryview, Outcome, float] | None:
        """The cached Blosc frame of the one cuboid a request is exactly (the tier it was in,
        when it was read upstream), or None.

        The fast path for warm aligned reads (what intern's and neuroglancer's cuboid-sized
        requests are): no decode, no assembly, no re-encode. Anything else — a miss, a box that
        is not exactly one cached cuboid, a refresh — takes the general path."""
        channel = request.channel
        if (request.times is not None or request.refresh or self.cache is None
                or not channel.source.cache or channel.info.default_time_sample):
            return None
        level = channel.info.levels[request.resolution]
        cuboid = exact_cuboid(request.box, level.cuboid, level.origin, level.bounds)
        if cuboid is None:
            return None
        key = cache_key(channel, request.resolution, 0, cuboid, request.token)
        if channel.source.writable:  # (not awaited for the others: this is the hot path)
            keys = await self.versioned(channel, [key])
            if keys is None:
                return None
            key = keys[0]
        packed, tier = await self.cache.find(key)
        if packed is None or not fresh(channel.source,
                                        fetched_at := packed_fetched_at(packed)):
            return None
        frame = packed_blosc_frame(packed, request.box.shape_zyx, channel.info.dtype)
        if frame is None:
            return None
        self.metrics.inc("stored_frame_hits_total")
        return frame, _TIER_OUTCOME.get(tier, "memory"), fetched_at or 0.0

    async def read(self, request: CutoutRequest) -> np.ndarray:
        return (await self.read_cutout(request)).voxels

    async def read_cutout(self, request: CutoutRequest, frame_ok: bool = False) -> Cutout:
        info = request.channel.info
        level = info.levels[request.resolution]
        # no time range: the channel's default sample, answered as 3-D (BossDB's)
        first = info.default_time_sample
        times = request.times if request.times is not None else range(first, first + 1)
        check_cells(level, request.box, len(times))
        planned = [(ti, t, cuboid) for ti, t in enumerate(times)
                   for cuboid in plan(request.box, level.cuboid, level.origin, level.bounds)]
        grid = _grid_prefix(request.channel, request.resolution, request.token)
        keys = [_cell_key(grid, t, cuboid) for _, t, cuboid in planned]
        if request.channel.source.writable:
            versioned = await self.versioned(request.channel, keys)
            if versioned is None:  # a fleet whose versions cannot be read: afresh
                request = replace(request, refresh=True)
            else:
                keys = versioned
        jobs = [(ti, t, cuboid, key)
                for (ti, t, cuboid), key in zip(planned, keys, strict=True)]
        if request.times is None and len(jobs) == 1 and jobs[0][2].box == request.box:
            # exactly one whole cuboid (what intern and neuroglancer mostly ask for): the
            # cuboid's own read-only array is the answer; no zeroed output, no copy
            _, t, cuboid, key = jobs[0]
            data, stale_age, packed, where, fetched_at = await self.cuboid(request, key, t,
                                                                           cuboid.box)
            frame = None
            if frame_ok and stale_age is None and packed is not None:
                # just read (or found on disk): the frame it was stored as is the answer
                frame = packed_blosc_frame(packed, request.box.shape_zyx, info.dtype)
                if frame is not None:
                    self.metrics.inc("stored_frame_hits_total")
            return Cutout(data, stale_age, frame, where, (fetched_at,))
        # every voxel of a box inside the level's bounds comes from a cuboid: nothing to zero
        shape = (len(times), *request.box.shape_zyx)
        out = (np.empty(shape, info.dtype) if level.bounds.contains(request.box)
               else np.zeros(shape, info.dtype))
        pyramid = request.channel.pyramid
        derived = pyramid is not None and pyramid.derives(request.resolution)
        limit = asyncio.Semaphore(DERIVE_PARALLEL if derived else self._max_parallel)
        stale_ages: list[float] = []
        outcomes: set[Outcome] = {"memory"}
        fetched = [0.0] * len(jobs)

        async def fill(i: int, ti: int, t: int, cuboid: CuboidPlan, key: str) -> None:
            async with limit:
                loaded = await self.cuboid(request, key, t, cuboid.box)
            outcomes.add(loaded.outcome)
            fetched[i] = loaded.fetched_at
            out[ti][cuboid.dst] = loaded.data[cuboid.src]
            if loaded.stale_age is not None:
                stale_ages.append(loaded.stale_age)

        # Cuboids held decoded are copied at once: a task each would cost more than the copy
        # for the small cutouts neuroglancer and scripts send by the thousand.
        missing = []
        for i, (ti, t, cuboid, key) in enumerate(jobs):
            if (held := self._held(key, request)) is None:
                missing.append((i, ti, t, cuboid, key))
            else:
                out[ti][cuboid.dst] = held[0][cuboid.src]
                fetched[i] = held[1]
        # Not a TaskGroup: it would wrap a RelayError in an ExceptionGroup and lose its status.
        tasks = [asyncio.ensure_future(fill(*job)) for job in missing]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()  # only the waits; shared upstream fetches are shielded
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return Cutout(out if request.times is not None else out[0],
                      max(stale_ages) if stale_ages else None, outcome=slowest(outcomes),
                      fetched=tuple(fetched))

    async def cuboid(self, request: CutoutRequest, key: str, t: int, box: Box) -> _Loaded:
        """The voxels of the cuboid ``box`` cached under ``key``: held, cached or fetched."""
        # the decoded copy is looked up without awaiting, so before the flight is safe
        if (held := self._held(key, request)) is not None:
            return _Loaded(held[0], None, None, "memory", held[1])
        # The cache lookup runs inside the flight, not before it: a lookup in a slow tier
        # awaits, and a flight for the key could finish (and leave) meanwhile, so check-then-
        # join would read upstream twice. A refresh must not join a lookup: it has its own key.
        flight = key + "#refresh" if request.refresh else key
        if not request.channel.source.writable:
            return await self.flights.do(flight, lambda: self._load(key, request, t, box))
        # a writable channel's store is not read while a write is under way (``relay.gate``)
        async with self.gates(channel_prefix(request.channel)).reading():
            return await self.flights.do(flight, lambda: self._gated_load(key, request, t, box))

    async def _gated_load(self, key: str, request: CutoutRequest, t: int, box: Box) -> _Loaded:
        # The flight holds the gate itself too (as a read inside the caller's, so at once): if
        # every caller leaves, a write must still wait for the read to finish and be cached.
        async with self.gates(channel_prefix(request.channel)).reading():
            return await self._load(key, request, t, box)

    async def invalidate(self, channel: Channel, keys: list[str]) -> None:
        """Drop ``keys`` (a write touched them) from the decoded cuboids and every cache tier,
        the fleet's versions included, so what is read next comes from the store."""
        held = await self.versioned(channel, keys)
        for key in held or keys:
            self.decoded.discard(key)
            if self.cache is not None:
                await self.cache.delete(key)

    async def drop(self, keys: list[str]) -> None:
        """Drop ``keys`` (entries made from cuboids a write touched: ``relay.labels``) from
        every cache tier."""
        if self.cache is not None:
            for key in keys:
                await self.cache.delete(key)

    def _held(self, key: str, request: CutoutRequest) -> tuple[np.ndarray, float] | None:
        """The cuboid under ``key`` and when it was read, if it is held decoded and fresh
        enough for ``request``."""
        source = request.channel.source
        if request.refresh or not source.cache or (hit := self.decoded.get(key)) is None:
            return None
        if not fresh(source, hit[1]):
            return None
        self.metrics.inc("decoded_hits_total")
        return hit

    async def _load(self, key: str, request: CutoutRequest, t: int, box: Box) -> _Loaded:
        channel = request.channel
        source = channel.source
        use_cache = self.cache is not None and source.cache
        stale_window = source.stale_if_error_seconds
        packed: bytes | None = None
        # a refresh looks only when a stale copy could stand in for a failed read
        if use_cache and (not request.refresh or stale_window is not None):
            assert self.cache is not None
            packed, tier = await self.cache.find(key)
        fetched_at = packed_fetched_at(packed) if packed is not None else None
        if packed is not None and not request.refresh and fresh(source, fetched_at):
            data = await self._unpack(packed, channel, box)
            if data is not None:
                self.decoded.put(key, (data, fetched_at or 0.0))
                return _Loaded(data, None, packed, _TIER_OUTCOME.get(tier, "memory"),
                               fetched_at or 0.0)
            assert self.cache is not None
            await self.cache.delete(key)
            packed = None
        try:
            data, fetched_at, stored, where = await self._fetch(key, request, t, box, use_cache)
        except UpstreamError:
            if packed is None or stale_window is None:
                raise
            age = _age(packed)
            # an immutable source's copy is never wrong, only unrefreshed
            expired_for = age - source.ttl_seconds if source.ttl_seconds else 0.0
            if expired_for > stale_window:
                raise
            data = await self._unpack(packed, channel, box)
            if data is None:
                raise
            self.metrics.inc("stale_served_total")
            return _Loaded(data, age, None, "stale", wall_clock() - age)
        if use_cache and stored is not None:  # (None: read while a write was under way)
            self.decoded.put(key, (data, fetched_at))
        return _Loaded(data, None, stored, where, fetched_at)

    async def _fetch(
        self, key: str, request: CutoutRequest, t: int, box: Box, use_cache: bool
    ) -> tuple[np.ndarray, float, bytes | None, Outcome]:
        """The upstream's voxels for ``box``, checked, cached, when they were read, the
        packed value stored (None when not cached), and where they came from. With a shared
        tier, the read holds its lease: another relay reading the same cuboid waits for this
        one's value, or this one for the other's, which is then the answer (when it is fresh
        enough for the request)."""
        if not use_cache or request.refresh:
            return await self._read_upstream(key, request, t, box, use_cache)
        assert self.cache is not None
        async with self.cache.lease(key) as supplied:
            if supplied is not None and fresh(request.channel.source,
                                               fetched_at := packed_fetched_at(supplied)):
                data = await self._unpack(supplied, request.channel, box)
                if data is not None:
                    self.metrics.inc("fleet_supplied_total")
                    return data, fetched_at or 0.0, supplied, "shared"
            return await self._read_upstream(key, request, t, box, use_cache)

    async def _read_upstream(
        self, key: str, request: CutoutRequest, t: int, box: Box, use_cache: bool
    ) -> tuple[np.ndarray, float, bytes | None, Outcome]:
        channel = request.channel
        dtype = channel.info.dtype
        frame: bytes | memoryview | None = None
        sink: FrameSink | None = None
        where: Outcome = "upstream"
        # when the read began: what a forwarded response names before the read has ended
        fetched_at = wall_clock()
        if channel.pyramid is not None and channel.pyramid.derives(request.resolution):
            data: np.ndarray | None = await self._derive(request, t, box)
            where = "derived"
        else:
            self.metrics.inc("upstream_reads_total")
            started = time.perf_counter()
            if channel.upstream.forwards:
                # the frame is put together behind its cache header as it arrives (and
                # forwarded, when the request is this one cuboid and wants it)
                sink = (request.sink if request.sink is not None and request.sink.box == box
                        else FrameSink(box, dtype))
                sink.fetched_at = fetched_at
                sink.prefix = packed_header(box.shape_zyx, dtype, fetched_at)
            try:
                if _deriving.get():  # a few at a time: the source's other readers go on
                    async with self._derive_reads:
                        data, frame = await channel.upstream.read_encoded(
                            channel.ref, request.resolution, box, t, request.token, sink)
                else:
                    data, frame = await channel.upstream.read_encoded(
                        channel.ref, request.resolution, box, t, request.token, sink)
            except UpstreamError:
                self.metrics.inc("upstream_errors_total")
                raise
            finally:
                self.metrics.observe_upstream(_source_label(channel.source),
                                              time.perf_counter() - started)
        if data is None:
            data, frame = np.zeros(box.shape_zyx, dtype=dtype), None
        if data.shape != box.shape_zyx or data.dtype != dtype:
            self.metrics.inc("upstream_errors_total")
            raise UpstreamError(
                f"upstream sent a {data.dtype} array of shape {data.shape} for a "
                f"{dtype} box of shape {box.shape_zyx}"
            )
        data = np.ascontiguousarray(data)
        data.flags.writeable = False
        packed = None
        if use_cache:
            assert self.cache is not None
            if (channel.source.writable and self.cache.versioned
                    and not await self.cache.settled(key)):
                # a write of this cuboid began on a relay of the fleet while it was read, or
                # is under way (its writer may have died): answered, never cached
                self.metrics.inc("write_raced_reads_total")
                await self.cache.end_lease(key)
                return data, fetched_at, None, where
            if (sink is not None and frame is not None and sink.frame is frame
                    and sink.packed is not None):
                packed = sink.packed  # the frame as it arrived, behind its header already
            elif frame is not None:
                packed = pack_frame(frame, data.shape, data.dtype, fetched_at)
            else:
                packed = await offload(pack_cuboid, data, fetched_at, nbytes=data.nbytes)
            await self.cache.put(key, packed)
        return data, fetched_at, packed, where

    async def _derive(self, request: CutoutRequest, t: int, box: Box) -> np.ndarray:
        """A derived level's cuboid ``box``, made from the finer level's voxels (read through
        the cache, as any request's) one piece of about one finer cuboid at a time, so a
        piece's voxels are let go as soon as they are reduced, and what one cuboid costs does
        not grow with the volume (``relay.pyramid.working_bytes``: a coarse cuboid of a large
        single-scale store is made from hundreds of stored cuboids)."""
        channel = request.channel
        assert channel.pyramid is not None
        level, method = request.resolution, channel.pyramid.method
        finer = channel.info.levels[level - 1]
        f = factor(finer.voxel_size)
        out = np.empty(box.shape_zyx, channel.info.dtype)
        self.metrics.inc("derived_cuboids_total")
        step = Vec3(*(max(1, c // a) for c, a in zip(finer.cuboid, f, strict=True)))
        token = _deriving.set(True)  # the reads below are a derivation's (``_read_upstream``)
        try:
            for z in range(box.start.z, box.stop.z, step.z):
                for y in range(box.start.y, box.stop.y, step.y):
                    for x in range(box.start.x, box.stop.x, step.x):
                        part = Box(Vec3(x, y, z), Vec3(min(x + step.x, box.stop.x),
                                                       min(y + step.y, box.stop.y),
                                                       min(z + step.z, box.stop.z)))
                        region, lead = finer_box(part, f, finer.bounds)
                        read = await self.read_cutout(replace(
                            request, resolution=level - 1, box=region, sink=None,
                            times=None if t == 0 else range(t, t + 1)))
                        voxels = read.voxels if t == 0 else read.voxels[0]
                        del read
                        out[part.zyx_slices(box.start)] = await offload(
                            reduce, voxels, f, method, lead, nbytes=voxels.nbytes)
                        del voxels
        finally:
            _deriving.reset(token)
        return out

    async def _unpack(self, packed: bytes, channel: Channel, box: Box) -> np.ndarray | None:
        """The cached cuboid, or None when the entry does not hold what the plan expects."""
        try:
            data = await offload(unpack_cuboid, packed, nbytes=len(packed))
        except ValueError:
            self.metrics.inc("cache_bad_entries_total")
            return None
        if data.shape != box.shape_zyx or data.dtype != channel.info.dtype:
            self.metrics.inc("cache_bad_entries_total")
            return None
        return data
