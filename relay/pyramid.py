"""Derived resolution levels: a pyramid for stores that hold fewer levels than a viewer needs.

A single-scale zarr (what most labs write) has one level, so a zoomed-out view must fetch every
full-resolution voxel. A source with ``downsample: auto`` (the default) is described with extra
levels below its last stored one, each made from the level above it by BossDB's rule: a factor
of 2×2×1 while the level's z voxels are at least twice its x/y size (anisotropic data), 2×2×2
after that. Levels are added until one fits a single cuboid in x and y, at most ``levels`` in
all. A derived cuboid is computed from the finer level's cuboids, read through the same cache
and single-flight as any read (``relay.cutout``), and cached like a stored one.

How a derived voxel is made from its block of (up to) 2×2×1 or 2×2×2 finer voxels:

- ``mean`` (images): the mean of the block, rounded to the nearest integer with halves rounded
  up, ``floor((Σ + ⌊n/2⌋) / n)``, exact for every integer dtype (uint64 sums never overflow).
- ``mode`` (annotations): the most frequent label of the block; on a tie, the smallest label
  (0, background, is a label like any other).

A block cut by the edge of the volume (a size that is not a multiple of the factor) is made from
the voxels that exist: never padded with zeros, so an edge voxel is not darkened.

What making a derived cuboid costs in memory does not grow with the volume: it is made piece by
piece, one finer cuboid's voxels at a time, and a finer level that is derived too is made the
same way, one level below the other. ``working_bytes`` is what that holds at its peak, which a
request reserves from the in-flight budget before it reads (``relay.budget``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from .geometry import Box, Vec3
from .model import MAX_LEVELS, ChannelInfo, Level

__all__ = ["Method", "Pyramid", "derive_levels", "factor", "finer_box", "reduce",
           "working_bytes"]

Method = Literal["mean", "mode"]


@dataclass(frozen=True, slots=True)
class Pyramid:
    """Which levels of a channel are derived, and how."""

    stored: int     # the store's own levels; level ``stored`` and below are derived
    method: Method

    def derives(self, level: int) -> bool:
        return level >= self.stored


def factor(voxel_size: tuple[float, float, float]) -> Vec3:
    """The factor from a level with ``voxel_size`` to the next coarser one."""
    x, y, z = voxel_size
    return Vec3(2, 2, 1) if z >= 2 * max(x, y) else Vec3(2, 2, 2)


def _coarser(level: Level) -> Level:
    f = factor(level.voxel_size)
    start, stop = level.bounds.start, level.bounds.stop
    return Level(
        voxel_size=(level.voxel_size[0] * f.x, level.voxel_size[1] * f.y,
                    level.voxel_size[2] * f.z),
        bounds=Box(Vec3(*(s // a for s, a in zip(start, f, strict=True))),
                   Vec3(*(-(-s // a) for s, a in zip(stop, f, strict=True)))),
        cuboid=level.cuboid,
        # the finer grid's origin divided by the factor: when it divides evenly (it does for
        # origin 0), each derived cuboid is made from exactly f.x·f.y·f.z finer cuboids
        origin=Vec3(*(o // a for o, a in zip(level.origin, f, strict=True))),
    )


def _fits(level: Level) -> bool:
    size = level.bounds.size
    return size.x <= level.cuboid.x and size.y <= level.cuboid.y


def derive_levels(info: ChannelInfo, method: Method, cap: int | None) -> tuple[
        ChannelInfo, Pyramid | None]:
    """``info`` with derived levels appended, and which they are (None when none were)."""
    levels = list(info.levels)
    limit = min(cap or MAX_LEVELS, MAX_LEVELS)
    while len(levels) < limit and not _fits(levels[-1]):
        levels.append(_coarser(levels[-1]))
    if len(levels) == len(info.levels):
        return info, None
    return replace(info, levels=tuple(levels)), Pyramid(len(info.levels), method)


def working_bytes(info: ChannelInfo, pyramid: Pyramid, level: int) -> int:
    """The most memory making one cuboid of ``level`` holds at once (0 for a stored level): at
    each derived level from it down to the stored ones, the cuboid being made, the finer
    voxels of the piece being reduced, and what reducing them takes (the sums of a mean, the
    votes of a mode: at most twice the finer piece)."""
    total = 0
    for derived in range(level, pyramid.stored - 1, -1):
        cuboid, finer = info.levels[derived].cuboid, info.levels[derived - 1].cuboid
        total += (cuboid.x * cuboid.y * cuboid.z + 3 * finer.x * finer.y * finer.z)
    return total * info.dtype.itemsize


def finer_box(box: Box, f: Vec3, finer_bounds: Box) -> tuple[Box, Vec3]:
    """The finer-level voxels ``box`` (at the coarser level) is made from, clipped to the finer
    level's bounds, and how many voxels the clipping left out before them on each axis (the
    first block of a level whose start is not a multiple of the factor is partial)."""
    whole = Box(Vec3(*(s * a for s, a in zip(box.start, f, strict=True))),
                Vec3(*(s * a for s, a in zip(box.stop, f, strict=True))))
    inside = whole.intersect(finer_bounds)
    assert inside is not None, "a derived box always covers finer voxels"
    return inside, inside.start - whole.start


_NO_LEAD = Vec3(0, 0, 0)


def reduce(data: np.ndarray, f: Vec3, method: Method, lead: Vec3 = _NO_LEAD) -> np.ndarray:
    """Downsample a Z,Y,X block of finer voxels by ``f``; the block begins ``lead`` voxels into
    its first factor-block on each axis (see ``finer_box``). Blocks cut by an edge are made
    from the voxels that exist."""
    fz, fy, fx = f.z, f.y, f.x
    before = (lead.z, lead.y, lead.x)
    shape = [-(-(n + b) // a) for n, b, a in zip(data.shape, before, (fz, fy, fx), strict=True)]
    pads = [(b, s * a - n - b)
            for n, b, s, a in zip(data.shape, before, shape, (fz, fy, fx), strict=True)]
    partial = any(p for pair in pads for p in pair)
    padded = np.pad(data, pads) if partial else data
    # the i-th voxel of every factor-block, as one strided view per i: adding and comparing
    # whole views is an order of magnitude faster than reducing a 6-D reshape over its axes
    offsets = [(z, y, x) for z in range(fz) for y in range(fy) for x in range(fx)]
    voxels = [padded[z::fz, y::fy, x::fx] for z, y, x in offsets]
    valid = None
    if partial:
        present = np.pad(np.ones(data.shape, np.bool_), pads)
        valid = [present[z::fz, y::fy, x::fx] for z, y, x in offsets]
    if method == "mean":
        return _mean(voxels, valid, data.dtype)
    return _mode(voxels, valid, data.dtype)


def _sum(views: list[np.ndarray], dtype: type[np.unsignedinteger]) -> np.ndarray:
    total = views[0].astype(dtype)
    for view in views[1:]:
        total += view
    return total


def _mean(voxels: list[np.ndarray], valid: list[np.ndarray] | None,
          dtype: np.dtype[np.generic]) -> np.ndarray:
    k = len(voxels)
    if dtype.kind == "f":
        total = _sum(voxels, np.float64)  # type: ignore[arg-type]
        n = _sum(valid, np.float64) if valid is not None else k  # type: ignore[arg-type]
        return np.asarray(total / n, dtype=dtype)
    if dtype.itemsize < 8:
        # at most 8 voxels: a uint8 sum fits 16 bits, a uint16 sum 32, a uint32 sum 64
        wide: dict[int, type[np.unsignedinteger]] = {1: np.uint16, 2: np.uint32}
        total = _sum(voxels, wide.get(dtype.itemsize, np.uint64))
        if valid is None:  # every block whole: k is 4 or 8, so the division is a shift
            total += k // 2
            total >>= k.bit_length() - 1
            return np.asarray(total, dtype=dtype)
        n = _sum(valid, np.uint8).astype(total.dtype)
        return np.asarray((total + n // 2) // n, dtype=dtype)
    # 64-bit voxels: sum the high and low 32-bit halves apart (each sum fits), then divide the
    # two-word sum by n as long division, so the result is exact
    low_mask, shift = np.uint64(0xFFFFFFFF), np.uint64(32)
    hi = _sum([v >> shift for v in voxels], np.uint64)
    lo = _sum([v & low_mask for v in voxels], np.uint64)
    n = (_sum(valid, np.uint8).astype(np.uint64) if valid is not None
         else np.full(hi.shape, k, np.uint64))
    q_hi, r_hi = hi // n, hi % n
    low = ((r_hi << shift) + lo + n // np.uint64(2)) // n
    return np.asarray((q_hi << shift) + low, dtype=dtype)


def _mode(voxels: list[np.ndarray], valid: list[np.ndarray] | None,
          dtype: np.dtype[np.generic]) -> np.ndarray:
    # votes[i]: how many voxels of its block equal the block's i-th voxel (a padding voxel
    # is nobody's vote and gets none)
    votes = []
    for i, mine in enumerate(voxels):
        count = np.zeros(mine.shape, np.uint8)
        for j, other in enumerate(voxels):
            same = mine == other
            if valid is not None:
                same &= valid[j]
            count += same
        if valid is not None:
            count *= valid[i]
        votes.append(count)
    best = np.maximum.reduce(votes)
    # the smallest label among the most frequent ones: every other voxel is masked to the max
    top = np.array(-1).astype(dtype) if dtype.kind == "u" else np.array(np.inf, dtype)
    winner = np.where(votes[0] == best, voxels[0], top)
    for count, mine in zip(votes[1:], voxels[1:], strict=True):
        np.minimum(winner, np.where(count == best, mine, top), out=winner)
    return np.asarray(winner, dtype=dtype)
