"""The label index: which labels each cell of a level's grid holds, made from the cell's voxels
and cached beside its cuboids.

A cell's entry is the sorted, distinct labels of the cell and of the one voxel past it on each
high side (a mesh fragment is made over that margin, so a segment that starts on the next
cell's first voxel has a face in this cell's fragment). It is made the first time something
asks (a mesh manifest: ``relay.meshes``), from the cell's voxels read through the cache like any
cutout, and costs one cache lookup every time after.

An entry never outlives the voxels it was made from:
- a source with ``ttl_seconds``: an entry carries when the oldest cuboid it was made from was
  read upstream, and is used only while that cuboid would be (``cutout.fresh``);
- a ``writable`` source: a write drops the entries of every cell whose voxels (margin included)
  it touched (``touched_keys``, called by ``relay.writes`` with the cuboids it drops), and an
  entry is made and cached under the channel's read gate (``relay.gate``), so a write waits for
  it and none made before a write is cached after it. In a fleet (a shared Redis tier keeping
  write versions) an entry is also cached under the versions of the cuboids it was made from,
  so a write on any relay of the fleet makes every relay's entries of what it touched
  unreachable, as it does their cuboids; and one made while a write of its cuboids was under way
  is answered but not cached (``Versioned.settled``).

Making an entry reserves what it holds (the cell's voxels, a sorted copy, the derived cuboids
being made for it) from the in-flight budget.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from .budget import ByteBudget
from .cache.tiered import TieredCache
from .catalog import Channel
from .cutout import CutoutRequest, CutoutService, cache_key, channel_prefix, fresh
from .geometry import Box
from .metrics import Metrics
from .offload import offload
from .planner import CuboidPlan, plan
from .singleflight import SingleFlight

__all__ = ["LabelIndex", "grown"]

_FETCHED = struct.Struct("<d")  # an entry's head: when its oldest cuboid was read upstream


def grown(cell: Box, bounds: Box) -> Box:
    """A cell and the one voxel past it on each high side (inside the volume)."""
    out = Box(cell.start, cell.stop + (1, 1, 1)).intersect(bounds)
    assert out is not None
    return out


class LabelIndex:
    def __init__(self, cutouts: CutoutService, cache: TieredCache | None, metrics: Metrics,
                 budget: ByteBudget) -> None:
        self.cutouts = cutouts
        self.cache = cache
        self.metrics = metrics
        self.budget = budget
        self.flights: SingleFlight[str, np.ndarray] = SingleFlight()

    @staticmethod
    def _key(channel: Channel, level: int, cell: CuboidPlan, token: str | None) -> str:
        return f"{cache_key(channel, level, 0, cell, token)}/mesh/labels"

    def touched_keys(self, channel: Channel, level: int, box: Box, token: str | None) -> list[str]:
        """The entries a write of ``box`` at ``level`` makes untrue: every cell whose voxels
        or margin it covers (the cells it touches, and those one lower on each axis)."""
        grid = channel.info.levels[level]
        reach = Box(box.start - (1, 1, 1), box.stop)
        return [self._key(channel, level, cell, token)
                for cell in plan(reach, grid.cuboid, grid.origin, grid.bounds)]

    async def cell(self, channel: Channel, level: int, cell: CuboidPlan,
                   token: str | None) -> np.ndarray:
        """The sorted labels (uint64) of ``cell`` of ``level`` and its margin."""
        key = self._key(channel, level, cell, token)
        box = grown(cell.box, channel.info.levels[level].bounds)
        source = channel.source
        cacheable = self.cache is not None and source.cache
        versioned: list[str] | None = None
        if cacheable and source.writable and self.cache is not None and self.cache.versioned:
            # under the fleet's versions of every cuboid it is made from
            grid = channel.info.levels[level]
            covered = [cache_key(channel, level, 0, c, token)
                       for c in plan(box, grid.cuboid, grid.origin, grid.bounds)]
            versioned = await self.cutouts.versioned(channel, covered)
            if versioned is None:  # the versions cannot be read: nothing cached is trusted
                cacheable = False
            else:
                digest = hashlib.blake2b("|".join(versioned).encode(), digest_size=8)
                key = f"{key}@{digest.hexdigest()}"

        async def load() -> np.ndarray:
            if cacheable:
                assert self.cache is not None
                held = await self.cache.get(key)
                if held is not None and len(held) >= _FETCHED.size and fresh(
                        source, _FETCHED.unpack_from(held)[0]):
                    return np.frombuffer(held, np.uint64, offset=_FETCHED.size)
            fetched, labels = await self._make(channel, level, box, token)
            if cacheable and await self._settled(versioned):
                assert self.cache is not None
                await self.cache.put(key, _FETCHED.pack(fetched) + labels.tobytes())
            return labels

        async def gated() -> np.ndarray:
            # made and cached under the channel's read gate: a write waits for it, so no entry
            # made of the voxels before a write is cached after the write dropped it
            async with self.cutouts.gates(channel_prefix(channel)).reading():
                return await load()

        return await self.flights.do(key, gated if source.writable else load)

    async def _make(self, channel: Channel, level: int, box: Box,
                    token: str | None) -> tuple[float, np.ndarray]:
        nbytes = box.voxels * channel.info.dtype.itemsize
        # the voxels, np.unique's sorted copy and its answer, and any derived cuboids made
        peak = 3 * nbytes + CutoutService.working_bytes(channel, level, box)
        reservation = self.budget.try_reserve(peak) or await self.budget.reserve(peak)
        try:
            read = await self.cutouts.read_cutout(CutoutRequest(channel, level, box,
                                                                token=token))
            labels = await offload(np.unique, read.voxels, nbytes=nbytes)
            self.metrics.inc("label_index_cells_made_total")
            return min(read.fetched, default=0.0), np.asarray(labels, np.uint64)
        finally:
            reservation.release()

    async def _settled(self, versioned: list[str] | None) -> bool:
        """In a fleet: is every cuboid the entry was made from still at the version it was
        read under, with no write of it under way?"""
        if versioned is None:
            return True
        assert self.cache is not None
        for key in versioned:
            if not await self.cache.settled(key):
                self.metrics.inc("write_raced_reads_total")
                return False
        return True

