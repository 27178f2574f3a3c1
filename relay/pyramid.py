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
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from .geometry import Box, Vec3
from .model import MAX_LEVELS, ChannelInfo, Level

__all__ = ["Method", "Pyramid", "derive_levels", "factor", "finer_box", "reduce"]

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
    # (Z, fz, Y, fy, X, fx): one factor-block per (z, y, x), its voxels on the odd axes
    blocks = (np.pad(data, pads) if partial else data).reshape(shape[0], fz, shape[1], fy,
                                                                shape[2], fx)
    valid = (np.pad(np.ones(data.shape, np.bool_), pads).reshape(blocks.shape)
             if partial else None)
    if method == "mean":
        return _mean(blocks, valid, data.dtype)
    return _mode(blocks, valid, data.dtype)


_AXES = (1, 3, 5)


def _mean(blocks: np.ndarray, valid: np.ndarray | None, dtype: np.dtype[np.generic]
          ) -> np.ndarray:
    n = (valid.sum(axis=_AXES, dtype=np.uint64) if valid is not None
         else np.uint64(blocks.shape[1] * blocks.shape[3] * blocks.shape[5]))
    if dtype.kind == "f":
        total = blocks.sum(axis=_AXES, dtype=np.float64)
        return np.asarray(total / n, dtype=dtype)
    half = n // np.uint64(2)
    if dtype.itemsize < 8:
        # at most 8 voxels of 32 bits: the sum fits 64 bits
        total = blocks.sum(axis=_AXES, dtype=np.uint64)
        return np.asarray((total + half) // n, dtype=dtype)
    # 64-bit voxels: sum the high and low 32-bit halves apart (each sum fits), then divide the
    # two-word sum by n as long division, so the result is exact
    wide = blocks.astype(np.uint64, copy=False)
    hi = (wide >> np.uint64(32)).sum(axis=_AXES, dtype=np.uint64)
    lo = (wide & np.uint64(0xFFFFFFFF)).sum(axis=_AXES, dtype=np.uint64)
    q_hi, r_hi = hi // n, hi % n
    low = ((r_hi << np.uint64(32)) + lo + half) // n
    return np.asarray((q_hi << np.uint64(32)) + low, dtype=dtype)


def _mode(blocks: np.ndarray, valid: np.ndarray | None, dtype: np.dtype[np.generic]
          ) -> np.ndarray:
    z, _, y, _, x, _ = blocks.shape
    k = blocks.shape[1] * blocks.shape[3] * blocks.shape[5]
    # (k, Z, Y, X): the i-th voxel of every block as one array
    voxels = blocks.transpose(1, 3, 5, 0, 2, 4).reshape(k, z, y, x)
    ok = (valid.transpose(1, 3, 5, 0, 2, 4).reshape(k, z, y, x) if valid is not None
          else None)
    counts = np.empty((k, z, y, x), np.uint8)
    for i in range(k):
        same = voxels == voxels[i]
        if ok is not None:
            same &= ok
        counts[i] = same.sum(axis=0, dtype=np.uint8)
        if ok is not None:
            counts[i] *= ok[i]  # a padding voxel is nobody's vote
    best = counts.max(axis=0)
    # the smallest label among the most frequent ones: every other voxel is masked to the max
    top = np.array(-1).astype(dtype) if dtype.kind == "u" else np.array(np.inf, dtype)
    return np.asarray(np.where(counts == best, voxels, top).min(axis=0), dtype=dtype)

