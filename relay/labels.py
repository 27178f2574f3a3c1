"""The label index: which labels each cell of a level's grid holds, made from the cell's voxels
and cached beside its cuboids.

A cell has two kinds of entry:
- ``MESH``: the sorted, distinct labels of the cell and of the one voxel past it on each high
  side (a mesh fragment is made over that margin, so a segment that starts on the next cell's
  first voxel has a face in this cell's fragment), for mesh manifests (``relay.meshes``);
- ``BOUNDS``: the cell's own nonzero labels and each one's lowest and highest voxel inside it,
  for bounding boxes and the largest id (``relay.objects``).
Each is made the first time something asks, from the cell's voxels read through the cache like
any cutout, and costs one cache lookup every time after.

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
from .geometry import Box, Vec3
from .metrics import Metrics
from .offload import offload
from .planner import CuboidPlan, plan
from .singleflight import SingleFlight

__all__ = ["BOUNDS", "MESH", "LabelIndex", "cell_bounds", "distinct", "grown", "read_bounds"]

_FETCHED = struct.Struct("<d")  # an entry's head: when its oldest cuboid was read upstream
_BOUNDS_ROW = 7 * 8  # a label and its six bounds

#: the two kinds of entry: a mesh cell's labels (its margin included), a cell's labels with
#: their bounds inside it (``relay.objects``: bounding boxes, the largest id)
MESH, BOUNDS = "mesh/labels", "objects/bounds"


def grown(cell: Box, bounds: Box) -> Box:
    """A cell and the one voxel past it on each high side (inside the volume)."""
    out = Box(cell.start, cell.stop + (1, 1, 1)).intersect(bounds)
    assert out is not None
    return out


def distinct(voxels: np.ndarray) -> np.ndarray:
    """``np.unique(voxels)``, sorting only the first voxel of each run along x: a segmentation
    is piecewise constant, so they are tens of times fewer than its voxels."""
    flat = voxels.reshape(-1)
    if flat.size == 0:
        return np.zeros(0, voxels.dtype)
    begins = np.empty(flat.size, np.bool_)
    begins[0] = True
    np.not_equal(flat[1:], flat[:-1], out=begins[1:])
    return np.unique(flat[begins])


def cell_bounds(voxels: np.ndarray, corner: Vec3) -> bytes:
    """A bounds entry: the cell's nonzero labels (sorted, uint64) and each one's voxel bounds
    inside the cell, (x, y, z) lowest then highest, in the level's coordinates (int64).

    Worked out over runs, not voxels: a segmentation is piecewise constant, so the runs of one
    label along x (cut at each row's end) are tens of times fewer than its voxels, and only
    they are sorted (a run's first and last voxel give its x bounds, its row its y and z)."""
    _, height, width = voxels.shape
    flat = voxels.reshape(-1)
    if flat.size == 0:
        return b""
    begins = np.empty(flat.size, np.bool_)
    begins[0] = True
    np.not_equal(flat[1:], flat[:-1], out=begins[1:])
    begins[::width] = True  # a run never crosses a row
    firsts = np.flatnonzero(begins)
    lasts = np.empty_like(firsts)
    lasts[:-1] = firsts[1:] - 1
    lasts[-1] = flat.size - 1
    values = flat[firsts]
    labelled = values != 0
    firsts, lasts, values = firsts[labelled], lasts[labelled], values[labelled]
    if values.size == 0:
        return b""
    order = np.argsort(values, kind="stable")
    values, firsts, lasts = values[order], firsts[order], lasts[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    rows = firsts // width
    xs_low, xs_high = firsts % width, lasts % width
    ys, zs = rows % height, rows // height
    lows = [np.minimum.reduceat(axis, starts) for axis in (xs_low, ys, zs)]
    highs = [np.maximum.reduceat(axis, starts) for axis in (xs_high, ys, zs)]
    offsets = np.asarray(tuple(corner) * 2, np.int64)
    coords = np.stack(lows + highs, axis=1).astype(np.int64) + offsets
    labels: np.ndarray = values[starts]
    return labels.astype("<u8").tobytes() + np.ascontiguousarray(coords, "<i8").tobytes()


def read_bounds(entry: bytes | memoryview) -> tuple[np.ndarray, np.ndarray]:
    """The labels (n,) and their bounds (n, 6: x, y, z low, then high, inclusive) of an entry
    made by ``cell_bounds``."""
    count = len(entry) // _BOUNDS_ROW
    labels = np.frombuffer(entry, "<u8", count)
    coords = np.frombuffer(entry, "<i8", count * 6, offset=count * 8).reshape(count, 6)
    return labels, coords


class LabelIndex:
    def __init__(self, cutouts: CutoutService, cache: TieredCache | None, metrics: Metrics,
                 budget: ByteBudget) -> None:
        self.cutouts = cutouts
        self.cache = cache
        self.metrics = metrics
        self.budget = budget
        self.flights: SingleFlight[str, bytes | memoryview] = SingleFlight()

    @staticmethod
    def _key(channel: Channel, level: int, cell: CuboidPlan, token: str | None,
             kind: str = MESH) -> str:
        return f"{cache_key(channel, level, 0, cell, token)}/{kind}"

    def touched_keys(self, channel: Channel, level: int, box: Box, token: str | None) -> list[str]:
        """The entries a write of ``box`` at ``level`` makes untrue: every mesh cell whose
        voxels or margin it covers (the cells it touches, and those one lower on each axis),
        and the bounds of every cell it touches."""
        grid = channel.info.levels[level]
        reach = Box(box.start - (1, 1, 1), box.stop)
        return [self._key(channel, level, cell, token)
                for cell in plan(reach, grid.cuboid, grid.origin, grid.bounds)] + [
            self._key(channel, level, cell, token, BOUNDS)
            for cell in plan(box, grid.cuboid, grid.origin, grid.bounds)]

    async def cell(self, channel: Channel, level: int, cell: CuboidPlan,
                   token: str | None) -> np.ndarray:
        """The sorted labels (uint64) of ``cell`` of ``level`` and its margin."""
        entry = await self._entry(channel, level, cell, token, MESH)
        return np.frombuffer(entry, np.uint64)

    async def bounds(self, channel: Channel, level: int, cell: CuboidPlan,
                     token: str | None) -> tuple[np.ndarray, np.ndarray]:
        """The sorted nonzero labels of ``cell`` of ``level`` and their bounds inside it
        (``read_bounds``)."""
        return read_bounds(await self._entry(channel, level, cell, token, BOUNDS))

    async def _entry(self, channel: Channel, level: int, cell: CuboidPlan, token: str | None,
                     kind: str) -> bytes | memoryview:
        key = self._key(channel, level, cell, token, kind)
        box = (grown(cell.box, channel.info.levels[level].bounds) if kind == MESH
               else cell.box)
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

        async def load() -> bytes | memoryview:
            if cacheable:
                assert self.cache is not None
                held = await self.cache.get(key)
                if held is not None and len(held) >= _FETCHED.size and fresh(
                        source, _FETCHED.unpack_from(held)[0]):
                    return memoryview(held)[_FETCHED.size:]
            fetched, entry = await self._make(channel, level, box, token, kind)
            if cacheable and await self._settled(versioned):
                assert self.cache is not None
                await self.cache.put(key, _FETCHED.pack(fetched) + entry)
            return entry

        async def gated() -> bytes | memoryview:
            # made and cached under the channel's read gate: a write waits for it, so no entry
            # made of the voxels before a write is cached after the write dropped it
            async with self.cutouts.gates(channel_prefix(channel)).reading():
                return await load()

        return await self.flights.do(key, gated if source.writable else load)

    async def _make(self, channel: Channel, level: int, box: Box, token: str | None,
                    kind: str) -> tuple[float, bytes]:
        nbytes = box.voxels * channel.info.dtype.itemsize
        # the voxels, and np.unique's sorted copy and its answer; or for bounds the nonzero
        # voxels' positions, values, order and coordinates (at most 6 × 8 bytes a voxel); and
        # any derived cuboids made
        each = 8 * box.voxels * 6 if kind == BOUNDS else 2 * nbytes
        peak = nbytes + each + CutoutService.working_bytes(channel, level, box)
        reservation = self.budget.try_reserve(peak) or await self.budget.reserve(peak)
        try:
            # time 0, whatever the channel's default sample: what writes of time 0 drop
            # (``WriteService.touched_labels``) and what BossDB's object services read
            read = await self.cutouts.read_cutout(CutoutRequest(channel, level, box,
                                                                times=range(1), token=token))
            voxels = read.voxels.reshape(box.shape_zyx)
            if kind == BOUNDS:
                entry = await offload(cell_bounds, voxels, box.start, nbytes=nbytes)
            else:
                labels = await offload(distinct, voxels, nbytes=nbytes)
                entry = np.asarray(labels, "<u8").tobytes()
            self.metrics.inc("label_index_cells_made_total")
            return min(read.fetched, default=0.0), entry
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

